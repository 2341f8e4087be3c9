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
//! `GET /metrics` serves the [`ControllerMetrics`] in Prometheus's text
//! format; the installation's gauges are read from the database then (one
//! cheap query, see [`ControllerMetrics::encode`]), so a scrape while the
//! database is out of reach answers 503 rather than stale numbers.

use std::net::SocketAddr;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ci_persistence::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;
use crate::metrics::ControllerMetrics;

/// What the listener answers from.
#[derive(Clone)]
pub struct StatusState {
    pub leadership: watch::Receiver<Leadership>,
    pub metrics: Arc<ControllerMetrics>,
    pub store: Store,
}

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
pub fn router(state: StatusState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<StatusState>) -> Json<serde_json::Value> {
    let status = state.leadership.borrow().as_str();
    Json(serde_json::json!({ "status": status }))
}

/// The content type of prometheus-client's text encoding (OpenMetrics 1.0,
/// which Prometheus reads as well as its own text format).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(state): State<StatusState>) -> Response {
    let leadership = *state.leadership.borrow();
    match state.metrics.encode(&state.store, leadership).await {
        Ok(text) => {
            let mut response = text.into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the job counts");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the job database is unavailable\n",
            )
                .into_response()
        }
    }
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: StatusState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Runs [`serve`] in the background; a listener that fails is logged, and
/// the controller carries on reconciling without it.
pub fn spawn(
    listener: TcpListener,
    state: StatusState,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve(listener, state, shutdown).await {
            tracing::error!(error = %e, "the status listener failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One HTTP/1.1 request by hand: status and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.expect("read");
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = raw.split_once("\r\n\r\n").expect("a body").1;
        (status, body.to_string())
    }

    async fn get_ready(addr: SocketAddr) -> (u16, serde_json::Value) {
        let (status, body) = get(addr, "/ready").await;
        (status, serde_json::from_str(&body).expect("JSON"))
    }

    struct Listening {
        addr: SocketAddr,
        leadership: watch::Sender<Leadership>,
        store: Store,
        metrics: Arc<ControllerMetrics>,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn listening() -> Listening {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&ci_persistence::DatabaseLocation::SqliteFile(
            dir.path().join("jobs.db"),
        ))
        .await
        .expect("store");
        let listener = bind("127.0.0.1:0").await.expect("bind").expect("on");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = leadership_channel();
        let metrics = Arc::new(ControllerMetrics::default());
        let shutdown = CancellationToken::new();
        let state = StatusState {
            leadership: rx,
            metrics: metrics.clone(),
            store: store.clone(),
        };
        let server = tokio::spawn(serve(listener, state, shutdown.clone()));
        Listening {
            addr,
            leadership: tx,
            store,
            metrics,
            shutdown,
            server,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn ready_follows_the_published_leadership() {
        let Listening {
            addr,
            leadership: tx,
            shutdown,
            server,
            ..
        } = listening().await;

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

    use crate::metrics::sample;

    #[tokio::test]
    async fn metrics_show_the_database_the_leadership_and_what_happened() {
        let l = listening().await;
        let user = l
            .store
            .create_user("M", "m@example.com")
            .await
            .expect("user");
        let digest = l.store.put_archive(b"zip").await.expect("archive");
        for _ in 0..3 {
            l.store
                .create_job(&ci_persistence::NewJob::new(user.id, digest.clone()))
                .await
                .expect("job");
        }
        let (status, text) = get(l.addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(sample(&text, r#"ci_jobs{status="queued"}"#), 3.0);
        assert_eq!(sample(&text, r#"ci_jobs{status="running"}"#), 0.0);
        assert_eq!(sample(&text, r#"ci_jobs{status="completed"}"#), 0.0);
        assert!(sample(&text, "ci_jobs_oldest_queued_age_seconds") >= 0.0);
        assert_eq!(sample(&text, "ci_controller_leader"), 0.0);
        assert_eq!(sample(&text, "ci_jobs_queue_wait_seconds_count"), 0.0);

        l.leadership.send_replace(Leadership::Leader);
        l.metrics.lease_renewal_failed();
        l.metrics.output_stored(1234);
        let (_, text) = get(l.addr, "/metrics").await;
        assert_eq!(sample(&text, "ci_controller_leader"), 1.0);
        assert_eq!(
            sample(&text, "ci_controller_lease_renewals_failed_total"),
            1.0
        );
        assert_eq!(sample(&text, "ci_jobs_output_stored_bytes_total"), 1234.0);
        // Buckets from 10 ms to 30 min.
        assert!(
            text.contains(r#"ci_jobs_queue_wait_seconds_bucket{le="0.01"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ci_jobs_queue_wait_seconds_bucket{le="1800.0"} 0"#),
            "{text}"
        );

        l.shutdown.cancel();
        l.server.await.expect("joined").expect("served");
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
