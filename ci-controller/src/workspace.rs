//! Turning an uploaded project zip into the tar that is copied into a job's
//! container at `/workspace`.
//!
//! The zip comes from a user and is treated as hostile: every entry must stay
//! inside the workspace (no `..`, no absolute paths, no links, no devices), and
//! the unpacked size and entry count are bounded by reading, not by trusting
//! the sizes the zip claims, so a zip bomb is stopped at the limit.

use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

/// Bounds on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_total_bytes: u64,
    pub max_entries: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// Why an archive cannot become a workspace. The messages are shown to the
/// user as the job's last output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkspaceError {
    #[error("the project archive is not a readable zip file: {0}")]
    Corrupt(String),
    #[error("the project archive is empty")]
    Empty,
    #[error("the project archive has an entry that would land outside the workspace: {0:?}")]
    UnsafePath(String),
    #[error("the project archive has a link, which is not allowed: {0:?}")]
    Link(String),
    #[error("the project archive has a special file (device, fifo or socket), which is not allowed: {0:?}")]
    SpecialFile(String),
    #[error("the project archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the project archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
}

/// The owner of every file in the workspace: the runner image's unprivileged user.
pub const WORKSPACE_UID: u64 = 1000;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// 1980-01-01T00:00:00Z, the earliest time a zip entry can hold.
pub const ZIP_EPOCH: u64 = 315_532_800;

/// An entry's modification time as Unix seconds, for the workspace file. Read
/// as UTC (as `ci` writes it), and never before 1980: a project that builds a
/// wheel of itself (`pip install .`) zips its files, and zip refuses older
/// times. An entry without a valid time gets 1980-01-01.
fn entry_mtime(time: Option<zip::DateTime>) -> u64 {
    let seconds = time.and_then(|t| {
        chrono::NaiveDate::from_ymd_opt(t.year().into(), t.month().into(), t.day().into())?
            .and_hms_opt(t.hour().into(), t.minute().into(), t.second().into())
            .map(|at| at.and_utc().timestamp())
    });
    seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(ZIP_EPOCH)
        .max(ZIP_EPOCH)
}

/// A path inside the workspace, or `None` when the name could escape it.
fn safe_relative_path(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks a project zip into an uncompressed tar of its files, owned by the
/// job's user, ready for the Docker API's archive upload.
pub fn zip_to_tar(zip_bytes: &[u8], limits: UnpackLimits) -> Result<Vec<u8>, WorkspaceError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes))
        .map_err(|e| WorkspaceError::Corrupt(e.to_string()))?;
    if archive.is_empty() {
        return Err(WorkspaceError::Empty);
    }
    if archive.len() > limits.max_entries {
        return Err(WorkspaceError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut total: u64 = 0;
    let mut files = 0usize;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| WorkspaceError::Corrupt(e.to_string()))?;
        let name = entry.name().to_string();
        let path =
            safe_relative_path(&name).ok_or_else(|| WorkspaceError::UnsafePath(name.clone()))?;
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = mode & S_IFMT;
        let is_dir = entry.is_dir() || kind == S_IFDIR;
        if kind == S_IFLNK {
            return Err(WorkspaceError::Link(name));
        }
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR {
            return Err(WorkspaceError::SpecialFile(name));
        }

        let mut header = tar::Header::new_gnu();
        header.set_uid(WORKSPACE_UID);
        header.set_gid(WORKSPACE_UID);
        header.set_mtime(entry_mtime(entry.last_modified()));
        if is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &path, std::io::empty())
                .map_err(|e| WorkspaceError::Corrupt(e.to_string()))?;
            continue;
        }

        // Read at most one byte past what is left, so a lying header cannot
        // make us unpack more than the limit.
        let remaining = limits.max_total_bytes - total;
        let mut data = Vec::new();
        (&mut entry)
            .take(remaining + 1)
            .read_to_end(&mut data)
            .map_err(|e| WorkspaceError::Corrupt(format!("{name}: {e}")))?;
        if data.len() as u64 > remaining {
            return Err(WorkspaceError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        total += data.len() as u64;
        files += 1;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, &path, data.as_slice())
            .map_err(|e| WorkspaceError::Corrupt(format!("{name}: {e}")))?;
    }
    if files == 0 {
        return Err(WorkspaceError::Empty);
    }
    tar.into_inner()
        .map_err(|e| WorkspaceError::Corrupt(e.to_string()))
}

