//! Which database a process opens.

use std::path::PathBuf;

/// Which database to open, once the flags and environment are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    SqliteFile(PathBuf),
    Url(String),
}

impl DatabaseLocation {
    /// Names the database for an error message or a log line without
    /// echoing a URL, which may carry a password (`postgres://ci:secret@…`).
    pub fn describe(&self) -> String {
        match self {
            DatabaseLocation::SqliteFile(path) => format!("at {}", path.display()),
            DatabaseLocation::Url(_) => "named by --database-url / CI_DATABASE_URL".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_url_keeps_its_password_to_itself() {
        let url = DatabaseLocation::Url("postgres://ci:s3cret@db.example:5432/ci".into());
        assert!(!url.describe().contains("s3cret"), "{}", url.describe());
        let file = DatabaseLocation::SqliteFile("/var/lib/ci/jobs.db".into());
        assert_eq!(file.describe(), "at /var/lib/ci/jobs.db");
    }
}
