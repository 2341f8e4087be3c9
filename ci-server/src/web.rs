//! The page: `GET /` (the job list) and `GET /jobs/{id}` asked for as HTML
//! (the job and its live log) serve one HTML document, whose script and style
//! are compiled into the binary, so the page works on a machine without
//! internet and is always the version of the server that serves it.
//!
//! The bundle is built from `web/` by `scripts/web-build.sh` and committed,
//! so `cargo build` needs no npm.

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::routes;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Only this server's own script and style; `style-src` allows inline
/// `style` attributes, which the log's colours and row positions are.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small, and must change with the binary: revalidate every time.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page. It signs in by itself when there is no session.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /jobs/{id}`: the page when a browser asks for HTML, else the JSON
/// summary exactly as before (clients send `application/json`, `*/*` or nothing).
pub async fn job_page_or_summary(State(app): State<App>, request: Request) -> Response {
    if wants_html(request.headers()) {
        return page().await;
    }
    routes::get_job.call(request, app).await
}

/// Whether `Accept` names `text/html` (a browser's navigation) with a
/// non-zero quality.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let is_html = parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case("text/html"));
            is_html
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::wants_html;
    use axum::http::{HeaderMap, HeaderValue};

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn browsers_get_html_and_clients_json() {
        assert!(wants_html(&accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(wants_html(&accept("TEXT/HTML")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("text/html;q=0, application/json")));
        assert!(!wants_html(&HeaderMap::new()));
    }
}
