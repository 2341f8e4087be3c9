//! Ctrl-C that comes while a sync submit's upload is in flight: the server may
//! already have stored the job, so `ci` must learn its id and cancel it rather
//! than leave a job running that the user tried to stop. The server here holds
//! its answer until the test has seen `ci` handle the interrupt, which makes
//! the order of events certain instead of a timing guess.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::JobId;
use ci_common::JobStatus;
use futures::StreamExt as _;
use support::{api_error, event_stream, frame, passing_project, CiUser, ScriptedServer};
use tokio::sync::Notify;

/// A submit the server holds: it takes the upload, says so, and names the
/// job only once released; then it records what `ci` cancels.
#[derive(Clone)]
struct HeldSubmit {
    job_id: JobId,
    upload_received: mpsc::Sender<()>,
    release: Arc<Notify>,
    cancelled: Arc<Mutex<Vec<JobId>>>,
}

async fn submit_stream(State(held): State<HeldSubmit>, mut form: Multipart) -> Response {
    while let Ok(Some(field)) = form.next_field().await {
        let _ = field.bytes().await;
    }
    let _ = held.upload_received.send(());
    held.release.notified().await;
    let first = frame(
        None,
        &StreamEvent::JobId {
            job_id: held.job_id,
        },
    );
    // The job id, then a stream that stays open as a running job's would.
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures::stream::pending());
    event_stream(Body::from_stream(body))
}

async fn cancel(State(held): State<HeldSubmit>, Path(id): Path<JobId>) -> Json<JobSummary> {
    held.cancelled.lock().unwrap().push(id);
    Json(JobSummary::new(id, JobStatus::Cancelled))
}

#[test]
fn ctrl_c_during_the_upload_cancels_the_job_the_server_then_names() {
    let (upload_received, upload_rx) = mpsc::channel();
    let held = HeldSubmit {
        job_id: JobId::random(),
        upload_received,
        release: Arc::new(Notify::new()),
        cancelled: Arc::new(Mutex::new(Vec::new())),
    };
    let server = ScriptedServer::start(
        Router::new()
            .route("/submit-stream", post(submit_stream))
            .route("/jobs/{id}/cancel", post(cancel))
            // `ci` checks the key first: a good key gets 404 for an unknown job.
            .route(
                "/jobs/{id}",
                get(|| async { api_error(StatusCode::NOT_FOUND, "Job not found") }),
            )
            .with_state(held.clone()),
    );
    let project = passing_project();

    let mut ci = CiUser::of(&server).spawn_in(project.path(), &["submit", "test"]);
    upload_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the upload reaches the server");
    ci.interrupt();
    ci.wait_for_stderr(
        "ci to say that the job is being cancelled",
        Duration::from_secs(30),
        |stderr| stderr.contains("cancelled"),
    );
    // Only now does the server name the job.
    held.release.notify_one();

    let out = ci.finish(ci_testkit::COMMAND_DEADLINE);
    out.assert_code(130);
    assert_eq!(*held.cancelled.lock().unwrap(), vec![held.job_id], "{out}");
    assert!(
        out.stderr
            .contains(&format!("Job {} cancelled.", held.job_id)),
        "{out}"
    );
}
