//! The controller's own small HTTP listener (`CI_METRICS_ADDR`,
//! `--metrics-addr`): `GET /ready` says whether this controller leads or
//! stands by, so operators, orchestrators and tests learn it from an answer
//! instead of from the wording of a log line.
//!
//! The leadership loop publishes its state on a [`tokio::sync::watch`]
//! channel ([`leadership_channel`]); the listener only reads the latest
//! value, so a slow or hung client never holds up the loop. Both states
//! answer 200: a standby is healthy and ready to take over, and an
//! orchestrator that restarted standbys for answering an error would kill the
//! very processes that make a takeover quick. The body tells them apart:
//! `{"status":"leader"}` or `{"status":"standby"}`.
//!
//! `/metrics` will be one more `.route` in [`router`].

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;

/// The address the listener takes unless configured otherwise.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:9464";

/// A channel for the leadership loop to publish on, starting as standby.
pub fn leadership_channel() -> (watch::Sender<Leadership>, watch::Receiver<Leadership>) {
    watch::channel(Leadership::Standby)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusListenerError {
    #[error("the metrics address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot listen on the metrics address {addr} (set CI_METRICS_ADDR / --metrics-addr to another address, or to empty for none): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the configured address; `None` when it is empty (the listener is
/// off). The bound address is [`TcpListener::local_addr`], which differs from
/// the configured one for port 0.
pub async fn bind(configured: &str) -> Result<Option<TcpListener>, StatusListenerError> {
    let configured = configured.trim();
    if configured.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = match configured.parse() {
        Ok(addr) => addr,
        Err(_) => tokio::net::lookup_host(configured)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| StatusListenerError::BadAddress(configured.to_string()))?,
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StatusListenerError::Bind { addr, source })
}

/// The listener's routes.
pub fn router(leadership: watch::Receiver<Leadership>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .with_state(leadership)
}

async fn ready(State(leadership): State<watch::Receiver<Leadership>>) -> Json<serde_json::Value> {
    let status = leadership.borrow().as_str();
    Json(serde_json::json!({ "status": status }))
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(leadership))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Runs [`serve`] in the background; a listener that fails is logged, and
/// the controller carries on reconciling without it.
pub fn spawn(
    listener: TcpListener,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve(listener, leadership, shutdown).await {
            tracing::error!(error = %e, "the status listener failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_ready(addr: SocketAddr) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = raw.split("\r\n\r\n").nth(1).expect("a body");
        (status, serde_json::from_str(body).expect("JSON"))
    }

    #[tokio::test]
    async fn ready_follows_the_published_leadership() {
        let listener = bind("127.0.0.1:0").await.expect("bind").expect("on");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = leadership_channel();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, rx, shutdown.clone()));

        let standby = serde_json::json!({"status": "standby"});
        assert_eq!(get_ready(addr).await, (200, standby.clone()));
        tx.send_replace(Leadership::Leader);
        assert_eq!(
            get_ready(addr).await,
            (200, serde_json::json!({"status": "leader"}))
        );
        tx.send_replace(Leadership::Standby);
        assert_eq!(get_ready(addr).await, (200, standby));

        shutdown.cancel();
        server.await.expect("joined").expect("served");
    }

    #[tokio::test]
    async fn an_empty_address_turns_the_listener_off_and_a_bad_one_is_refused() {
        assert!(bind("").await.expect("off").is_none());
        assert!(bind("  ").await.expect("off").is_none());
        assert!(matches!(
            bind("not an address").await,
            Err(StatusListenerError::BadAddress(_))
        ));
        let taken = bind("127.0.0.1:0").await.expect("bind").expect("on");
        let addr = taken.local_addr().expect("addr").to_string();
        assert!(matches!(
            bind(&addr).await,
            Err(StatusListenerError::Bind { .. })
        ));
    }
}
