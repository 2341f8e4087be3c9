//! A small typed client for the CI service's HTTP API, and the pieces of the
//! `ci` command line that are worth testing on their own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ci_client::{pack_project, ApiClient, StreamStart};
//! use ci_common::api::StreamEvent;
//! use futures::StreamExt;
//!
//! let api = ApiClient::new("http://localhost:8000", Some("ci_…".to_string()))?;
//! let project = pack_project(std::path::Path::new("."))?;
//! let job_id = api.submit_async(project.zip, &Default::default()).await?;
//! let mut events = api.follow_job(job_id, StreamStart::Beginning).await?;
//! while let Some(received) = events.next().await {
//!     match received?.event {
//!         StreamEvent::Log { data } => print!("{data}"),
//!         StreamEvent::Complete { success, .. } => println!("passed: {success}"),
//!         StreamEvent::JobId { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
pub mod config;
mod error;
mod follow;
mod job_text;
pub mod output;
mod project;
pub mod test_report;

pub use ci_common::api::StreamStart;
pub use client::{ApiClient, ReconnectNotice};
pub use error::{ClientError, ProjectZipError};
pub use follow::{JobEvents, ReceivedEvent, ReconnectPolicy};
pub use job_text::{OutputFilter, OutputMode};
pub use project::{pack_project, project_name, LeftOutLink, LinkRefusal, PackedProject};
