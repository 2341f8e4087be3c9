//! The benchmark suite of the CI service (`ci-bench`).
//!
//! It starts its own system (the real `ci-server` and `ci-controller` on a
//! scratch database, its own container prefix, network `none`, a user and key
//! made with `ci-admin`) and measures fourteen figures, each against a baseline
//! taken in the same run: the same work done by hand through the Docker CLI, or
//! the cheapest request the same client can make. Missed targets are results,
//! not errors; only a failure to measure is an error.

pub mod cpu;
pub mod docker;
pub mod error;
pub mod figures;
pub mod fixtures;
pub mod http;
pub mod load;
pub mod report;
pub mod stats;
pub mod system;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::error::{BenchError, Result};
use crate::figures::{progress, Context, Fixtures, Plan};
use crate::report::Figure;
use crate::system::{System, SystemOptions};

/// Benchmarks the CI service against doing the same work by hand with Docker.
#[derive(Debug, Clone, Parser)]
#[command(name = "ci-bench", version)]
pub struct Options {
    /// Few iterations, short durations, small counts (a minute or two), so CI
    /// can run it on every change; the figures are then only indicative.
    #[arg(long)]
    pub quick: bool,

    /// Run the system on PostgreSQL: a server URL (e.g. from
    /// scripts/postgres.sh); a fresh database is made in it and dropped after.
    #[arg(long)]
    pub database_url: Option<String>,

    /// Only these figures (repeat the flag or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<FigureKind>,

    /// Folder with `ci`, `ci-server`, `ci-controller` and `ci-admin`
    /// [default: the folder of this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// The job image.
    #[arg(long, default_value = ci_controller::config::DEFAULT_IMAGE)]
    pub image: String,
}

/// The fifteen figures, by the name `--only` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FigureKind {
    Overhead,
    Latency,
    Throughput,
    Api,
    Logs,
    Memory,
    Fanout,
    Watcher,
    /// Memory under big inputs: a zip bomb, near-limit uploads, unread streams.
    BigInputs,
    Page,
    TestResults,
    /// The API's p99 while the reaper deletes 10 000 old jobs.
    Retention,
    /// Metrics and access logs against none; the controller's scrape.
    Operations,
    /// Dependency environments (needs PyPI over the bridge network; not in
    /// `--quick`).
    Environments,
    /// What one measurement of the running jobs' disk use costs the engine.
    DiskWatch,
}

impl Options {
    fn wants(&self, kind: FigureKind) -> bool {
        self.only.is_empty() || self.only.contains(&kind)
    }

    /// Absolute, because `ci` is started inside the project folders.
    fn bin_dir(&self) -> Result<PathBuf> {
        let dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(PathBuf::from))
                .ok_or_else(|| {
                    BenchError::Setup("cannot tell where this binary is; pass --bin-dir".into())
                })?,
        };
        std::fs::canonicalize(&dir).map_err(BenchError::io(format!("--bin-dir {}", dir.display())))
    }
}

