//! The client against a scripted in-process server: each stream request takes
//! the next step of a script (send some events, then break off in some way),
//! so reconnecting can be checked for lost or repeated events without the
//! real server, and without timing guesses.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ci_client::{ApiClient, ClientError, ReceivedEvent, ReconnectPolicy, StreamStart};
use ci_common::api::StreamEvent;
use ci_common::JobId;
use futures::StreamExt;
use support::{api_error, event_stream, frame, ScriptedServer};

const JOB: &str = "6f1c2d3e-4b5a-4c6d-8e7f-001122334455";

fn job_id() -> JobId {
    JOB.parse().expect("test uuid")
}

/// How one streamed response ends.
#[derive(Clone, Debug)]
enum End {
    /// A clean end of the body before the job's end (a replica shut down).
    Close,
    /// The connection closes mid-body, without the chunked terminator (a
    /// replica killed). Only the raw server does this: hyper may drop data
    /// it had not flushed yet when a body fails, which makes the test racy.
    Reset,
    /// Half of the next event is sent, then the body ends.
    Partial,
    /// The connection stays open and silent.
    Hang,
    /// The job's `complete` event, repeating the last sequence number.
    Complete(bool),
}

/// One response of the script.
#[derive(Clone, Debug)]
enum Step {
    /// Output chunks after the requested point up to `upto`, then `end`.
    /// `replay_from` makes the server (wrongly) start there instead.
    Stream {
        upto: i64,
        end: End,
        replay_from: Option<i64>,
    },
    /// An error status with `{"detail": …}`.
    Fail(StatusCode, &'static str),
    /// A 200 with an empty body, not even the job id event.
    Nothing,
}

fn stream(upto: i64, end: End) -> Step {
    Step::Stream {
        upto,
        end,
        replay_from: None,
    }
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    last_event_id: Option<String>,
    authorization: Option<String>,
}

impl Seen {
    /// The `after` the request asked to resume from.
    fn after(&self) -> Option<&str> {
        self.query.get("after").map(String::as_str)
    }
}

#[derive(Clone)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    /// The step for every request after the script ran out.
    fallback: Step,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn new(steps: Vec<Step>, fallback: Step) -> Self {
        Script {
            steps: Arc::new(Mutex::new(steps.into())),
            fallback,
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// `steps`, then a 410 for every request after them, which no test
    /// expects to make.
    fn of(steps: Vec<Step>) -> Self {
        Script::new(steps, Step::Fail(StatusCode::GONE, "script exhausted"))
    }

    fn next_step(&self) -> Step {
        self.steps
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or_else(|| self.fallback.clone())
    }

    fn record(&self, path: &str, query: &HashMap<String, String>, headers: &HeaderMap) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        self.seen.lock().expect("seen lock").push(Seen {
            path: path.to_string(),
            query: query.clone(),
            last_event_id: header("last-event-id"),
            authorization: header("authorization"),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

fn log_line(seq: i64) -> String {
    format!("line {seq}\n")
}

/// The output chunks after `after` up to `upto`, as SSE frames.
fn log_frames(after: i64, upto: i64) -> String {
    (after + 1..=upto)
        .map(|seq| {
            frame(
                Some(seq),
                &StreamEvent::Log {
                    data: log_line(seq),
                },
            )
        })
        .collect()
}

/// The SSE response for one step, starting after `after`.
fn respond(step: Step, after: i64, prefix: Option<String>) -> Response {
    let (upto, end, start) = match step {
        Step::Fail(status, detail) => return api_error(status, detail),
        Step::Nothing => {
            let nothing = futures::stream::empty::<Result<Bytes, std::io::Error>>();
            return event_stream(Body::from_stream(nothing));
        }
        Step::Stream {
            upto,
            end,
            replay_from,
        } => (upto, end, replay_from.unwrap_or(after)),
    };
    let mut text = prefix.unwrap_or_default();
    text.push_str(&log_frames(start, upto));
    let head = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(text))]);
    let body = match end {
        End::Close => head.boxed(),
        End::Reset => panic!("the axum server cannot reset deterministically; use start_raw"),
        End::Partial => {
            let next = frame(
                Some(upto + 1),
                &StreamEvent::Log {
                    data: log_line(upto + 1),
                },
            );
            let half = next[..next.len() - 3].to_string();
            head.chain(futures::stream::iter([Ok(Bytes::from(half))]))
                .boxed()
        }
        End::Hang => head.chain(futures::stream::pending()).boxed(),
        End::Complete(success) => {
            let done = frame(
                Some(upto),
                &StreamEvent::Complete {
                    success,
                    status: None,
                },
            );
            head.chain(futures::stream::iter([Ok(Bytes::from(done))]))
                .boxed()
        }
    };
    event_stream(Body::from_stream(body))
}

async fn job_stream(
    State(script): State<Script>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    script.record(&format!("/jobs/{id}/stream"), &query, &headers);
    if id != JOB {
        return api_error(StatusCode::NOT_FOUND, "Job not found");
    }
    let after = query.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    respond(script.next_step(), after, None)
}

async fn submit_stream(State(script): State<Script>, headers: HeaderMap) -> Response {
    script.record("/submit-stream", &HashMap::new(), &headers);
    let step = script.next_step();
    let first = frame(None, &StreamEvent::JobId { job_id: job_id() });
    respond(step, 0, Some(first))
}

async fn submit_async(
    State(script): State<Script>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    script.record("/submit-async", &HashMap::new(), &headers);
    let Ok(Some(field)) = multipart.next_field().await else {
        return api_error(StatusCode::BAD_REQUEST, "no file");
    };
    let shape_ok = field.name() == Some("file")
        && field.file_name() == Some("project.zip")
        && field.content_type() == Some("application/zip");
    let Ok(bytes) = field.bytes().await else {
        return api_error(StatusCode::BAD_REQUEST, "unreadable file");
    };
    if !shape_ok || &bytes[..] != b"PK-test" {
        return api_error(StatusCode::BAD_REQUEST, "unexpected upload");
    }
    Json(serde_json::json!({ "job_id": JOB })).into_response()
}

async fn list_jobs(State(script): State<Script>, headers: HeaderMap) -> Response {
    script.record("/jobs", &HashMap::new(), &headers);
    match script.next_step() {
        Step::Fail(status, detail) => api_error(status, detail),
        _ => Json(serde_json::json!([{
            "job_id": JOB,
            "status": "running",
            "success": null,
            "start_time": "2025-10-12T19:30:00.000000Z",
            "end_time": null
        }]))
        .into_response(),
    }
}

/// Serves the script's answers to the client's routes.
fn start(script: &Script) -> ScriptedServer {
    ScriptedServer::start(
        Router::new()
            .route("/jobs", get(list_jobs))
            .route("/jobs/{id}/stream", get(job_stream))
            .route("/submit-stream", post(submit_stream))
            .route("/submit-async", post(submit_async))
            .with_state(script.clone()),
    )
}

/// A bare HTTP/1.1 server for `GET /jobs/{id}/stream` that writes each
/// response with explicit writes, so a connection that breaks mid-body has
/// delivered exactly what the script says before it breaks.
fn start_raw(script: &Script) -> ScriptedServer {
    let script = script.clone();
    ScriptedServer::serve_with(move |listener| async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_raw(socket, script.clone()));
        }
    })
}

