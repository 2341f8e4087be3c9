//! Caps per user (issue 16, section 4): open streams, queued jobs and
//! uploads in flight, each refused past its cap with a 429 that names it,
//! for that user only, and given back when the stream, job or upload ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use ci_server::{ServerConfig, UserLimits};
use support::{
    error_detail, multipart_preamble, project_zip, spawn_app_with, test_config, TestApp, BOUNDARY,
};
use tokio::io::AsyncWriteExt;

const DEADLINE: Duration = Duration::from_secs(60);

async fn app_with(limits: UserLimits) -> TestApp {
    spawn_app_with(ServerConfig {
        user_limits: limits,
        // A dropped stream is noticed at its next keep-alive write.
        keep_alive: Duration::from_millis(100),
        ..test_config()
    })
    .await
}

async fn open_stream(app: &TestApp, key: &str, job: ci_common::JobId) -> reqwest::Response {
    support::client()
        .get(app.url(&format!("/jobs/{job}/stream")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Retries `attempt` until it answers `status`, failing after [`DEADLINE`].
async fn until_status<F, Fut>(status: u16, mut attempt: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let response = attempt().await;
        if response.status() == status {
            return response;
        }
        assert!(Instant::now() < deadline, "still {response:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn open_streams_past_the_cap_get_429_until_one_closes() {
    let app = app_with(UserLimits {
        max_streams: 3,
        ..UserLimits::default()
    })
    .await;
    let job = app.submit_async().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let response = open_stream(&app, &app.key, job).await;
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = open_stream(&app, &app.key, job).await;
    let detail = error_detail(refused, 429).await;
    assert_eq!(
        detail,
        "Too many open streams: at most 3 per user on this server; close some first"
    );
    // Another user is not held back by this one.
    let (_, other_key, _) = app.new_user().await;
    let others_job = app.submit_async_as(&other_key).await;
    assert_eq!(
        open_stream(&app, &other_key, others_job).await.status(),
        200
    );
    drop(open.pop());
    until_status(200, || open_stream(&app, &app.key, job)).await;
}

#[tokio::test]
async fn queued_jobs_past_the_cap_get_429_before_the_upload_is_read() {
    let app = app_with(UserLimits {
        max_queued_jobs: 2,
        ..UserLimits::default()
    })
    .await;
    let first = app.submit_async().await;
    app.submit_async().await;
    let refused = app
        .upload_with(&app.key, "/submit-async", project_zip("test_a.py"))
        .await;
    assert_eq!(
        error_detail(refused, 429).await,
        "Too many queued jobs: at most 2 per user; wait for some to start or cancel them"
    );
    let (_, other_key, _) = app.new_user().await;
    app.submit_async_as(&other_key).await;
    // A job that starts makes room.
    app.store.mark_running(first, "c", "i", None).await.unwrap();
    app.submit_async().await;
}

#[tokio::test]
async fn uploads_in_flight_past_the_cap_get_429_until_one_ends() {
    let app = app_with(UserLimits {
        max_uploads: 1,
        // Uploads that finish before the slow one is counted queue jobs:
        // on a loaded machine that must not reach the queued-jobs cap first.
        max_queued_jobs: u64::MAX,
        ..UserLimits::default()
    })
    .await;
    // An upload that has begun and goes on (its body not yet all sent).
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /submit-async HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n{}",
        app.addr,
        app.key,
        multipart_preamble()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let upload = || app.upload_with(&app.key, "/submit-async", project_zip("test_a.py"));
    let refused = until_status(429, upload).await;
    assert_eq!(
        error_detail(refused, 429).await,
        "Too many uploads in flight: at most 1 per user at once; wait for one to finish"
    );
    let (_, other_key, _) = app.new_user().await;
    app.submit_async_as(&other_key).await;
    drop(slow);
    until_status(200, upload).await;
}
