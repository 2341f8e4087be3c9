//! `ci-controller`: the singleton that runs queued jobs in Docker.
//!
//! The [`Reconciler`] compares the jobs in the database with the containers
//! in Docker and takes the next step for each: [`decision`] says which,
//! [`scheduler`] shares capacity fairly, [`container_spec`] says what the
//! engine is asked for, and [`worker`]s carry the slow steps out under one
//! error policy. The [`log_pump`] stores each container's output as it comes;
//! [`leadership`] runs the reconciler only while this controller holds the
//! [`leader`] lease, and the [`reaper`] beside it deletes what outlived the
//! retention period. The [`disk_watch`] measures running jobs' disk use for
//! the decision table's disk limit.

pub mod config;
pub mod container_spec;
pub mod decision;
pub mod disk_watch;
pub mod environment;
pub mod environment_cache;
#[cfg(test)]
mod fake_runtime;
pub mod junit_report;
pub mod leader;
pub mod leadership;
pub mod log_pump;
pub mod metrics;
pub mod project_facts;
pub mod pythons;
pub mod reaper;
pub mod reconciler;
pub mod runtime;
pub mod scheduler;
pub mod status_listener;
pub mod worker;
pub mod workspace;

pub use config::ControllerConfig;
pub use reconciler::Reconciler;
pub use runtime::{ContainerRuntime, DockerRuntime};
