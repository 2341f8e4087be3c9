//! The twelve figures. Each takes its baseline in the same run, interleaved with
//! the measurement where the figure allows, so that a busy neighbour on the
//! machine slows both sides alike.

pub mod api;
pub mod big_inputs;
pub mod disk_watch;
pub mod environments;
pub mod fanout;
pub mod latency;
pub mod logs;
pub mod memory;
pub mod operations;
pub mod overhead;
pub mod page;
pub mod retention;
pub mod test_results;
pub mod throughput;
pub mod watcher;

use std::time::Duration;

use crate::fixtures::Project;
use crate::load::LoadShape;

/// How much of everything: the full suite or `--quick`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub overhead_pairs: usize,
    pub latency_jobs: usize,
    pub throughput_jobs: usize,
    /// Rounds of system and by hand, in ABBA order.
    pub throughput_rounds: usize,
    pub api_jobs: usize,
    pub api_shape: LoadShape,
    pub log_lines: usize,
    pub log_runs: usize,
    pub sse_streams: usize,
    pub controller_jobs: usize,
    pub controller_job_secs: u64,
    /// Idle streams on the quiet job of the fan-out figure.
    pub fanout_streams: usize,
    /// How long each of the fan-out figure's CPU windows lasts.
    pub fanout_window: Duration,
    /// Writes timed by the watcher figure, each right after a change and after quiet.
    pub watcher_samples: usize,
    /// The quiet spell before each of the watcher figure's slow samples.
    pub watcher_quiet: Duration,
    /// What the zip bomb unpacks to (zeros), in MiB.
    pub bomb_mib: usize,
    /// Uploads sent at once, and the size of each, in MiB.
    pub uploads: usize,
    pub upload_mib: usize,
    /// The job output the idle streams are opened on, in MiB, and how many.
    pub idle_stream_log_mib: usize,
    pub idle_streams: usize,
    /// Tests of the generated project whose report is collected.
    pub report_tests: usize,
    /// `ci submit test` pairs with and without collection, ABBA.
    pub report_pairs: usize,
    /// Cases of the report the controller's memory is measured storing.
    pub report_memory_cases: usize,
    /// Rounds of the environments figure's pairs (it needs PyPI: none in
    /// `--quick`).
    pub environment_pairs: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            overhead_pairs: 10,
            latency_jobs: 50,
            throughput_jobs: 50,
            throughput_rounds: 2,
            api_jobs: 100,
            api_shape: LoadShape {
                connections: 64,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(10),
            },
            log_lines: 100_000,
            log_runs: 3,
            sse_streams: 1000,
            controller_jobs: 20,
            controller_job_secs: 20,
            fanout_streams: 300,
            fanout_window: Duration::from_secs(10),
            watcher_samples: 8,
            watcher_quiet: Duration::from_secs(2),
            bomb_mib: 1000,
            uploads: 8,
            upload_mib: 99,
            idle_stream_log_mib: 128,
            idle_streams: 40,
            report_tests: 5000,
            report_pairs: 6,
            report_memory_cases: 200_000,
            environment_pairs: 4,
        }
    }

    /// Small enough to finish in a minute or two: CI runs it so it cannot rot.
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            overhead_pairs: 2,
            latency_jobs: 4,
            throughput_jobs: 4,
            throughput_rounds: 1,
            api_jobs: 10,
            api_shape: LoadShape {
                connections: 64,
                warmup: Duration::from_millis(200),
                duration: Duration::from_secs(1),
            },
            log_lines: 10_000,
            log_runs: 1,
            sse_streams: 100,
            controller_jobs: 4,
            controller_job_secs: 6,
            fanout_streams: 100,
            fanout_window: Duration::from_secs(3),
            watcher_samples: 3,
            watcher_quiet: Duration::from_millis(1500),
            bomb_mib: 64,
            uploads: 4,
            upload_mib: 8,
            idle_stream_log_mib: 8,
            idle_streams: 10,
            // Enough to exercise the paths; the figure's 5 000 is the full run's.
            report_tests: 500,
            report_pairs: 1,
            report_memory_cases: 20_000,
            environment_pairs: 0,
        }
    }
}

/// The generated projects the figures submit.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub passing: Project,
    pub big_output: Project,
    /// Runs far longer than any figure waits, for the streams to hang on.
    pub long_sleeper: Project,
    /// Runs long enough for all of the memory figure's jobs to run at once.
    pub sleeper: Project,
    /// Prints steadily far longer than any figure waits.
    pub printer: Project,
    /// The page figure's big log (`log_lines` lines).
    pub page_log: Project,
    /// The page figure's running job, printing 2 000 lines a second.
    pub live_log: Project,
}

/// What every figure gets.
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub fixtures: &'a Fixtures,
    /// The machine's CPU count: the controller's default capacity.
    pub cpus: usize,
    /// `sqlite` or `postgres`, for the machine lines.
    pub database: &'static str,
}

/// Milliseconds of a duration, as the figures report them.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Progress for the person watching; the results go to stdout.
pub(crate) fn progress(message: impl std::fmt::Display) {
    eprintln!("ci-bench: {message}");
}
