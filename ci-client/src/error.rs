//! What can go wrong when talking to the CI server, typed so that callers can
//! tell an authentication problem from a missing job or an unreachable server.

use std::time::Duration;

use ci_common::JobId;
use reqwest::StatusCode;

/// An error from [`crate::ApiClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server did not accept the API key: 401 (unknown, revoked or
    /// inactive) or 403 `Not authenticated` (no key sent).
    #[error("Authentication failed: {status}: {detail}")]
    Unauthorized { status: StatusCode, detail: String },

    /// 404: the job does not exist (or the id is not a job id).
    #[error("{0} (404 Not Found)")]
    NotFound(String),

    /// 403 for a valid key: the job belongs to another user.
    #[error("{0} (403 Forbidden)")]
    Forbidden(String),

    /// No answer from the server: refused, DNS failure, timeout, or the
    /// connection broke before a response arrived.
    #[error("Could not reach the CI server at {url}: {cause}")]
    Unreachable { url: String, cause: String },

    /// Any other error status; `detail` is the server's `{"detail": …}` or body.
    #[error("The CI server answered {status}: {detail}")]
    Http { status: StatusCode, detail: String },

    /// An event stream broke off before the job's `complete` event; the
    /// reconnecting stream retries these, so callers see it only inside
    /// [`ClientError::StreamLost`] or from streams that cannot resume.
    #[error("the event stream from {url} broke off: {cause}")]
    StreamInterrupted { url: String, cause: String },

    /// Reconnecting to a job's stream kept failing for longer than the
    /// reconnect policy allows, or the stream broke off before the server
    /// named the job (so there is nothing to reconnect to).
    #[error("{}", stream_lost_message(.job_id, .gave_up_after, .last_error))]
    StreamLost {
        job_id: Option<JobId>,
        gave_up_after: Duration,
        last_error: String,
    },

    /// The server ended a job's stream with an `error` event that names no
    /// HTTP status (see [`ci_common::api::StreamEvent::Error`]).
    #[error("{0}")]
    StreamEnded(String),

    /// The server answered something this client cannot read.
    #[error("unexpected answer from the CI server: {0}")]
    Protocol(String),

    /// The server URL is not an absolute http(s) URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The HTTP client could not be built (e.g. the TLS backend failed).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

fn stream_lost_message(job_id: &Option<JobId>, waited: &Duration, last_error: &str) -> String {
    match job_id {
        Some(id) => format!(
            "lost the connection to the CI server and could not reconnect within {}s ({last_error}); \
             job {id} continues on the server, use 'ci wait {id}' to follow it",
            waited.as_secs()
        ),
        None => format!(
            "lost the connection to the CI server before it named the job ({last_error}); \
             see 'ci list' for the job"
        ),
    }
}

impl ClientError {
    /// Whether trying again later may succeed: the server was away or
    /// overloaded, not refusing the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::StreamInterrupted { .. } => true,
            ClientError::Http { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Whether the help on how to provide an API key applies.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, ClientError::Unauthorized { .. })
    }

    /// Sorts an error status into the variant callers match on. A 403 is an
    /// authentication failure unless the key was accepted and the job is
    /// someone else's; the server says which in `detail`.
    pub fn from_status(status: StatusCode, detail: String) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized { status, detail },
            StatusCode::FORBIDDEN if detail.to_ascii_lowercase().contains("authenticat") => {
                ClientError::Unauthorized { status, detail }
            }
            StatusCode::FORBIDDEN => ClientError::Forbidden(detail),
            StatusCode::NOT_FOUND => ClientError::NotFound(detail),
            _ => ClientError::Http { status, detail },
        }
    }
}

/// An error while packing a project into a zip archive.
#[derive(Debug, thiserror::Error)]
pub enum ProjectZipError {
    #[error("cannot list the project's files")]
    Walk(#[from] ignore::Error),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("file name is not valid UTF-8: {0}")]
    NonUtf8Path(String),
    #[error("cannot write the zip archive")]
    Zip(#[from] zip::result::ZipError),
}

/// The innermost cause of an error, on one line: reqwest's own message only
/// says "error sending request for url", the useful part ("Connection
/// refused") is at the bottom of the chain.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_variants_callers_match_on() {
        let e = ClientError::from_status(StatusCode::FORBIDDEN, "Not authenticated".into());
        assert!(e.is_auth_failure(), "{e:?}");
        let e = ClientError::from_status(
            StatusCode::UNAUTHORIZED,
            "Invalid or revoked API key".into(),
        );
        assert_eq!(
            e.to_string(),
            "Authentication failed: 401 Unauthorized: Invalid or revoked API key"
        );
        let e = ClientError::from_status(StatusCode::FORBIDDEN, "Access denied".into());
        assert!(matches!(e, ClientError::Forbidden(_)));
        assert!(e.to_string().contains("Access denied"));
        let e = ClientError::from_status(StatusCode::NOT_FOUND, "Job not found".into());
        assert!(e.to_string().contains("not found"));
        let e = ClientError::from_status(StatusCode::SERVICE_UNAVAILABLE, "db down".into());
        assert!(e.is_transient());
        let e = ClientError::from_status(StatusCode::PAYLOAD_TOO_LARGE, "too big".into());
        assert!(!e.is_transient());
    }
}
