//! `GET /jobs/{id}/log` and `POST /jobs/{id}/rerun`: the stored output as
//! text, and the same archive queued again without an upload.

#![allow(clippy::unwrap_used)]

mod support;

use ci_common::JobStatus;
use ci_persistence::JobOutcome;
use serde_json::Value;
use support::{error_detail, spawn_app};

#[tokio::test]
async fn the_log_is_the_whole_output_as_text_in_any_state() {
    let app = spawn_app().await;
    let job = app.submit_async().await;

    // Queued, no output yet: an empty text.
    let response = app.get(&format!("/jobs/{job}/log")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "");

    // More chunks than one page, so the body is sent in several.
    app.store.mark_running(job, "c", "i", None).await.unwrap();
    let chunks: Vec<String> = (1..=1234).map(|i| format!("line {i}\n")).collect();
    app.store.append_log(job, &chunks, None).await.unwrap();
    let expected: String = chunks.concat();
    let text = app
        .get(&format!("/jobs/{job}/log"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, expected, "running");

    app.store
        .finish_job(job, &JobOutcome::failed("The job was killed"))
        .await
        .unwrap();
    let text = app
        .get(&format!("/jobs/{job}/log"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, format!("{expected}The job was killed\n"), "ended");
}

#[tokio::test]
async fn the_log_is_the_owners_only() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;
    let theirs = app.submit_async_as(&other_key).await;
    let response = app
        .get(&format!("/jobs/{theirs}/log"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response, 403).await, "Access denied");
    let response = app
        .get(&format!("/jobs/{}/log", ci_common::JobId::random()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response, 404).await, "Job not found");
    let response = app
        .client
        .get(app.url(&format!("/jobs/{theirs}/log")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response, 403).await, "Not authenticated");
}

#[tokio::test]
async fn a_rerun_is_a_new_job_on_the_same_archive() {
    let app = spawn_app().await;
    let first = app.submit_async().await;
    app.store
        .finish_job(first, &JobOutcome::exited(1))
        .await
        .unwrap();

    let response = app
        .post(&format!("/jobs/{first}/rerun"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let again: ci_common::JobId = body["job_id"].as_str().unwrap().parse().unwrap();
    assert_ne!(again, first);

    let (a, b) = (
        app.store.get_job(first).await.unwrap().unwrap(),
        app.store.get_job(again).await.unwrap().unwrap(),
    );
    assert_eq!(b.status, JobStatus::Queued);
    assert_eq!(b.archive_digest, a.archive_digest);
    assert_eq!(b.user_id, a.user_id);

    let (_, other_key, _) = app.new_user().await;
    let response = app
        .client
        .post(app.url(&format!("/jobs/{first}/rerun")))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response, 403).await, "Access denied");
}
