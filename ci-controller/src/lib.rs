//! `ci-controller`: the singleton that runs queued jobs in Docker.
//!
//! The [`Reconciler`] compares the jobs in the database with the containers
//! in Docker and takes the next step for each; the [`log_pump`] stores each
//! container's output as it comes; the [`leader`] lease makes sure only one
//! controller acts at a time.

pub mod config;
pub mod leader;
pub mod log_pump;
pub mod reconciler;
pub mod runtime;
pub mod status_listener;
pub mod workspace;

pub use config::ControllerConfig;
pub use reconciler::Reconciler;
pub use runtime::{ContainerRuntime, DockerRuntime};
