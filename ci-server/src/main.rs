//! `ci-server`: parse configuration, open the database, serve.

use std::net::SocketAddr;

use anyhow::Context;
use ci_config::{DatabaseArgs, LogArgs};
use ci_persistence::Store;
use ci_server::{serve, App, ServerConfig};
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
    #[arg(long, env = "CI_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024)]
    max_upload_bytes: u64,

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
        .with_context(|| format!("cannot open the database ({location:?})"))?;
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

    let config = ServerConfig {
        max_upload_bytes: args.max_upload_bytes,
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
