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
mod rows;
mod store;
mod test_results;
mod users;

pub use change_feed::{ChangeFeed, Channel};
pub use error::StoreError;
pub use jobs::{JobOutcome, NewJob};
pub use store::{Backend, Store, StoreOptions};
pub use test_results::{FlakyJobs, ReportChunk};

/// What the conformance suite needs to run against any backend.
pub mod conformance;
