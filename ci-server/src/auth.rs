//! The bearer-key extractors: every handler that takes an [`AuthUser`] is
//! authenticated, and gets the key's owner. Handlers about one job take a
//! [`BearerKey`] instead and check key and job in one database round trip.
//!
//! A request without an `Authorization` header may carry the page's session
//! cookie instead; it stands for the key the session was made from, which the
//! handler then checks like any bearer key (see [`crate::session`]).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ci_common::{hash_api_key, looks_like_api_key, User};

use crate::access_log::UserSlot;
use crate::app::App;
use crate::error::ApiError;
use crate::session;

/// The user whose active key authorised this request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl FromRequestParts<App> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let key = BearerKey::from_request_parts(parts, app).await?;
        key.user(app).await.map(AuthUser)
    }
}

/// A well-formed bearer key from the `Authorization` header, or the key behind
/// a live session cookie, hashed, not yet checked against the database.
#[derive(Debug, Clone)]
pub struct BearerKey {
    pub hash: String,
    /// Where the user the key turns out to belong to is noted, for the
    /// request's access line.
    pub user_slot: UserSlot,
}

impl BearerKey {
    /// The key's owner: 401 for an unknown or revoked key or an inactive user.
    pub async fn user(&self, app: &App) -> Result<User, ApiError> {
        let user = app
            .store
            .authenticate(&self.hash)
            .await?
            .ok_or_else(ApiError::invalid_key)?;
        self.user_slot.note(user.id);
        Ok(user)
    }
}

impl FromRequestParts<App> for BearerKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            let Some(session_id) = session::session_cookie(&parts.headers) else {
                return Err(ApiError::not_authenticated());
            };
            let hash = session::key_hash_from_session(parts, app, session_id).await?;
            return Ok(BearerKey {
                hash,
                user_slot: user_slot(parts),
            });
        };
        // As FastAPI's HTTPBearer: no usable `Bearer <credentials>` header is 403.
        let header = header.to_str().map_err(|_| ApiError::not_authenticated())?;
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
        Ok(BearerKey {
            hash: hash_api_key(key),
            user_slot: user_slot(parts),
        })
    }
}

/// The request's slot for its user (a detached one when requests are not
/// observed, as for the benchmark's baseline).
fn user_slot(parts: &Parts) -> UserSlot {
    parts
        .extensions
        .get::<UserSlot>()
        .cloned()
        .unwrap_or_default()
}