/// Runs the chosen figures, appending each result to `figures` as soon as it
/// is measured, so that a failure later still leaves the earlier ones.
pub async fn run(options: &Options, figures: &mut Vec<Figure>) -> Result<()> {
    let plan = if options.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    docker::docker(&["image", "inspect", "--format", "{{.Id}}", &options.image])
        .await
        .map_err(|e| {
            BenchError::Setup(format!(
                "the job image {} is not there (bash scripts/runner-image.sh builds it): {e}",
                options.image
            ))
        })?;
    let scratch = tempfile::Builder::new()
        .prefix("ci-bench-fixtures-")
        .tempdir()
        .map_err(BenchError::io("creating a scratch folder"))?;
    let fixtures = Fixtures {
        passing: fixtures::passing(scratch.path())?,
        big_output: fixtures::big_output(scratch.path(), plan.log_lines)?,
        long_sleeper: fixtures::sleeper(scratch.path(), 600)?,
        sleeper: fixtures::sleeper(scratch.path(), plan.controller_job_secs)?,
        printer: fixtures::printer(scratch.path(), 600, PRINT_EVERY_MS)?,
        page_log: fixtures::page_log(scratch.path(), plan.log_lines)?,
        live_log: fixtures::live_log(
            scratch.path(),
            figures::page::LIVE_RATE,
            figures::page::live_lines(plan.quick),
        )?,
    };
    let system_options = SystemOptions {
        bin_dir: options.bin_dir()?,
        image: options.image.clone(),
        postgres: options.database_url.clone(),
        max_concurrent_jobs: None,
        controller_env: Vec::new(),
        test_reports: true,
    };
    let ctx = Context {
        plan: &plan,
        fixtures: &fixtures,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        database: if options.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
    };

    let on_main_system = [
        FigureKind::Overhead,
        FigureKind::Latency,
        FigureKind::Throughput,
        FigureKind::Api,
        FigureKind::Logs,
        FigureKind::Page,
    ];
    if on_main_system.iter().any(|k| options.wants(*k)) {
        progress(format!("starting the system ({})", ctx.database));
        System::run(&system_options, async |system| {
            main_figures(options, system, &ctx, figures).await
        })
        .await?;
    }
    if options.wants(FigureKind::TestResults) {
        progress("figure 11: test results, on a system with and one without report collection");
        add(
            figures,
            figures::test_results::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Retention) {
        progress("figure 12: the API while the reaper deletes old jobs, on a fresh system");
        add(
            figures,
            figures::retention::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Environments) && !options.quick {
        progress("figure 14: dependency environments, on a system whose jobs reach PyPI");
        add(
            figures,
            figures::environments::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Memory) {
        progress("memory: starting a fresh system");
        add(
            figures,
            figures::memory::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Fanout) {
        progress("figure 7: stream fan-out, on a fresh system");
        add(
            figures,
            figures::fanout::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Operations) {
        progress("figure 13: operating costs (metrics, access logs, scrape), on a fresh system");
        add(
            figures,
            figures::operations::measure(&system_options, &ctx).await?,
        );
    }
    if options.wants(FigureKind::Watcher) {
        progress("figure 8: SQLite change watcher");
        add(figures, figures::watcher::measure(&ctx).await?);
    }
    if options.wants(FigureKind::DiskWatch) {
        progress("figure 15: the disk watch's measurement, with and without a 1 GiB pip cache");
        add(
            figures,
            figures::disk_watch::measure(&options.image, options.quick).await?,
        );
    }
    if options.wants(FigureKind::BigInputs) {
        progress("figure 9: memory under big inputs");
        add(
            figures,
            figures::big_inputs::measure(&system_options, &ctx).await?,
        );
    }
    Ok(())
}

/// How often the fan-out figure's printing jobs print a line: about as often
/// as the controller flushes output (every 20 ms), so each line is a wake-up.
const PRINT_EVERY_MS: u64 = 20;

async fn main_figures(
    options: &Options,
    system: &System,
    ctx: &Context<'_>,
    figures: &mut Vec<Figure>,
) -> Result<()> {
    let key = system.user_with_key("bench").await?;
    let api = system.api(&key)?;
    progress("warming up (one job through the system)");
    system.warm_up(&api, &ctx.fixtures.passing.zip).await?;
    if options.wants(FigureKind::Overhead) {
        progress("figure 1: overhead");
        add(
            figures,
            figures::overhead::measure(system, &key, ctx).await?,
        );
    }
    if options.wants(FigureKind::Latency) {
        progress("figure 2: start latency");
        add(figures, figures::latency::measure(system, &key, ctx).await?);
    }
    if options.wants(FigureKind::Throughput) {
        progress("figure 3: throughput");
        add(
            figures,
            figures::throughput::measure(system, &key, ctx).await?,
        );
    }
    if options.wants(FigureKind::Api) {
        progress("figure 4: API under load");
        add(figures, figures::api::measure(system, ctx).await?);
    }
    if options.wants(FigureKind::Logs) {
        progress("figure 5: big output");
        add(figures, figures::logs::measure(system, &key, ctx).await?);
    }
    if options.wants(FigureKind::Page) {
        progress("figure 10: the web page in headless Chromium");
        add(figures, figures::page::measure(system, &key, ctx).await?);
    }
    Ok(())
}

/// Appends a figure's results, each tagged with the 1-minute load average at
/// its end: on a shared machine, a busy neighbour shows up next to the number.
fn add(figures: &mut Vec<Figure>, new: Vec<Figure>) {
    let load1 = load_average()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    figures.extend(new.into_iter().map(|f| f.extra("load1", &load1)));
}

/// One line about the machine: cores, CPU model, memory, and the load now.
pub fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cpus} cores ({model}), {mem_gib:.0} GiB")
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
