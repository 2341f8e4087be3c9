//! The CI service's storage: users, API keys, jobs, content-addressed project
//! archives, job output, and the controller's lease.
//!
//! One [`Store`] serves both databases: SQLite (the embedded default, one file)
//! and PostgreSQL (for replicas on many hosts). The queries are written once in
//! the SQL both understand, run through sqlx's `Any` driver, and the schema keeps
//! to types both share (text ids, integer times and flags). What differs per
//! database lives in [`Backend`]: the migrations, connection set-up, and how
//! other processes learn of changes ([`ChangeFeed`]).

mod archives;
mod change_feed;
mod error;
mod events;
mod jobs;
mod lease;
mod location;
mod readiness;
mod retention;
mod rows;
mod sessions;
mod store;
mod test_results;
mod users;

pub use archives::{archive_digest, ARCHIVE_CHUNK_BYTES};
pub use change_feed::{ChangeFeed, Channel, JobWatch};
pub use error::StoreError;
pub use events::LogPage;
pub use jobs::{JobCensus, JobOutcome, NewJob};
pub use location::DatabaseLocation;
pub use retention::{FilePages, ReapStep, Reaped, ARCHIVE_GRACE};
pub use sessions::SessionLookup;
pub use store::{Backend, Store, StoreOptions};
pub use test_results::{FlakyJobs, ReportChunk};
pub use users::OwnedJobSummary;

/// What every backend must do, as tests (the `conformance` feature).
#[cfg(feature = "conformance")]
pub mod conformance;