async fn serve_raw(mut socket: tokio::net::TcpStream, script: Script) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request).to_string();
    let mut lines = request.lines();
    let target = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/");
    let (path, query_text) = target.split_once('?').unwrap_or((target, ""));
    let query: HashMap<String, String> = query_text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name.trim()),
                axum::http::HeaderValue::try_from(value.trim()),
            ) {
                headers.insert(name, value);
            }
        }
    }
    script.record(path, &query, &headers);
    let after = query.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let Step::Stream { upto, end, .. } = script.next_step() else {
        panic!("the raw server only streams");
    };
    let mut text = log_frames(after, upto);
    if let End::Complete(success) = end {
        text.push_str(&frame(
            Some(upto),
            &StreamEvent::Complete {
                success,
                status: None,
            },
        ));
    }
    let mut response = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    if !text.is_empty() {
        response.push_str(&format!("{:x}\r\n{text}\r\n", text.len()));
    }
    if !matches!(end, End::Reset) {
        response.push_str("0\r\n\r\n");
    }
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.flush().await;
    // Dropping the socket closes it; after `Reset` the body is incomplete.
}

/// Fast retries so a test spends milliseconds per outage.
fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        give_up_after: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
    }
}

fn client(url: &str) -> ApiClient {
    ApiClient::new(url, Some("ci_test".to_string()))
        .expect("client")
        .with_reconnect_policy(quick_policy())
}

/// Everything a stream yields, the error (if any) last.
async fn drain(mut events: ci_client::JobEvents) -> (Vec<ReceivedEvent>, Option<ClientError>) {
    let mut received = Vec::new();
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => received.push(event),
            Err(e) => return (received, Some(e)),
        }
    }
    (received, None)
}

