//! The one test kit of the workspace: what the end-to-end tests (`tests/`),
//! the crates' own integration tests and the benchmark (`ci-bench`) use to
//! start the real binaries and to look at what they did.
//!
//! - [`wait`]: deadline waits; nothing here sleeps to synchronise.
//! - [`process`]: start a binary with every `CI_*` variable of the caller
//!   scrubbed, dying with the test, its log in a file, its announced address
//!   read from its first stdout line.
//! - [`relay`]: a TCP relay that shows a test what a server sent back.
//! - [`sse`]: one wire-level reader of Server-Sent Events.
//! - [`status`]: the services' `/ready` answers, which tests wait on instead
//!   of on the wording of a log line.
//! - [`postgres`]: scratch PostgreSQL databases, made and dropped.
//! - [`database`]: plain SQL on an installation's database (ages, pragmas).
//! - [`prometheus`]: a real Prometheus scraping the services, read through
//!   its HTTP API.
//! - [`docker`]: an installation's containers, and sweeping what a test left.
//! - [`cli`]: the `ci` command line, run to its end or in the background.
//! - [`fixtures`]: the Python projects the tests submit.
//! - [`system`]: a whole installation (database, server, replicas,
//!   controller, a user with a key) per test.

pub mod browser;
pub mod cli;
pub mod database;
pub mod docker;
mod error;
pub mod fixtures;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod relay;
pub mod sse;
pub mod status;
pub mod system;
pub mod wait;

use std::time::Duration;

pub use cli::{id_after, run, run_within, CiOutput, RunningCi, COMMAND_DEADLINE};
pub use docker::{ContainerInfo, LABEL_INSTALLATION, LABEL_JOB};
pub use error::KitError;
pub use fixtures::{
    assert_same_lines, copy_fixture, fixtures_dir, incompressible_bytes, lines_with, slow_project,
    slow_ticks, Project,
};
pub use process::{bin_dir, binary};
pub use system::{Options, ServiceLog, TestSystem, TestUser};
pub use wait::{wait_for, wait_for_value};

/// How long a service may take to come up (they need a fraction of a second).
pub const SERVICE_START: Duration = Duration::from_secs(30);
/// How long a short job (one of the small fixtures) may take from submission
/// to its end, generously, for a loaded two-core machine.
pub const JOB_DEADLINE: Duration = Duration::from_secs(120);
/// How long cleaning up after a job (its container removed) may take.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
