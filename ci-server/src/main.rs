//! `ci-server`: parse configuration, open the database, serve.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use ci_config::{parse_duration, DatabaseArgs, LogArgs};
use ci_persistence::Store;
use ci_server::{serve, App, FrontDoor, ServerConfig, UserLimits};
use clap::Parser;
use tokio::net::TcpListener;

/// The CI service's HTTP API. Any number of replicas may share one database.
#[derive(Debug, Parser)]
#[command(name = "ci-server", version)]
struct Args {
    #[command(flatten)]
    db: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Larger uploads are refused with 413.
    #[arg(long, env = "CI_MAX_UPLOAD_BYTES", default_value = "100MiB", value_parser = ci_config::parse_size)]
    max_upload_bytes: u64,

    /// A request head must arrive within this (a half-sent request is
    /// closed then); a number with a unit: `10s`.
    #[arg(long, env = "CI_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// A kept-alive connection with no request in flight is closed after
    /// this (at most the header-read timeout).
    #[arg(long, env = "CI_KEEP_ALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    keep_alive_timeout: Duration,

    /// Open connections at most; past it the longest-idle one is closed, and
    /// when all are busy a small reserve answers only /health and /ready.
    #[arg(long, env = "CI_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,

    /// Bytes per second an upload must keep up after the header-read timeout
    /// (0 turns it off); a slower one is cut with 408.
    #[arg(long, env = "CI_UPLOAD_MIN_RATE", default_value_t = 64 * 1024)]
    upload_min_rate: u64,

    /// Event streams one user may have open at once on this server (429 past it).
    #[arg(long, env = "CI_MAX_STREAMS_PER_USER", default_value_t = UserLimits::default().max_streams)]
    max_streams_per_user: usize,

    /// Jobs one user may have waiting to start (429 past it).
    #[arg(long, env = "CI_MAX_QUEUED_JOBS_PER_USER", default_value_t = UserLimits::default().max_queued_jobs)]
    max_queued_jobs_per_user: u64,

    /// Uploads one user may send at once to this server (429 past it).
    #[arg(long, env = "CI_MAX_UPLOADS_PER_USER", default_value_t = UserLimits::default().max_uploads)]
    max_uploads_per_user: usize,
    /// Per-request metrics and access-log lines (off: the benchmark's baseline).
    #[arg(long, env = "CI_OBSERVE_REQUESTS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", hide = true)]
    observe_requests: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Held to the end of main, so the last lines are written.
    let _log_writer = ci_config::init_logging(args.log.log_format);

    let location = args.db.location();
    let store = Store::open(&location)
        .await
        .with_context(|| format!("cannot open the database {}", location.describe()))?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
                .ok()
                .and_then(|mut a| a.next())
                .context("no address")
        })
        .with_context(|| format!("cannot resolve listen address {}:{}", args.host, args.port))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("no local address")?;
    // Printed on stdout so that scripts and tests that ask for port 0 learn the port.
    println!("Listening on http://{local}");
    tracing::info!(%local, "ci-server listening");

    let header_read_timeout = args.header_read_timeout;
    anyhow::ensure!(
        !header_read_timeout.is_zero(),
        "--header-read-timeout must be at least 1 second"
    );
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    let keep_alive_timeout = args.keep_alive_timeout;
    if keep_alive_timeout > header_read_timeout {
        tracing::warn!(
            ?keep_alive_timeout,
            ?header_read_timeout,
            "the keep-alive timeout is longer than the header-read timeout, which also counts idle kept-alive connections: idle connections close after the header-read timeout"
        );
    }
    let config = ServerConfig {
        max_upload_bytes: args.max_upload_bytes,
        front_door: FrontDoor {
            header_read_timeout,
            keep_alive_timeout,
            max_connections: args.max_connections,
            upload_min_rate: args.upload_min_rate,
        },
        user_limits: UserLimits {
            max_streams: args.max_streams_per_user,
            max_queued_jobs: args.max_queued_jobs_per_user,
            max_uploads: args.max_uploads_per_user,
        },
        // From the environment only: a flag would show the token to `ps`.
        metrics_token: std::env::var("CI_METRICS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        observe_requests: args.observe_requests,
        ..ServerConfig::default()
    };
    serve(listener, App::new(store, config), shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("ci-server stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
