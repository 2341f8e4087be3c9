//! One access-log line per request, through tower-http's tracing layer, and
//! the request id that ties a request's lines together.
//!
//! Every request runs in a `request` span holding its method, route template,
//! path, request id and, once a key or session was checked, the user id; the
//! line is written when the response headers go out, with status and latency.
//! The key is never a field: it travels in a header, which is not logged.
//! The request id is the client's `x-request-id` when it sent a sensible one,
//! else a fresh UUID, and it is sent back in the response's `x-request-id`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Response};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::metrics::UNMATCHED_ROUTE;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// Wraps `routes` (each route, see [`crate::router`]) in the request span,
/// the access line and the request id.
pub fn layer<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(access_line)
                // The access line already says 5xx; one line per request.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unsuitable_request_id))
}

/// A client's request id goes into every log line of the request, so only a
/// short one of letters, digits and `-_.:` is kept; any other is replaced by
/// a fresh one.
async fn drop_unsuitable_request_id(mut request: Request) -> Request {
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

fn request_span(request: &Request<Body>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or(UNMATCHED_ROUTE);
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        path = request.uri().path(),
        request_id,
        user_id = tracing::field::Empty,
    )
}

fn access_line<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}

/// Puts the authenticated user's id on the request's span, so its access
/// line says who asked.
pub fn note_user(user_id: uuid::Uuid) {
    Span::current().record("user_id", tracing::field::display(user_id));
}

/// The request id of the request with these headers (set by this layer),
/// for a job it queues.
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
