//! The replica's Prometheus metrics and `GET /metrics`.
//!
//! Each [`App`] owns its registry (no process-wide recorder), so tests that
//! start several apps in one process read each one's numbers apart. Requests
//! are labelled by route template (`/jobs/{id}`), never by raw path: a label
//! per job id would grow Prometheus's series without bound.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::access_log::{AccessFacts, UserSlot, REQUEST_ID};
use crate::app::App;

/// The route label of a request that matched no route (404s), so probes of
/// random paths land in one series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The content type of prometheus-client's text encoding (OpenMetrics 1.0,
/// which Prometheus reads as well as its own text format).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a request was refused authentication: the `reason` label of
/// `ci_http_auth_failures_total`, put on the error response by
/// [`crate::ApiError`] so that every refusal is counted in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No usable `Authorization: Bearer` header and no session cookie.
    NoCredentials,
    /// A key that is malformed, unknown or revoked, or whose owner is inactive.
    InvalidKey,
    /// A session cookie that names no live session.
    SessionEnded,
    /// A state-changing cookie request from another site.
    CrossSite,
    /// `/metrics` without the right bearer token.
    MetricsToken,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::InvalidKey => "invalid_key",
            AuthFailure::SessionEnded => "session_ended",
            AuthFailure::CrossSite => "cross_site",
            AuthFailure::MetricsToken => "metrics_token",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

/// The route templates seen so far, each kept once for the life of the
/// process: the router's templates are a fixed, small set, so labels are
/// borrowed instead of allocated per request.
static ROUTES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

/// `template` as a `'static` label (see [`ROUTES`]).
pub fn route_label(template: &str) -> &'static str {
    if let Ok(known) = ROUTES.read() {
        if let Some(route) = known.iter().find(|r| **r == template) {
            return route;
        }
    }
    let Ok(mut known) = ROUTES.write() else {
        return UNMATCHED_ROUTE;
    };
    if let Some(route) = known.iter().find(|r| **r == template) {
        return route;
    }
    let route: &'static str = Box::leak(template.to_string().into_boxed_str());
    known.push(route);
    route
}

/// The method label: the standard methods by name, any other as `other`,
/// so a client cannot make new series by inventing methods.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Request latency buckets, 1 ms to 10 s: API answers take milliseconds,
/// uploads of big projects seconds.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The replica's metrics.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    open_streams: Gauge,
    upload_bytes: Counter,
    auth_failures: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let open_streams = Gauge::default();
        let upload_bytes = Counter::default();
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ci_http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        registry.register(
            "ci_http_request_duration_seconds",
            "Time from a request's arrival to its response headers, by route template and method",
            request_duration.clone(),
        );
        registry.register(
            "ci_http_open_streams",
            "Event streams (SSE) open on this replica",
            open_streams.clone(),
        );
        registry.register(
            "ci_http_upload_bytes",
            "Bytes of project archives accepted in uploads",
            upload_bytes.clone(),
        );
        registry.register(
            "ci_http_auth_failures",
            "Requests refused authentication, by reason",
            auth_failures.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            request_duration,
            open_streams,
            upload_bytes,
            auth_failures,
        }
    }
}

/// Held by an open event stream; the gauge goes down when the stream is
/// dropped, however it ended (completed, client gone, shutdown).
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ServerMetrics {
    pub fn stream_opened(&self) -> OpenStream {
        self.open_streams.inc();
        OpenStream(self.open_streams.clone())
    }

    pub fn uploaded(&self, bytes: u64) {
        self.upload_bytes.inc_by(bytes);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn observe(
        &self,
        route: &'static str,
        method: &'static str,
        status: StatusCode,
        started: Instant,
    ) {
        self.request_duration
            .get_or_create(&RouteLabels { route, method })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// Counts and times every request; added per route by
/// [`crate::router`], so the route template is known here.
/// It also gathers the access line's facts (see [`crate::access_log`]).
///
/// A hand-written layer rather than `axum::middleware::from_fn`, which per
/// request clones and boxes the inner service and boxes its future: three
/// allocations and two dynamic calls that figure 13 (ci-bench) pays for on
/// every `GET /jobs/{id}`.
#[derive(Debug, Clone)]
pub struct CountRequestsLayer {
    metrics: Arc<ServerMetrics>,
}

impl CountRequestsLayer {
    pub fn new(metrics: Arc<ServerMetrics>) -> Self {
        CountRequestsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`CountRequestsLayer`].
#[derive(Debug, Clone)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Arc<ServerMetrics>,
}

impl<S> tower::Service<Request> for CountRequests<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, |p| route_label(p.as_str()));
        let method = method_label(request.method());
        let user = UserSlot::default();
        request.extensions_mut().insert(user.clone());
        let facts = AccessFacts {
            method,
            route,
            uri: request.uri().clone(),
            request_id: request.headers().get(&REQUEST_ID).cloned(),
            user,
        };
        Counted {
            inner: self.inner.call(request),
            done: Some((self.metrics.clone(), facts, started)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a request [`CountRequests`] counts, once it is there.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        done: Option<(Arc<ServerMetrics>, AccessFacts, Instant)>,
    }
}

impl<F, E> std::future::Future for Counted<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some((metrics, facts, started)) = this.done.take() {
            if let Some(reason) = response.extensions().get::<AuthFailure>() {
                metrics
                    .auth_failures
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
            metrics.observe(facts.route, facts.method, response.status(), started);
            response.extensions_mut().insert(facts);
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// `GET /metrics`: open, unless `CI_METRICS_TOKEN` is set, then only with
/// `Authorization: Bearer <token>` (compared in constant time).
pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(token) = app.config.metrics_token.as_deref() {
        let offered = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or_default();
        if !same_token(offered.as_bytes(), token.as_bytes()) {
            return crate::ApiError::new(
                StatusCode::UNAUTHORIZED,
                "The metrics need the bearer token of CI_METRICS_TOKEN",
            )
            .refusing(AuthFailure::MetricsToken)
            .into_response();
        }
    }
    let mut response = app.metrics.encode().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// Compares without stopping at the first difference, so the time taken
/// tells nothing about how much of a guess was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret", b"secret"));
        assert!(!same_token(b"secret", b"secreT"));
        assert!(!same_token(b"secret", b"secret2"));
        assert!(!same_token(b"", b"secret"));
    }

    #[test]
    fn requests_are_counted_by_route_template() {
        let metrics = ServerMetrics::default();
        let started = Instant::now();
        metrics.observe("/jobs/{id}", "GET", StatusCode::OK, started);
        metrics.observe("/jobs/{id}", "GET", StatusCode::OK, started);
        metrics.observe("/jobs/{id}", "GET", StatusCode::NOT_FOUND, started);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"ci_http_requests_total{route="/jobs/{id}",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ci_http_request_duration_seconds_count{route="/jobs/{id}",method="GET"} 3"#
            ),
            "{text}"
        );
        let stream = metrics.stream_opened();
        assert!(metrics.encode().contains("ci_http_open_streams 1\n"));
        drop(stream);
        assert!(metrics.encode().contains("ci_http_open_streams 0\n"));
    }
}
