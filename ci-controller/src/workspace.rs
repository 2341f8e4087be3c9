//! Turning an uploaded project zip into the tar that is streamed into a job's
//! container at `/workspace`.
//!
//! The zip comes from a user and is treated as hostile: every entry must stay
//! inside the workspace (no `..`, no absolute paths, no links, no devices), and
//! the unpacked size and entry count are bounded by reading, not by trusting
//! the sizes the zip claims, so a zip bomb is stopped at the limit.
//!
//! Neither the unpacked project nor the tar is ever whole in memory: the
//! zip's central directory is checked first (names, kinds, the entry count and
//! the sizes it declares), so that a refused archive writes nothing, and the
//! tar is then written entry by entry, a buffer at a time, into whatever
//! consumes it (the container's standard input, through [`stream_tar`]). An
//! entry that holds more data than its header declares is cut off there and
//! ends the unpacking: the tar header's size must be known before its data.

use std::io::{Cursor, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use crate::project_facts::ProjectFacts;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

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
    #[error("the project archive's entry {0:?} holds more data than its header declares")]
    SizeMismatch(String),
    #[error("the project could not be written into the container: {0}")]
    Output(String),
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

/// One entry of the zip's directory, checked and ready to become a tar entry.
#[derive(Debug)]
struct PlannedEntry {
    name: String,
    path: PathBuf,
    is_dir: bool,
    executable: bool,
    mtime: u64,
    /// The uncompressed size the directory declares; the tar entry's size.
    size: u64,
}

/// A project zip whose central directory has been checked: every entry is a
/// plain file or folder strictly inside the workspace, there are not too many,
/// and the sizes they declare fit the limit. Nothing has been decompressed yet.
pub struct ProjectArchive<R> {
    zip: zip::ZipArchive<R>,
    entries: Vec<PlannedEntry>,
    limits: UnpackLimits,
}

impl<R: Read + Seek> ProjectArchive<R> {
    /// Reads and checks the zip's central directory (random access: the
    /// archive is a file or bytes, never a stream).
    pub fn open(reader: R, limits: UnpackLimits) -> Result<Self, WorkspaceError> {
        let mut zip =
            zip::ZipArchive::new(reader).map_err(|e| WorkspaceError::Corrupt(e.to_string()))?;
        if zip.is_empty() {
            return Err(WorkspaceError::Empty);
        }
        if zip.len() > limits.max_entries {
            return Err(WorkspaceError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let mut entries = Vec::with_capacity(zip.len());
        let mut declared: u64 = 0;
        for index in 0..zip.len() {
            let entry = zip
                .by_index_raw(index)
                .map_err(|e| WorkspaceError::Corrupt(e.to_string()))?;
            let name = entry.name().to_string();
            let path = safe_relative_path(&name)
                .ok_or_else(|| WorkspaceError::UnsafePath(name.clone()))?;
            let mode = entry.unix_mode().unwrap_or(0);
            let kind = mode & S_IFMT;
            if kind == S_IFLNK {
                return Err(WorkspaceError::Link(name));
            }
            if kind != 0 && kind != S_IFREG && kind != S_IFDIR {
                return Err(WorkspaceError::SpecialFile(name));
            }
            let is_dir = entry.is_dir() || kind == S_IFDIR;
            let size = if is_dir { 0 } else { entry.size() };
            declared = declared.saturating_add(size);
            entries.push(PlannedEntry {
                path,
                is_dir,
                executable: mode & 0o111 != 0,
                mtime: entry_mtime(entry.last_modified()),
                size,
                name,
            });
        }
        if entries.iter().all(|e| e.is_dir) {
            return Err(WorkspaceError::Empty);
        }
        // Honest archives over the limit are refused before a byte is
        // written; lying ones are cut off at their declared sizes.
        if declared > limits.max_total_bytes {
            return Err(WorkspaceError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        Ok(ProjectArchive {
            zip,
            entries,
            limits,
        })
    }

    /// Whether the workspace will have a regular file at `path`, as the job
    /// script's `[ -f path ]` would see it: answered from the directory.
    pub fn has_file(&self, path: &str) -> bool {
        self.entries
            .iter()
            .any(|e| !e.is_dir && e.path == Path::new(path))
    }

    /// What the controller needs to know of the project before its job
    /// starts: from the directory and the project's small metadata files.
    pub fn facts(&mut self) -> ProjectFacts {
        ProjectFacts {
            has_requirements: self.has_file(crate::environment::REQUIREMENTS_FILE),
            requires_python: crate::project_facts::requires_python_in(&mut self.zip),
        }
    }

    /// The plan of the project's dependency environment, from its
    /// requirements files (and its local entries' `pyproject.toml`), each
    /// read only up to the metadata size limit; `None` without a
    /// `requirements.txt`.
    pub fn environment_plan(
        &mut self,
    ) -> Result<Option<crate::environment::EnvironmentPlan>, crate::environment::EnvironmentError>
    {
        let zip = std::cell::RefCell::new(&mut self.zip);
        let entries = &self.entries;
        let read = |path: &str| {
            // Only regular files of the workspace, by their checked path.
            let entry = entries
                .iter()
                .find(|e| !e.is_dir && e.path == Path::new(path))?;
            crate::project_facts::read_small_entry(&mut zip.borrow_mut(), &entry.name)
        };
        crate::environment::EnvironmentPlan::for_project(&read)
    }

    /// Writes the workspace as an uncompressed tar of the project's files,
    /// owned by the job's user, into `out`, a buffer at a time; returns `out`.
    pub fn write_tar<W: Write>(mut self, out: W) -> Result<W, WorkspaceError> {
        let mut tar = tar::Builder::new(out);
        let mut total: u64 = 0;
        for (index, planned) in self.entries.iter().enumerate() {
            let mut header = tar::Header::new_gnu();
            header.set_uid(WORKSPACE_UID);
            header.set_gid(WORKSPACE_UID);
            header.set_mtime(planned.mtime);
            if planned.is_dir {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, &planned.path, std::io::empty())
                    .map_err(output_error)?;
                continue;
            }
            let entry = self
                .zip
                .by_index(index)
                .map_err(|e| WorkspaceError::Corrupt(format!("{}: {e}", planned.name)))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if planned.executable { 0o755 } else { 0o644 });
            header.set_size(planned.size);
            let mut data = CheckedEntry {
                inner: entry,
                name: &planned.name,
                left: planned.size,
                total: &mut total,
                limits: self.limits,
                error: None,
            };
            let written = tar.append_data(&mut header, &planned.path, &mut data);
            if let Some(e) = data.error.take() {
                return Err(e);
            }
            written.map_err(output_error)?;
        }
        tar.into_inner().map_err(output_error)
    }
}

fn output_error(e: std::io::Error) -> WorkspaceError {
    WorkspaceError::Output(e.to_string())
}

/// An entry's data as it is decompressed, checked on the way: never more than
/// the header declared (then one byte more is looked for, to catch a liar),
/// never past the unpack limit, and a decompression failure is remembered as
/// the archive's fault rather than the output's.
struct CheckedEntry<'a, R: Read> {
    inner: R,
    name: &'a str,
    left: u64,
    total: &'a mut u64,
    limits: UnpackLimits,
    error: Option<WorkspaceError>,
}

impl<R: Read> CheckedEntry<'_, R> {
    fn fail(&mut self, e: WorkspaceError) -> std::io::Error {
        let io = std::io::Error::other(e.to_string());
        self.error = Some(e);
        io
    }
}

impl<R: Read> Read for CheckedEntry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // The declared size is written; anything more is a lie.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) => Err(self.fail(WorkspaceError::SizeMismatch(self.name.to_string()))),
                Err(e) => Err(self.fail(WorkspaceError::Corrupt(format!("{}: {e}", self.name)))),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(self.fail(WorkspaceError::Corrupt(format!(
                    "{}: the entry is shorter than its header declares",
                    self.name
                ))))
            }
            Ok(n) => n,
            Err(e) => return Err(self.fail(WorkspaceError::Corrupt(format!("{}: {e}", self.name)))),
        };
        self.left -= n as u64;
        *self.total += n as u64;
        if *self.total > self.limits.max_total_bytes {
            return Err(self.fail(WorkspaceError::TooLarge {
                limit: self.limits.max_total_bytes,
            }));
        }
        Ok(n)
    }
}

