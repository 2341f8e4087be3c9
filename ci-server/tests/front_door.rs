//! The front door (issue 16, section 4): half-sent requests, idle
//! connections, trickling uploads and floods are closed on time, while real
//! clients, quiet event streams and the probes keep working; an answer sent
//! before an upload is through reaches the client (issue 15's lost 413).
//!
//! Every test talks to a real server on a free port over raw TCP sockets
//! where the behaviour is about the network. Waits are on conditions (a byte,
//! an end of stream) under generous deadlines; none assumes a timer fires
//! early or late, only that it fires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use ci_server::{FrontDoor, ServerConfig, RESERVED_CONNECTIONS};
use support::{
    error_detail, multipart_preamble, raw_exchange, read_response, spawn_app_with, test_config,
    zip_form, TestApp, BOUNDARY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the server to close what it must close; far
/// above every timeout the tests configure, for a loaded machine.
const CLOSE_DEADLINE: Duration = Duration::from_secs(90);

fn door(change: impl FnOnce(&mut FrontDoor)) -> ServerConfig {
    let mut config = test_config();
    change(&mut config.front_door);
    config
}

/// A connection that has sent half a request line and nothing more.
async fn half_sent(app: &TestApp) -> TcpStream {
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    socket
        .write_all(b"GET /jobs HTTP/1.1\r\nHost: loc")
        .await
        .expect("write half a request");
    socket
}

/// Reads until the server closes (end of stream or reset), failing after
/// [`CLOSE_DEADLINE`]; what arrived before the close.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSE_DEADLINE, read_all)
        .await
        .expect("the server closes the connection");
    seen
}

/// `GET path` on a fresh connection, as a raw exchange.
async fn raw_get(app: &TestApp, path: &str) -> support::RawResponse {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.addr, app.key
    );
    raw_exchange(app.addr, request.as_bytes()).await
}

