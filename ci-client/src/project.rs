//! Packing the project directory into the zip archive the server runs.

use std::io::{Cursor, Write};
use std::path::{Component, Path, PathBuf};

use ignore::WalkBuilder;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::ProjectZipError;

/// Bytecode caches are never part of a project; Python rebuilds them.
const PYCACHE_DIR: &str = "__pycache__";

/// A project packed for upload: the zip, and the symbolic links that were
/// left out of it (for the user to be told).
#[derive(Debug)]
pub struct PackedProject {
    pub zip: Vec<u8>,
    pub left_out: Vec<LeftOutLink>,
}

/// A symbolic link that was not packed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOutLink {
    /// The link's path in the project, with `/` separators.
    pub path: String,
    pub why: LinkRefusal,
}

/// Why a symbolic link was left out of the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// It points outside the project folder: running `ci` in a checkout must
    /// never upload the user's other files (a link to `~/.ssh/id_rsa`).
    OutsideProject,
    /// Its target does not exist, or links lead round in a circle.
    Unresolvable,
    /// A link to a folder that holds the link: following it never ends.
    Loop,
}

impl std::fmt::Display for LeftOutLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.why {
            LinkRefusal::OutsideProject => "it is a symbolic link to outside the project",
            LinkRefusal::Unresolvable => {
                "it is a symbolic link that cannot be resolved (missing target or a loop)"
            }
            LinkRefusal::Loop => "it is a symbolic link to a folder that contains it",
        };
        write!(f, "left out {}: {why}", self.path)
    }
}

