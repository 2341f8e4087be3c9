//! What the service binaries (`ci-server`, `ci-controller`, `ci-admin`)
//! share before they start: the database flags, where the embedded database
//! lives by default, how durations and sizes are written, and the logging set-up.
//! Kept out of `ci-common`, the domain, which knows nothing of command lines
//! or log output.

mod duration;
mod quantity;
mod size;

use std::path::PathBuf;

use ci_persistence::DatabaseLocation;
use clap::Args;

pub use duration::{format_duration, parse_duration, DurationError};
pub use size::{format_size, parse_size, SizeError};

/// Where the database is: `--database-url` (any sqlx URL) wins over `--db-path`
/// (a SQLite file), which defaults to `~/.ci/jobs.db`.
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseArgs {
    /// SQLite database file (the embedded default).
    #[arg(long, env = "CI_DB_PATH", global = true)]
    pub db_path: Option<PathBuf>,

    /// A full database URL (`sqlite://…` or `postgres://…`); wins over --db-path.
    #[arg(long, env = "CI_DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    pub fn location(&self) -> DatabaseLocation {
        if let Some(url) = self.database_url.as_deref().filter(|u| !u.is_empty()) {
            return DatabaseLocation::Url(url.to_string());
        }
        DatabaseLocation::SqliteFile(self.db_path.clone().unwrap_or_else(default_db_path))
    }
}

/// `~/.ci/jobs.db`, or `./.ci/jobs.db` where no home folder is known.
pub fn default_db_path() -> PathBuf {
    dirs::home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".ci")
        .join("jobs.db")
}

/// How the service binaries write their log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (the job id, the
    /// request id) as keys, for log shippers that should not parse prose.
    Json,
}

/// `--log-format` / `CI_LOG_FORMAT`, flattened into each service binary's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log line format on stderr: `text`, or `json` for log shippers.
    #[arg(long, env = "CI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs to stderr for the service binaries: `RUST_LOG` when set, else `info`
/// (sqlx's per-statement logs kept to warnings), colours only on a terminal
/// and never in JSON, where every line must parse.
///
/// Lines are written by a thread of their own, so a request does not wait
/// for its access line to reach the file or pipe; the writer blocks (loses
/// nothing) when that thread falls far behind. That thread writes through a
/// buffer, which it flushes whenever it has taken every line waiting for it:
/// a quiet service's lines go out at once, a busy one's many to a write
/// (stderr itself is unbuffered: one system call per line otherwise, on the
/// same two cores as the requests). Keep the returned guard until the
/// process ends: dropping it writes what is still buffered.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_wins_over_path() {
        let args = DatabaseArgs {
            db_path: Some("/tmp/x.db".into()),
            database_url: Some("postgres://h/db".into()),
        };
        assert_eq!(
            args.location(),
            DatabaseLocation::Url("postgres://h/db".into())
        );
        let args = DatabaseArgs {
            db_path: Some("/tmp/x.db".into()),
            database_url: None,
        };
        assert_eq!(
            args.location(),
            DatabaseLocation::SqliteFile("/tmp/x.db".into())
        );
        assert!(
            matches!(DatabaseArgs::default().location(), DatabaseLocation::SqliteFile(p) if p.ends_with(".ci/jobs.db"))
        );
    }
}
