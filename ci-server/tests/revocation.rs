//! An open stream ends, with an error event, soon after its key is revoked
//! or its user deactivated (issue 16, section 4), instead of streaming the
//! job to its end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ci_common::api::StreamEvent;
use ci_testkit::sse::SseBuffer;
use futures::StreamExt;
use support::{spawn_app_with, test_config, within, TestApp};

/// Reads the stream's raw blocks until it ends; their `data:` fields.
async fn data_until_end(response: reqwest::Response) -> Vec<serde_json::Value> {
    let mut body = response.bytes_stream();
    let mut buf = SseBuffer::new();
    let mut data = Vec::new();
    loop {
        while let Some(block) = buf.next_block() {
            if let Some(text) = block.expect("UTF-8").data {
                data.push(serde_json::from_str(&text).expect("JSON data"));
            }
        }
        match body.next().await {
            Some(Ok(bytes)) => buf.push(&bytes),
            Some(Err(e)) => panic!("the stream broke instead of ending: {e}"),
            None => return data,
        }
    }
}

async fn app() -> TestApp {
    spawn_app_with(ci_server::ServerConfig {
        credential_check: Duration::from_millis(200),
        ..test_config()
    })
    .await
}

async fn open_stream(app: &TestApp, key: &str) -> (ci_common::JobId, reqwest::Response) {
    let job = app.submit_async_as(key).await;
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    app.store
        .append_log(job, &["before\n".to_string()], None)
        .await
        .unwrap();
    let response = app
        .client
        .get(app.url(&format!("/jobs/{job}/stream?from_beginning=true")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    (job, response)
}

fn assert_ended_by_revocation(data: &[serde_json::Value]) {
    assert_eq!(
        data.first().map(|d| d["type"].clone()),
        Some("log".into()),
        "{data:?}"
    );
    let last = data.last().expect("events");
    assert_eq!(last["type"], "error", "{data:?}");
    assert_eq!(last["detail"], "Invalid or revoked API key");
    // The shared event type, as the `ci` client reads it: the 401 the same
    // request would now get.
    assert_eq!(
        serde_json::from_value::<StreamEvent>(last.clone()).expect("a stream event"),
        StreamEvent::Error {
            detail: "Invalid or revoked API key".into(),
            status_code: Some(401),
        }
    );
    assert!(
        !data.iter().any(|d| d["type"] == "complete"),
        "the job has not ended: {data:?}"
    );
}

#[tokio::test]
async fn a_stream_ends_with_an_error_event_once_its_key_is_revoked() {
    let app = app().await;
    let (job, response) = open_stream(&app, &app.key.clone()).await;
    let reading = tokio::spawn(data_until_end(response));
    app.store.revoke_api_key(app.key_record.id).await.unwrap();
    let data = within("the stream to end", reading).await.unwrap();
    assert_ended_by_revocation(&data);
    // The job goes on; only its watcher was cut off.
    let job = app.store.get_job(job).await.unwrap().unwrap();
    assert_eq!(job.status, ci_common::JobStatus::Running);
}

#[tokio::test]
async fn a_stream_ends_with_an_error_event_once_its_user_is_deactivated() {
    let app = app().await;
    let (other, other_key, _) = app.new_user().await;
    let (_, response) = open_stream(&app, &other_key).await;
    // A stream of another, still active user is not touched.
    let (kept_job, kept) = open_stream(&app, &app.key.clone()).await;
    let reading = tokio::spawn(data_until_end(response));
    let kept_reading = tokio::spawn(data_until_end(kept));
    app.store.set_user_active(other.id, false).await.unwrap();
    let data = within("the stream to end", reading).await.unwrap();
    assert_ended_by_revocation(&data);

    app.store
        .finish_job(kept_job, &ci_persistence::JobOutcome::exited(0))
        .await
        .unwrap();
    let kept = within("the other stream to end", kept_reading)
        .await
        .unwrap();
    assert_eq!(
        kept.last().map(|d| d["type"].clone()),
        Some("complete".into()),
        "{kept:?}"
    );
}
