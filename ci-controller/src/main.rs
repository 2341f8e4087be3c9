//! `ci-controller`: parse configuration, then lead (see `leadership`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ci_config::{parse_duration, parse_size, DatabaseArgs, LogArgs};
use ci_controller::config::{
    parse_interval, ControllerConfig, DiskLimits, EnvironmentLimits, DEFAULT_IMAGE,
};
use ci_controller::junit_report::ReportLimits;
use ci_controller::leader::LeaseConfig;
use ci_controller::leadership::{self, Controller};
use ci_controller::metrics::ControllerMetrics;
use ci_controller::status_listener::{self, DEFAULT_STATUS_ADDR};
use ci_controller::DockerRuntime;
use ci_persistence::Store;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The CI service's singleton reconciler: runs queued jobs in Docker.
#[derive(Debug, Parser)]
#[command(name = "ci-controller", version)]
struct Args {
    #[command(flatten)]
    db: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Prefix of job container names, so installations can share one engine.
    #[arg(long, env = "CI_CONTAINER_PREFIX", default_value = "")]
    container_prefix: String,

    /// Image the jobs run in.
    #[arg(long, env = "CI_PYTHON_BASE_IMAGE", default_value = DEFAULT_IMAGE)]
    python_base_image: String,

    /// Python for jobs that ask for none and whose project states no
    /// requires-python (major.minor). Default: the base image's.
    #[arg(long, env = "CI_PYTHON_DEFAULT", value_name = "X.Y")]
    python_default: Option<ci_common::PythonVersion>,

    /// Full resync period in seconds (wake-ups start new jobs at once).
    #[arg(long = "interval", env = "CI_RECONCILE_INTERVAL")]
    interval: Option<String>,

    /// Docker network mode of job containers (`none` cuts them off).
    #[arg(long, env = "CI_JOB_NETWORK", default_value = "bridge")]
    job_network: String,

    /// A job running longer is stopped and fails, in seconds.
    #[arg(long, env = "CI_JOB_TIMEOUT", default_value_t = 1800)]
    job_timeout: u64,

    /// Jobs running at once; the rest wait queued. Default: the CPU count.
    #[arg(long, env = "CI_MAX_CONCURRENT_JOBS")]
    max_concurrent_jobs: Option<usize>,

    /// Output kept per job; the rest is cut with a marker line. Sizes here
    /// are bytes, or a number with a unit (`64MiB`, `10GiB`).
    #[arg(long, env = "CI_MAX_LOG_BYTES", default_value = "64MiB", value_parser = parse_size)]
    max_log_bytes: u64,

    /// A project may unpack to at most this many bytes (zip bombs stop here).
    #[arg(long, env = "CI_MAX_UNPACKED_BYTES", default_value = "1GiB", value_parser = parse_size)]
    max_unpacked_bytes: u64,

    /// A project archive may hold at most this many entries.
    #[arg(long, env = "CI_MAX_ARCHIVE_ENTRIES", default_value_t = 100_000)]
    max_archive_entries: usize,

    /// Run jobs without a requirements.txt on a read-only root file system
    /// (the workspace, /tmp and the home folder stay writable).
    #[arg(long, env = "CI_JOB_READ_ONLY_ROOTFS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    read_only_rootfs: bool,

    /// Address of the controller's `/ready` (and later `/metrics`) listener;
    /// empty turns it off. With port 0 the chosen address is printed.
    #[arg(long, env = "CI_METRICS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    metrics_addr: String,
    /// Read each job's JUnit report and store its test cases (off: the
    /// benchmark's baseline; jobs then have no test results).
    #[arg(long, env = "CI_TEST_REPORTS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    test_reports: bool,

    /// A job's test report larger than this is not read.
    #[arg(long, env = "CI_MAX_REPORT_BYTES", default_value = "30MiB", value_parser = parse_size)]
    max_report_bytes: u64,

    /// A job's test report with more test cases than this is refused.
    #[arg(long, env = "CI_MAX_REPORT_CASES", default_value_t = 200_000)]
    max_report_cases: usize,

    /// Ended jobs older than this are deleted with their output and test
    /// results, and then the archives no job refers to (20s, 12h, 7d).
    #[arg(long, env = "CI_RETENTION", default_value = "30d", value_parser = parse_duration)]
    retention: Duration,

    /// Time between two rounds of the reaper (20s, 10m, 1h).
    #[arg(long, env = "CI_REAP_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    reap_interval: Duration,

    /// Total bytes the cached dependency environments may take; the least
    /// recently used are removed first, and a preparation whose environment
    /// grows past it is stopped.
    #[arg(long, env = "CI_ENV_CACHE_BYTES", default_value = "10GiB", value_parser = parse_size)]
    env_cache_bytes: u64,

