//! Why a benchmark could not be measured. A missed target is not an error: it
//! is a result; these are the failures that make the suite exit non-zero.

/// A failure to run the benchmark (as opposed to a slow result).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ci_client::ClientError,
    },
    #[error("HTTP {what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("timed out after {seconds:.0} s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    pub(crate) fn api(
        what: impl Into<String>,
    ) -> impl FnOnce(ci_client::ClientError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Api { what, source }
    }

    pub(crate) fn protocol(what: impl Into<String>, detail: impl Into<String>) -> BenchError {
        BenchError::Protocol {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, limit: std::time::Duration) -> BenchError {
        BenchError::Timeout {
            what: what.into(),
            seconds: limit.as_secs_f64(),
        }
    }
}
