//! Uploads, job queries and cancellation, over HTTP against the real router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ci_common::time::to_api_string;
use ci_common::{JobId, JobStatus};
use ci_persistence::JobOutcome;
use ci_server::ServerConfig;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{
    error_detail, is_api_time, multipart_preamble, project_zip, raw_exchange, spawn_app,
    spawn_app_with, test_config, zip_form, zip_of_size, TestApp, BOUNDARY,
};

const SUBMIT_ROUTES: [&str; 3] = ["/submit-async", "/submit-stream", "/submit"];

async fn assert_no_jobs(app: &TestApp) {
    let jobs = app.store.list_jobs_for_user(app.user.id).await.unwrap();
    assert!(jobs.is_empty(), "no job may exist after a refused upload");
}

#[tokio::test]
async fn a_valid_upload_queues_a_job_owned_by_the_caller() {
    let app = spawn_app().await;
    let zip = project_zip("test_one.py");
    let response = app
        .upload_with(&app.key, "/submit-async", zip.clone())
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "only job_id: {body}");
    let id: JobId = obj["job_id"].as_str().unwrap().parse().unwrap();

    let job = app.store.get_job(id).await.unwrap().expect("job exists");
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.user_id, app.user.id);
    assert_eq!(job.success, None);
    assert!(!job.cancel_requested);
    assert_eq!(job.archive_digest, hex::encode(Sha256::digest(&zip)));
    assert_eq!(
        app.store.get_archive(&job.archive_digest).await.unwrap(),
        Some(zip.clone()),
        "the archive is stored as uploaded"
    );

    // The same bytes again: a second job on the same stored archive.
    let again = app.submit_zip(zip.clone()).await;
    assert_ne!(again, id);
    let job2 = app.store.get_job(again).await.unwrap().unwrap();
    assert_eq!(job2.archive_digest, job.archive_digest);
    // A different project: a different archive.
    let other = app.submit_zip(project_zip("test_two.py")).await;
    let job3 = app.store.get_job(other).await.unwrap().unwrap();
    assert_ne!(job3.archive_digest, job.archive_digest);
}

#[tokio::test]
async fn an_upload_that_is_not_a_zip_is_400_with_a_reason() {
    let app = spawn_app().await;
    let mut truncated = project_zip("test_x.py");
    truncated.truncate(truncated.len() / 2);
    for body in [b"print('hello')\n".to_vec(), Vec::new(), truncated] {
        for route in SUBMIT_ROUTES {
            let response = app.upload_with(&app.key, route, body.clone()).await;
            let detail = error_detail(response, 400).await;
            assert!(detail.contains("not a readable zip"), "{route}: {detail}");
        }
    }
    assert_no_jobs(&app).await;
}

