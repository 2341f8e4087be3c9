//! Errors as the API shows them: a status code and `{"detail": "…"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ci_common::api::ErrorBody;
use ci_persistence::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
        }
    }

    pub fn not_authenticated() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Not authenticated")
    }

    pub fn invalid_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Invalid or revoked API key")
    }

    /// A session cookie that names no live session (signed out, or its key
    /// was revoked or its owner deactivated).
    pub fn session_ended() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Session ended; sign in again")
    }

    /// A state-changing request resting on the session cookie, from a page
    /// that is not this server's own.
    pub fn cross_site() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Cross-site request refused")
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
        (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response()
    }
}
