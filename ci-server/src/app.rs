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

use crate::sse::StreamReads;
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_upload_bytes: 100 * 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            stream_resync: Duration::from_secs(2),
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
}

impl App {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        App {
            store,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            stream_reads: Arc::default(),
        }
    }
}

/// Multipart framing around the file: boundaries, part headers.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

pub fn router(app: App) -> Router {
    let body_limit = usize::try_from(
        app.config
            .max_upload_bytes
            .saturating_add(MULTIPART_OVERHEAD),
    )
    .unwrap_or(usize::MAX);
    Router::new()
        .route("/", get(web::page))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
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
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Serves until `shutdown` resolves, then ends open streams and drains requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = app.shutdown.clone();
    let router = router(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            token.cancel();
        })
        .await
}
