//! The real `ci` against a scripted server, for what needs no jobs to run:
//! ambiguous id prefixes, `ci config` and the config file, a wrong base
//! path, completions, `--dry-run`.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ci_common::api::JobSummary;
use ci_common::JobStatus;

const TWIN_A: &str = "4a4c2011-0000-4000-8000-000000000001";
const TWIN_B: &str = "4a4c2099-0000-4000-8000-000000000002";
const KEY: &str = "ci_abcdefghijklmnopqrstuvwxyz0123456789WXYZ";

#[derive(Clone, Default)]
struct Seen {
    uploads: Arc<AtomicUsize>,
}

async fn jobs() -> Json<Vec<JobSummary>> {
    Json(
        [TWIN_A, TWIN_B]
            .iter()
            .map(|id| JobSummary::new(id.parse().unwrap(), JobStatus::Completed))
            .collect(),
    )
}

async fn job(Path(id): Path<ci_common::JobId>) -> Response {
    if [TWIN_A, TWIN_B].contains(&id.to_string().as_str()) {
        return Json(JobSummary::new(id, JobStatus::Completed)).into_response();
    }
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"detail": "Job not found"})),
    )
        .into_response()
}

/// A server with a 1 MiB limit, which refuses a bigger announced upload at
/// once, without reading it, as `ci-server` does.
async fn small_limit(headers: axum::http::HeaderMap) -> Response {
    let announced = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > 1024 * 1024) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(serde_json::json!({"detail": "Upload too large: the limit is 1048576 bytes"})),
        )
            .into_response();
    }
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

async fn upload(State(seen): State<Seen>) -> StatusCode {
    seen.uploads.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

fn start_server(seen: Seen) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/jobs", get(jobs))
                .route("/jobs/{id}", get(job))
                .route("/submit-stream", post(upload))
                .route("/submit-async", post(upload))
                .route("/small/submit-async", post(small_limit))
                .route("/small/jobs/{id}", get(job))
                .with_state(seen);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn ci(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ci"));
    cmd.env("HOME", home)
        .env_remove("CI_SERVER_URL")
        .env_remove("CI_API_KEY");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_ambiguous_prefix_lists_the_jobs_it_matches() {
    let addr = start_server(Seen::default());
    let home = tempfile::tempdir().unwrap();
    let out = ci(home.path())
        .env("CI_SERVER_URL", format!("http://{addr}"))
        .env("CI_API_KEY", KEY)
        .args(["show", "4a4c20"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ambiguous"), "{stderr}");
    assert!(
        stderr.contains(TWIN_A) && stderr.contains(TWIN_B),
        "{stderr}"
    );

    let out = ci(home.path())
        .env("CI_SERVER_URL", format!("http://{addr}"))
        .env("CI_API_KEY", KEY)
        .args(["show", "4a4c2099"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("Job ID:    {TWIN_B}")), "{stdout}");
}

#[test]
fn the_config_file_takes_spaces_quotes_and_a_server_url() {
    let addr = start_server(Seen::default());
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ci")).unwrap();
    std::fs::write(
        home.path().join(".ci").join("config"),
        format!("# my CI\nserver_url = \"{addr}\"\napi_key = '{KEY}'\n"),
    )
    .unwrap();

    let out = ci(home.path()).arg("config").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "Server:  http://{addr} (from ~/.ci/config)\nAPI key: ci_abc…WXYZ (from ~/.ci/config)\n"
        )
    );
    assert!(!stdout.contains(KEY));

    // The environment wins, and says so.
    let out = ci(home.path())
        .env("CI_API_KEY", "ci_fromtheenvironment0000")
        .arg("config")
        .output()
        .unwrap();
    assert!(text(&out).0.contains("(from CI_API_KEY)"));

    // And it is used: the list comes from the server the file names.
    let out = ci(home.path()).args(["list", "--json"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(jobs.len(), 2);
}

#[test]
fn a_wrong_base_path_names_the_url_that_answered() {
    let addr = start_server(Seen::default());
    let home = tempfile::tempdir().unwrap();
    let out = ci(home.path())
        .env("CI_SERVER_URL", format!("http://{addr}/api"))
        .env("CI_API_KEY", KEY)
        .arg("list")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("http://{addr}/api/jobs")),
        "{stderr}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = ci(home.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        for word in ["submit", "wait", "rerun", "logs"] {
            assert!(stdout.contains(word), "{shell}: {word}");
        }
    }
}

#[test]
fn a_dry_run_lists_the_files_and_uploads_nothing() {
    let seen = Seen::default();
    let addr = start_server(seen.clone());
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("test_a.py"),
        "def test_a():\n    pass\n",
    )
    .unwrap();
    std::fs::create_dir(project.path().join(".venv")).unwrap();
    std::fs::write(project.path().join(".venv").join("big"), "x").unwrap();
    let out = ci(home.path())
        .env("CI_SERVER_URL", format!("http://{addr}"))
        .env("CI_API_KEY", KEY)
        .args(["submit", "test", "--dry-run"])
        .current_dir(project.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("test_a.py"), "{stdout}");
    assert!(!stdout.contains(".venv"), "{stdout}");
    assert!(stdout.contains("1 files, 23 B"), "{stdout}");
    assert!(stdout.contains("nothing was uploaded"), "{stdout}");
    assert_eq!(seen.uploads.load(Ordering::SeqCst), 0);
}

/// Bug 1's 413: the server answers before the upload is through and closes;
/// `ci` reports the 413 when the answer could be read, and otherwise says
/// what a connection closed mid-upload means, never a bare broken pipe.
#[test]
fn an_upload_over_the_limit_is_explained() {
    let addr = start_server(Seen::default());
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("test_a.py"),
        "def test_a():\n    pass\n",
    )
    .unwrap();
    let noise = ci_testkit::incompressible_bytes(20 * 1024 * 1024, 1);
    std::fs::write(project.path().join("blob.bin"), noise).unwrap();
    for _ in 0..5 {
        let out = ci(home.path())
            .env("CI_SERVER_URL", format!("http://{addr}/small"))
            .env("CI_API_KEY", KEY)
            .args(["submit", "test", "--async"])
            .current_dir(project.path())
            .output()
            .unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("413")
                || stderr.contains("closed the connection during the upload of 20.0 MB"),
            "{stderr}"
        );
    }
}
