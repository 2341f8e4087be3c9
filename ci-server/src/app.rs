//! The application state, built once, and the router.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use ci_persistence::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log;
use crate::credential_watch::StreamCredentials;
use crate::listener::{serve_connections, FrontDoor};
use crate::metrics::{self, ServerMetrics};
use crate::request_body::BodyPacing;
use crate::sse::StreamReads;
use crate::user_limits::{UserLimits, UserSlots};
use crate::{routes, session, web};

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Larger uploads are refused with 413.
    pub max_upload_bytes: u64,
    /// How often a quiet event stream sends a comment, so proxies and clients
    /// keep the connection open.
    pub keep_alive: Duration,
    /// How often a stream looks at the database even without a wake-up: a
    /// safety net should a notification be missed.
    pub stream_resync: Duration,
    /// Timeouts and the connection cap (see [`crate::listener`]).
    pub front_door: FrontDoor,
    /// How often the keys of open streams are checked again, so a stream of
    /// a revoked key or a deactivated user ends within about this long.
    pub credential_check: Duration,
    /// Caps per user (see [`crate::user_limits`]).
    pub user_limits: UserLimits,
    /// `CI_METRICS_TOKEN`: when set, `GET /metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// Per-request metrics and access-log lines; off only for the
    /// benchmark's baseline, which measures what they cost.
    pub observe_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_upload_bytes: 100 * 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            stream_resync: Duration::from_secs(2),
            front_door: FrontDoor::default(),
            credential_check: Duration::from_secs(2),
            user_limits: UserLimits::default(),
            metrics_token: None,
            observe_requests: true,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    pub config: Arc<ServerConfig>,
    /// Cancelled on shutdown, so open event streams end and the server can stop;
    /// their clients reconnect to another replica or to this one restarted.
    pub shutdown: CancellationToken,
    /// What the event streams have read, shared by all of them.
    pub stream_reads: Arc<StreamReads>,
    /// The keys open streams were opened with, checked again now and then.
    pub stream_credentials: Arc<StreamCredentials>,
    /// The streams and uploads each user has open on this replica.
    pub user_slots: Arc<UserSlots>,
    /// This replica's Prometheus metrics.
    pub metrics: Arc<ServerMetrics>,
}

impl App {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        App {
            store,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            stream_reads: Arc::default(),
            stream_credentials: Arc::default(),
            user_slots: Arc::default(),
            metrics: Arc::default(),
        }
    }
}

/// Multipart framing around the file: boundaries, part headers.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// The least an early-answered upload is read and discarded for.
const DRAIN_FLOOR: u64 = 64 * 1024 * 1024;

/// How much of a refused upload the server reads and drops so that the
/// client, still sending, gets to read its 413 instead of a reset: twice the
/// largest upload it takes, and at least [`DRAIN_FLOOR`]. With only the limit
/// itself, a project a few times over a small limit (1 MiB against 24 MB)
/// was reset before a client on a loaded machine had read the answer.
fn drain_limit(max_upload_bytes: u64) -> u64 {
    max_upload_bytes
        .saturating_add(MULTIPART_OVERHEAD)
        .saturating_mul(2)
        .max(DRAIN_FLOOR)
}

pub fn router(app: App) -> Router {
    let body_limit = usize::try_from(
        app.config
            .max_upload_bytes
            .saturating_add(MULTIPART_OVERHEAD),
    )
    .unwrap_or(usize::MAX);
    let observe = app.config.observe_requests;
    let routes = Router::new()
        .route("/", get(web::page))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/session",
            post(session::create_session).delete(session::delete_session),
        )
        .route("/submit-async", post(routes::submit_async))
        .route("/submit-stream", post(routes::submit_stream))
        .route("/submit", post(routes::submit))
        .route("/jobs", get(routes::list_jobs))
        .route("/jobs/{id}", get(web::job_page_or_summary))
        .route("/jobs/{id}/stream", get(routes::stream_job))
        .route("/jobs/{id}/cancel", post(routes::cancel_job))
        .route("/jobs/{id}/log", get(routes::job_log))
        .route("/jobs/{id}/rerun", post(routes::rerun_job))
        .route("/jobs/{id}/tests", get(routes::test_results::job_tests))
        .route(
            "/projects/{name}/tests",
            get(routes::test_results::project_tests),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    if !observe {
        return routes.with_state(app);
    }
    // `Router::layer` wraps each route (and the fallbacks) on its own, so
    // both layers see the route template the request matched.
    access_log::layer(routes, app.metrics.clone()).with_state(app)
}

/// Serves until `shutdown` resolves, then ends open streams and drains requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = app.shutdown.clone();
    let door = app.config.front_door;
    let pacing = BodyPacing {
        min_rate: door.upload_min_rate,
        // A body may start as slowly as a request head may take to arrive.
        grace: door.header_read_timeout,
        drain_limit: drain_limit(app.config.max_upload_bytes),
    };
    tokio::spawn(app.stream_credentials.clone().watch(
        app.store.clone(),
        app.config.credential_check,
        token.clone(),
    ));
    let router = router(app);
    let signal = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    serve_connections(listener, router, door, pacing, token).await
}
