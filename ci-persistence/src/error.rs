use ci_common::TransitionError;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value (an e-mail address, say) is already taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The job is not in a state from which this change is legal.
    #[error(transparent)]
    IllegalTransition(#[from] TransitionError),
    /// Another follower of the job stored output since this one last saw
    /// the cursor; `stored` is where the stored output ends now.
    #[error("the output of job {job} was stored by another follower (it ends at {stored:?})")]
    CursorMoved {
        job: ci_common::JobId,
        stored: Option<ci_common::LogCursor>,
    },
    /// A stored value could not be read back (a bad uuid, an unknown status).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// Holds the URL's scheme only: the rest may carry a password.
    #[error("unsupported database URL scheme {0:?} (expected sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Reading what is to be stored, or writing what was read, failed.
    #[error("reading or writing stored bytes: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the database file {path} private (owner only): {source}")]
    FileMode {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the database refused a write because a unique constraint failed.
    pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
