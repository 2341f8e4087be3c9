//! Browser sessions: `POST /session` trades an API key for an HttpOnly cookie,
//! so the page never keeps the key where its scripts could read it, and
//! `DELETE /session` signs out.
//!
//! The cookie is accepted wherever a bearer key is (see [`crate::auth`]); the
//! session's key is checked like a bearer key on every request. Because a
//! browser sends cookies by itself, a state-changing request that rests on the
//! cookie must also come from this server's own page: its `Origin` must be the
//! server's own origin (SameSite=Strict is the second fence).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::header::{HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ci_common::{hash_api_key, looks_like_api_key};
use ci_persistence::SessionLookup;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::error::ApiError;

/// The cookie's name, as the contract states it.
pub const SESSION_COOKIE: &str = "ci_session";
/// Random bytes in a session id (hex encoded in the cookie).
const SESSION_ID_BYTES: usize = 32;

#[derive(Debug, Deserialize)]
pub struct SessionRequest {
    api_key: String,
}

/// `POST /session`: 204 with the cookie for a good key, 401 for any other.
pub async fn create_session(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<SessionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // The body carries the key, so there is no ambient authority to abuse,
    // but a foreign page must not sign a visitor in to an account of its choosing.
    if headers.contains_key(ORIGIN) && !is_same_origin(&headers) {
        return Err(ApiError::cross_site());
    }
    let Json(request) =
        body.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?;
    let key = request.api_key.trim();
    if !looks_like_api_key(key) {
        return Err(ApiError::invalid_key());
    }
    let session_id = new_session_id()?;
    if !app
        .store
        .create_session(&hash_session_id(&session_id), &hash_api_key(key))
        .await?
    {
        return Err(ApiError::invalid_key());
    }
    tracing::info!("session started");
    let cookie = format!(
        "{SESSION_COOKIE}={session_id}; HttpOnly; SameSite=Strict; Path=/{}",
        secure_attribute(&headers)
    );
    Ok(with_cookie(cookie))
}

/// `DELETE /session`: ends the session the cookie names (if any) and clears
/// the cookie; 204 either way, so signing out twice is harmless.
pub async fn delete_session(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = session_cookie(&headers) {
        if !is_same_origin(&headers) {
            return Err(ApiError::cross_site());
        }
        app.store.delete_session(&hash_session_id(id)).await?;
        tracing::info!("session ended by sign-out");
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attribute(&headers)
    );
    Ok(with_cookie(cookie))
}

fn with_cookie(cookie: String) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// The key hash a session cookie stands for, for a request that carries no
/// `Authorization` header: 403 for a state-changing request from another
/// origin, 401 for a session that does not exist or has ended.
pub async fn key_hash_from_session(
    parts: &Parts,
    app: &App,
    session_id: &str,
) -> Result<String, ApiError> {
    if is_state_changing(&parts.method) && !is_same_origin(&parts.headers) {
        return Err(ApiError::cross_site());
    }
    if !looks_like_session_id(session_id) {
        return Err(ApiError::session_ended());
    }
    match app
        .store
        .look_up_session(&hash_session_id(session_id))
        .await?
    {
        SessionLookup::Active { key_hash } => Ok(key_hash),
        SessionLookup::Ended => {
            tracing::info!("session ended: its key was revoked or its owner deactivated");
            Err(ApiError::session_ended())
        }
        SessionLookup::Unknown => Err(ApiError::session_ended()),
    }
}

/// The session id from the `Cookie` header(s), if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether the request came over TLS, as far as this server can know: it
/// speaks plain HTTP itself, so only a TLS-terminating proxy's
/// `X-Forwarded-Proto: https` says so.
fn is_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

fn secure_attribute(headers: &HeaderMap) -> &'static str {
    if is_tls(headers) {
        "; Secure"
    } else {
        ""
    }
}

/// Whether `Origin` is this server's own origin: the scheme the request came
/// over and the `Host` it was sent to. A missing `Origin` is not the same origin.
fn is_same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let scheme = if is_tls(headers) { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

fn new_session_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; SESSION_ID_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "the operating system's random number generator failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Cannot start a session")
    })?;
    Ok(hex::encode(bytes))
}

fn looks_like_session_id(id: &str) -> bool {
    id.len() == SESSION_ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The only form of a session id the database holds.
fn hash_session_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; ci_session=abc ; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "ci_session=def")]);
        assert_eq!(session_cookie(&h), Some("def"));
        assert_eq!(
            session_cookie(&headers(&[("cookie", "xci_session=1")])),
            None
        );
        assert_eq!(session_cookie(&headers(&[("cookie", "ci_session=")])), None);
    }

    #[test]
    fn same_origin_means_scheme_host_and_port() {
        let own = |origin: &str, extra: &[(&'static str, &str)]| {
            let mut pairs = vec![("host", "ci.example:8000"), ("origin", origin)];
            pairs.extend_from_slice(extra);
            is_same_origin(&headers(&pairs))
        };
        assert!(own("http://ci.example:8000", &[]));
        assert!(!own("http://ci.example", &[]));
        assert!(!own("https://ci.example:8000", &[]));
        assert!(!own("http://evil.example:8000", &[]));
        assert!(!own("null", &[]));
        assert!(own(
            "https://ci.example:8000",
            &[("x-forwarded-proto", "https")]
        ));
        assert!(!is_same_origin(&headers(&[("host", "ci.example")])));
    }

    #[test]
    fn session_ids_are_random_hex() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert!(looks_like_session_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!looks_like_session_id("zz"));
    }
}
