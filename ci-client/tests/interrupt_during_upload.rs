//! Ctrl-C that comes while a sync submit's upload is in flight: the server may
//! already have stored the job, so `ci` must learn its id and cancel it rather
//! than leave a job running that the user tried to stop. The server here holds
//! its answer until the test has seen `ci` handle the interrupt, which makes
//! the order of events certain instead of a timing guess.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use ci_common::api::JobSummary;
use ci_common::JobId;
use ci_common::JobStatus;
use futures::StreamExt as _;
use tokio::sync::{oneshot, Notify};

#[derive(Clone)]
struct Server {
    job_id: JobId,
    upload_received: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    release: Arc<Notify>,
    cancelled: Arc<Mutex<Vec<JobId>>>,
}

async fn submit_stream(State(server): State<Server>, mut form: Multipart) -> Response {
    while let Ok(Some(field)) = form.next_field().await {
        let _ = field.bytes().await;
    }
    if let Some(tx) = server.upload_received.lock().unwrap().take() {
        let _ = tx.send(());
    }
    server.release.notified().await;
    let first = format!(
        "data: {{\"type\":\"job_id\",\"job_id\":\"{}\"}}\n\n",
        server.job_id
    );
    // The job id, then a stream that stays open as a running job's would.
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures::stream::pending());
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

async fn cancel(State(server): State<Server>, Path(id): Path<JobId>) -> Json<JobSummary> {
    server.cancelled.lock().unwrap().push(id);
    Json(JobSummary::new(id, JobStatus::Cancelled))
}

async fn unknown_job() -> (axum::http::StatusCode, Json<serde_json::Value>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(serde_json::json!({"detail": "Job not found"})),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_the_upload_cancels_the_job_the_server_then_names() {
    let (upload_tx, upload_rx) = oneshot::channel();
    let server = Server {
        job_id: JobId::random(),
        upload_received: Arc::new(Mutex::new(Some(upload_tx))),
        release: Arc::new(Notify::new()),
        cancelled: Arc::new(Mutex::new(Vec::new())),
    };
    let app = Router::new()
        .route("/submit-stream", post(submit_stream))
        .route("/jobs/{id}/cancel", post(cancel))
        // `ci` checks the key first: a good key gets 404 for an unknown job.
        .route("/jobs/{id}", axum::routing::get(unknown_job))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("test_one.py"),
        "def test_one():\n    pass\n",
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    // The kit's command: no `CI_*` setting of the caller reaches `ci`.
    let mut ci = ci_testkit::process::command(std::path::Path::new(env!("CARGO_BIN_EXE_ci")))
        .args(["submit", "test"])
        .current_dir(project.path())
        .env("HOME", home.path())
        .env("CI_SERVER_URL", &url)
        .env("CI_API_KEY", "ci_test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Lines of stderr as they come, so the test can wait on what `ci` says.
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let stderr = ci.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = line_tx.send(line);
        }
        all
    });

    tokio::time::timeout(Duration::from_secs(30), upload_rx)
        .await
        .expect("the upload reaches the server")
        .unwrap();
    let interrupted = Command::new("kill")
        .args(["-INT", &ci.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let handled = tokio::task::spawn_blocking(move || loop {
        match line_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("cancelled") => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    })
    .await
    .unwrap();
    assert!(handled, "ci did not say that the job is being cancelled");
    // Only now does the server name the job.
    server.release.notify_one();

    let status = tokio::task::spawn_blocking(move || ci.wait())
        .await
        .unwrap()
        .unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert_eq!(
        *server.cancelled.lock().unwrap(),
        vec![server.job_id],
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("Job {} cancelled.", server.job_id)),
        "stderr:\n{stderr}"
    );
}
