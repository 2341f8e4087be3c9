//! What the controller knows about a project before its job starts: whether
//! it installs requirements (from the archive's directory, see
//! `workspace::ProjectArchive::facts`), and what its metadata files say
//! (which Python it needs).
//!
//! The files are the user's and may be anything: each is read only up to a
//! small size, and a file that does not parse is treated as saying nothing
//! (pip, not the controller, is the judge of a broken `pyproject.toml`).

use std::io::{Read, Seek};

/// The most of a metadata file that is read; real ones are a few KiB.
pub const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// The facts the controller acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFacts {
    /// The project has a `requirements.txt`, so the job runs `pip install`.
    pub has_requirements: bool,
    /// `requires-python` of `pyproject.toml`'s `[project]`, else
    /// `python_requires` of `setup.cfg`'s `[options]`.
    pub requires_python: Option<String>,
}

/// The project's `requires-python`, from the top-level metadata files of
/// its archive.
pub fn requires_python_in<R: Read + Seek>(archive: &mut zip::ZipArchive<R>) -> Option<String> {
    let pyproject = read_small_entry(archive, "pyproject.toml");
    let setup_cfg = read_small_entry(archive, "setup.cfg");
    requires_python(pyproject.as_deref(), setup_cfg.as_deref())
}

/// A top-level file of the archive as text, when it exists, is a regular
/// file, is UTF-8 and is at most [`MAX_METADATA_BYTES`] long.
pub fn read_small_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
) -> Option<String> {
    let entry = archive.by_name(name).ok()?;
    if entry.is_dir() {
        return None;
    }
    let mut text = String::new();
    // One byte past the limit tells a file that is too long from one that fits.
    let read = entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    (read as u64 <= MAX_METADATA_BYTES).then_some(text)
}

/// The project's Python requirement, from `pyproject.toml` first (PEP 621),
/// then `setup.cfg`. Blank values say nothing.
pub fn requires_python(pyproject: Option<&str>, setup_cfg: Option<&str>) -> Option<String> {
    let from_pyproject = pyproject
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| {
            table
                .get("project")?
                .get("requires-python")?
                .as_str()
                .map(str::to_string)
        });
    let from_setup_cfg = || {
        let ini = ini::Ini::load_from_str(setup_cfg?).ok()?;
        ini.get_from(Some("options"), "python_requires")
            .map(str::to_string)
    };
    from_pyproject
        .or_else(from_setup_cfg)
        .map(|spec| spec.trim().to_string())
        .filter(|spec| !spec.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn pyproject_wins_over_setup_cfg() {
        let pyproject = "[project]\nname = \"demo\"\nrequires-python = \">=3.12\"\n";
        let setup_cfg = "[options]\npython_requires = >=3.8\n";
        assert_eq!(
            requires_python(Some(pyproject), Some(setup_cfg)).as_deref(),
            Some(">=3.12")
        );
        assert_eq!(
            requires_python(None, Some(setup_cfg)).as_deref(),
            Some(">=3.8")
        );
        // A pyproject.toml without the key leaves setup.cfg to say it.
        assert_eq!(
            requires_python(Some("[build-system]\nrequires = []\n"), Some(setup_cfg)).as_deref(),
            Some(">=3.8")
        );
    }

    #[test]
    fn broken_or_blank_files_say_nothing() {
        for pyproject in [
            "[project\nrequires-python = '>=3.12'",
            "[project]\nrequires-python = 312\n",
            "[project]\nrequires-python = '  '\n",
            "",
        ] {
            assert_eq!(
                requires_python(Some(pyproject), None),
                None,
                "{pyproject:?}"
            );
        }
        assert_eq!(requires_python(None, Some("[options\n")), None);
        assert_eq!(requires_python(None, None), None);
    }

    fn archive(entries: &[(&str, &[u8])]) -> zip::ZipArchive<Cursor<Vec<u8>>> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("entry");
            w.write_all(data).expect("write");
        }
        let bytes = w.finish().expect("zip").into_inner();
        zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip")
    }

    #[test]
    fn requires_python_comes_from_the_archives_top_level_files() {
        let mut a = archive(&[
            (
                "sub/pyproject.toml",
                b"[project]\nrequires-python = '>=3.9'\n",
            ),
            ("setup.cfg", b"[options]\npython_requires = ~=3.13.0\n"),
        ]);
        assert_eq!(requires_python_in(&mut a).as_deref(), Some("~=3.13.0"));
        let mut b = archive(&[("requirements.txt", b"attrs\n"), ("sub/setup.cfg", b"")]);
        assert_eq!(requires_python_in(&mut b), None);
    }

    #[test]
    fn oversized_or_binary_metadata_is_not_read() {
        let big = format!(
            "[project]\nrequires-python = '>=3.12'\n#{}\n",
            "x".repeat(MAX_METADATA_BYTES as usize)
        );
        let mut a = archive(&[
            ("pyproject.toml", big.as_bytes()),
            ("setup.cfg", &[0xff, 0xfe, 0x00]),
        ]);
        assert_eq!(read_small_entry(&mut a, "pyproject.toml"), None);
        assert_eq!(read_small_entry(&mut a, "setup.cfg"), None);
        assert_eq!(read_small_entry(&mut a, "missing.toml"), None);
    }
}