/// Everything `api` yields following the job from `from`.
async fn follow(api: &ApiClient, from: StreamStart) -> (Vec<ReceivedEvent>, Option<ClientError>) {
    let events = api.follow_job(job_id(), from).await.expect("stream opens");
    drain(events).await
}

/// Everything `api` yields submitting a project with a sync submit.
async fn submit(api: &ApiClient) -> (Vec<ReceivedEvent>, Option<ClientError>) {
    let events = api
        .submit_stream(b"PK-test".to_vec(), &ci_common::JobOptions::default())
        .await
        .expect("upload accepted");
    drain(events).await
}

fn logs(events: &[ReceivedEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            StreamEvent::Log { data } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

fn expected_logs(range: std::ops::RangeInclusive<i64>) -> String {
    range.map(log_line).collect()
}

#[tokio::test]
async fn every_event_arrives_once_across_closed_and_cut_streams() {
    let script = Script::of(vec![
        stream(3, End::Close),
        stream(5, End::Partial),
        stream(7, End::Close),
        stream(10, End::Complete(true)),
    ]);
    let server = start(&script);
    let notices = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&notices);
    let api = client(&server.url()).on_reconnect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });

    let (received, error) = follow(&api, StreamStart::Beginning).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(logs(&received), expected_logs(1..=10));
    assert_eq!(
        received.last().map(|e| &e.event),
        Some(&StreamEvent::Complete {
            success: true,
            status: None
        })
    );
    let seqs: Vec<Option<i64>> = received.iter().map(|e| e.seq).collect();
    assert_eq!(seqs[..3], [Some(1), Some(2), Some(3)]);

    let seen = script.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0].query.get("from_beginning").map(String::as_str),
        Some("true")
    );
    for (request, after) in seen[1..].iter().zip(["3", "5", "7"]) {
        assert_eq!(request.after(), Some(after));
        assert_eq!(request.last_event_id.as_deref(), Some(after));
        assert_eq!(request.authorization.as_deref(), Some("Bearer ci_test"));
    }
    assert_eq!(notices.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn every_event_arrives_once_across_broken_connections() {
    let script = Script::of(vec![
        stream(3, End::Reset),
        stream(3, End::Reset),
        stream(6, End::Reset),
        stream(8, End::Complete(true)),
    ]);
    let server = start_raw(&script);

    let (received, error) = follow(&client(&server.url()), StreamStart::After(0)).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(logs(&received), expected_logs(1..=8));
    let seen = script.seen();
    let afters: Vec<Option<&str>> = seen.iter().map(Seen::after).collect();
    assert_eq!(afters, [Some("0"), Some("3"), Some("3"), Some("6")]);
}

#[tokio::test]
async fn a_submit_stream_resumes_at_the_job_stream() {
    let script = Script::of(vec![
        stream(2, End::Partial),
        stream(4, End::Complete(false)),
    ]);
    let server = start(&script);

    let (received, error) = submit(&client(&server.url())).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        received.first().map(|e| &e.event),
        Some(&StreamEvent::JobId { job_id: job_id() })
    );
    assert_eq!(logs(&received), expected_logs(1..=4));
    assert_eq!(
        received.last().map(|e| &e.event),
        Some(&StreamEvent::Complete {
            success: false,
            status: None
        })
    );
    let seen = script.seen();
    assert_eq!(seen[0].path, "/submit-stream");
    assert_eq!(seen[1].path, format!("/jobs/{JOB}/stream"));
    assert_eq!(seen[1].after(), Some("2"));
}

#[tokio::test]
async fn a_drop_before_any_output_resumes_after_zero() {
    let script = Script::of(vec![stream(0, End::Close), stream(1, End::Complete(true))]);
    let server = start(&script);

    let (received, error) = submit(&client(&server.url())).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(logs(&received), expected_logs(1..=1));
    assert_eq!(script.seen()[1].after(), Some("0"));
}

#[tokio::test]
async fn a_submit_stream_lost_before_the_job_id_cannot_resume() {
    let script = Script::new(vec![Step::Nothing], Step::Fail(StatusCode::GONE, "no"));
    let server = start(&script);

    let (received, error) = submit(&client(&server.url())).await;

    assert!(received.is_empty());
    assert!(
        matches!(error, Some(ClientError::StreamLost { job_id: None, .. })),
        "{error:?}"
    );
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test]
async fn events_a_replica_repeats_are_not_shown_twice() {
    let script = Script::of(vec![
        stream(4, End::Close),
        Step::Stream {
            upto: 6,
            end: End::Complete(true),
            replay_from: Some(1),
        },
    ]);
    let server = start(&script);

    let (received, error) = follow(&client(&server.url()), StreamStart::After(0)).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(logs(&received), expected_logs(1..=6));
}

