//! What the real `ci` writes of a job's output: on a terminal (a pty made
//! by util-linux `script`) only colours pass and other control sequences are
//! shown escaped; piped output keeps its bytes without the colours; `--raw`
//! and `NO_COLOR` do what they say. Also the warning for keys sent in the
//! clear, and server URLs without a scheme. A scripted server plays the job.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use axum::body::Body;
use axum::extract::Path;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::JobStatus;
use uuid::Uuid;

/// A job's output that tries to set the clipboard, the window title, plant
/// a link and clear the screen, between coloured words.
const HOSTILE: &str = "\x1b[31mRED\x1b[0m\tok\n\x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07\
\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\\x1b[2J\x1b[Hend\n";

fn frame(seq: i64, event: &StreamEvent) -> String {
    format!(
        "id: {seq}\ndata: {}\n\n",
        serde_json::to_string(event).unwrap()
    )
}

async fn stream(Path(_id): Path<Uuid>) -> Response {
    let body = frame(
        1,
        &StreamEvent::Log {
            data: HOSTILE.to_string(),
        },
    ) + &frame(
        1,
        &StreamEvent::Complete {
            success: true,
            status: Some(JobStatus::Completed),
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

async fn job(Path(id): Path<ci_common::JobId>) -> Json<JobSummary> {
    let mut job = JobSummary::new(id, JobStatus::Completed);
    job.success = Some(true);
    job.exit_code = Some(0);
    Json(job)
}

/// Takes a whole upload, then refuses it: what matters is what `ci`
/// showed while sending.
async fn upload(body: Body) -> axum::http::StatusCode {
    let _ = axum::body::to_bytes(body, usize::MAX).await;
    axum::http::StatusCode::SERVICE_UNAVAILABLE
}

async fn jobs() -> Json<Vec<JobSummary>> {
    Json(Vec::new())
}

/// Starts the scripted server in a thread of its own and returns its address.
fn start_server() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/jobs", get(jobs))
                .route("/jobs/{id}", get(job))
                .route("/jobs/{id}/stream", get(stream))
                .route("/submit-stream", axum::routing::post(upload))
                .route("/submit-async", axum::routing::post(upload));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn ci(addr: &str, home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ci"));
    cmd.env("HOME", home)
        .env("CI_SERVER_URL", format!("http://{addr}"))
        .env("CI_API_KEY", "ci_test")
        .env_remove("NO_COLOR");
    cmd
}

/// Runs `ci args…` on a pseudo-terminal: `script` gives it one and copies
/// what it writes to its own stdout.
/// `cmd` only carries the environment.
fn on_terminal(cmd: Command, args: &[&str]) -> Output {
    on_terminal_in(cmd, std::path::Path::new("."), args)
}

/// [`on_terminal`] in the folder `dir`.
fn on_terminal_in(cmd: Command, dir: &std::path::Path, args: &[&str]) -> Output {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_ci"))
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &line.join(" "), "/dev/null"])
        .current_dir(dir);
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => script.env(name, value),
            None => script.env_remove(name),
        };
    }
    script.output().unwrap()
}

#[test]
fn a_terminal_gets_colours_and_escaped_control_sequences() {
    let addr = start_server();
    let home = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4().to_string();

    let out = on_terminal(ci(&addr, home.path()), &["wait", "--all", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
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

    let out = on_terminal(ci(&addr, home.path()), &["wait", "--all", "--raw", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\x1b]52;c;ZXZpbA==\x07"), "--raw: {text:?}");

    let mut no_color = ci(&addr, home.path());
    no_color.env("NO_COLOR", "1");
    let out = on_terminal(no_color, &["wait", "--all", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("RED\tok") && !text.contains("\x1b[31m"),
        "{text:?}"
    );
    assert!(!text.contains("\x1b]52"), "{text:?}");
}

#[test]
fn piped_output_keeps_its_bytes_without_colours() {
    let addr = start_server();
    let home = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4().to_string();
    let out = ci(&addr, home.path())
        .args(["wait", "--all", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected = HOSTILE.replace("\x1b[31m", "").replace("\x1b[0m", "");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);

    let out = ci(&addr, home.path())
        .args(["wait", "--all", "--raw", &id])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), HOSTILE);
}

#[test]
fn a_key_sent_in_the_clear_to_another_host_is_warned_about() {
    let addr = start_server();
    let home = tempfile::tempdir().unwrap();
    let warning = "the API key is sent unencrypted";

    // Loopback: no warning.
    let out = ci(&addr, home.path()).arg("list").output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(warning));

    // Another host over plain http (that name never resolves): one warning.
    let out = ci(&addr, home.path())
        .env("CI_SERVER_URL", "http://ci.invalid:8000")
        .arg("list")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");

    // The same host over https: no warning.
    let out = ci(&addr, home.path())
        .env("CI_SERVER_URL", "https://ci.invalid:8000")
        .arg("list")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(warning));

    // --help says why --api-key is the last choice.
    let out = ci(&addr, home.path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("process list"), "{help}");
}

#[test]
fn a_server_url_without_a_scheme_is_http() {
    let addr = start_server();
    let home = tempfile::tempdir().unwrap();
    let out = ci(&addr, home.path())
        .env_remove("CI_SERVER_URL")
        .args(["list", "--server-url", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "No jobs found.\n");
}

/// A big upload shows its progress on a terminal, and nothing of it when
/// stderr is piped.
#[test]
fn big_uploads_show_progress_on_a_terminal_only() {
    let addr = start_server();
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("test_a.py"),
        "def test_a():\n    pass\n",
    )
    .unwrap();
    let noise = ci_testkit::incompressible_bytes(6 * 1024 * 1024, 1);
    std::fs::write(project.path().join("blob.bin"), noise).unwrap();

    let mut cmd = ci(&addr, home.path());
    cmd.current_dir(project.path());
    let out = on_terminal_in(cmd, project.path(), &["submit", "test", "--async"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Uploaded 6.0 MB."), "{text:?}");

    let out = ci(&addr, home.path())
        .args(["submit", "test", "--async"])
        .current_dir(project.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Uploaded"), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
}