/// Whether a workspace tar (from [`zip_to_tar`]) has a file at `path`, as the
/// job script's `[ -f path ]` in the workspace would see it.
pub fn tar_has_file(tar_bytes: &[u8], path: &str) -> bool {
    let mut archive = tar::Archive::new(tar_bytes);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        entry.header().entry_type() == tar::EntryType::Regular
            && entry.path().is_ok_and(|p| p == Path::new(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8], Option<u32>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            let mut opts = SimpleFileOptions::default();
            if let Some(m) = mode {
                opts = opts.unix_permissions(*m);
            }
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Sets the Unix mode (file type included) of every entry in a zip's
    /// central directory, which the zip writer would mask to permissions only.
    pub(super) fn patch_modes(mut zip: Vec<u8>, modes: &[Option<u32>]) -> Vec<u8> {
        let sig = [0x50, 0x4b, 0x01, 0x02];
        // The end record (last in the file: no comment) says where the directory starts.
        let end = zip
            .windows(4)
            .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
            .expect("an end record");
        let mut at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap()) as usize;
        for mode in modes {
            assert_eq!(zip[at..at + 4], sig);
            let field = |o: usize| u16::from_le_bytes([zip[at + o], zip[at + o + 1]]) as usize;
            let len = 46 + field(28) + field(30) + field(32);
            if let Some(mode) = mode {
                // "Made by" Unix, so readers honour the mode.
                zip[at + 5] = 3;
                zip[at + 38..at + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            }
            at += len;
        }
        zip
    }

    fn tar_entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>, u64, u32)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().to_string();
                let uid = e.header().uid().unwrap();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, data, uid, mode)
            })
            .collect()
    }

    #[test]
    fn files_become_tar_entries_owned_by_the_job_user() {
        let zip = zip_of(&[
            ("tests/test_a.py", b"def test_a(): pass\n", None),
            ("run.sh", b"#!/bin/sh\n", Some(0o755)),
        ]);
        let tar = zip_to_tar(&zip, UnpackLimits::default()).unwrap();
        let entries = tar_entries(&tar);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "tests/test_a.py");
        assert_eq!(entries[0].1, b"def test_a(): pass\n");
        assert_eq!(entries[0].2, WORKSPACE_UID);
        assert_eq!(entries[0].3, 0o644);
        assert_eq!(entries[1].3, 0o755);
    }

    #[test]
    fn files_keep_their_modification_time_from_the_upload() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let at = zip::DateTime::from_date_and_time(2024, 5, 17, 13, 45, 30).unwrap();
        w.start_file(
            "setup.py",
            SimpleFileOptions::default().last_modified_time(at),
        )
        .unwrap();
        w.write_all(b"from setuptools import setup\n").unwrap();
        w.add_directory("src/", SimpleFileOptions::default().last_modified_time(at))
            .unwrap();
        let tar = zip_to_tar(&w.finish().unwrap().into_inner(), UnpackLimits::default()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let times: Vec<u64> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().mtime().unwrap())
            .collect();
        // 2024-05-17T13:45:30Z
        assert_eq!(times, vec![1_715_953_530, 1_715_953_530]);
    }

    #[test]
    fn times_before_1980_or_invalid_become_1980() {
        assert_eq!(entry_mtime(None), ZIP_EPOCH);
        assert_eq!(entry_mtime(Some(zip::DateTime::default())), ZIP_EPOCH);
        // The last second a zip can hold is kept as it is.
        let last = zip::DateTime::from_date_and_time(2107, 12, 31, 23, 59, 58).unwrap();
        assert_eq!(entry_mtime(Some(last)), 4_354_819_198);
    }

    #[test]
    fn escaping_paths_are_refused() {
        for name in [
            "../evil.py",
            "a/../../evil.py",
            "/etc/passwd",
            "..",
            "a\\..\\b",
        ] {
            let zip = zip_of(&[(name, b"x", None)]);
            assert_eq!(
                zip_to_tar(&zip, UnpackLimits::default()),
                Err(WorkspaceError::UnsafePath(name.to_string())),
                "{name}"
            );
        }
    }

    #[test]
    fn links_are_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        let zip = w.finish().unwrap().into_inner();
        assert_eq!(
            zip_to_tar(&zip, UnpackLimits::default()),
            Err(WorkspaceError::Link("link".into()))
        );
    }

    #[test]
    fn device_files_are_refused() {
        // A character device, as `zip` on Unix records one.
        let zip = patch_modes(zip_of(&[("dev/null", b"", None)]), &[Some(0o020_666)]);
        assert_eq!(
            zip_to_tar(&zip, UnpackLimits::default()),
            Err(WorkspaceError::SpecialFile("dev/null".into()))
        );
    }

    #[test]
    fn corrupt_and_empty_archives_are_refused() {
        assert!(matches!(
            zip_to_tar(b"not a zip", UnpackLimits::default()),
            Err(WorkspaceError::Corrupt(_))
        ));
        let empty = zip::ZipWriter::new(Cursor::new(Vec::new()))
            .finish()
            .unwrap()
            .into_inner();
        assert_eq!(
            zip_to_tar(&empty, UnpackLimits::default()),
            Err(WorkspaceError::Empty)
        );
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let big = vec![0u8; 10 * 1024 * 1024];
        let zip = zip_of(&[("a.bin", &big, None), ("b.bin", &big, None)]);
        assert!(zip.len() < 100 * 1024, "deflate compresses zeros well");
        let limits = UnpackLimits {
            max_total_bytes: 15 * 1024 * 1024,
            max_entries: 10,
        };
        assert_eq!(
            zip_to_tar(&zip, limits),
            Err(WorkspaceError::TooLarge {
                limit: limits.max_total_bytes
            })
        );
        let limits = UnpackLimits {
            max_total_bytes: 1 << 30,
            max_entries: 1,
        };
        assert_eq!(
            zip_to_tar(&zip, limits),
            Err(WorkspaceError::TooManyEntries { limit: 1 })
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// Path segments, including the hostile ones.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z_]{1,8}(\\.py)?",
            1 => Just("..".to_string()),
            1 => Just(".".to_string()),
            1 => Just("".to_string()),
        ]
    }

    fn entry_name() -> impl Strategy<Value = String> {
        (any::<bool>(), prop::collection::vec(segment(), 1..5)).prop_map(|(absolute, parts)| {
            format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
        })
    }

    fn mode() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(0o100_755)),
            1 => Just(Some(0o120_777)),
            1 => Just(Some(0o020_644)),
            1 => Just(Some(0o060_644)),
            1 => Just(Some(0o010_644)),
        ]
    }

    fn archive() -> impl Strategy<Value = Vec<(String, Vec<u8>, Option<u32>)>> {
        prop::collection::vec(
            (
                entry_name(),
                prop::collection::vec(any::<u8>(), 0..64),
                mode(),
            ),
            0..8,
        )
    }

    fn build(entries: &[(String, Vec<u8>, Option<u32>)]) -> Option<Vec<u8>> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            let mut opts = SimpleFileOptions::default();
            if let Some(m) = mode {
                opts = opts.unix_permissions(*m & 0o777);
            }
            // The zip writer itself refuses some names (duplicates); such an
            // archive cannot be uploaded by a client either.
            w.start_file(name.as_str(), opts).ok()?;
            w.write_all(data).ok()?;
        }
        let modes: Vec<Option<u32>> = entries.iter().map(|(_, _, m)| *m).collect();
        Some(super::tests::patch_modes(
            w.finish().ok()?.into_inner(),
            &modes,
        ))
    }

    proptest! {
        /// Whatever the archive holds, what comes out is a tar of plain files
        /// and folders strictly inside the workspace, owned by the job's user,
        /// within the limits; anything else is refused with a reason.
        #[test]
        fn unpacked_workspaces_stay_inside(entries in archive()) {
            let Some(zip) = build(&entries) else { return Ok(()) };
            let limits = UnpackLimits { max_total_bytes: 256, max_entries: 6 };
            match zip_to_tar(&zip, limits) {
                Ok(tar_bytes) => {
                    let mut total = 0u64;
                    let mut archive = tar::Archive::new(tar_bytes.as_slice());
                    for e in archive.entries().unwrap() {
                        let e = e.unwrap();
                        let path = e.path().unwrap().into_owned();
                        prop_assert!(path.is_relative(), "{path:?}");
                        prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))), "{path:?}");
                        let kind = e.header().entry_type();
                        prop_assert!(kind.is_file() || kind.is_dir(), "{kind:?}");
                        prop_assert_eq!(e.header().uid().unwrap(), WORKSPACE_UID);
                        total += e.header().size().unwrap();
                    }
                    prop_assert!(total <= limits.max_total_bytes);
                    for (_, _, mode) in &entries {
                        let kind = mode.unwrap_or(0) & S_IFMT;
                        prop_assert!(kind == 0 || kind == S_IFREG, "a {kind:o} entry was accepted");
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        /// Arbitrary bytes never panic the unpacker.
        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = zip_to_tar(&bytes, UnpackLimits::default());
        }
    }
}