/// Zips every file under `dir` for upload, leaving out dot-files and
/// dot-folders, `__pycache__` folders and whatever the project's `.gitignore`
/// files ignore (also without a `.git` folder). Entries are the paths relative
/// to `dir` with `/` separators, deflated, sorted so that the same project
/// gives the same archive. Only the project's own `.gitignore` files count:
/// not the user's global excludes, nor `.gitignore` files above `dir`, so the
/// archive does not depend on the machine it is made on.
///
/// A symbolic link whose target (resolved) lies inside `dir` is packed as
/// what it points to: a file as that file, a folder as its files. Any other
/// link is left out and reported in [`PackedProject::left_out`], so a hostile
/// checkout cannot make `ci` upload the user's other files.
pub fn pack_project(dir: &Path) -> Result<PackedProject, ProjectZipError> {
    let root = dir.canonicalize().map_err(|source| ProjectZipError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut packer = Packer {
        zip: ZipWriter::new(Cursor::new(Vec::new())),
        walking: vec![root.clone()],
        root,
        left_out: Vec::new(),
    };
    packer.pack_folder(dir, Path::new(""))?;
    Ok(PackedProject {
        zip: packer.zip.finish()?.into_inner(),
        left_out: packer.left_out,
    })
}

struct Packer {
    zip: ZipWriter<Cursor<Vec<u8>>>,
    /// The project folder, resolved: links may point anywhere below it.
    root: PathBuf,
    /// The real folders whose walks are in progress (the project, then each
    /// followed folder link), so that a link back into one is not followed.
    walking: Vec<PathBuf>,
    left_out: Vec<LeftOutLink>,
}

impl Packer {
    /// Packs the files below `folder` as `prefix/…`.
    fn pack_folder(&mut self, folder: &Path, prefix: &Path) -> Result<(), ProjectZipError> {
        let walker = WalkBuilder::new(folder)
            .standard_filters(false)
            .hidden(true)
            .git_ignore(true)
            .require_git(false)
            .parents(false)
            .follow_links(false)
            .filter_entry(|entry| entry.file_name() != PYCACHE_DIR)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build();
        for entry in walker {
            let entry = entry?;
            let path = entry.path();
            let relative = prefix.join(path.strip_prefix(folder).unwrap_or(path));
            match entry.file_type() {
                Some(t) if t.is_file() => self.add_file(path, &relative)?,
                Some(t) if t.is_symlink() => self.follow_link(path, &relative)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn follow_link(&mut self, link: &Path, relative: &Path) -> Result<(), ProjectZipError> {
        let name = archive_name(relative)?;
        let Ok(target) = link.canonicalize() else {
            self.leave_out(name, LinkRefusal::Unresolvable);
            return Ok(());
        };
        if !target.starts_with(&self.root) {
            self.leave_out(name, LinkRefusal::OutsideProject);
            return Ok(());
        }
        if target.is_file() {
            return self.add_file(&target, relative);
        }
        if !target.is_dir() {
            // Devices, fifos and sockets are no part of a project.
            return Ok(());
        }
        let real_parent = link.parent().and_then(|p| p.canonicalize().ok());
        let loops = self
            .walking
            .iter()
            .chain(real_parent.iter())
            .any(|folder| folder.starts_with(&target));
        if loops {
            self.leave_out(name, LinkRefusal::Loop);
            return Ok(());
        }
        self.walking.push(target.clone());
        let packed = self.pack_folder(&target, relative);
        self.walking.pop();
        packed
    }

    fn leave_out(&mut self, path: String, why: LinkRefusal) {
        self.left_out.push(LeftOutLink { path, why });
    }

    fn add_file(&mut self, path: &Path, relative: &Path) -> Result<(), ProjectZipError> {
        let name = archive_name(relative)?;
        let mut options =
            SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        if let Some(mode) = unix_mode(path) {
            options = options.unix_permissions(mode);
        }
        if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) {
            options = options.last_modified_time(zip_time(modified));
        }
        let contents = std::fs::read(path).map_err(|source| ProjectZipError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.zip.start_file(name, options)?;
        self.zip
            .write_all(&contents)
            .map_err(|e| ProjectZipError::Zip(e.into()))
    }
}

/// The project's name, as jobs are grouped by it: `[project].name` of its
/// `pyproject.toml`, else the name of its folder.
pub fn project_name(root: &Path) -> Option<String> {
    let from_pyproject = std::fs::read_to_string(root.join("pyproject.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| {
            Some(
                table
                    .get("project")?
                    .get("name")?
                    .as_str()?
                    .trim()
                    .to_string(),
            )
        })
        .filter(|name| !name.is_empty());
    from_pyproject.or_else(|| {
        root.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
    })
}

/// A relative path as a zip entry name: its parts joined with `/`, whatever
/// the platform's separator.
fn archive_name(relative: &Path) -> Result<String, ProjectZipError> {
    let mut parts = Vec::new();
    for component in relative.components() {
        if let Component::Normal(part) = component {
            let part = part
                .to_str()
                .ok_or_else(|| ProjectZipError::NonUtf8Path(relative.display().to_string()))?;
            parts.push(part);
        }
    }
    Ok(parts.join("/"))
}

/// A file's modification time as a zip entry's, in UTC (jobs run in UTC),
/// within what a zip can hold (1980-01-01 to 2107-12-31): build backends that
/// zip the project into a wheel refuse earlier times, and tools that compare
/// times (make, caches) see the project as it is on disk.
fn zip_time(modified: std::time::SystemTime) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let at: chrono::DateTime<chrono::Utc> = modified.into();
    let year = at.year().clamp(1980, 2107);
    if year != at.year() {
        return if year == 1980 {
            zip::DateTime::default()
        } else {
            zip::DateTime::from_date_and_time(2107, 12, 31, 23, 59, 58).unwrap_or_default()
        };
    }
    // Every field is in range here; zip keeps even seconds.
    zip::DateTime::from_date_and_time(
        year as u16,
        at.month() as u8,
        at.day() as u8,
        at.hour() as u8,
        at.minute() as u8,
        at.second() as u8,
    )
    .unwrap_or_default()
}

/// The file's permission bits, so executable scripts stay executable.
#[cfg(unix)]
fn unix_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn unix_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::Read;

    fn write(root: &Path, relative: &str, contents: &str) {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(path, contents).expect("write file");
    }

    fn entries(zip_bytes: &[u8]) -> BTreeSet<String> {
        let archive = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("valid zip");
        archive.file_names().map(str::to_string).collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn includes_project_files_with_relative_slash_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "README.md", "# demo\n");
        write(dir.path(), "requirements.txt", "pytest\n");
        write(
            dir.path(),
            "src/calculator.py",
            "def add(a, b):\n    return a + b\n",
        );
        write(dir.path(), "tests/unit/test_calc.py", "def test(): pass\n");

        let bytes = pack_project(dir.path()).expect("zip").zip;
        assert_eq!(
            entries(&bytes),
            names(&[
                "README.md",
                "requirements.txt",
                "src/calculator.py",
                "tests/unit/test_calc.py"
            ])
        );

        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
        let mut file = archive.by_name("src/calculator.py").expect("entry");
        assert_eq!(file.compression(), CompressionMethod::Deflated);
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read entry");
        assert_eq!(text, "def add(a, b):\n    return a + b\n");
    }

    #[test]
    fn leaves_out_dot_files_dot_folders_and_pycache() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "main.py", "print(1)\n");
        write(dir.path(), ".env", "SECRET=1\n");
        write(dir.path(), ".git/config", "[core]\n");
        write(dir.path(), "src/.hidden/secret.txt", "x\n");
        write(dir.path(), "src/app.py", "x = 1\n");
        write(dir.path(), "__pycache__/main.cpython-312.pyc", "bytes");
        write(dir.path(), "src/__pycache__/app.cpython-312.pyc", "bytes");

        let bytes = pack_project(dir.path()).expect("zip").zip;
        assert_eq!(entries(&bytes), names(&["main.py", "src/app.py"]));
    }

    #[test]
    fn honours_gitignore_without_a_git_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(!dir.path().join(".git").exists());
        write(dir.path(), ".gitignore", "*.log\nbuild/\n");
        write(dir.path(), "app.py", "x = 1\n");
        write(dir.path(), "debug.log", "noise\n");
        write(dir.path(), "build/out.txt", "artefact\n");
        write(dir.path(), "src/nested.log", "noise\n");

        let bytes = pack_project(dir.path()).expect("zip").zip;
        assert_eq!(entries(&bytes), names(&["app.py"]));
    }

    #[test]
    fn honours_nested_gitignore_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "src/.gitignore",
            "generated_*.py\n!generated_keep.py\n",
        );
        write(dir.path(), "src/app.py", "x = 1\n");
        write(dir.path(), "src/generated_a.py", "x = 2\n");
        write(dir.path(), "src/generated_keep.py", "x = 3\n");
        // A nested .gitignore applies only below its own folder.
        write(dir.path(), "generated_top.py", "x = 4\n");

        let bytes = pack_project(dir.path()).expect("zip").zip;
        assert_eq!(
            entries(&bytes),
            names(&["generated_top.py", "src/app.py", "src/generated_keep.py"])
        );
    }

    #[test]
    fn a_project_inside_a_dot_folder_is_still_packed() {
        // The reference client checked absolute paths and sent nothing here.
        let dir = tempfile::tempdir().expect("temp dir");
        let project = dir.path().join(".cache").join("project");
        write(&project, "app.py", "x = 1\n");

        let bytes = pack_project(&project).expect("zip").zip;
        assert_eq!(entries(&bytes), names(&["app.py"]));
    }

    #[test]
    fn an_empty_project_gives_a_valid_empty_zip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = pack_project(dir.path()).expect("zip").zip;
        assert!(entries(&bytes).is_empty());
    }

    #[test]
    fn the_project_is_named_by_its_pyproject_else_its_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("my-checkout");
        write(&root, "app.py", "x = 1\n");
        assert_eq!(project_name(&root).as_deref(), Some("my-checkout"));
        write(&root, "pyproject.toml", "[project]\nname = \"attrs\"\n");
        assert_eq!(project_name(&root).as_deref(), Some("attrs"));
        // A pyproject.toml without a name (or broken) names nothing.
        write(&root, "pyproject.toml", "[tool.black]\n[project\n");
        assert_eq!(project_name(&root).as_deref(), Some("my-checkout"));
    }

    #[test]
    fn files_keep_their_modification_time_clamped_to_1980() {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "new.py", "x = 1\n");
        write(dir.path(), "old.py", "x = 2\n");
        let set = |name: &str, at: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .and_then(|f| f.set_modified(at))
                .expect("set mtime");
        };
        // 2024-05-17T13:45:30Z, and the Unix epoch.
        set("new.py", UNIX_EPOCH + Duration::from_secs(1_715_953_530));
        set("old.py", UNIX_EPOCH);

        let bytes = pack_project(dir.path()).expect("zip").zip;
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
        let time = |archive: &mut zip::ZipArchive<Cursor<Vec<u8>>>, name: &str| {
            let t = archive
                .by_name(name)
                .expect("entry")
                .last_modified()
                .expect("a time");
            (
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
            )
        };
        assert_eq!(time(&mut archive, "new.py"), (2024, 5, 17, 13, 45, 30));
        assert_eq!(time(&mut archive, "old.py"), (1980, 1, 1, 0, 0, 0));
    }

    #[cfg(unix)]
    mod links {
        use super::*;
        use std::os::unix::fs::symlink;

        fn contents(zip_bytes: &[u8], name: &str) -> String {
            let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("valid zip");
            let mut text = String::new();
            archive
                .by_name(name)
                .expect("entry")
                .read_to_string(&mut text)
                .expect("read entry");
            text
        }

        fn refusals(packed: &PackedProject) -> Vec<(&str, LinkRefusal)> {
            packed
                .left_out
                .iter()
                .map(|l| (l.path.as_str(), l.why))
                .collect()
        }

        #[test]
        fn links_into_the_project_are_packed_as_what_they_point_to() {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = dir.path();
            write(root, "calculator.py", "x = 1\n");
            write(root, "data/cases.txt", "1 2 3\n");
            std::fs::create_dir(root.join("tests")).expect("mkdir");
            symlink("../calculator.py", root.join("tests/relative.py")).expect("link");
            symlink(root.join("calculator.py"), root.join("absolute.py")).expect("link");
            symlink("data", root.join("fixtures")).expect("link");

            let packed = pack_project(root).expect("zip");
            assert_eq!(packed.left_out, vec![]);
            assert_eq!(
                entries(&packed.zip),
                names(&[
                    "absolute.py",
                    "calculator.py",
                    "data/cases.txt",
                    "fixtures/cases.txt",
                    "tests/relative.py"
                ])
            );
            assert_eq!(contents(&packed.zip, "tests/relative.py"), "x = 1\n");
            assert_eq!(contents(&packed.zip, "absolute.py"), "x = 1\n");
            assert_eq!(contents(&packed.zip, "fixtures/cases.txt"), "1 2 3\n");
        }

        #[test]
        fn links_out_of_the_project_are_left_out() {
            let base = tempfile::tempdir().expect("temp dir");
            write(base.path(), "home/.ssh/id_rsa", "PRIVATE KEY\n");
            let root = &base.path().join("project");
            write(root, "app.py", "x = 1\n");
            symlink(base.path().join("home/.ssh/id_rsa"), root.join("notes.txt")).expect("link");
            std::fs::create_dir(root.join("tests")).expect("mkdir");
            // A relative link that climbs out, and one through a link inside.
            symlink("../../home/.ssh/id_rsa", root.join("tests/data.txt")).expect("link");
            symlink("../notes.txt", root.join("tests/again.txt")).expect("link");
            symlink(base.path().join("home/.ssh"), root.join("keys")).expect("link");

            let packed = pack_project(root).expect("zip");
            assert_eq!(entries(&packed.zip), names(&["app.py"]));
            assert_eq!(
                refusals(&packed),
                vec![
                    ("keys", LinkRefusal::OutsideProject),
                    ("notes.txt", LinkRefusal::OutsideProject),
                    ("tests/again.txt", LinkRefusal::OutsideProject),
                    ("tests/data.txt", LinkRefusal::OutsideProject),
                ]
            );
            for left in &packed.left_out {
                let line = left.to_string();
                assert!(line.contains(&left.path), "{line}");
                assert!(!line.contains("PRIVATE"), "{line}");
            }
        }

        #[test]
        fn link_loops_end() {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = dir.path();
            write(root, "app.py", "x = 1\n");
            write(root, "pkg/mod.py", "y = 2\n");
            symlink("b", root.join("a")).expect("link");
            symlink("a", root.join("b")).expect("link");
            symlink(".", root.join("itself")).expect("link");
            symlink("..", root.join("pkg/up")).expect("link");
            symlink("missing.py", root.join("dangling.py")).expect("link");

            let packed = pack_project(root).expect("zip");
            assert_eq!(entries(&packed.zip), names(&["app.py", "pkg/mod.py"]));
            assert_eq!(
                refusals(&packed),
                vec![
                    ("a", LinkRefusal::Unresolvable),
                    ("b", LinkRefusal::Unresolvable),
                    ("dangling.py", LinkRefusal::Unresolvable),
                    ("itself", LinkRefusal::Loop),
                    ("pkg/up", LinkRefusal::Loop),
                ]
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn executable_bits_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");

        let bytes = pack_project(dir.path()).expect("zip").zip;
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
        let file = archive.by_name("run.sh").expect("entry");
        assert_eq!(file.unix_mode().map(|m| m & 0o777), Some(0o755));
    }
}
