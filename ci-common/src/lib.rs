//! Domain types shared by the CI service's binaries.
//!
//! Everything here is plain data plus the rules that belong to the data itself
//! (which job status may follow which, what an API key looks like), so that the
//! server, the controller, the CLI and the admin tool agree on them.

pub mod api;
pub mod api_key;
pub mod id;
pub mod job;
pub mod python;
pub mod size;
pub mod test_results;
pub mod time;
pub mod user;

pub use api_key::{generate_api_key, hash_api_key, looks_like_api_key, ApiKeyRecord, GeneratedKey};
pub use id::{ApiKeyId, UserId};
pub use job::{
    CursorMove, Job, JobId, JobOptions, JobStatus, LogChunk, LogCursor, TransitionError,
};
pub use python::PythonVersion;
pub use size::format_size;
pub use user::User;