#[tokio::test]
async fn the_optional_fields_say_how_the_job_runs() {
    let app = spawn_app().await;
    // Before and after the file: the order of the parts does not matter.
    let form = Form::new()
        .text("python", "3.13")
        .text("project", "  démo ")
        .part("file", Part::bytes(project_zip("t.py")).file_name("p.zip"))
        .text("fresh_env", "true")
        .text("pytest_args", r#"["-k", "not slow; rm -rf /", "-x"]"#)
        .text("unknown", "ignored");
    let response = app
        .post("/submit-async")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["job_id"].as_str().unwrap().parse().unwrap();
    let job = app.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(
        job.options.python.map(|p| p.to_string()).as_deref(),
        Some("3.13")
    );
    assert_eq!(job.options.project.as_deref(), Some("démo"));
    assert!(job.options.fresh_env);
    assert_eq!(job.options.pytest_args, ["-k", "not slow; rm -rf /", "-x"]);
    let summary: serde_json::Value = app
        .get(&format!("/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["project"], "démo");
    // The reference client's upload asks for nothing.
    let plain = app.submit_async().await;
    let plain = app.store.get_job(plain).await.unwrap().unwrap();
    assert_eq!(plain.options, ci_common::JobOptions::default());
}

#[tokio::test]
async fn optional_fields_that_cannot_be_meant_are_400_before_any_job() {
    let app = spawn_app().await;
    for (field, value, says) in [
        ("python", "3", "Invalid 'python' field"),
        ("python", "three.thirteen", "Invalid 'python' field"),
        ("project", "   ", "Invalid 'project' field"),
        ("project", "a\u{7}b", "Invalid 'project' field"),
        ("fresh_env", "maybe", "Invalid 'fresh_env' field"),
        ("pytest_args", "-k foo", "Invalid 'pytest_args' field"),
        ("pytest_args", r#"[1, 2]"#, "Invalid 'pytest_args' field"),
    ] {
        let form = zip_form(project_zip("t.py")).text(field, value.to_string());
        let response = app
            .post("/submit-async")
            .multipart(form)
            .send()
            .await
            .unwrap();
        let detail = error_detail(response, 400).await;
        assert!(detail.contains(says), "{field}={value:?}: {detail}");
    }
    let too_many = serde_json::to_string(&vec!["-x"; 257]).unwrap();
    let form = zip_form(project_zip("t.py")).text("pytest_args", too_many);
    let response = app
        .post("/submit-async")
        .multipart(form)
        .send()
        .await
        .unwrap();
    error_detail(response, 400).await;
    assert_no_jobs(&app).await;
}

#[tokio::test]
async fn an_upload_without_the_file_field_is_400_with_the_reason() {
    let app = spawn_app().await;
    for route in SUBMIT_ROUTES {
        let form = Form::new().text("name", "project").part(
            "archive",
            Part::bytes(project_zip("t.py")).file_name("p.zip"),
        );
        let response = app.post(route).multipart(form).send().await.unwrap();
        let detail = error_detail(response, 400).await;
        assert!(detail.contains("Missing 'file' field"), "{route}: {detail}");

        // A form without any part (not even valid multipart, which needs one).
        let response = app.post(route).multipart(Form::new()).send().await.unwrap();
        let detail = error_detail(response, 400).await;
        assert!(
            detail.contains("Missing 'file' field") || detail.contains("Malformed multipart"),
            "{route}: {detail}"
        );
    }
    assert_no_jobs(&app).await;
}

#[tokio::test]
async fn a_body_that_is_not_multipart_is_400() {
    let app = spawn_app().await;
    let zip = project_zip("t.py");
    for route in SUBMIT_ROUTES {
        // The zip as the raw body.
        let response = app
            .post(route)
            .header("content-type", "application/zip")
            .body(zip.clone())
            .send()
            .await
            .unwrap();
        let detail = error_detail(response, 400).await;
        assert!(detail.contains("multipart/form-data"), "{route}: {detail}");
        // No body, no content type.
        let response = app.post(route).send().await.unwrap();
        let detail = error_detail(response, 400).await;
        assert!(detail.contains("multipart/form-data"), "{route}: {detail}");
        // Multipart in name only.
        let response = app
            .post(route)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body("this is not multipart")
            .send()
            .await
            .unwrap();
        error_detail(response, 400).await;
    }
    assert_no_jobs(&app).await;
}

const LIMIT: u64 = 1024;

async fn small_limit_app() -> TestApp {
    spawn_app_with(ServerConfig {
        max_upload_bytes: LIMIT,
        ..test_config()
    })
    .await
}

fn assert_too_large(detail: &str) {
    assert!(
        detail.contains("too large") && detail.contains(&LIMIT.to_string()),
        "413 detail names the limit: {detail}"
    );
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_and_one_at_the_limit_is_taken() {
    let app = small_limit_app().await;
    for route in SUBMIT_ROUTES {
        let response = app
            .upload_with(&app.key, route, zip_of_size(LIMIT as usize + 1))
            .await;
        assert_too_large(&error_detail(response, 413).await);
    }
    let response = app
        .upload_with(&app.key, "/submit-async", zip_of_size(50 * 1024))
        .await;
    assert_too_large(&error_detail(response, 413).await);
    assert_no_jobs(&app).await;

    let response = app
        .upload_with(&app.key, "/submit-async", zip_of_size(LIMIT as usize))
        .await;
    assert_eq!(response.status(), 200, "an upload of exactly the limit");
}

fn upload_head(app: &TestApp, content_length: Option<u64>) -> String {
    let length = match content_length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    format!(
        "POST /submit-async HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{length}\r\n",
        app.addr, app.key
    )
}

#[tokio::test]
async fn a_large_announced_body_is_refused_before_it_is_sent() {
    let app = small_limit_app().await;
    // 100 MiB announced, only the start of it sent; the answer must come
    // without the rest, or this waits for it until the deadline.
    let mut request = upload_head(&app, Some(100 * 1024 * 1024)).into_bytes();
    request.extend_from_slice(multipart_preamble().as_bytes());
    request.extend_from_slice(&[b'z'; 512]);
    let response = raw_exchange(app.addr, &request).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_too_large(&response.detail());
    assert_no_jobs(&app).await;
}

#[tokio::test]
async fn an_oversize_file_is_refused_while_it_streams_in() {
    let app = small_limit_app().await;
    // Within the announced-size allowance for multipart framing, so only the
    // file's bytes as they arrive can tell: 4 KiB of a 60 KiB body are sent.
    let mut request = upload_head(&app, Some(60 * 1024)).into_bytes();
    request.extend_from_slice(multipart_preamble().as_bytes());
    request.extend_from_slice(&[b'z'; 4096]);
    let response = raw_exchange(app.addr, &request).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_too_large(&response.detail());

    // The same without any announced length (chunked), never terminated.
    let mut request = upload_head(&app, None).into_bytes();
    let mut body = multipart_preamble().into_bytes();
    body.extend_from_slice(&[b'z'; 4096]);
    request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    request.extend_from_slice(&body);
    request.extend_from_slice(b"\r\n");
    let response = raw_exchange(app.addr, &request).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_too_large(&response.detail());
    assert_no_jobs(&app).await;
}

fn summary_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn jobs_lists_the_callers_jobs_newest_first() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;

    let response = app.get("/jobs").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));

    let first = app.submit_async().await;
    let strangers = app.submit_async_as(&other_key).await;
    let second = app.submit_async().await;
    let third = app.submit_async().await;

    // first: completed successfully; second: running; third: queued.
    app.store
        .mark_running(first, "c1", "img", None)
        .await
        .unwrap();
    let done = app
        .store
        .finish_job(first, &JobOutcome::exited(0))
        .await
        .unwrap();
    let running = app
        .store
        .mark_running(second, "c2", "img", None)
        .await
        .unwrap();

    let response = app.get("/jobs").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let list: Vec<Value> = response.json().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![third.to_string(), second.to_string(), first.to_string()],
        "newest first, only the caller's"
    );
    assert!(!ids.contains(&strangers.to_string().as_str()));

    for j in &list {
        let keys = summary_keys(j);
        for key in ["end_time", "job_id", "start_time", "status", "success"] {
            assert!(keys.contains(&key.to_string()), "{key} in {j}");
        }
        for time in ["start_time", "end_time"] {
            assert!(
                j[time].is_null() || j[time].as_str().is_some_and(is_api_time),
                "{time} is ISO-8601 ending in Z, or null: {j}"
            );
        }
    }
    let by_id = |id: JobId| list.iter().find(|j| j["job_id"] == id.to_string()).unwrap();

    let j = by_id(third);
    assert_eq!(j["status"], "queued");
    assert!(j["success"].is_null() && j["start_time"].is_null() && j["end_time"].is_null());

    let j = by_id(second);
    assert_eq!(j["status"], "running");
    assert!(j["success"].is_null() && j["end_time"].is_null());
    assert_eq!(
        j["start_time"],
        to_api_string(running.started_at.unwrap()),
        "{j}"
    );

    let j = by_id(first);
    assert_eq!(j["status"], "completed");
    assert_eq!(j["success"], true);
    assert_eq!(j["start_time"], to_api_string(done.started_at.unwrap()));
    assert_eq!(j["end_time"], to_api_string(done.ended_at.unwrap()));
    assert_eq!(j["submitted_at"], to_api_string(done.created_at));
    assert_eq!(j["exit_code"], 0);
    let took = (done.ended_at.unwrap() - done.started_at.unwrap()).num_microseconds();
    assert_eq!(
        j["duration_seconds"].as_f64(),
        took.map(|us| us as f64 / 1e6),
        "{j}"
    );

    // The other user sees only theirs.
    let response = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    let theirs: Vec<Value> = response.json().await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["job_id"], strangers.to_string());
}

