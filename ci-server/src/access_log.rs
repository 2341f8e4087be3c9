//! One access-log line per request, through tower-http's tracing layer, and
//! the request id that ties a request's lines together.
//!
//! The line (`request`, at info) is written when the response headers go
//! out, with method, route template, path, status, latency, request id and,
//! once a key or session was checked, the user id. The key is never a field:
//! it travels in a header, which is not logged. The request id is the
//! client's `x-request-id` when it sent a sensible one, else a fresh UUID; it
//! is sent back in the response's `x-request-id` and stored on a job the
//! request queues, so the controller's lines about the job carry it too.
//!
//! The facts are gathered as plain values by [`crate::metrics::CountRequests`]
//! (which sees the route and the request) into [`AccessFacts`] on the
//! response, and the line is one event with them as fields. The request's
//! span is at debug level: at the default level no span is made, because
//! formatting a span's fields for every request, with the line written by
//! the request's own task, halved the `GET /jobs/{id}` throughput of a debug
//! build (ci-bench figure 12; BENCHMARKS.md).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, Response};
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::app::App;
use crate::metrics::ServerMetrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// Where authentication puts the user it found, for the access line: one per
/// request, in its extensions (see [`crate::auth::BearerKey`]).
#[derive(Debug, Clone, Default)]
pub struct UserSlot(Arc<OnceLock<ci_common::UserId>>);

impl UserSlot {
    pub fn note(&self, user_id: ci_common::UserId) {
        let _ = self.0.set(user_id);
    }

    pub fn get(&self) -> Option<ci_common::UserId> {
        self.0.get().copied()
    }
}

/// What the access line says about a request, put on its response.
#[derive(Debug, Clone)]
pub struct AccessFacts {
    pub method: &'static str,
    pub route: &'static str,
    /// Cloning a `Uri` or a `HeaderValue` shares its bytes: no copy per request.
    pub uri: axum::http::Uri,
    pub request_id: Option<axum::http::HeaderValue>,
    pub user: UserSlot,
}

/// Wraps `routes` in the request id, the tracing layer (the access line)
/// and the metrics, as one layer: `Router::layer` boxes each route's service
/// once per call, and every box is one more allocation and indirection per
/// request.
pub fn layer(routes: Router<App>, metrics: Arc<ServerMetrics>) -> Router<App> {
    routes.layer(
        tower::ServiceBuilder::new()
            .map_request(drop_unsuitable_request_id)
            .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::default()))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_request(())
                    .on_response(access_line)
                    // The access line already says 5xx; one line per request.
                    .on_failure(()),
            )
            .layer(crate::metrics::CountRequestsLayer::new(metrics)),
    )
}

/// Request ids made here: UUID-shaped, a random half chosen once per
/// process and a counter, so making one costs no system call (a fresh
/// random UUID asks the kernel for randomness every time) and two replicas
/// never make the same one.
#[derive(Debug, Clone)]
struct RequestIds {
    process: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            process: uuid::Uuid::new_v4().as_u64_pair().0,
            next: Arc::default(),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = uuid::Uuid::from_u64_pair(self.process, n);
        // Written on the stack: the header value is the only copy made.
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        axum::http::HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .ok()
            .map(RequestId::new)
    }
}

/// A client's request id goes into the log lines of the request, so only a
/// short one of letters, digits and `-_.:` is kept; any other is replaced by
/// a fresh one.
fn drop_unsuitable_request_id(mut request: Request) -> Request {
    let suitable = request.headers().get(&REQUEST_ID).map(|v| {
        let v = v.as_bytes();
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if suitable == Some(false) {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// At debug level only (see the module docs).
fn request_span(request: &Request<Body>) -> Span {
    tracing::debug_span!(
        "request",
        request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    )
}

fn access_line<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    match response.extensions().get::<AccessFacts>() {
        Some(facts) => tracing::info!(
            method = facts.method,
            route = facts.route,
            path = facts.uri.path(),
            status,
            latency_ms,
            request_id = facts
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            user_id = facts.user.get().map(tracing::field::display),
            "request"
        ),
        None => tracing::info!(status, latency_ms, "request"),
    }
}

/// The request id of the request with these headers (set by this layer),
/// for a job it queues.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
