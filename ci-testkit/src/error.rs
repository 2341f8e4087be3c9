use std::time::Duration;

/// Why the kit could not set something up; tests mostly panic with it, the
/// benchmark reports it.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` exited before it printed `{announcement}…`; its log:\n{log}")]
    ExitedBeforeAnnouncing {
        program: String,
        announcement: String,
        log: String,
    },
    #[error("`{program}` did not print `{announcement}…` within {within:?}; its log:\n{log}")]
    NoAnnouncement {
        program: String,
        announcement: String,
        within: Duration,
        log: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("GET {url} answered something that is not HTTP with a JSON body: {raw:?}")]
    NotJson { url: String, raw: String },
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
        let what = what.into();
        move |source| KitError::Io { what, source }
    }
}