    /// A dependency environment older than this is built again (`20s`,
    /// `12h`, `7d`), so unpinned requirements pick up new releases.
    #[arg(long, env = "CI_ENV_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    env_max_age: Duration,

    /// A job that writes more than this to disk (its workspace, its report's
    /// folder, its writable root and its user's pip cache together) is
    /// stopped and fails with that reason: bytes, or a number with a unit
    /// (`64MiB`, `4GiB`).
    #[arg(long, env = "CI_JOB_DISK_LIMIT", default_value = "4GiB", value_parser = parse_size)]
    job_disk_limit: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Held to the end of main, so the last lines are written.
    let _log_writer = ci_config::init_logging(args.log.log_format);
    if args.retention.is_zero() || args.reap_interval.is_zero() {
        anyhow::bail!("--retention and --reap-interval must be longer than 0s");
    }

    let mut config = ControllerConfig {
        image: args.python_base_image,
        python_default: args.python_default,
        network_mode: args.job_network,
        reconcile_interval: parse_interval(args.interval.as_deref()),
        job_timeout: Duration::from_secs(args.job_timeout.max(1)),
        read_only_rootfs: args.read_only_rootfs,
        environments: EnvironmentLimits {
            max_bytes: args.env_cache_bytes,
            max_age: args.env_max_age,
        },
        disk: DiskLimits {
            max_bytes: args.job_disk_limit,
            ..DiskLimits::default()
        },
        ..ControllerConfig::default()
    };
    if let Some(n) = args.max_concurrent_jobs {
        config.max_concurrent_jobs = n.max(1);
    }
    config.pump.max_log_bytes = args.max_log_bytes;
    config.unpack.max_total_bytes = args.max_unpacked_bytes;
    config.unpack.max_entries = args.max_archive_entries;
    config.set_container_prefix(&args.container_prefix);
    config.reaper.retention = args.retention;
    config.reaper.every = args.reap_interval;
    config.test_report = args.test_reports.then(|| ReportLimits {
        max_bytes: args.max_report_bytes,
        max_cases: args.max_report_cases,
        ..ReportLimits::default()
    });

    let location = args.db.location();
    let store = Store::open(&location)
        .await
        .with_context(|| format!("cannot open the database {}", location.describe()))?;
    let runtime = DockerRuntime::connect().await.context(
        "cannot reach the Docker engine (is dockerd running? see scripts/docker-engine.sh)",
    )?;
    // Once: the storage driver does not change under a running engine.
    config.disk.storage_quota = match runtime.has_storage_quota().await {
        Ok(quota) => quota,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the engine's storage driver; jobs' disk use is bounded by measuring it alone");
            false
        }
    };
    tracing::info!(
        limit = args.job_disk_limit,
        storage_quota = config.disk.storage_quota,
        "job disk limit"
    );

    let holder = format!(
        "{}:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // Whether this controller leads, as it changes, for the status listener.
    let (leadership, leadership_seen) = status_listener::leadership_channel();
    let metrics = Arc::new(ControllerMetrics::default());
    if let Some(listener) = status_listener::bind(&args.metrics_addr).await? {
        let local = listener.local_addr().context("no local address")?;
        // On stdout, like ci-server's `Listening on`, so whoever asked for
        // port 0 learns the port.
        println!("Metrics on http://{local}");
        tracing::info!(%local, "status listener on");
        let state = status_listener::StatusState {
            leadership: leadership_seen,
            metrics: metrics.clone(),
            store: store.clone(),
        };
        status_listener::spawn(listener, state, shutdown.clone());
    }
    let controller = Controller {
        store,
        runtime: Arc::new(runtime),
        config,
        lease: LeaseConfig::default(),
        holder,
        metrics,
    };
    leadership::run(controller, shutdown, leadership).await?;
    tracing::info!("ci-controller stopped");
    Ok(())
}

async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[test]
    fn sizes_are_bytes_or_numbers_with_a_unit() {
        let args = Args::try_parse_from([
            "ci-controller",
            "--max-log-bytes",
            "1000",
            "--env-cache-bytes",
            "2GiB",
        ])
        .unwrap();
        assert_eq!(args.max_log_bytes, 1000);
        assert_eq!(args.env_cache_bytes, 2 << 30);
        let defaults = Args::try_parse_from(["ci-controller"]).unwrap();
        assert_eq!(defaults.max_log_bytes, 64 << 20);
        assert_eq!(
            defaults.env_cache_bytes,
            ci_controller::config::DEFAULT_ENV_CACHE_BYTES
        );
        assert_eq!(defaults.max_unpacked_bytes, 1 << 30);
        assert_eq!(defaults.max_report_bytes, 30 << 20);
        assert!(Args::try_parse_from(["ci-controller", "--max-log-bytes", "64MB"]).is_err());
    }
}