#[tokio::test]
async fn thousands_of_half_sent_requests_are_closed_on_time_while_real_clients_keep_working() {
    const HALF_SENT: usize = 2000;
    let timeout = Duration::from_secs(2);
    let app = spawn_app_with(door(|d| d.header_read_timeout = timeout)).await;
    let mut closers = Vec::with_capacity(HALF_SENT);
    for _ in 0..HALF_SENT {
        let opened = Instant::now();
        let mut socket = half_sent(&app).await;
        closers.push(tokio::spawn(async move {
            let seen = until_closed(&mut socket).await;
            (opened.elapsed(), seen)
        }));
    }
    // While they are held, a real client is served.
    for _ in 0..10 {
        let response = app.get("/jobs").send().await.expect("GET /jobs");
        assert_eq!(response.status(), 200);
        let health = support::client()
            .get(app.url("/health"))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(health.status(), 200);
    }
    for closer in closers {
        let (held, seen) = closer.await.expect("reader task");
        assert!(
            held >= timeout,
            "a half-sent request is held for the header-read timeout, not less: {held:?}"
        );
        // hyper answers a timed-out head with nothing or a 408; never with a
        // response to the half request.
        let text = String::from_utf8_lossy(&seen);
        assert!(
            seen.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // And the server still works afterwards.
    assert_eq!(raw_get(&app, "/jobs").await.status, 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout() {
    let keep_alive = Duration::from_secs(1);
    let app = spawn_app_with(door(|d| {
        d.keep_alive_timeout = keep_alive;
        d.header_read_timeout = Duration::from_secs(600);
    }))
    .await;
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr);
    for _ in 0..2 {
        socket.write_all(request.as_bytes()).await.expect("write");
        let response = support::within("a response", read_response(&mut socket)).await;
        assert_eq!(response.status, 200, "kept alive between requests");
    }
    let idle_from = Instant::now();
    let rest = until_closed(&mut socket).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(idle_from.elapsed() >= keep_alive);
}

#[tokio::test]
async fn a_quiet_event_stream_outlives_every_connection_timeout() {
    let app = spawn_app_with(ServerConfig {
        keep_alive: Duration::from_millis(500),
        ..door(|d| {
            d.header_read_timeout = Duration::from_secs(1);
            d.keep_alive_timeout = Duration::from_secs(1);
        })
    })
    .await;
    // A running job that prints nothing: its stream carries only keep-alive
    // comments, for longer than both connection timeouts together.
    let job = app.submit_async().await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    let mut stream = app.stream(job, "", None).await;
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_secs(5) {
        match stream.next_item().await {
            Some(support::SseItem::Comment) => {}
            other => panic!("only keep-alives while the job is quiet: {other:?}"),
        }
    }
    app.store
        .append_log(job, &["at last\n".to_string()], None)
        .await
        .unwrap();
    assert_eq!(stream.expect_event().await, support::log(1, "at last\n"));
}

#[tokio::test]
async fn past_the_cap_the_longest_waiting_half_sent_request_makes_room() {
    const CAP: usize = 20;
    let app = spawn_app_with(door(|d| {
        d.max_connections = CAP;
        d.header_read_timeout = Duration::from_secs(600);
    }))
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(half_sent(&app).await);
    }
    // Each real request past the cap closes the oldest half-sent one.
    for round in 0..3 {
        assert_eq!(raw_get(&app, "/jobs").await.status, 200, "round {round}");
        let seen = until_closed(&mut held[round]).await;
        assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
        // Back to the cap: the real request's connection has closed.
        held.push(half_sent(&app).await);
    }
}

#[tokio::test]
async fn with_every_connection_busy_the_probes_still_answer_and_the_rest_is_told_to_wait() {
    const CAP: usize = 4;
    let app = spawn_app_with(door(|d| d.max_connections = CAP)).await;
    let job = app.submit_async().await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    // Every admitted connection carries a stream: none may be given up.
    let mut streams = Vec::new();
    for _ in 0..CAP {
        streams.push(support::client().get(app.url(&format!("/jobs/{job}/stream"))));
    }
    let mut open = Vec::new();
    for request in streams {
        let response = request
            .header("Authorization", format!("Bearer {}", app.key))
            .send()
            .await
            .expect("stream");
        assert_eq!(response.status(), 200);
        open.push(support::SseStream::new(response));
    }
    assert_eq!(raw_get(&app, "/health").await.status, 200);
    assert_eq!(raw_get(&app, "/ready").await.status, 200);
    let busy = raw_get(&app, "/jobs").await;
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(
        busy.detail().contains("too many open connections"),
        "{}",
        busy.detail()
    );
    // Past the reserve too, a connection is closed at once.
    let mut reserve = Vec::new();
    for _ in 0..RESERVED_CONNECTIONS {
        reserve.push(half_sent(&app).await);
    }
    let mut refused = half_sent(&app).await;
    let seen = until_closed(&mut refused).await;
    assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
    // The streams were never touched.
    app.store
        .append_log(job, &["still here\n".to_string()], None)
        .await
        .unwrap();
    for stream in &mut open {
        assert_eq!(stream.expect_event().await, support::log(1, "still here\n"));
    }
    // Once a stream ends, its place is free for anything again.
    drop(open);
    drop(reserve);
    let deadline = Instant::now() + CLOSE_DEADLINE;
    loop {
        let response = raw_get(&app, "/jobs").await;
        if response.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{response:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_trickling_upload_is_cut_with_a_clear_error() {
    let app = spawn_app_with(door(|d| {
        d.header_read_timeout = Duration::from_secs(1);
        d.upload_min_rate = 64 * 1024;
    }))
    .await;
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /submit-async HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 1000000\r\n\r\n{}",
        app.addr,
        app.key,
        multipart_preamble()
    );
    socket.write_all(head.as_bytes()).await.expect("write head");
    let (mut reader, mut writer) = socket.into_split();
    // A byte every 50 ms: 20 bytes per second, far below the rate.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if writer.write_all(b"z").await.is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSE_DEADLINE, read)
        .await
        .expect("the trickle is cut");
    trickle.abort();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("arrived too slowly") && text.contains("65536 bytes per second"),
        "{text}"
    );
    let jobs = app.store.list_jobs_for_user(app.user.id).await.unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[tokio::test]
async fn an_upload_at_a_fair_rate_is_not_cut() {
    // The rate counts after the grace period only and scales with the size:
    // a 2 MiB upload sent in 32 KiB pieces at full speed goes through with
    // the grace period at its shortest.
    let app = spawn_app_with(door(|d| {
        d.header_read_timeout = Duration::from_secs(1);
        d.upload_min_rate = 64 * 1024;
    }))
    .await;
    let zip = stored_zip(&ci_testkit::incompressible_bytes(2 * 1024 * 1024, 3));
    let response = app.upload_with(&app.key, "/submit-async", zip).await;
    assert_eq!(response.status(), 200);
}

/// A valid zip holding `data` uncompressed, as `blob.bin`.
fn stored_zip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    writer.start_file("blob.bin", options).expect("start file");
    writer.write_all(data).expect("write file");
    writer.finish().expect("finish zip").into_inner()
}

/// The answer to an upload refused while it is still being sent reaches the
/// client every time: the server reads (and drops) the rest, up to a bound,
/// instead of closing on it. reqwest is the `ci` client's HTTP library.
#[tokio::test]
async fn an_upload_refused_while_it_is_sent_gets_its_413_every_time() {
    const LIMIT: u64 = 64 * 1024;
    let app = spawn_app_with(ServerConfig {
        max_upload_bytes: LIMIT,
        ..test_config()
    })
    .await;
    let big = ci_testkit::incompressible_bytes(8 * 1024 * 1024, 7);
    for _ in 0..10 {
        let response = support::client()
            .post(app.url("/submit-async"))
            .bearer_auth(&app.key)
            .multipart(zip_form(big.clone()))
            .send()
            .await
            .expect("the answer arrives, not a broken pipe");
        let detail = error_detail(response, 413).await;
        assert!(detail.contains("too large"), "{detail}");
    }
    // An answer before the body is read at all (no key) arrives as well.
    for _ in 0..10 {
        let response = support::client()
            .post(app.url("/submit-async"))
            .multipart(zip_form(big.clone()))
            .send()
            .await
            .expect("the answer arrives, not a broken pipe");
        assert_eq!(error_detail(response, 403).await, "Not authenticated");
    }
}