#[tokio::test]
async fn a_job_is_shown_to_its_owner_only() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;
    let mine = app.submit_async().await;
    let theirs = app.submit_async_as(&other_key).await;

    let response = app.get(&format!("/jobs/{mine}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    let submitted_at = summary["submitted_at"].clone();
    assert!(submitted_at.as_str().is_some_and(is_api_time), "{summary}");
    assert_eq!(
        summary,
        json!({"job_id": mine.to_string(), "status": "queued", "success": null,
               "start_time": null, "end_time": null,
               // Beyond the reference: where "from now" is for a stream.
               "last_event_id": 0,
               // The contract's summary fields, always present, null when empty.
               "submitted_at": submitted_at, "duration_seconds": null,
               "exit_code": null, "reason": null, "python": null,
               "project": null, "engine": null, "tests": null,
               // Beyond the contract, in GET /jobs/{id} of a queued job only.
               "queue_position": 1})
    );

    // The same summary as in the list, but for the queue position.
    let list: Vec<Value> = app.get("/jobs").send().await.unwrap().json().await.unwrap();
    let mut listed = summary.clone();
    listed.as_object_mut().unwrap().remove("queue_position");
    assert_eq!(list, vec![listed]);

    // A failed job: its summary says so, with times.
    app.store
        .finish_job(mine, &JobOutcome::failed("Could not unpack the project"))
        .await
        .unwrap();
    let summary: Value = app
        .get(&format!("/jobs/{mine}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["success"], false);
    assert!(summary["end_time"].as_str().is_some_and(is_api_time));
    assert_eq!(summary["reason"], "Could not unpack the project");
    assert!(summary["exit_code"].is_null());
    // It never started, so it has no duration.
    assert!(summary["duration_seconds"].is_null());

    let response = app.get(&format!("/jobs/{theirs}")).send().await.unwrap();
    assert_eq!(error_detail(response, 403).await, "Access denied");
}

/// Ids that name no job: unknown UUIDs, and paths that are no UUID at all.
fn missing_ids() -> Vec<String> {
    vec![
        JobId::random().to_string(),
        JobId::nil().to_string(),
        "abc".to_string(),
        // `../x` as one path segment.
        "..%2Fx".to_string(),
        "%2E%2E%2Fjobs".to_string(),
        "not%20a%20uuid".to_string(),
        // Not even UTF-8 once decoded.
        "%FF%FE".to_string(),
        "1".to_string(),
    ]
}

#[tokio::test]
async fn an_unknown_or_malformed_job_id_is_404() {
    let app = spawn_app().await;
    app.submit_async().await;
    for id in missing_ids() {
        let response = app.get(&format!("/jobs/{id}")).send().await.unwrap();
        assert_eq!(
            error_detail(response, 404).await,
            "Job not found",
            "GET {id}"
        );
        let response = app
            .post(&format!("/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_detail(response, 404).await,
            "Job not found",
            "cancel {id}"
        );
        let response = app.get(&format!("/jobs/{id}/stream")).send().await.unwrap();
        assert_eq!(
            error_detail(response, 404).await,
            "Job not found",
            "stream {id}"
        );
    }
}

#[tokio::test]
async fn a_literal_dot_dot_path_is_a_json_404() {
    // Clients normalise `/jobs/../x` to `/x` before sending; sent as-is, it
    // matches no route, and is still answered with a JSON 404.
    let app = spawn_app().await;
    for path in ["/jobs/../x", "/jobs/abc/../../x", "/jobs/abc/x"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            app.addr, app.key
        );
        let response = raw_exchange(app.addr, request.as_bytes()).await;
        assert_eq!(response.status, 404, "{path}: {response:?}");
        assert!(!response.detail().is_empty());
    }
}

#[tokio::test]
async fn cancelling_asks_for_cancellation_and_returns_the_summary() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;
    let queued = app.submit_async().await;
    let running = app.submit_async().await;
    app.store
        .mark_running(running, "c", "img", None)
        .await
        .unwrap();
    let theirs = app.submit_async_as(&other_key).await;

    let response = app
        .post(&format!("/jobs/{queued}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["job_id"], queued.to_string());
    assert_eq!(summary["status"], "queued", "the controller does the rest");
    assert!(
        app.store
            .get_job(queued)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    let response = app
        .post(&format!("/jobs/{running}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["status"], "running");
    assert!(summary["start_time"].as_str().is_some_and(is_api_time));
    assert!(
        app.store
            .get_job(running)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    // Asking twice is harmless.
    let response = app
        .post(&format!("/jobs/{running}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Another user's job: refused and untouched.
    let response = app
        .post(&format!("/jobs/{theirs}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(response, 403).await, "Access denied");
    assert!(
        !app.store
            .get_job(theirs)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    // An ended job stays as it ended.
    app.store
        .finish_job(running, &JobOutcome::cancelled())
        .await
        .unwrap();
    let ended = app.submit_async().await;
    app.store
        .finish_job(ended, &JobOutcome::exited(0))
        .await
        .unwrap();
    let response = app
        .post(&format!("/jobs/{ended}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["success"], true);
    assert!(
        !app.store
            .get_job(ended)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
}

#[tokio::test]
async fn the_reference_upload_shape_is_accepted_on_every_submit_route() {
    // Field `file`, file name `project.zip`, type application/zip: what the
    // reference client sends. The streaming routes answer with a stream.
    let app = spawn_app().await;
    for route in SUBMIT_ROUTES {
        let response = app
            .post(route)
            .multipart(zip_form(project_zip("test_r.py")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{route}");
    }
    assert_eq!(
        app.store
            .list_jobs_for_user(app.user.id)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_queued_job_tells_its_place_in_the_whole_queue() {
    let app = spawn_app().await;
    let (_, other_key, _) = app.new_user().await;
    let theirs = app.submit_async_as(&other_key).await;
    let mine = app.submit_async().await;
    let summary = |id: JobId| {
        let request = app.get(&format!("/jobs/{id}"));
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body
        }
    };
    assert_eq!(
        summary(mine).await["queue_position"],
        2,
        "another user's earlier job is ahead"
    );
    app.store
        .mark_running(theirs, "c", "img", None)
        .await
        .unwrap();
    assert_eq!(summary(mine).await["queue_position"], 1);
    app.store
        .mark_running(mine, "c", "img", None)
        .await
        .unwrap();
    let running = summary(mine).await;
    assert!(running.get("queue_position").is_none(), "{running}");
    let listed: Value = app.get("/jobs").send().await.unwrap().json().await.unwrap();
    assert!(listed[0].get("queue_position").is_none(), "{listed}");
}
