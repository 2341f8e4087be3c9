//! The typed HTTP client for the CI server's API.

use std::sync::Arc;
use std::time::Duration;

use ci_common::api::{JobSummary, SubmitResponse};
use ci_common::JobId;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{root_cause, ClientError};
use crate::follow::{self, Connection, FollowFrom, JobEvents, ReconnectPolicy, Resume};

/// How long to wait for a TCP (and TLS) connection before calling the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for the small requests (list, get, cancel): they answer in milliseconds.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for an async upload: a project can be up to 100 MiB by default.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest part of an error body quoted back when it is not `{"detail": …}`.
const MAX_QUOTED_BODY: usize = 200;

/// Called with the error that broke a job's event stream, once at the start
/// of each outage, so a CLI can say why the output paused.
pub type ReconnectNotice = Arc<dyn Fn(&ClientError) + Send + Sync>;

/// A client for one CI server, authenticated with one API key.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The server's root URL without a trailing slash; paths are appended.
    base_url: String,
    api_key: Option<String>,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) on_reconnect: Option<ReconnectNotice>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key itself.
        f.debug_struct("ApiClient")
            .field("base_url", &self.base_url)
            .field("has_api_key", &self.api_key.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

impl ApiClient {
    /// A client for the server at `base_url` (e.g. `http://localhost:8000`).
    /// Without a key no `Authorization` header is sent and the server answers
    /// 403 `Not authenticated`, which is how the user learns a key is needed.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, ClientError> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(trimmed).map_err(|e| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl {
                url: base_url.to_string(),
                reason: "the scheme must be http or https".to_string(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ci-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(root_cause(&e)))?;
        Ok(ApiClient {
            http,
            base_url: trimmed.to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            policy: ReconnectPolicy::default(),
            on_reconnect: None,
        })
    }

    /// Replaces how event streams retry after a dropped connection.
    pub fn with_reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Registers a callback told when a job's event stream broke and is being
    /// resumed; the stream itself hides the outage from its consumer.
    pub fn on_reconnect(mut self, notice: impl Fn(&ClientError) + Send + Sync + 'static) -> Self {
        self.on_reconnect = Some(Arc::new(notice));
        self
    }

    /// The server's root URL, as errors name it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Uploads the project and queues a job without waiting for it.
    pub async fn submit_async(&self, project_zip: Vec<u8>) -> Result<JobId, ClientError> {
        let request = self
            .post("/submit-async")
            .multipart(upload_form(project_zip)?)
            .timeout(UPLOAD_TIMEOUT);
        let response = self.send(request).await?;
        let body: SubmitResponse = read_json(response, &self.base_url).await?;
        Ok(body.job_id)
    }

    /// Uploads the project, queues a job and follows it from its first
    /// output. The first event is [`ci_common::api::StreamEvent::JobId`];
    /// once it has arrived, a dropped connection is resumed at
    /// `/jobs/{id}/stream` exactly after the last event received.
    pub async fn submit_stream(&self, project_zip: Vec<u8>) -> Result<JobEvents, ClientError> {
        // No overall timeout: the response is the job's whole run. A silent
        // connection is caught by the stream's idle timeout instead.
        let request = self
            .post("/submit-stream")
            .multipart(upload_form(project_zip)?);
        let response = self.send(request).await?;
        let connection = Connection::open(response, self.policy.idle_timeout);
        Ok(follow::follow(
            self.clone(),
            None,
            Resume::After(0),
            connection,
        ))
    }

    /// Follows a job's output until its `complete` event, resuming after
    /// dropped connections without losing or repeating an event. Errors that
    /// reconnecting cannot fix (unknown job, another user's job, bad key)
    /// come back at once, before any event.
    pub async fn follow_job(
        &self,
        job_id: JobId,
        from: FollowFrom,
    ) -> Result<JobEvents, ClientError> {
        let (query, resume): (Vec<(&str, String)>, Resume) = match from {
            FollowFrom::Now => (Vec::new(), Resume::Now),
            FollowFrom::Beginning => (
                vec![("from_beginning", "true".to_string())],
                Resume::After(0),
            ),
            FollowFrom::After(seq) => (vec![("after", seq.to_string())], Resume::After(seq)),
        };
        let mut request = self.get(&format!("/jobs/{job_id}/stream")).query(&query);
        if let FollowFrom::After(seq) = from {
            request = request.header("Last-Event-ID", seq);
        }
        let connection = self.open_stream(request).await?;
        Ok(follow::follow(
            self.clone(),
            Some(job_id),
            resume,
            connection,
        ))
    }

    /// The caller's jobs, newest first.
    pub async fn list_jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        let response = self.send(self.get("/jobs").timeout(QUERY_TIMEOUT)).await?;
        read_json(response, &self.base_url).await
    }

    /// One of the caller's jobs.
    pub async fn get_job(&self, job_id: JobId) -> Result<JobSummary, ClientError> {
        let request = self.get(&format!("/jobs/{job_id}")).timeout(QUERY_TIMEOUT);
        read_json(self.send(request).await?, &self.base_url).await
    }

    /// The job's test cases; with `failed_only`, only those that failed the
    /// run (failed, error, xpassed), filtered by the server so a big suite's
    /// passes are not sent.
    pub async fn job_tests(
        &self,
        job_id: JobId,
        failed_only: bool,
    ) -> Result<ci_common::test_results::JobTests, ClientError> {
        let mut path = format!("/jobs/{job_id}/tests");
        if failed_only {
            let failing: Vec<&str> = ci_common::test_results::TestOutcome::ALL
                .into_iter()
                .filter(|o| o.is_failure())
                .map(|o| o.as_str())
                .collect();
            path.push_str("?outcome=");
            path.push_str(&failing.join(","));
        }
        let request = self.get(&path).timeout(QUERY_TIMEOUT);
        read_json(self.send(request).await?, &self.base_url).await
    }

    /// Asks the server to stop a job; the answer is the job as it is right
    /// after the request (the controller stops a running job shortly after).
    pub async fn cancel_job(&self, job_id: JobId) -> Result<JobSummary, ClientError> {
        let request = self
            .post(&format!("/jobs/{job_id}/cancel"))
            .timeout(QUERY_TIMEOUT);
        read_json(self.send(request).await?, &self.base_url).await
    }

    /// Reopens a job's stream after a drop: after the last event seen, or
    /// from now when none carried a sequence number.
    pub(crate) async fn reopen_stream(
        &self,
        job_id: JobId,
        resume: Resume,
    ) -> Result<Connection, ClientError> {
        let mut request = self.get(&format!("/jobs/{job_id}/stream"));
        if let Resume::After(seq) = resume {
            request = request
                .query(&[("after", seq)])
                .header("Last-Event-ID", seq);
        }
        self.open_stream(request).await
    }

    /// Sends a stream request, giving up when the server does not even answer
    /// with headers within the idle timeout (a hung replica).
    async fn open_stream(&self, request: RequestBuilder) -> Result<Connection, ClientError> {
        let response = tokio::time::timeout(self.policy.idle_timeout, self.send(request))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base_url.clone(),
                cause: format!(
                    "no answer within {}s",
                    self.policy.idle_timeout.as_secs_f32()
                ),
            })??;
        Ok(Connection::open(response, self.policy.idle_timeout))
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.authorized(self.http.get(format!("{}{path}", self.base_url)))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.authorized(self.http.post(format!("{}{path}", self.base_url)))
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends a request; a response with an error status becomes the typed error.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base_url.clone(),
            cause: root_cause(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(ClientError::from_status(
            status,
            error_detail(status, &body),
        ))
    }
}