#[tokio::test]
async fn a_silent_connection_is_replaced() {
    let script = Script::of(vec![stream(2, End::Hang), stream(3, End::Complete(true))]);
    let server = start(&script);
    let api = client(&server.url()).with_reconnect_policy(ReconnectPolicy {
        idle_timeout: Duration::from_millis(200),
        ..quick_policy()
    });

    let (received, error) = follow(&api, StreamStart::Beginning).await;

    assert!(error.is_none(), "{error:?}");
    assert_eq!(logs(&received), expected_logs(1..=3));
    assert_eq!(script.seen()[1].after(), Some("2"));
}

#[tokio::test]
async fn reconnecting_gives_up_after_the_policy_limit() {
    let script = Script::new(
        vec![stream(1, End::Close)],
        Step::Fail(StatusCode::SERVICE_UNAVAILABLE, "restarting"),
    );
    let server = start(&script);
    let api = client(&server.url()).with_reconnect_policy(ReconnectPolicy {
        give_up_after: Duration::from_millis(100),
        ..quick_policy()
    });

    let (received, error) = follow(&api, StreamStart::Beginning).await;

    assert_eq!(logs(&received), expected_logs(1..=1));
    match error {
        Some(ClientError::StreamLost {
            job_id: Some(id),
            last_error,
            ..
        }) => {
            assert_eq!(id, job_id());
            assert!(last_error.contains("503"), "{last_error}");
        }
        other => panic!("expected StreamLost, got {other:?}"),
    }
    assert!(script.seen().len() > 2);
}

#[tokio::test]
async fn a_refusal_while_reconnecting_ends_the_stream_at_once() {
    let script = Script::of(vec![
        stream(1, End::Close),
        Step::Fail(StatusCode::UNAUTHORIZED, "Invalid or revoked API key"),
    ]);
    let server = start(&script);

    let (_, error) = follow(&client(&server.url()), StreamStart::Beginning).await;

    assert!(
        matches!(&error, Some(ClientError::Unauthorized { detail, .. }) if detail == "Invalid or revoked API key"),
        "{error:?}"
    );
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test]
async fn opening_errors_are_typed() {
    let script = Script::of(vec![
        Step::Fail(StatusCode::FORBIDDEN, "Access denied"),
        Step::Fail(StatusCode::FORBIDDEN, "Not authenticated"),
    ]);
    let server = start(&script);
    let url = server.url();
    let api = client(&url);

    let unknown = api
        .follow_job(JobId::nil(), StreamStart::Now)
        .await
        .expect_err("unknown job");
    assert!(matches!(&unknown, ClientError::NotFound(d) if d == "Job not found"));
    assert!(unknown.to_string().contains("not found"));

    let denied = api
        .follow_job(job_id(), StreamStart::Now)
        .await
        .expect_err("someone else's job");
    assert!(matches!(&denied, ClientError::Forbidden(d) if d == "Access denied"));

    let anonymous = ApiClient::new(&url, None).expect("client");
    let refused = anonymous
        .follow_job(job_id(), StreamStart::Now)
        .await
        .expect_err("no key");
    assert!(refused.is_auth_failure(), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "Authentication failed: 403 Forbidden: Not authenticated"
    );

    let seen = script.seen();
    // Following "from now" sends no position at all.
    assert!(seen[1].query.is_empty() && seen[1].last_event_id.is_none());
    assert_eq!(seen[2].authorization, None);
}

#[tokio::test]
async fn uploads_and_listing_use_the_reference_shapes() {
    let script = Script::of(vec![
        Step::Nothing,
        Step::Fail(StatusCode::UNAUTHORIZED, "Invalid or revoked API key"),
    ]);
    let server = start(&script);
    let api = client(&server.url());

    let id = api
        .submit_async(b"PK-test".to_vec(), &ci_common::JobOptions::default())
        .await
        .expect("upload accepted");
    assert_eq!(id, job_id());

    let jobs = api.list_jobs().await.expect("list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_id, job_id());
    assert_eq!(jobs[0].success, None);

    let refused = api.list_jobs().await.expect_err("revoked key");
    assert!(refused.is_auth_failure());
    assert!(refused.to_string().contains("401"));
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let url = format!("http://{addr}");

    let error = ApiClient::new(&url, None)
        .expect("client")
        .list_jobs()
        .await
        .expect_err("nothing listens");

    assert!(
        matches!(error, ClientError::Unreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(!message.contains('\n'), "{message}");
}
