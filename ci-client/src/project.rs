//! Packing the project directory into the zip archive the server runs.

use std::io::{Cursor, Write};
use std::path::{Component, Path};

use ignore::WalkBuilder;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::ProjectZipError;

/// Bytecode caches are never part of a project; Python rebuilds them.
const PYCACHE_DIR: &str = "__pycache__";

/// Zips every file under `dir` for upload, leaving out dot-files and
/// dot-folders, `__pycache__` folders and whatever the project's `.gitignore`
/// files ignore (also without a `.git` folder). Entries are the paths relative
/// to `dir` with `/` separators, deflated, sorted so that the same project
/// gives the same archive. Only the project's own `.gitignore` files count:
/// not the user's global excludes, nor `.gitignore` files above `dir`, so the
/// archive does not depend on the machine it is made on.
pub fn project_zip(dir: &Path) -> Result<Vec<u8>, ProjectZipError> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let base_options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);

    let walker = WalkBuilder::new(dir)
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
        // Symlinks are taken for what they point to when that is a file;
        // links to folders are not followed, so a link loop cannot hang us.
        let is_file = match entry.file_type() {
            Some(t) if t.is_file() => true,
            Some(t) if t.is_symlink() => path.is_file(),
            _ => false,
        };
        if !is_file {
            continue;
        }
        let relative = path.strip_prefix(dir).unwrap_or(path);
        let name = archive_name(relative)?;
        let mut options = base_options;
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
        zip.start_file(name, options)?;
        zip.write_all(&contents)
            .map_err(|e| ProjectZipError::Zip(e.into()))?;
    }
    Ok(zip.finish()?.into_inner())
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

        let bytes = project_zip(dir.path()).expect("zip");
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

        let bytes = project_zip(dir.path()).expect("zip");
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

        let bytes = project_zip(dir.path()).expect("zip");
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

        let bytes = project_zip(dir.path()).expect("zip");
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

        let bytes = project_zip(&project).expect("zip");
        assert_eq!(entries(&bytes), names(&["app.py"]));
    }

    #[test]
    fn an_empty_project_gives_a_valid_empty_zip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = project_zip(dir.path()).expect("zip");
        assert!(entries(&bytes).is_empty());
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

        let bytes = project_zip(dir.path()).expect("zip");
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

        let bytes = project_zip(dir.path()).expect("zip");
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
        let file = archive.by_name("run.sh").expect("entry");
        assert_eq!(file.unix_mode().map(|m| m & 0o777), Some(0o755));
    }
}
