//! Compatibility with clients written against the reference implementation:
//! `reference_client.py` talks to the server as the reference's Python client
//! does (requests, multipart field `file`, `data: ` lines, Bearer header),
//! while this test plays the controller for the jobs it submits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;

use ci_common::JobId;
use ci_persistence::JobOutcome;
use serde_json::{json, Value};
use support::{is_api_time, spawn_app, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// python3 with `requests`, or a failure that says what is missing.
async fn require_python_with_requests() {
    let output = Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .await;
    match output {
        Err(e) => panic!(
            "this test needs python3 on PATH to run the reference-style client, and it \
             could not be started: {e}"
        ),
        Ok(o) if !o.status.success() => panic!(
            "this test needs the Python package `requests` (the reference client's HTTP \
             library): `python3 -m pip install requests`.\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

fn events(step: &Value) -> &Vec<Value> {
    step["events"].as_array().expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_style_python_client_works_unchanged() {
    require_python_with_requests().await;
    let app = spawn_app().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference_client.py");

    let mut child = Command::new("python3")
        .arg("-u")
        .arg(&script)
        .arg(&app.address)
        .arg(&app.key)
        // The server is local: no proxy from the environment.
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python3");
    let mut stderr = child.stderr.take().unwrap();
    let stderr_text = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let mut steps: Vec<Value> = Vec::new();
    loop {
        let line = within("the next line from the Python client", lines.next_line())
            .await
            .expect("read stdout");
        let Some(line) = line else { break };
        let step: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("client printed something else ({e}): {line}"));
        let name = step["step"].as_str().unwrap().to_string();
        // The controller's part for the jobs the client submits.
        match name.as_str() {
            "submitted" => {
                let job: JobId = step["job_id"].as_str().unwrap().parse().unwrap();
                app.store.mark_running(job, "c", "i", None).await.unwrap();
                let chunks = ["collected 1 item\n".to_string()];
                app.store.append_log(job, &chunks, None).await.unwrap();
                let chunks = ["test_sample.py::test_ok PASSED\n".to_string()];
                app.store.append_log(job, &chunks, None).await.unwrap();
                app.store
                    .finish_job(job, &JobOutcome::exited(0))
                    .await
                    .unwrap();
            }
            "submitted_async" => {
                let job: JobId = step["job_id"].as_str().unwrap().parse().unwrap();
                app.store.mark_running(job, "c", "i", None).await.unwrap();
                let chunks = ["1 failed\n".to_string()];
                app.store.append_log(job, &chunks, None).await.unwrap();
                app.store
                    .finish_job(job, &JobOutcome::exited(1))
                    .await
                    .unwrap();
            }
            _ => {}
        }
        steps.push(step);
    }
    let status = within("the Python client to exit", child.wait())
        .await
        .unwrap();
    let stderr = stderr_text.await.unwrap();
    assert!(
        status.success(),
        "the Python client failed ({status}):\n{stderr}"
    );

    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {steps:#?}\n{stderr}"))
    };
    let streamed_job = step("submitted")["job_id"].as_str().unwrap().to_string();
    let async_job = step("submitted_async")["job_id"]
        .as_str()
        .unwrap()
        .to_string();

    assert_eq!(
        events(step("submit_stream")),
        &vec![
            json!({"type": "job_id", "job_id": streamed_job}),
            json!({"type": "log", "data": "collected 1 item\n"}),
            json!({"type": "log", "data": "test_sample.py::test_ok PASSED\n"}),
            json!({"type": "complete", "success": true, "status": "completed"}),
        ]
    );
    assert_eq!(
        events(step("wait_all")),
        &vec![
            json!({"type": "log", "data": "1 failed\n"}),
            json!({"type": "complete", "success": false, "status": "completed"}),
        ]
    );
    assert_eq!(
        events(step("wait_ended")),
        &vec![
            json!({"type": "log", "data": "Job already completed.\n"}),
            json!({"type": "complete", "success": false}),
        ]
    );

    let jobs = step("jobs")["jobs"].as_array().unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![async_job.as_str(), streamed_job.as_str()]);
    assert_eq!(jobs[0]["status"], "completed");
    assert_eq!(jobs[0]["success"], false);
    assert_eq!(jobs[1]["success"], true);
    for j in jobs {
        for t in ["start_time", "end_time"] {
            assert!(j[t].as_str().is_some_and(is_api_time), "{j}");
        }
    }

    assert_eq!(step("bad_key")["status"], 401);
    assert_eq!(
        step("bad_key")["body"],
        json!({"detail": "Invalid or revoked API key"})
    );
    assert_eq!(step("no_key")["status"], 403);
    assert_eq!(
        step("no_key")["body"],
        json!({"detail": "Not authenticated"})
    );
    assert_eq!(step("unknown_job")["status"], 404);
    assert_eq!(
        step("unknown_job")["body"],
        json!({"detail": "Job not found"})
    );
    assert_eq!(steps.last().unwrap()["step"], "done");

    // The Python zip was stored as a valid archive.
    let job: JobId = streamed_job.parse().unwrap();
    let job = app.store.get_job(job).await.unwrap().unwrap();
    let zip = app
        .store
        .get_archive(&job.archive_digest)
        .await
        .unwrap()
        .unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut names: Vec<&str> = archive.file_names().collect();
    names.sort();
    assert_eq!(names, vec!["requirements.txt", "test_sample.py"]);
}
