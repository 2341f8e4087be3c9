//! `ci-server`: the stateless HTTP API of the CI service.
//!
//! Every replica holds nothing but a database handle: uploads become archives
//! and queued jobs in the database, and job output is streamed to clients from
//! the database as the controller writes it, so any replica can serve any
//! request, including the continuation of a stream another replica began.

mod access_log;
mod app;
mod auth;
mod error;
mod metrics;
mod routes;
mod session;
mod sse;
mod upload;
mod web;

pub use app::{router, serve, App, ServerConfig};
pub use error::ApiError;
pub use metrics::ServerMetrics;
pub use sse::{StreamReads, PAGE_BYTES};