/// Unpacks a project zip held in memory into a tar held in memory. For tests
/// and the fuzz target; jobs stream theirs with [`stream_tar`].
pub fn zip_to_tar(zip_bytes: &[u8], limits: UnpackLimits) -> Result<Vec<u8>, WorkspaceError> {
    ProjectArchive::open(Cursor::new(zip_bytes), limits)?.write_tar(Vec::new())
}

/// Bytes sent to the consumer at a time.
const PIPE_CHUNK: usize = 64 * 1024;
/// Chunks in flight between the unpacking thread and the consumer: what the
/// workspace costs in memory, whatever the project's size.
const PIPE_CHUNKS: usize = 4;

/// The tar as it is written, in bounded chunks; the last item is an error
/// when the unpacking failed, so the consumer never mistakes a cut-off tar for
/// a whole one.
pub type TarStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Writes the workspace tar on a blocking thread into a bounded channel, and
/// returns the stream of its chunks together with the thread's outcome (the
/// reason shown to the user when the unpacking fails). The thread waits
/// whenever the consumer is behind, so memory stays at a few chunks.
pub fn stream_tar<R: Read + Seek + Send + 'static>(
    archive: ProjectArchive<R>,
) -> (
    TarStream,
    tokio::task::JoinHandle<Result<(), WorkspaceError>>,
) {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || {
        let pipe = ChannelWriter {
            tx: tx.clone(),
            buf: BytesMut::with_capacity(PIPE_CHUNK),
        };
        let result = archive.write_tar(pipe).and_then(|mut pipe| {
            pipe.flush().map_err(output_error)?;
            Ok(())
        });
        if let Err(e) = &result {
            // The consumer may be gone already; then nobody needs telling.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        result
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
    .boxed();
    (stream, writer)
}

/// A `Write` into the channel of [`stream_tar`], in chunks of [`PIPE_CHUNK`].
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(PIPE_CHUNK);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the container stopped reading its input",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Sets the uncompressed size the central directory declares for each
    /// entry (`None` leaves it), as a lying archive would.
    pub(super) fn patch_declared_sizes(mut zip: Vec<u8>, sizes: &[Option<u32>]) -> Vec<u8> {
        let end = zip
            .windows(4)
            .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
            .expect("an end record");
        let mut at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap()) as usize;
        for size in sizes {
            let field = |o: usize| u16::from_le_bytes([zip[at + o], zip[at + o + 1]]) as usize;
            let len = 46 + field(28) + field(30) + field(32);
            if let Some(size) = size {
                zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
            }
            at += len;
        }
        zip
    }

    /// Whether a tar has a regular file at `path`.
    pub(crate) fn tar_has_file(tar_bytes: &[u8], path: &str) -> bool {
        let mut archive = tar::Archive::new(tar_bytes);
        archive.entries().unwrap().any(|entry| {
            let entry = entry.unwrap();
            entry.header().entry_type() == tar::EntryType::Regular
                && entry.path().unwrap() == Path::new(path)
        })
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
mod streaming {
    use super::tests::patch_declared_sizes;
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn requirements_are_found_in_the_directory() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_directory("docs/requirements.txt/", SimpleFileOptions::default())
            .unwrap();
        w.start_file("./requirements.txt", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"pytest\n").unwrap();
        w.start_file("sub/setup.py", SimpleFileOptions::default())
            .unwrap();
        let zip = w.finish().unwrap().into_inner();
        let archive = ProjectArchive::open(Cursor::new(&zip), UnpackLimits::default()).unwrap();
        assert!(archive.has_file("requirements.txt"));
        assert!(archive.has_file("sub/setup.py"));
        assert!(
            !archive.has_file("docs/requirements.txt"),
            "a folder is not a file"
        );
        assert!(!archive.has_file("setup.py"));
        let without = zip_of(&[("tests/requirements.txt", b"x")]);
        let archive = ProjectArchive::open(Cursor::new(&without), UnpackLimits::default()).unwrap();
        assert!(!archive.has_file("requirements.txt"));
    }

    #[test]
    fn an_entry_larger_than_its_header_says_is_cut_off() {
        let big = vec![0u8; 4 * 1024 * 1024];
        let zip = zip_of(&[("small.txt", b"hello"), ("bomb.bin", &big)]);
        // The directory claims 10 bytes for the 4 MiB entry: it fits any
        // limit on paper, and is stopped after those 10 bytes.
        let zip = patch_declared_sizes(zip, &[None, Some(10)]);
        let limits = UnpackLimits {
            max_total_bytes: 1024,
            max_entries: 10,
        };
        assert_eq!(
            zip_to_tar(&zip, limits),
            Err(WorkspaceError::SizeMismatch("bomb.bin".into()))
        );
    }

    #[test]
    fn an_entry_shorter_than_its_header_says_is_refused() {
        let zip = patch_declared_sizes(zip_of(&[("a.txt", b"short")]), &[Some(100)]);
        assert!(matches!(
            zip_to_tar(&zip, UnpackLimits::default()),
            Err(WorkspaceError::Corrupt(_))
        ));
    }

    async fn collect(mut stream: TarStream) -> (Vec<u8>, Option<std::io::Error>) {
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(e) => return (bytes, Some(e)),
            }
        }
        (bytes, None)
    }

    #[tokio::test]
    async fn the_streamed_tar_is_the_whole_tar_in_bounded_chunks() {
        let data: Vec<u8> = (0..3 * PIPE_CHUNK + 17).map(|i| (i % 253) as u8).collect();
        let zip = zip_of(&[
            ("a.bin", &data),
            ("tests/test_a.py", b"def test_a(): pass\n"),
        ]);
        let whole = zip_to_tar(&zip, UnpackLimits::default()).unwrap();
        let archive = ProjectArchive::open(Cursor::new(zip), UnpackLimits::default()).unwrap();
        let (mut stream, writer) = stream_tar(archive);
        let mut streamed = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(
                chunk.len() <= PIPE_CHUNK,
                "a chunk of {} bytes",
                chunk.len()
            );
            streamed.extend_from_slice(&chunk);
        }
        writer.await.unwrap().unwrap();
        assert!(streamed == whole, "the streamed tar differs");
    }

    #[tokio::test]
    async fn a_failed_unpacking_ends_the_stream_with_an_error() {
        let big = vec![0u8; 2 * 1024 * 1024];
        let zip = patch_declared_sizes(zip_of(&[("bomb.bin", &big)]), &[Some(PIPE_CHUNK as u32)]);
        let archive = ProjectArchive::open(Cursor::new(zip), UnpackLimits::default()).unwrap();
        let (stream, writer) = stream_tar(archive);
        let (bytes, error) = collect(stream).await;
        assert!(error.is_some(), "a cut-off tar must not look whole");
        assert!(
            bytes.len() <= PIPE_CHUNK + 1024,
            "{} bytes went out",
            bytes.len()
        );
        assert_eq!(
            writer.await.unwrap(),
            Err(WorkspaceError::SizeMismatch("bomb.bin".into()))
        );
    }

    #[tokio::test]
    async fn a_consumer_that_stops_reading_stops_the_unpacking() {
        let big = vec![0u8; 16 * 1024 * 1024];
        let zip = zip_of(&[("big.bin", &big)]);
        let archive = ProjectArchive::open(Cursor::new(zip), UnpackLimits::default()).unwrap();
        let (mut stream, writer) = stream_tar(archive);
        stream.next().await.unwrap().unwrap();
        drop(stream);
        assert!(matches!(
            writer.await.unwrap(),
            Err(WorkspaceError::Output(_))
        ));
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
            1 => Just("requirements.txt".to_string()),
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

    /// Sizes the directory may claim instead of the real ones.
    fn lies() -> impl Strategy<Value = Vec<Option<u32>>> {
        prop::collection::vec(
            prop_oneof![6 => Just(None), 1 => (0u32..80).prop_map(Some)],
            8,
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
        fn unpacked_workspaces_stay_inside(entries in archive(), lies in lies()) {
            let Some(zip) = build(&entries) else { return Ok(()) };
            let zip = super::tests::patch_declared_sizes(zip, &lies[..entries.len()]);
            let limits = UnpackLimits { max_total_bytes: 256, max_entries: 6 };
            let planned = ProjectArchive::open(Cursor::new(&zip), limits)
                .map(|a| a.has_file("requirements.txt") );
            match zip_to_tar(&zip, limits) {
                Ok(tar_bytes) => {
                    // What the directory promised is what the tar holds.
                    prop_assert_eq!(
                        planned,
                        Ok(super::tests::tar_has_file(&tar_bytes, "requirements.txt"))
                    );
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
