//! The bearer-key extractor: every handler that takes an [`AuthUser`] is
//! authenticated, and gets the key's owner.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ci_common::{hash_api_key, looks_like_api_key, User};

use crate::app::App;
use crate::error::ApiError;

/// The user whose active key authorised this request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl FromRequestParts<App> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        // As FastAPI's HTTPBearer: no usable `Bearer <credentials>` header is 403.
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::not_authenticated)?;
        let (scheme, key) = header
            .trim()
            .split_once(' ')
            .ok_or_else(ApiError::not_authenticated)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(ApiError::not_authenticated());
        }
        // A key of the wrong shape cannot exist; skip the look-up.
        if !looks_like_api_key(key) {
            return Err(ApiError::invalid_key());
        }
        match app.store.authenticate(&hash_api_key(key)).await? {
            Some(user) => Ok(AuthUser(user)),
            None => Err(ApiError::invalid_key()),
        }
    }
}
