//! What the real `ci` writes of a job's output: on a terminal (a pty made
//! by util-linux `script`) only colours pass and other control sequences are
//! shown escaped; piped output keeps its bytes without the colours; `--raw`
//! and `NO_COLOR` do what they say. Also the warning for keys sent in the
//! clear, and server URLs without a scheme. A scripted server plays the job.

#![allow(clippy::unwrap_used)]

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::JobId;
use ci_common::JobStatus;
use support::{event_stream, frame, passing_project, run_on_terminal, CiUser, ScriptedServer};

/// A job's output that tries to set the clipboard, the window title, plant
/// a link and clear the screen, between coloured words.
const HOSTILE: &str = "\x1b[31mRED\x1b[0m\tok\n\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07\
\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\\x1b[2J\x1b[Hend\n";

/// Every job passed.
async fn passed_job(Path(id): Path<JobId>) -> Json<JobSummary> {
    let mut job = JobSummary::new(id, JobStatus::Completed);
    job.success = Some(true);
    job.exit_code = Some(0);
    Json(job)
}

/// Every job printed [`HOSTILE`], then passed.
async fn hostile_output(Path(_id): Path<JobId>) -> Response {
    let log = StreamEvent::Log {
        data: HOSTILE.to_string(),
    };
    let complete = StreamEvent::Complete {
        success: true,
        status: Some(JobStatus::Completed),
    };
    event_stream(Body::from(
        frame(Some(1), &log) + &frame(Some(1), &complete),
    ))
}

/// A job that passed after printing [`HOSTILE`].
fn hostile_job_script() -> Router {
    Router::new()
        .route("/jobs/{id}", get(passed_job))
        .route("/jobs/{id}/stream", get(hostile_output))
}

/// No jobs at all.
fn no_jobs_script() -> Router {
    Router::new().route("/jobs", get(|| async { Json(Vec::<JobSummary>::new()) }))
}

#[test]
fn a_terminal_gets_colours_and_escaped_control_sequences() {
    let server = ScriptedServer::start(hostile_job_script());
    let ci = CiUser::of(&server);
    let id = JobId::random().to_string();

    let out = ci.run_on_terminal(&["wait", "--all", &id]);
    let text = &out.stdout;
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\x1b[31mRED\x1b[0m\tok"), "{text:?}");
    for planted in ["\x1b]52", "\x1b]0;", "\x1b]8;", "\x1b[2J", "\x07"] {
        assert!(
            !text.contains(planted),
            "{planted:?} reached the terminal: {text:?}"
        );
    }
    assert!(text.contains(r"\u{1b}]52;c;ZXZpbA==\u{7}"), "{text:?}");
    assert!(text.contains("link") && text.contains("end"), "{text:?}");

    let out = ci.run_on_terminal(&["wait", "--all", "--raw", &id]);
    let text = &out.stdout;
    assert!(text.contains("\x1b]52;c;ZXZpbA==\x07"), "--raw: {text:?}");

    let out = run_on_terminal(ci.command(&["wait", "--all", &id]).env("NO_COLOR", "1"));
    let text = &out.stdout;
    assert!(
        text.contains("RED\tok") && !text.contains("\x1b[31m"),
        "{text:?}"
    );
    assert!(!text.contains("\x1b]52"), "{text:?}");
}

#[test]
fn piped_output_keeps_its_bytes_without_colours() {
    let server = ScriptedServer::start(hostile_job_script());
    let ci = CiUser::of(&server);
    let id = JobId::random().to_string();

    let out = ci.run(&["wait", "--all", &id]);
    out.assert_code(0);
    let expected = HOSTILE.replace("\x1b[31m", "").replace("\x1b[0m", "");
    assert_eq!(out.stdout, expected);

    let out = ci.run(&["wait", "--all", "--raw", &id]);
    assert_eq!(out.stdout, HOSTILE);
}

#[test]
fn a_key_sent_in_the_clear_to_another_host_is_warned_about() {
    let server = ScriptedServer::start(no_jobs_script());
    let ci = CiUser::of(&server);
    let warning = "the API key is sent unencrypted";

    // Loopback: no warning.
    let out = ci.run(&["list"]);
    out.assert_code(0);
    assert!(!out.stderr.contains(warning), "{out}");

    // Another host over plain http (that name never resolves): one warning.
    let out = ci_testkit::run(
        ci.command(&["list"])
            .env("CI_SERVER_URL", "http://ci.invalid:8000"),
    );
    assert_eq!(out.stderr.matches(warning).count(), 1, "{out}");
    out.assert_code(1);

    // The same host over https: no warning.
    let out = ci_testkit::run(
        ci.command(&["list"])
            .env("CI_SERVER_URL", "https://ci.invalid:8000"),
    );
    assert!(!out.stderr.contains(warning), "{out}");

    // --help says why --api-key is the last choice.
    let out = ci.run(&["--help"]);
    assert!(out.stdout.contains("process list"), "{out}");
}

#[test]
fn a_server_url_without_a_scheme_is_http() {
    let server = ScriptedServer::start(no_jobs_script());
    let out = ci_testkit::run(
        CiUser::of(&server)
            .command(&["list", "--server-url", &server.address()])
            .env_remove("CI_SERVER_URL"),
    );
    out.assert_code(0);
    assert_eq!(out.stdout, "No jobs found.\n");
}

/// Takes a whole upload, then refuses it: what matters is what `ci`
/// showed while sending.
async fn refused_after_reading(body: Body) -> StatusCode {
    let _ = axum::body::to_bytes(body, usize::MAX).await;
    StatusCode::SERVICE_UNAVAILABLE
}

/// A big upload shows its progress on a terminal, and nothing of it when
/// stderr is piped.
#[test]
fn big_uploads_show_progress_on_a_terminal_only() {
    let server = ScriptedServer::start(
        Router::new()
            .route("/jobs/{id}", get(passed_job))
            .route("/submit-async", post(refused_after_reading)),
    );
    let noise = ci_testkit::incompressible_bytes(6 * 1024 * 1024, 1);
    let project = passing_project();
    project.write_bytes("blob.bin", &noise);
    let ci = CiUser::of(&server);

    let out = run_on_terminal(
        ci.command(&["submit", "test", "--async"])
            .current_dir(project.path()),
    );
    assert!(out.stdout.contains("Uploaded 6.0 MB."), "{out}");

    let out = ci.run_in(project.path(), &["submit", "test", "--async"]);
    assert!(!out.stderr.contains("Uploaded"), "{out}");
    assert!(out.stderr.contains("503"), "{out}");
}
