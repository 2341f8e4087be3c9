//! A small typed client for the CI service's HTTP API, and the pieces of the
//! `ci` command line that are worth testing on their own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ci_client::{pack_project, ApiClient, FollowFrom};
//! use ci_common::api::StreamEvent;
//! use futures::StreamExt;
//!
//! let api = ApiClient::new("http://localhost:8000", Some("ci_…".to_string()))?;
//! let job_id = api.submit_async(pack_project(std::path::Path::new("."))?.zip).await?;
//! let mut events = api.follow_job(job_id, FollowFrom::Beginning).await?;
//! while let Some(received) = events.next().await {
//!     match received?.event {
//!         StreamEvent::Log { data } => print!("{data}"),
//!         StreamEvent::Complete { success } => println!("passed: {success}"),
//!         StreamEvent::JobId { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
pub mod config;
mod error;
mod follow;
pub mod output;
mod project;
pub mod test_report;

pub use client::{ApiClient, ReconnectNotice};
pub use error::{ClientError, ProjectZipError};
pub use follow::{FollowFrom, JobEvents, ReceivedEvent, ReconnectPolicy};
pub use project::{pack_project, LeftOutLink, LinkRefusal, PackedProject};
