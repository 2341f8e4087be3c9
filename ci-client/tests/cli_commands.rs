//! The real `ci` against a scripted server, for what needs no jobs to run:
//! ambiguous id prefixes, `ci config` and the config file, a wrong base
//! path, completions, `--dry-run`.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ci_common::api::JobSummary;
use ci_common::JobId;
use ci_common::JobStatus;
use support::{api_error, passing_project, CiUser, ScriptedServer};

const TWIN_A: &str = "4a4c2011-0000-4000-8000-000000000001";
const TWIN_B: &str = "4a4c2099-0000-4000-8000-000000000002";
const KEY: &str = "ci_abcdefghijklmnopqrstuvwxyz0123456789WXYZ";

/// Two completed jobs whose ids share the prefix `4a4c20`.
async fn twins() -> Json<Vec<JobSummary>> {
    Json(
        [TWIN_A, TWIN_B]
            .iter()
            .map(|id| JobSummary::new(id.parse().unwrap(), JobStatus::Completed))
            .collect(),
    )
}

/// One of the twins, or the 404 of an unknown job.
async fn twin(Path(id): Path<JobId>) -> Response {
    if [TWIN_A, TWIN_B].contains(&id.to_string().as_str()) {
        return Json(JobSummary::new(id, JobStatus::Completed)).into_response();
    }
    api_error(StatusCode::NOT_FOUND, "Job not found")
}

/// The two twins, `GET /jobs` and `GET /jobs/{id}`, for a script that adds
/// routes with a state of type `S`.
fn twins_script<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/jobs", get(twins))
        .route("/jobs/{id}", get(twin))
}

#[test]
fn an_ambiguous_prefix_lists_the_jobs_it_matches() {
    let server = ScriptedServer::start(twins_script());
    let ci = CiUser::of(&server);

    let out = ci.run(&["show", "4a4c20"]);
    out.assert_code(1);
    assert!(out.stderr.contains("ambiguous"), "{out}");
    assert!(
        out.stderr.contains(TWIN_A) && out.stderr.contains(TWIN_B),
        "{out}"
    );

    let out = ci.run(&["show", "4a4c2099"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("Job ID:    {TWIN_B}")),
        "{out}"
    );
}

#[test]
fn the_config_file_takes_spaces_quotes_and_a_server_url() {
    let server = ScriptedServer::start(twins_script());
    let ci = CiUser::unconfigured();
    let addr = server.address();
    std::fs::create_dir(ci.home().join(".ci")).unwrap();
    std::fs::write(
        ci.home().join(".ci").join("config"),
        format!("# my CI\nserver_url = \"{addr}\"\napi_key = '{KEY}'\n"),
    )
    .unwrap();

    let out = ci.run(&["config"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        format!(
            "Server:  http://{addr} (from ~/.ci/config)\nAPI key: ci_abc…WXYZ (from ~/.ci/config)\n"
        )
    );
    assert!(!out.stdout.contains(KEY));

    // The environment wins, and says so.
    let out = ci_testkit::run(
        ci.command(&["config"])
            .env("CI_API_KEY", "ci_fromtheenvironment0000"),
    );
    assert!(out.stdout.contains("(from CI_API_KEY)"), "{out}");

    // And it is used: the list comes from the server the file names.
    let out = ci.run(&["list", "--json"]);
    out.assert_code(0);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 2);
}

#[test]
fn a_wrong_base_path_names_the_url_that_answered() {
    let server = ScriptedServer::start(twins_script());
    let url = format!("{}/api", server.url());

    let out = CiUser::at(&url).run(&["list"]);
    out.assert_code(1);
    assert!(out.stderr.contains(&format!("{url}/jobs")), "{out}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let ci = CiUser::unconfigured();
    for shell in ["bash", "zsh", "fish"] {
        let out = ci.run(&["completions", shell]);
        out.assert_code(0);
        for word in ["submit", "wait", "rerun", "logs"] {
            assert!(out.stdout.contains(word), "{shell}: {word}");
        }
    }
}

/// Counts the uploads that reach it, and refuses them.
async fn counted_upload(State(uploads): State<Arc<AtomicUsize>>) -> StatusCode {
    uploads.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

#[test]
fn a_dry_run_lists_the_files_and_uploads_nothing() {
    let uploads = Arc::new(AtomicUsize::new(0));
    let server = ScriptedServer::start(
        twins_script()
            .route("/submit-stream", post(counted_upload))
            .route("/submit-async", post(counted_upload))
            .with_state(Arc::clone(&uploads)),
    );
    let project = passing_project();
    project.write(".venv/big", "x");

    let out = CiUser::of(&server).run_in(project.path(), &["submit", "test", "--dry-run"]);
    out.assert_code(0);
    assert!(out.stdout.contains("test_a.py"), "{out}");
    assert!(!out.stdout.contains(".venv"), "{out}");
    assert!(out.stdout.contains("1 files, 23 B"), "{out}");
    assert!(out.stdout.contains("nothing was uploaded"), "{out}");
    assert_eq!(uploads.load(Ordering::SeqCst), 0);
}

/// A server with a 1 MiB limit, which refuses a bigger announced upload at
/// once, without reading it, as `ci-server` does.
async fn small_limit(headers: HeaderMap) -> Response {
    let announced = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > 1024 * 1024) {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Upload too large: the limit is 1048576 bytes",
        );
    }
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// Bug 1's 413: the server answers before the upload is through and closes;
/// `ci` reports the 413 when the answer could be read, and otherwise says
/// what a connection closed mid-upload means, never a bare broken pipe.
#[test]
fn an_upload_over_the_limit_is_explained() {
    let server = ScriptedServer::start(twins_script().route("/submit-async", post(small_limit)));
    let noise = ci_testkit::incompressible_bytes(20 * 1024 * 1024, 1);
    let project = passing_project();
    project.write_bytes("blob.bin", &noise);
    let ci = CiUser::of(&server);
    for _ in 0..5 {
        let out = ci.run_in(project.path(), &["submit", "test", "--async"]);
        out.assert_code(1);
        assert!(
            out.stderr.contains("413")
                || out
                    .stderr
                    .contains("closed the connection during the upload of 20.0 MB"),
            "{out}"
        );
    }
}
