//! The Python projects the tests submit (`fixtures/` at the workspace root),
//! copied into folders of their own, and checks on the lines they print.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tempfile::TempDir;

/// The fixture projects' folder, `fixtures/` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("fixtures"))
        .unwrap_or_else(|| PathBuf::from("fixtures"))
}

/// A fixture copied into a temporary folder of its own, removed on drop, so
/// a test can add files to it and `ci` packs nothing from elsewhere.
#[derive(Debug)]
pub struct Project {
    dir: TempDir,
}

impl Project {
    /// The project's root, where `ci submit test` runs.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative`, creating folders as needed.
    pub fn write(&self, relative: &str, contents: &str) {
        self.write_bytes(relative, contents.as_bytes());
    }

    /// [`Project::write`] for contents that need not be text.
    pub fn write_bytes(&self, relative: &str, contents: &[u8]) {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// An empty project in a fresh temporary folder, for a test that writes
/// each file itself. Its name does not start with a dot, as
/// [`copy_fixture`]'s does not.
pub fn empty_project() -> Project {
    project_folder("ci-project-")
}

/// A fresh temporary folder named `<prefix><random>`.
fn project_folder(prefix: &str) -> Project {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
    Project { dir }
}

/// Copies `fixtures/<name>` into a fresh temporary folder. The folder's name
/// does not start with a dot, so no client could mistake the whole project
/// for a hidden folder.
pub fn copy_fixture(name: &str) -> Project {
    let source = fixtures_dir().join(name);
    if !source.is_dir() {
        panic!("no fixture {name:?} at {}", source.display());
    }
    let project = project_folder(&format!("ci-fixture-{name}-"));
    copy_tree(&source, project.path())
        .unwrap_or_else(|e| panic!("cannot copy fixture {name:?}: {e:#}"));
    project
}

/// The `slow` fixture, set to run for `seconds` (it prints `tick NNN of MMM`
/// once a second, then `SLOW-END`).
/// `len` bytes that deflate cannot shrink (xorshift64 from `seed`), for
/// uploads that must really be as big as they look.
pub fn incompressible_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

pub fn slow_project(seconds: u32) -> Project {
    let project = copy_fixture("slow");
    project.write("slow_seconds.txt", &format!("{seconds}\n"));
    project
}

/// The `tick` lines the slow fixture prints when set to `seconds`.
pub fn slow_ticks(seconds: u32) -> Vec<String> {
    (1..=seconds)
        .map(|i| format!("tick {i:03} of {seconds:03}"))
        .collect()
}

/// The lines of `text` that start with `prefix`.
pub fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Fails the test unless `actual` is `expected`, line by line, naming the
/// first difference instead of printing both (they can be 100 000 lines).
pub fn assert_same_lines<A: AsRef<str>, E: AsRef<str>>(what: &str, actual: &[A], expected: &[E]) {
    let first_difference = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a.as_ref() != e.as_ref());
    if let Some(i) = first_difference {
        let around = |lines: &[A]| -> Vec<String> {
            lines[i.saturating_sub(2)..(i + 3).min(lines.len())]
                .iter()
                .map(|l| l.as_ref().to_string())
                .collect()
        };
        panic!(
            "{what}: line {i} is {:?}, expected {:?} (around it: {:?})",
            actual[i].as_ref(),
            expected[i].as_ref(),
            around(actual)
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} lines, expected {} (the common part is equal)",
        actual.len(),
        expected.len()
    );
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}
