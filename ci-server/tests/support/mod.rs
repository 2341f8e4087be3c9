//! Test support, in the Zero-To-Production style: [`spawn_app`] starts the
//! real router with [`ci_server::serve`] on a free port over a fresh SQLite
//! file, with one user and one API key, and hands back what a test needs to
//! talk to it and to play the controller's part through the [`Store`].
//!
//! Nothing here sleeps to synchronise: every wait is on a condition (a byte on
//! a socket, a line from a child) under a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{Cursor, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ci_common::api::StreamEvent;
use ci_common::{generate_api_key, ApiKeyRecord, JobId, User};
use ci_persistence::DatabaseLocation;
use ci_persistence::{NewJob, Store, StoreOptions};
use ci_server::{serve, App, ServerConfig, StreamReads};
use ci_testkit::sse::{SseBlock, SseBuffer};
use futures::{Stream, StreamExt};
use reqwest::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The longest any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for `f`, failing the test with `what` after [`TIMEOUT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?} waiting for {what}"))
}

/// The configuration tests run with: the streams' periodic resync is pushed
/// far out, so a stream that misses a change-feed wake-up times the test out
/// instead of being rescued by the safety net.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        stream_resync: Duration::from_secs(3600),
        ..ServerConfig::default()
    }
}

/// One running server (a replica) and the database behind it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub addr: SocketAddr,
    /// The store this replica serves from; tests also use it to play the
    /// controller (mark_running, append_log, finish_job) and ci-admin.
    pub store: Store,
    /// The user created for the test, and their key.
    pub user: User,
    pub key: String,
    pub key_record: ApiKeyRecord,
    pub db_path: PathBuf,
    pub client: reqwest::Client,
    /// What this replica's event streams have read from the database.
    pub stream_reads: Arc<StreamReads>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// Kept alive as long as any replica on the database lives.
    dir: Arc<tempfile::TempDir>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config()).await
}

pub async fn spawn_app_with(config: ServerConfig) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let db_path = dir.path().join("jobs.db");
    let store = open_store(&db_path).await;
    let user = store
        .create_user("Test User", &unique_email())
        .await
        .expect("create user");
    let key = generate_api_key().expect("generate key");
    let key_record = store
        .create_api_key(user.id, "test", &key)
        .await
        .expect("create key");
    start(store, config, user, key.secret, key_record, db_path, dir).await
}

async fn open_store(path: &std::path::Path) -> Store {
    Store::open_with(
        &DatabaseLocation::SqliteFile(path.to_path_buf()),
        StoreOptions::default(),
    )
    .await
    .expect("open store")
}

fn unique_email() -> String {
    format!("{}@example.com", Uuid::new_v4().simple())
}

async fn start(
    store: Store,
    config: ServerConfig,
    user: User,
    key: String,
    key_record: ApiKeyRecord,
    db_path: PathBuf,
    dir: Arc<tempfile::TempDir>,
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let app = App::new(store.clone(), config);
    let stream_reads = app.stream_reads.clone();
    let server = tokio::spawn(serve(listener, app, async move {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://{addr}"),
        addr,
        store,
        user,
        key,
        key_record,
        db_path,
        client: client(),
        stream_reads,
        shutdown: Some(tx),
        server: Some(server),
        dir,
    }
}

/// A client that never goes through a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(TIMEOUT)
        .build()
        .expect("client")
}

impl TestApp {
    /// A second replica: its own store opened on the same database file, as
    /// another process would, and its own server; same user and key.
    pub async fn spawn_replica(&self) -> TestApp {
        let store = open_store(&self.db_path).await;
        start(
            store,
            test_config(),
            self.user.clone(),
            self.key.clone(),
            self.key_record.clone(),
            self.db_path.clone(),
            self.dir.clone(),
        )
        .await
    }

    /// Another handle on the database, as ci-admin or the controller would open.
    pub async fn open_store(&self) -> Store {
        open_store(&self.db_path).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with this app's key.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.key)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.key)
    }

    /// Another active user with a key of their own.
    pub async fn new_user(&self) -> (User, String, ApiKeyRecord) {
        let user = self
            .store
            .create_user("Other User", &unique_email())
            .await
            .expect("create user");
        let key = generate_api_key().expect("key");
        let rec = self
            .store
            .create_api_key(user.id, "other", &key)
            .await
            .expect("create key");
        (user, key.secret, rec)
    }

    /// Uploads `zip` to `path` (one of the submit routes) with `key`.
    pub async fn upload_with(&self, key: &str, path: &str, zip: Vec<u8>) -> reqwest::Response {
        within(
            "an upload's response",
            self.client
                .post(self.url(path))
                .bearer_auth(key)
                .multipart(zip_form(zip))
                .send(),
        )
        .await
        .expect("upload request")
    }

    /// `POST /submit-async` of a small valid project as this app's user.
    pub async fn submit_async(&self) -> JobId {
        self.submit_async_as(&self.key).await
    }

    pub async fn submit_async_as(&self, key: &str) -> JobId {
        self.submit_zip_as(key, project_zip("test_a.py")).await
    }

    /// `POST /submit-async` of `zip` as this app's user.
    pub async fn submit_zip(&self, zip: Vec<u8>) -> JobId {
        self.submit_zip_as(&self.key, zip).await
    }

    pub async fn submit_zip_as(&self, key: &str, zip: Vec<u8>) -> JobId {
        let response = self.upload_with(key, "/submit-async", zip).await;
        assert_eq!(response.status(), 200, "submit-async failed");
        let body: Value = response.json().await.expect("json");
        let id = body["job_id"].as_str().expect("job_id string");
        id.parse().expect("job_id is a uuid")
    }

    /// A job queued directly in the store for `user_id`, as if uploaded.
    pub async fn queue_job_for(&self, user_id: ci_common::UserId) -> JobId {
        let digest = self
            .store
            .put_archive(&project_zip("test_b.py"))
            .await
            .expect("archive");
        self.store
            .create_job(&NewJob::new(user_id, digest))
            .await
            .expect("create job")
            .id
    }

    /// Opens `GET /jobs/{id}/stream{query}`, optionally with `Last-Event-ID`.
    pub async fn stream(&self, job: JobId, query: &str, last_event_id: Option<i64>) -> SseStream {
        let mut request = self.get(&format!("/jobs/{job}/stream{query}"));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = within("a stream's response headers", request.send())
            .await
            .expect("stream request");
        SseStream::new(response)
    }

    /// Resolves the shutdown future given to `serve`, without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `serve` to return.
    pub async fn server_stopped(&mut self) -> std::io::Result<()> {
        let handle = self.server.take().expect("server still running");
        within("serve to return", handle)
            .await
            .expect("server task panicked")
    }
}

/// `multipart/form-data` with the project in the field `file`, as the
/// reference client sends it.
pub fn zip_form(zip: Vec<u8>) -> Form {
    Form::new().part(
        "file",
        Part::bytes(zip)
            .file_name("project.zip")
            .mime_str("application/zip")
            .expect("mime"),
    )
}

/// A small, valid project zip whose test file is called `name`.
pub fn project_zip(name: &str) -> Vec<u8> {
    zip_with_comment(name, "")
}

fn zip_with_comment(name: &str, comment: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .start_file(name, zip::write::SimpleFileOptions::default())
        .expect("start file");
    writer
        .write_all(b"def test_ok():\n    assert True\n")
        .expect("write file");
    writer.set_comment(comment.to_string());
    writer.finish().expect("finish zip").into_inner()
}

/// A valid zip of exactly `size` bytes, padded with an archive comment.
pub fn zip_of_size(size: usize) -> Vec<u8> {
    let base = zip_with_comment("test_pad.py", "").len();
    assert!(size >= base, "a zip cannot be smaller than {base} bytes");
    let zip = zip_with_comment("test_pad.py", &"x".repeat(size - base));
    assert_eq!(zip.len(), size);
    zip
}

/// `{"detail": …}` of an error response, after checking its status and that
/// it is JSON.
pub async fn error_detail(response: reqwest::Response, status: u16) -> String {
    let got = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.expect("body");
    assert_eq!(got.as_u16(), status, "unexpected status; body: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "error is not JSON ({content_type}): {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("JSON error body");
    let obj = body.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 1, "error body has only `detail`: {text}");
    obj["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("detail is a string: {text}"))
        .to_string()
}

/// One SSE event: its `id:` and its `data:` as the API's event type.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: Option<i64>,
    pub event: StreamEvent,
}

/// A log event as it must arrive: with its sequence number as `id:`.
pub fn log(id: i64, text: &str) -> Received {
    Received {
        id: Some(id),
        event: StreamEvent::Log {
            data: text.to_string(),
        },
    }
}

impl Received {
    pub fn is_complete(&self) -> bool {
        matches!(self.event, StreamEvent::Complete { .. })
    }
}

/// What one blank-line-separated block of an SSE body was.
#[derive(Debug)]
pub enum SseItem {
    Event(Received),
    /// A `:` line only: a keep-alive.
    Comment,
}

/// Reads an SSE response body by hand: `id:` / `data:` fields, `:` comments,
/// events separated by a blank line.
pub struct SseStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: SseBuffer,
    ended: bool,
}

impl SseStream {
    /// Checks that `response` is an event stream and starts reading it.
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "stream refused: {response:?}");
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type of a stream: {content_type:?}"
        );
        SseStream {
            body: Box::pin(response.bytes_stream()),
            buf: SseBuffer::new(),
            ended: false,
        }
    }

    /// The next event or comment; `None` once the body has ended cleanly.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        within("the next SSE item", self.read_item()).await
    }

    async fn read_item(&mut self) -> Option<SseItem> {
        loop {
            if let Some(block) = self.buf.next_block() {
                let block = block.expect("SSE is UTF-8");
                if let Some(item) = to_item(block) {
                    return Some(item);
                }
                continue;
            }
            if self.ended {
                assert!(
                    self.buf.rest().iter().all(u8::is_ascii_whitespace),
                    "stream ended inside an event: {:?}",
                    String::from_utf8_lossy(self.buf.rest())
                );
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.push(&bytes),
                Some(Err(e)) => panic!("stream body failed: {e}"),
                None => self.ended = true,
            }
        }
    }

    /// The next event, skipping comments; `None` at the end of the body. The
    /// deadline covers the whole wait: keep-alives do not extend it.
    pub async fn next_event(&mut self) -> Option<Received> {
        within("the next SSE event", async {
            loop {
                match self.read_item().await? {
                    SseItem::Event(e) => return Some(e),
                    SseItem::Comment => continue,
                }
            }
        })
        .await
    }

    /// The next event, which must exist.
    pub async fn expect_event(&mut self) -> Received {
        self.next_event()
            .await
            .expect("the stream ended, an event was expected")
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.expect_event().await);
        }
        events
    }

    /// Every event until the body ends.
    pub async fn rest(&mut self) -> Vec<Received> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event().await {
            events.push(e);
        }
        events
    }

    /// The body must end now, without another event.
    pub async fn expect_end(&mut self) {
        if let Some(e) = self.next_event().await {
            panic!("expected the stream to end, got {e:?}");
        }
    }
}

/// What the API may send in a block, strictly: numeric ids, no fields
/// beyond `id`, `event`, `data` and `retry`, data that is exactly an event.
fn to_item(block: SseBlock) -> Option<SseItem> {
    assert!(
        block.unknown.is_empty(),
        "unexpected SSE fields {:?} in {block:?}",
        block.unknown
    );
    let id = block.id.as_deref().map(|id| {
        id.parse::<i64>()
            .unwrap_or_else(|_| panic!("SSE id is not a number: {id:?}"))
    });
    let Some(data) = block.data else {
        return block.comment.then_some(SseItem::Comment);
    };
    let raw: Value = serde_json::from_str(&data)
        .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}"));
    let event: StreamEvent = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("SSE data is not an API event ({e}): {data:?}"));
    assert_eq!(
        serde_json::to_value(&event).expect("serialise"),
        raw,
        "SSE data has exactly the event's fields"
    );
    Some(SseItem::Event(Received { id, event }))
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn detail(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error is not JSON: {self:?}"
        );
        let body: Value = serde_json::from_slice(&self.body).expect("JSON body");
        body["detail"].as_str().expect("detail").to_string()
    }
}

/// Writes `request` as-is to a new connection (the whole request, or only a
/// part of the body it announces), then reads one response, which must come
/// without the client sending anything more.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut socket = within("a connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    // The server may answer and close before taking all of it; what it
    // answered is what counts.
    let _ = within("the request to be written", socket.write_all(request)).await;
    within("a response on the raw socket", read_response(&mut socket)).await
}

pub async fn read_response(socket: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("head is text");
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().expect("content-length"))
        .expect("the test's raw responses carry a Content-Length");
    while rest.len() < length {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await.expect("read response body");
        assert!(n > 0, "connection closed inside the response body");
        rest.extend_from_slice(&chunk[..n]);
    }
    rest.truncate(length);
    RawResponse {
        status,
        headers,
        body: rest,
    }
}

/// The start of a multipart upload of one file field, up to its content.
pub const BOUNDARY: &str = "----citestboundary7MA4YWxkTrZu0gW";

pub fn multipart_preamble() -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"project.zip\"\r\n\
         Content-Type: application/zip\r\n\r\n"
    )
}

/// The ISO-8601 UTC shape the API promises: `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.
pub fn is_api_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1) && b.len() > 21))
}
