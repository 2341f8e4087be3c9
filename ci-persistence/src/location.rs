//! Which database a process opens.

use std::path::PathBuf;

/// Which database to open, once the flags and environment are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    SqliteFile(PathBuf),
    Url(String),
}
