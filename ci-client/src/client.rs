//! The typed HTTP client for the CI server's API.

use std::sync::Arc;
use std::time::Duration;

use ci_common::api::{JobSummary, StreamStart, SubmitResponse};
use ci_common::JobId;
use ci_common::JobOptions;
use futures::StreamExt as _;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{root_cause, ClientError};
use crate::follow::{self, Connection, JobEvents, ReconnectPolicy};

/// How long to wait for a TCP (and TLS) connection before calling the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections are let go before the server closes them (its
/// keep-alive timeout, `CI_KEEP_ALIVE_TIMEOUT`, is 5 s by default): a pooled
/// connection taken for a new request just as the server closes it fails
/// with "connection closed before message completed", which a client that
/// waits a few seconds between two requests would otherwise meet now and then.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit for the small requests (list, get, cancel): they answer in milliseconds.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for an async upload: a project can be up to 100 MiB by default.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest part of an error body quoted back when it is not `{"detail": …}`.
const MAX_QUOTED_BODY: usize = 200;

/// Called with the error that broke a job's event stream, once at the start
/// of each outage, so a CLI can say why the output paused.
pub type ReconnectNotice = Arc<dyn Fn(&ClientError) + Send + Sync>;

/// Told how many bytes of an upload have been handed to the connection,
/// so a CLI can show progress.
pub type UploadProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// Pieces an upload is sent in when its progress is watched.
const UPLOAD_PIECE: usize = 256 * 1024;

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
    on_upload: Option<UploadProgress>,
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
        let trimmed = with_scheme(base_url.trim().trim_end_matches('/'));
        let trimmed = trimmed.as_str();
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
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .user_agent(concat!("ci-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(root_cause(&e)))?;
        Ok(ApiClient {
            http,
            base_url: trimmed.to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            policy: ReconnectPolicy::default(),
            on_reconnect: None,
            on_upload: None,
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

    /// Registers a callback told the bytes sent so far of each upload.
    pub fn on_upload_progress(mut self, progress: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_upload = Some(Arc::new(progress));
        self
    }

    /// The server's root URL, as errors name it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether the URL sends the key in the clear to another machine: plain
    /// `http://` to a host that is not this one.
    pub fn sends_key_in_the_clear(&self) -> bool {
        let Ok(url) = reqwest::Url::parse(&self.base_url) else {
            return false;
        };
        let host = url.host_str().unwrap_or("localhost");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.api_key.is_some() && url.scheme() == "http" && !loopback
    }

    /// Asks the server whether it takes the key, with a request that carries
    /// no body: a server refuses a key before it reads an upload, and an
    /// answer sent while the client is still uploading is often lost to a
    /// broken pipe, so a submit checks first. A good key is told by the 404
    /// for a job id no job has.
    pub async fn check_key(&self) -> Result<(), ClientError> {
        let request = self
            .get(&format!("/jobs/{}", JobId::nil()))
            .timeout(QUERY_TIMEOUT);
        match self.send(request).await {
            Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Uploads the project and queues a job without waiting for it.
    pub async fn submit_async(
        &self,
        project_zip: Vec<u8>,
        options: &JobOptions,
    ) -> Result<JobId, ClientError> {
        let request = self
            .post("/submit-async")
            .multipart(upload_form(project_zip, options, self.on_upload.clone())?)
            .timeout(UPLOAD_TIMEOUT);
        let response = self.send(request).await?;
        let body: SubmitResponse = read_json(response, &self.base_url).await?;
        Ok(body.job_id)
    }

    /// Uploads the project, queues a job and follows it from its first
    /// output. The first event is [`ci_common::api::StreamEvent::JobId`];
    /// once it has arrived, a dropped connection is resumed at
    /// `/jobs/{id}/stream` exactly after the last event received.
    pub async fn submit_stream(
        &self,
        project_zip: Vec<u8>,
        options: &JobOptions,
    ) -> Result<JobEvents, ClientError> {
        // No overall timeout: the response is the job's whole run. A silent
        // connection is caught by the stream's idle timeout instead.
        let request = self.post("/submit-stream").multipart(upload_form(
            project_zip,
            options,
            self.on_upload.clone(),
        )?);
        let response = self.send(request).await?;
        let connection = Connection::open(response, self.policy.idle_timeout);
        Ok(follow::follow(
            self.clone(),
            None,
            StreamStart::After(0),
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
        from: StreamStart,
    ) -> Result<JobEvents, ClientError> {
        // Once the first events are in, "from the beginning" is "after 0".
        let resume = match from {
            StreamStart::Beginning => StreamStart::After(0),
            other => other,
        };
        let mut request = self
            .get(&format!("/jobs/{job_id}/stream"))
            .query(&from.query());
        if let StreamStart::After(seq) = from {
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

    /// The history of a project's tests over the caller's latest jobs of it.
    pub async fn project_tests(
        &self,
        project: &str,
    ) -> Result<ci_common::test_results::ProjectTests, ClientError> {
        let path = format!("/projects/{}/tests", path_segment(project));
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

    /// Queues the job's archive again as a new job (same code, no upload).
    pub async fn rerun_job(&self, job_id: JobId) -> Result<JobId, ClientError> {
        let request = self
            .post(&format!("/jobs/{job_id}/rerun"))
            .timeout(QUERY_TIMEOUT);
        let body: SubmitResponse = read_json(self.send(request).await?, &self.base_url).await?;
        Ok(body.job_id)
    }

    /// A job's stored output as it is now, as a stream of text pieces, so a
    /// long log is written out as it arrives instead of held whole.
    pub async fn job_log(
        &self,
        job_id: JobId,
    ) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, ClientError>>, ClientError> {
        let response = self.send(self.get(&format!("/jobs/{job_id}/log"))).await?;
        let url = self.base_url.clone();
        Ok(futures::StreamExt::map(
            response.bytes_stream(),
            move |piece| {
                piece.map_err(|e| ClientError::StreamInterrupted {
                    url: url.clone(),
                    cause: root_cause(&e),
                })
            },
        ))
    }

    /// Reopens a job's stream after a drop: after the last event seen, or
    /// from now when none carried a sequence number.
    pub(crate) async fn reopen_stream(
        &self,
        job_id: JobId,
        resume: StreamStart,
    ) -> Result<Connection, ClientError> {
        let mut request = self
            .get(&format!("/jobs/{job_id}/stream"))
            .query(&resume.query());
        if let StreamStart::After(seq) = resume {
            request = request.header("Last-Event-ID", seq);
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
        let url = response.url().to_string();
        let body = response.text().await.unwrap_or_default();
        let detail = error_detail(status, &body);
        // The router's own 404 (not "Job not found"): the path does not
        // exist there, so the base URL is probably wrong. Say which answered.
        if status == StatusCode::NOT_FOUND && detail == "Not Found" {
            return Err(ClientError::Http {
                status,
                detail: format!(
                    "{url} does not exist there; is {} the CI server's address?",
                    self.base_url
                ),
            });
        }
        Err(ClientError::from_status(status, detail))
    }
}

/// `host:port` as `http://host:port`: a URL without a scheme is the common
/// way to name a server on the command line.
fn with_scheme(url: &str) -> String {
    if url.contains("://") || url.is_empty() {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The multipart body the reference server expects: one field `file`.
/// With `progress`, the zip is sent in pieces, each reported as it is taken.
/// The upload: the project zip in `file`, as the reference client sends it,
/// and beside it only the options that are set, so a job asked for nothing
/// is the reference's request exactly.
fn upload_form(
    project_zip: Vec<u8>,
    options: &JobOptions,
    progress: Option<UploadProgress>,
) -> Result<reqwest::multipart::Form, ClientError> {
    let part = match progress {
        None => reqwest::multipart::Part::bytes(project_zip),
        Some(progress) => {
            let length = project_zip.len() as u64;
            let zip = bytes::Bytes::from(project_zip);
            let pieces: Vec<bytes::Bytes> = (0..zip.len())
                .step_by(UPLOAD_PIECE)
                .map(|start| zip.slice(start..(start + UPLOAD_PIECE).min(zip.len())))
                .collect();
            let mut sent = 0u64;
            let stream = futures::stream::iter(pieces).map(move |piece| {
                sent += piece.len() as u64;
                progress(sent);
                Ok::<_, std::io::Error>(piece)
            });
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), length)
        }
    };
    let part = part
        .file_name("project.zip")
        .mime_str("application/zip")
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut form = reqwest::multipart::Form::new().part("file", part);
    if let Some(python) = options.python {
        form = form.text("python", python.to_string());
    }
    if let Some(project) = &options.project {
        form = form.text("project", project.clone());
    }
    if options.fresh_env {
        form = form.text("fresh_env", "true");
    }
    if !options.pytest_args.is_empty() {
        let args = serde_json::to_string(&options.pytest_args)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        form = form.text("pytest_args", args);
    }
    Ok(form)
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

/// `text` as one URL path segment: every byte but RFC 3986's unreserved
/// characters percent-encoded, so a project name with `/`, `?` or a space
/// stays one segment.
fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_name_stays_one_path_segment() {
        assert_eq!(path_segment("calc-2_x.y~"), "calc-2_x.y~");
        assert_eq!(path_segment("a/b c?d%"), "a%2Fb%20c%3Fd%25");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

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
    fn only_plain_http_to_other_hosts_sends_the_key_in_the_clear() {
        let key = || Some("ci_k".to_string());
        let clear = |url: &str, key: Option<String>| {
            ApiClient::new(url, key)
                .expect("valid")
                .sends_key_in_the_clear()
        };
        assert!(clear("http://ci.example.com:8000", key()));
        assert!(clear("10.0.0.5:8000", key()));
        assert!(!clear("https://ci.example.com", key()));
        assert!(!clear("http://localhost:8000", key()));
        assert!(!clear("http://127.0.0.1:8000", key()));
        assert!(!clear("http://[::1]:8000", key()));
        assert!(!clear("http://ci.example.com", None));
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        let client = ApiClient::new("http://localhost:8000/", None).expect("valid");
        assert_eq!(client.base_url(), "http://localhost:8000");
        let bare = ApiClient::new("127.0.0.1:8000", None).expect("valid");
        assert_eq!(bare.base_url(), "http://127.0.0.1:8000");
        assert!(matches!(
            ApiClient::new("ftp://localhost:8000", None),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(matches!(
            ApiClient::new("not a url", None),
            Err(ClientError::InvalidUrl { .. })
        ));
    }
}
