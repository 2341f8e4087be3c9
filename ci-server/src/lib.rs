//! `ci-server`: the stateless HTTP API of the CI service.
//!
//! Every replica holds nothing but a database handle: uploads become archives
//! and queued jobs in the database, and job output is streamed to clients from
//! the database as the controller writes it, so any replica can serve any
//! request, including the continuation of a stream another replica began.

mod access_log;
mod app;
mod auth;
mod credential_watch;
mod error;
mod listener;
mod metrics;
mod request_body;
mod routes;
mod session;
mod sse;
mod upload;
mod user_limits;
mod web;

pub use app::{router, serve, App, ServerConfig};
pub use error::ApiError;
pub use listener::{FrontDoor, RESERVED_CONNECTIONS};
pub use metrics::ServerMetrics;
pub use request_body::RequestBodyError;
pub use sse::{StreamReads, PAGE_BYTES};
pub use user_limits::UserLimits;