/// The multipart body the reference server expects: one field `file`.
fn upload_form(project_zip: Vec<u8>) -> Result<reqwest::multipart::Form, ClientError> {
    let part = reqwest::multipart::Part::bytes(project_zip)
        .file_name("project.zip")
        .mime_str("application/zip")
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    Ok(reqwest::multipart::Form::new().part("file", part))
}

async fn read_json<T: DeserializeOwned>(
    response: Response,
    base_url: &str,
) -> Result<T, ClientError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: base_url.to_string(),
            cause: root_cause(&e),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The server's reason for an error: `detail` of a `{"detail": …}` body, else
/// the start of the body, else the status's reason phrase.
fn error_detail(status: StatusCode, body: &str) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) {
        match map.get("detail") {
            Some(serde_json::Value::String(detail)) => return detail.clone(),
            Some(other) => return other.to_string(),
            None => {}
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut quoted: String = body.chars().take(MAX_QUOTED_BODY).collect();
    if quoted.len() < body.len() {
        quoted.push('…');
    }
    quoted.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_come_from_the_body_when_possible() {
        assert_eq!(
            error_detail(
                StatusCode::UNAUTHORIZED,
                r#"{"detail":"Invalid or revoked API key"}"#
            ),
            "Invalid or revoked API key"
        );
        assert_eq!(
            error_detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"detail":[{"loc":["file"]}]}"#
            ),
            r#"[{"loc":["file"]}]"#
        );
        assert_eq!(
            error_detail(StatusCode::BAD_GATEWAY, "<html>\n bad gateway </html>"),
            "<html> bad gateway </html>"
        );
        assert_eq!(error_detail(StatusCode::BAD_GATEWAY, ""), "Bad Gateway");
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        let client = ApiClient::new("http://localhost:8000/", None).expect("valid");
        assert_eq!(client.base_url(), "http://localhost:8000");
        assert!(matches!(
            ApiClient::new("localhost:8000", None),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            ApiClient::new("not a url", None),
            Err(ClientError::InvalidUrl { .. })
        ));
    }
}
