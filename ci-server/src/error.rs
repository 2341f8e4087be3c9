//! Errors as the API shows them: a status code and `{"detail": "…"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ci_common::api::ErrorBody;
use ci_persistence::StoreError;

use crate::metrics::AuthFailure;

#[derive(Debug, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// Set on authentication refusals, for the metrics (see
    /// [`crate::metrics::CountRequests`]).
    auth_failure: Option<AuthFailure>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            auth_failure: None,
        }
    }

    pub(crate) fn refusing(mut self, why: AuthFailure) -> Self {
        self.auth_failure = Some(why);
        self
    }

    pub fn not_authenticated() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Not authenticated").refusing(AuthFailure::NoCredentials)
    }

    pub fn invalid_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Invalid or revoked API key")
            .refusing(AuthFailure::InvalidKey)
    }

    /// A session cookie that names no live session (signed out, or its key
    /// was revoked or its owner deactivated).
    pub fn session_ended() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Session ended; sign in again")
            .refusing(AuthFailure::SessionEnded)
    }

    /// A state-changing request resting on the session cookie, from a page
    /// that is not this server's own.
    pub fn cross_site() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Cross-site request refused")
            .refusing(AuthFailure::CrossSite)
    }

    pub fn job_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Job not found")
    }

    pub fn access_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Access denied")
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The job database is unavailable; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response();
        if let Some(why) = self.auth_failure {
            response.extensions_mut().insert(why);
        }
        response
    }
}
