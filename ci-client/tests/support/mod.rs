//! The one way ci-client's tests put `ci` in front of a scripted server, so
//! that each test reads as the script of responses, the command, the
//! assertions:
//!
//! - [`ScriptedServer`]: an axum router (the script) served on a free
//!   loopback port from a thread of its own, so blocking tests can run `ci`
//!   to its end while it answers; stopped when dropped.
//! - [`api_error`], [`event_stream`], [`frame`]: the responses the scripts are
//!   made of, in the API's shapes.
//! - [`passing_project`]: a project to submit.
//! - [`CiUser`]: the real `ci` with a home folder of its own, pointed at a
//!   server through the environment, run to its end, on a terminal, or in
//!   the background (through the test kit's [`ci_testkit::cli`]).
//!
//! Each test file uses part of it, hence `dead_code` below.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use ci_common::api::StreamEvent;
use ci_testkit::cli::{self, CiOutput, RunningCi};
use ci_testkit::Project;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The API key `ci` is given; the scripted servers take any key.
pub const API_KEY: &str = "ci_test";

/// A scripted server on `127.0.0.1`, answering from a thread and a runtime
/// of its own. Dropping it stops the runtime, which drops the listener and
/// every connection still open (a stream a script holds open included).
pub struct ScriptedServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl ScriptedServer {
    /// Serves `script`. The listener is bound before this returns, so no
    /// request can come too early.
    pub fn start(script: Router) -> ScriptedServer {
        ScriptedServer::serve_with(move |listener| async move {
            let _ = axum::serve(listener, script).await;
        })
    }

    /// Serves with `serve`, given the bound listener: for a script that
    /// must write the bytes of its responses itself.
    pub fn serve_with<F, Fut>(serve: F) -> ScriptedServer
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = addr_tx.send(Err(format!("cannot build a runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::bind("127.0.0.1:0").await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("cannot bind 127.0.0.1:0: {e}")));
                        return;
                    }
                };
                let _ = addr_tx.send(
                    listener
                        .local_addr()
                        .map_err(|e| format!("cannot read the listener's address: {e}")),
                );
                tokio::spawn(serve(listener));
                // The sender is dropped with the server.
                let _ = stopped.await;
            });
        });
        let addr = match addr_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("the scripted server did not start: {e}"),
            Err(_) => panic!("the scripted server's thread ended before it listened"),
        };
        ScriptedServer { addr, _stop: stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`, without a scheme.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// An error answer in the API's shape, `{"detail": …}`.
pub fn api_error(status: StatusCode, detail: &str) -> Response {
    (status, Json(serde_json::json!({ "detail": detail }))).into_response()
}

/// A `text/event-stream` answer carrying `body` (whole, or as a stream).
pub fn event_stream(body: Body) -> Response {
    ([("content-type", "text/event-stream")], body).into_response()
}

/// One event as an SSE frame, with an `id:` line when it has a sequence
/// number.
pub fn frame(seq: Option<i64>, event: &StreamEvent) -> String {
    let data = serde_json::to_string(event).expect("an event serialises");
    match seq {
        Some(seq) => format!("id: {seq}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// A project holding one test file that pytest would pass, `test_a.py`
/// (23 bytes), for the test to add to.
pub fn passing_project() -> Project {
    let project = ci_testkit::fixtures::empty_project();
    project.write("test_a.py", "def test_a():\n    pass\n");
    project
}

/// The real `ci` as one user runs it: a home folder of its own (no real
/// `~/.ci/config` is read, and a test may write one there), none of the
/// caller's `CI_*` settings nor `NO_COLOR`, and the server URL and key it
/// was given, through the environment.
pub struct CiUser {
    home: TempDir,
    server_url: Option<String>,
    api_key: Option<String>,
}

impl CiUser {
    /// `ci` told of no server and no key: what it knows comes from the
    /// home folder's config file, or the command line.
    pub fn unconfigured() -> CiUser {
        CiUser {
            home: tempfile::tempdir().expect("a temporary home folder"),
            server_url: None,
            api_key: None,
        }
    }

    /// `ci` pointed at `server_url` with [`API_KEY`].
    pub fn at(server_url: &str) -> CiUser {
        CiUser {
            server_url: Some(server_url.to_string()),
            api_key: Some(API_KEY.to_string()),
            ..CiUser::unconfigured()
        }
    }

    /// `ci` pointed at `server`'s root.
    pub fn of(server: &ScriptedServer) -> CiUser {
        CiUser::at(&server.url())
    }

    /// The home folder.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// `ci args…`, for a test to add to (an environment variable, a folder)
    /// before running it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = ci_testkit::process::command(Path::new(env!("CARGO_BIN_EXE_ci")));
        cmd.args(args)
            .env("HOME", self.home())
            .env_remove("NO_COLOR");
        if let Some(url) = &self.server_url {
            cmd.env("CI_SERVER_URL", url);
        }
        if let Some(key) = &self.api_key {
            cmd.env("CI_API_KEY", key);
        }
        cmd
    }

    /// Runs `ci args…` to its end.
    pub fn run(&self, args: &[&str]) -> CiOutput {
        cli::run(&mut self.command(args))
    }

    /// Runs `ci args…` to its end in the folder `dir` (a project's root).
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> CiOutput {
        cli::run(self.command(args).current_dir(dir))
    }

    /// Runs `ci args…` to its end on a pseudo-terminal: stdout holds what
    /// it wrote to both its stdout and its stderr.
    pub fn run_on_terminal(&self, args: &[&str]) -> CiOutput {
        run_on_terminal(&self.command(args))
    }

    /// Starts `ci args…` in the folder `dir`, its output collected as it
    /// comes.
    pub fn spawn_in(&self, dir: &Path, args: &[&str]) -> RunningCi {
        RunningCi::spawn(self.command(args).current_dir(dir))
    }
}

/// Runs a prepared `ci` command to its end on a pseudo-terminal.
pub fn run_on_terminal(cmd: &Command) -> CiOutput {
    cli::run(&mut cli::on_terminal(cmd))
}
