//! The end-to-end harness: a whole CI installation per test, made of the real
//! binaries, in the style of Zero To Production's `spawn_app()`.
//!
//! [`TestSystem::start`] gives a test its own temporary folder with its own
//! SQLite file, its own `HOME`, and its own container prefix (so tests share
//! the Docker engine without seeing each other's containers), runs `ci-admin`
//! to create a user and an API key, and starts `ci-server` (on a free port) and
//! `ci-controller`. The test then drives the real `ci` binary through
//! [`TestSystem::ci`] and checks what it prints, what the API says and which
//! containers exist.
//!
//! Everything started is stopped when the [`TestSystem`] is dropped, also when
//! the test panics: the processes are killed and this installation's
//! containers and pip cache volume are removed. Should the test process itself
//! be killed (a harness timeout), the services die with it: they are started
//! with a parent-death signal (`setpriv --pdeathsig KILL`), which is tied to
//! the thread that started them, so start processes from the test's own
//! thread, not from a helper thread that ends earlier. The containers such a
//! test leaves behind are removed by the next test that starts: the container
//! prefix names the test process (`citest-<pid>-<random>-`), and
//! installations whose process is gone are swept.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition until a
//! deadline and fails the test with what it saw when the deadline passes.
//!
//! The binaries are taken from the folder the test executable was built into
//! (`target/debug`); build them first with `cargo build --workspace --bins`
//! (`CI_TESTS_BIN_DIR` points elsewhere). Set `CI_TESTS_KEEP=1` to keep the
//! temporary folder (database, service logs) of a failed test.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ci_common::api::JobSummary;
use ci_common::config::DatabaseLocation;
use ci_common::{Job, JobId};
use ci_persistence::{Store, StoreOptions};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use uuid::Uuid;

/// How long a service may take to come up (they need a fraction of a second).
pub const SERVICE_START: Duration = Duration::from_secs(30);
/// How long a short job (one of the small fixtures) may take from submission
/// to its end, generously, for a loaded two-core machine.
pub const JOB_DEADLINE: Duration = Duration::from_secs(120);
/// How long cleaning up after a job (its container removed) may take.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a `ci` command that should answer at once may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);
/// The label the controller puts on every container of an installation.
pub const LABEL_INSTALLATION: &str = "ci.installation";
/// The label naming a container's job.
pub const LABEL_JOB: &str = "ci.job-id";
/// The reconcile interval the tests' controllers run with.
const RECONCILE_INTERVAL: &str = "0.5";
/// Service logs: informative, without sqlx's per-statement lines.
const SERVICE_LOG_FILTER: &str = "info,sqlx=warn";
/// How much of a service log is shown when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// The environment every spawned binary must not inherit from the developer's
/// shell: it would point the test at the wrong database, server or key.
const INHERITED_CONFIG: [&str; 10] = [
    "CI_DB_PATH",
    "CI_DATABASE_URL",
    "CI_SERVER_URL",
    "CI_API_KEY",
    "CI_CONTAINER_PREFIX",
    "CI_JOB_NETWORK",
    "CI_PYTHON_BASE_IMAGE",
    "CI_RECONCILE_INTERVAL",
    "CI_MAX_CONCURRENT_JOBS",
    "CI_MAX_UPLOAD_BYTES",
];

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `cond` until it holds; fails the test naming `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_value(what, within, || cond().then_some(()));
}

/// Polls `probe` until it gives a value, and returns it; fails the test
/// naming `what` after `within`.
pub fn wait_for_value<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Binaries and fixtures
// ---------------------------------------------------------------------------

/// The folder holding the workspace's binaries: next to the test executable
/// (`target/debug/deps/<test>` → `target/debug`), or `CI_TESTS_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CI_TESTS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the test executable's path: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("the test executable {} has no folder", exe.display()))
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's binaries (`ci`, `ci-admin`,
/// `ci-server`, `ci-controller`); fails the test when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "the `{name}` binary is missing at {}: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// `setpriv`, when the machine has it (util-linux, essential on Debian).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// A command for `program` that dies with the test process (see the crate
/// docs), with none of the service configuration inherited from the shell.
fn command(program: &Path) -> Command {
    let mut cmd = match setpriv() {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    for name in INHERITED_CONFIG {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The fixture projects' folder, `fixtures/` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("fixtures"))
        .unwrap_or_else(|| PathBuf::from("fixtures"))
}

/// A fixture copied into a temporary folder of its own, removed on drop, so
/// a test can add files to it and `ci` packs nothing from elsewhere.
#[derive(Debug)]
pub struct Project {
    dir: TempDir,
}

impl Project {
    /// The project's root, where `ci submit test` runs.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative`, creating folders as needed.
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Copies `fixtures/<name>` into a fresh temporary folder. The folder's name
/// does not start with a dot, so no client could mistake the whole project
/// for a hidden folder.
pub fn copy_fixture(name: &str) -> Project {
    let source = fixtures_dir().join(name);
    if !source.is_dir() {
        panic!("no fixture {name:?} at {}", source.display());
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("ci-fixture-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
    copy_tree(&source, dir.path())
        .unwrap_or_else(|e| panic!("cannot copy fixture {name:?}: {e:#}"));
    Project { dir }
}

/// The `slow` fixture, set to run for `seconds` (it prints `tick NNN of MMM`
/// once a second, then `SLOW-END`).
pub fn slow_project(seconds: u32) -> Project {
    let project = copy_fixture("slow");
    project.write("slow_seconds.txt", &format!("{seconds}\n"));
    project
}

/// The `tick` lines the slow fixture prints when set to `seconds`.
pub fn slow_ticks(seconds: u32) -> Vec<String> {
    (1..=seconds)
        .map(|i| format!("tick {i:03} of {seconds:03}"))
        .collect()
}

/// The lines of `text` that start with `prefix`.
pub fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Fails the test unless `actual` is `expected`, line by line, naming the
/// first difference instead of printing both (they can be 100 000 lines).
pub fn assert_same_lines<A: AsRef<str>, E: AsRef<str>>(what: &str, actual: &[A], expected: &[E]) {
    let first_difference = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a.as_ref() != e.as_ref());
    if let Some(i) = first_difference {
        let around = |lines: &[A]| -> Vec<String> {
            lines[i.saturating_sub(2)..(i + 3).min(lines.len())]
                .iter()
                .map(|l| l.as_ref().to_string())
                .collect()
        };
        panic!(
            "{what}: line {i} is {:?}, expected {:?} (around it: {:?})",
            actual[i].as_ref(),
            expected[i].as_ref(),
            around(actual)
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} lines, expected {} (the common part is equal)",
        actual.len(),
        expected.len()
    );
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running `ci`
// ---------------------------------------------------------------------------

/// What a finished `ci` command did.
#[derive(Debug, Clone)]
pub struct CiOutput {
    /// The command line, for messages.
    pub label: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CiOutput {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails the test, showing the output, unless the exit code is `expected`.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(expected),
            "`{}` exited with {:?}, expected {expected}\n{self}",
            self.label,
            self.status
        );
        self
    }

    /// The id in stderr's `Job ID: <uuid>` line (sync submit).
    pub fn job_id(&self) -> Option<JobId> {
        id_after(&self.stderr, "Job ID: ")
    }

    /// The id in stdout's `Job submitted: <uuid>` line (async submit).
    pub fn submitted_job_id(&self) -> Option<JobId> {
        id_after(&self.stdout, "Job submitted: ")
    }

    /// stdout's lines.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for CiOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- `{}`: {:?}", self.label, self.status)?;
        writeln!(f, "--- stdout:\n{}", abbreviate(&self.stdout))?;
        write!(f, "--- stderr:\n{}", abbreviate(&self.stderr))
    }
}

/// Long output shortened for failure messages: its start and its end.
fn abbreviate(text: &str) -> String {
    const KEEP: usize = 60;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 2 * KEEP {
        return text.to_string();
    }
    format!(
        "{}\n[… {} lines …]\n{}",
        lines[..KEEP].join("\n"),
        lines.len() - 2 * KEEP,
        lines[lines.len() - KEEP..].join("\n")
    )
}

/// The UUID following `prefix` at the start of a line of `text`.
pub fn id_after(text: &str, prefix: &str) -> Option<JobId> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// A `ci` process running in the background, its output collected as it
/// comes. Killed on drop.
pub struct RunningCi {
    label: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl RunningCi {
    /// Starts `cmd` with its stdout and stderr collected.
    pub fn spawn(cmd: &mut Command) -> RunningCi {
        let label = describe(cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(collect(pipe, Arc::clone(&stdout)));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(collect(pipe, Arc::clone(&stderr)));
        }
        RunningCi {
            label,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// What it has printed on stdout so far.
    pub fn stdout(&self) -> String {
        text_of(&self.stdout)
    }

    /// What it has printed on stderr so far.
    pub fn stderr(&self) -> String {
        text_of(&self.stderr)
    }

    /// Whether the process has exited (without reaping its output).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until stdout satisfies `cond`; fails early when the process
    /// exits first.
    pub fn wait_for_stdout(&mut self, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
        self.wait_for_output(what, within, |out, _| cond(out));
    }

    /// Waits until stderr satisfies `cond`; fails early when the process
    /// exits first.
    pub fn wait_for_stderr(&mut self, what: &str, within: Duration, cond: impl Fn(&str) -> bool) {
        self.wait_for_output(what, within, |_, err| cond(err));
    }

    fn wait_for_output(&mut self, what: &str, within: Duration, cond: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let exited = self.has_exited();
            if cond(&self.stdout(), &self.stderr()) {
                return;
            }
            if exited {
                // The pipes may still hold the last output: read it all first.
                let output = self.finish(COMMAND_DEADLINE);
                if cond(&output.stdout, &output.stderr) {
                    return;
                }
                panic!("`{}` exited before {what}\n{output}", self.label);
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what} from `{}`\n--- stdout:\n{}\n--- stderr:\n{}",
                    self.label,
                    abbreviate(&self.stdout()),
                    abbreviate(&self.stderr())
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        signal::kill(self.pid(), Signal::SIGINT)
            .unwrap_or_else(|e| panic!("cannot send SIGINT to `{}`: {e}", self.label));
    }

    /// Waits for the process to exit and returns all its output; kills it and
    /// fails the test when it is still running after `within`.
    pub fn finish(&mut self, within: Duration) -> CiOutput {
        let deadline = Instant::now() + within;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "`{}` did not exit within {within:?}\n--- stdout:\n{}\n--- stderr:\n{}",
                        self.label,
                        abbreviate(&self.stdout()),
                        abbreviate(&self.stderr())
                    );
                }
                Err(e) => panic!("cannot wait for `{}`: {e}", self.label),
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let output = CiOutput {
            label: self.label.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        };
        // "No stack trace, ever": RUST_BACKTRACE is set, so a panic would show one.
        assert!(
            !output.stderr.contains("panicked at") && !output.stderr.contains("stack backtrace"),
            "`{}` panicked\n{output}",
            output.label
        );
        output
    }
}

impl Drop for RunningCi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => match sink.lock() {
                    Ok(mut out) => out.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                },
            }
        }
    })
}

fn text_of(buffer: &Mutex<Vec<u8>>) -> String {
    match buffer.lock() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner()).into_owned(),
    }
}

/// A command line for messages, without the `setpriv` wrapper.
fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut args = cmd.get_args().map(|a| a.to_string_lossy().into_owned());
    if program.ends_with("setpriv") {
        // `--pdeathsig KILL -- <program>`
        let mut rest: Vec<String> = args.by_ref().skip_while(|a| a != "--").skip(1).collect();
        if !rest.is_empty() {
            rest[0] = short_program(&rest[0]);
        }
        parts.extend(rest);
    } else {
        parts.push(short_program(&program));
        parts.extend(args);
    }
    parts.join(" ")
}

fn short_program(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// Runs `cmd` to its end (at most [`COMMAND_DEADLINE`] for commands that
/// should not take long; use [`RunningCi`] for others) and returns its output.
pub fn run(cmd: &mut Command) -> CiOutput {
    run_within(cmd, COMMAND_DEADLINE)
}

/// Runs `cmd` to its end, failing the test when it takes longer than `within`.
pub fn run_within(cmd: &mut Command, within: Duration) -> CiOutput {
    RunningCi::spawn(cmd).finish(within)
}

// ---------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------

/// A service process whose stderr goes to a log file.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

/// One service's log (see [`TestSystem::service_logs`]).
#[derive(Debug, Clone)]
pub struct ServiceLog {
    /// `server`, `replica-1`, `controller`, …
    pub name: String,
    pub text: String,
}

impl Service {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// One running `ci-server`.
struct Server {
    service: Service,
    url: String,
}

/// Who uses the system: a user made with `ci-admin`, with one API key.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub api_key: String,
    /// The key's id, for `ci-admin key revoke`.
    pub key_id: Uuid,
}

/// How to set up a [`TestSystem`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Docker network mode of job containers; `none` unless a test needs
    /// PyPI.
    pub job_network: String,
    /// More environment for the controller (`CI_MAX_CONCURRENT_JOBS`, …).
    pub controller_env: Vec<(String, String)>,
    /// Run on a fresh database of the PostgreSQL server named by
    /// `CI_TEST_POSTGRES_URL` instead of a SQLite file.
    pub postgres: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            job_network: "none".to_string(),
            controller_env: Vec::new(),
            postgres: false,
        }
    }
}

impl Options {
    pub fn job_network(mut self, mode: &str) -> Self {
        self.job_network = mode.to_string();
        self
    }

    /// On PostgreSQL (see [`Options::postgres`]).
    pub fn postgres(mut self) -> Self {
        self.postgres = true;
        self
    }

    pub fn controller_env(mut self, name: &str, value: &str) -> Self {
        self.controller_env
            .push((name.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> TestSystem {
        TestSystem::start_with(self)
    }
}

/// One whole installation: database, API server (plus any replicas),
/// controller, and a user with a key. See the crate docs.
pub struct TestSystem {
    // Services first: they are dropped (killed) before the folder goes.
    controller: Option<Service>,
    server: Option<Server>,
    replicas: Vec<Server>,
    /// The port the main server listens on, kept across restarts.
    port: u16,
    options: Options,
    /// The container prefix, also the value of the installation label.
    pub prefix: String,
    /// The user the `ci` commands act as by default.
    pub user: TestUser,
    /// The SQLite file, unused on PostgreSQL.
    db: PathBuf,
    /// The PostgreSQL database's URL, when on PostgreSQL.
    postgres_url: Option<String>,
    home: PathBuf,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    root: Option<TempDir>,
    users_made: usize,
}

impl TestSystem {
    /// Starts an installation with the defaults (job network `none`).
    pub fn start() -> TestSystem {
        Self::start_with(Options::default())
    }

    /// Options to change before [`Options::start`].
    pub fn options() -> Options {
        Options::default()
    }

    pub fn start_with(options: Options) -> TestSystem {
        let root = tempfile::Builder::new()
            .prefix("ci-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        let home = root.path().join("home");
        std::fs::create_dir_all(&home)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", home.display()));
        let db = root.path().join("jobs.db");
        sweep_stale_installations();
        let short = Uuid::new_v4().simple().to_string();
        let prefix = format!("{PREFIX_START}{}-{}-", std::process::id(), &short[..8]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let postgres_url = options
            .postgres
            .then(|| runtime.block_on(create_postgres_database()));

        let mut system = TestSystem {
            controller: None,
            server: None,
            replicas: Vec::new(),
            port: 0,
            options,
            prefix,
            user: TestUser {
                id: Uuid::nil(),
                email: String::new(),
                api_key: String::new(),
                key_id: Uuid::nil(),
            },
            db,
            postgres_url,
            home,
            http,
            runtime,
            root: Some(root),
            users_made: 0,
        };
        // ci-admin first: it creates the schema, so the services that follow
        // never race each other migrating a fresh file.
        system.user = system.create_user("Test User");
        let server = system.spawn_server(0, "server");
        system.port = port_of(&server.url).unwrap_or_else(|| {
            panic!(
                "ci-server printed an address without a port: {}",
                server.url
            )
        });
        system.server = Some(server);
        system.start_controller();
        system
    }

    fn root(&self) -> &Path {
        match &self.root {
            Some(dir) => dir.path(),
            None => Path::new("."),
        }
    }

    /// [`copy_fixture`], for tests that like everything on the system.
    pub fn copy_fixture(&self, name: &str) -> Project {
        copy_fixture(name)
    }

    /// The SQLite file of this installation.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The PostgreSQL database's URL, for a system started on PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres_url.as_deref()
    }

    /// Points a service or `ci-admin` at this installation's database.
    fn database_env(&self, cmd: &mut Command) {
        match &self.postgres_url {
            Some(url) => cmd.env("CI_DATABASE_URL", url),
            None => cmd.env("CI_DB_PATH", &self.db),
        };
    }

    fn database_location(&self) -> DatabaseLocation {
        match &self.postgres_url {
            Some(url) => DatabaseLocation::Url(url.clone()),
            None => DatabaseLocation::SqliteFile(self.db.clone()),
        }
    }

    /// The `HOME` every command runs with (`~/.ci/config` lives here).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Writes `~/.ci/config` in this installation's home.
    pub fn write_config(&self, contents: &str) {
        let dir = self.home.join(".ci");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        std::fs::write(dir.join("config"), contents)
            .unwrap_or_else(|e| panic!("cannot write ~/.ci/config: {e}"));
    }

    /// The main server's URL, e.g. `http://127.0.0.1:41234`.
    pub fn server_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    // --- services ---------------------------------------------------------

    fn spawn_server(&self, port: u16, name: &str) -> Server {
        let log = self.root().join(format!("{name}.log"));
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut cmd = command(&binary("ci-server"));
        self.database_env(&mut cmd);
        let mut child = cmd
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("HOME", &self.home)
            .env("RUST_LOG", SERVICE_LOG_FILTER)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ci-server: {e}"));
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Reads the address, then keeps draining stdout so the server never
            // blocks on a full pipe.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(url) = line.trim().strip_prefix("Listening on ") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(url.trim().to_string());
                        }
                    }
                }
            });
        }
        let mut service = Service {
            name: name.to_string(),
            child,
            log,
        };
        match rx.recv_timeout(SERVICE_START) {
            Ok(url) => Server { service, url },
            Err(e) => {
                service.kill();
                panic!(
                    "ci-server ({name}) did not print `Listening on http://…` ({e}); its log:\n{}",
                    service.log_tail()
                );
            }
        }
    }

    fn start_controller(&mut self) {
        let log = self.root().join("controller.log");
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut cmd = command(&binary("ci-controller"));
        self.database_env(&mut cmd);
        cmd.env("HOME", &self.home)
            .env("CI_CONTAINER_PREFIX", &self.prefix)
            .env("CI_JOB_NETWORK", &self.options.job_network)
            .env("CI_RECONCILE_INTERVAL", RECONCILE_INTERVAL)
            .env("RUST_LOG", SERVICE_LOG_FILTER)
            .stdout(Stdio::null())
            .stderr(log_file);
        for (name, value) in &self.options.controller_env {
            cmd.env(name, value);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ci-controller: {e}"));
        let mut service = Service {
            name: "controller".to_string(),
            child,
            log,
        };
        // Ready once it holds the lease; fail fast if it dies instead.
        let deadline = Instant::now() + SERVICE_START;
        loop {
            if std::fs::read_to_string(&service.log)
                .is_ok_and(|text| text.contains("this controller is the leader"))
            {
                break;
            }
            let exited = matches!(service.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                service.kill();
                panic!(
                    "ci-controller did not become the leader ({}); its log:\n{}",
                    if exited { "it exited" } else { "timed out" },
                    service.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
        self.controller = Some(service);
    }

    /// Whether the controller process is still alive (it has not exited).
    pub fn controller_is_running(&mut self) -> bool {
        self.controller
            .as_mut()
            .is_some_and(|service| matches!(service.child.try_wait(), Ok(None)))
    }

    /// Kills the main server (SIGKILL: no goodbye to its clients).
    pub fn kill_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.service.kill();
        }
    }

    /// Starts the main server again, on the port it had.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the main server is still running");
        let server = self.spawn_server(self.port, "server-restarted");
        assert_eq!(
            port_of(&server.url),
            Some(self.port),
            "the restarted server listens elsewhere"
        );
        self.server = Some(server);
    }

    /// Kills the main server and starts it again on the same port.
    pub fn restart_server(&mut self) {
        self.kill_server();
        self.start_server();
    }

    /// Starts another `ci-server` on the same database (a free port) and
    /// returns its URL.
    pub fn start_replica(&mut self) -> String {
        let name = format!("replica-{}", self.replicas.len() + 1);
        let server = self.spawn_server(0, &name);
        let url = server.url.clone();
        self.replicas.push(server);
        url
    }

    // --- commands ---------------------------------------------------------

    /// The real `ci` binary, talking to the main server as [`Self::user`],
    /// with this installation's `HOME`. Add arguments and a `current_dir`.
    pub fn ci(&self) -> Command {
        let mut cmd = self.ci_without_key();
        cmd.env("CI_API_KEY", &self.user.api_key);
        cmd
    }

    /// `ci` with `key` in `CI_API_KEY`.
    pub fn ci_as(&self, key: &str) -> Command {
        let mut cmd = self.ci_without_key();
        cmd.env("CI_API_KEY", key);
        cmd
    }

    /// `ci` with no key in its environment (one may still come from
    /// `--api-key` or `~/.ci/config`).
    pub fn ci_without_key(&self) -> Command {
        let mut cmd = command(&binary("ci"));
        cmd.env("CI_SERVER_URL", self.server_url())
            .env("HOME", &self.home)
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.root());
        cmd
    }

    /// The real `ci-admin` binary on this installation's database.
    pub fn admin(&self) -> Command {
        let mut cmd = command(&binary("ci-admin"));
        self.database_env(&mut cmd);
        cmd.env("HOME", &self.home);
        cmd
    }

    /// Runs `ci-admin` with `args`; fails the test unless it succeeds.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = run(self.admin().args(args));
        if !out.status.success() {
            panic!("ci-admin failed\n{out}");
        }
        out.stdout
    }

    /// Creates another user with one API key through `ci-admin`.
    pub fn create_user(&mut self, name: &str) -> TestUser {
        self.users_made += 1;
        let email = format!(
            "user{}-{}@example.com",
            self.users_made,
            self.prefix.trim_end_matches('-')
        );
        let out = self.admin_ok(&["user", "create", "--name", name, "--email", &email]);
        let id = labelled_uuid(&out, "ID:")
            .unwrap_or_else(|| panic!("no user ID in ci-admin's output:\n{out}"));
        let out = self.admin_ok(&[
            "key",
            "create",
            "--user-id",
            &id.to_string(),
            "--name",
            "e2e",
        ]);
        let api_key = out
            .lines()
            .find_map(|line| line.trim().strip_prefix("API Key:"))
            .map(|key| key.trim().to_string())
            .filter(|key| key.starts_with("ci_"))
            .unwrap_or_else(|| panic!("no API key in ci-admin's output:\n{out}"));
        let out = self.admin_ok(&["key", "list", "--user-id", &id.to_string(), "--json"]);
        let keys: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ci-admin key list --json is not JSON ({e}):\n{out}"));
        let key_id = keys
            .as_array()
            .and_then(|keys| keys.first())
            .and_then(|key| key.get("id"))
            .and_then(|id| id.as_str())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no key id in ci-admin key list --json:\n{out}"));
        TestUser {
            id,
            email,
            api_key,
            key_id,
        }
    }

    /// `ci submit test --async` in `project`; returns the job's id.
    pub fn submit_async(&self, project: &Project) -> JobId {
        let out = run(self
            .ci()
            .args(["submit", "test", "--async"])
            .current_dir(project.path()));
        out.assert_code(0);
        out.submitted_job_id()
            .unwrap_or_else(|| panic!("no `Job submitted: <uuid>` on stdout\n{out}"))
    }

    /// `ci submit test` in `project`, to its end.
    pub fn submit_sync(&self, project: &Project) -> CiOutput {
        run_within(
            self.ci()
                .args(["submit", "test"])
                .current_dir(project.path()),
            JOB_DEADLINE,
        )
    }

    // --- the API ----------------------------------------------------------

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `GET path` on the main server with `key`: the status and the JSON body.
    pub fn get_json(&self, path: &str, key: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.server_url());
        self.block_on(async {
            let response = self
                .http
                .get(&url)
                .bearer_auth(key)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = response.status().as_u16();
            let body = response
                .text()
                .await
                .with_context(|| format!("GET {url}"))?;
            let json = serde_json::from_str(&body)
                .with_context(|| format!("GET {url} answered {status} with non-JSON {body:?}"))?;
            Ok((status, json))
        })
    }

    /// One of [`Self::user`]'s jobs, from `GET /jobs/{id}`.
    pub fn job(&self, id: JobId) -> anyhow::Result<JobSummary> {
        self.job_as(&self.user.api_key, id)
    }

    /// A job from `GET /jobs/{id}`, asked with `key`.
    pub fn job_as(&self, key: &str, id: JobId) -> anyhow::Result<JobSummary> {
        let (status, body) = self.get_json(&format!("/jobs/{id}"), key)?;
        if status != 200 {
            bail!("GET /jobs/{id} answered {status}: {body}");
        }
        serde_json::from_value(body).context("a job summary")
    }

    /// Asks the server to cancel one of [`Self::user`]'s jobs.
    pub fn cancel(&self, id: JobId) -> anyhow::Result<()> {
        let url = format!("{}/jobs/{id}/cancel", self.server_url());
        self.block_on(async {
            let response = self
                .http
                .post(&url)
                .bearer_auth(&self.user.api_key)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                bail!("POST {url} answered {status}: {body}");
            }
            Ok(())
        })
    }

    /// Waits until one of [`Self::user`]'s jobs satisfies `cond`; returns it.
    pub fn wait_for_job(
        &self,
        id: JobId,
        what: &str,
        within: Duration,
        cond: impl Fn(&JobSummary) -> bool,
    ) -> JobSummary {
        self.wait_for_job_as(&self.user.api_key, id, what, within, cond)
    }

    /// Waits until a job, asked for with `key`, satisfies `cond`; returns it.
    pub fn wait_for_job_as(
        &self,
        key: &str,
        id: JobId,
        what: &str,
        within: Duration,
        cond: impl Fn(&JobSummary) -> bool,
    ) -> JobSummary {
        let deadline = Instant::now() + within;
        loop {
            let seen = match self.job_as(key, id) {
                Ok(job) if cond(&job) => return job,
                Ok(job) => format!("{job:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for job {id} to be {what}; last seen: {seen}"
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until one of [`Self::user`]'s jobs has ended; returns it.
    pub fn wait_for_job_end(&self, id: JobId) -> JobSummary {
        self.wait_for_job(id, "ended", JOB_DEADLINE, |j| j.status.is_terminal())
    }

    /// Waits until a job, asked for with `key`, has ended; returns it.
    pub fn wait_for_job_end_as(&self, key: &str, id: JobId) -> JobSummary {
        self.wait_for_job_as(key, id, "ended", JOB_DEADLINE, |j| j.status.is_terminal())
    }

    // --- the database, for what the API does not show ---------------------

    fn with_store<T>(&self, f: impl AsyncFnOnce(&Store) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let location = self.database_location();
        let options = StoreOptions {
            max_connections: 2,
            change_poll_interval: Duration::from_secs(1),
            ..StoreOptions::default()
        };
        self.block_on(async {
            let store = Store::open_with(&location, options)
                .await
                .map_err(|e| anyhow!("cannot open the test database: {e}"))?;
            let result = f(&store).await;
            store.close().await;
            result
        })
    }

    /// The job as the database holds it, whoever owns it.
    pub fn stored_job(&self, id: JobId) -> anyhow::Result<Option<Job>> {
        self.with_store(async |store| {
            store
                .get_job(id)
                .await
                .map_err(|e| anyhow!("cannot read job {id}: {e}"))
        })
    }

    /// A job's whole output as stored: what `ci wait --all` must print.
    pub fn stored_output(&self, id: JobId) -> anyhow::Result<String> {
        self.with_store(async |store| {
            let mut text = String::new();
            let mut after = 0;
            loop {
                let chunks = store
                    .read_log(id, after, 1000)
                    .await
                    .map_err(|e| anyhow!("cannot read the output of job {id}: {e}"))?;
                let Some(last) = chunks.last() else {
                    return Ok(text);
                };
                after = last.seq;
                for chunk in chunks {
                    text.push_str(&chunk.text);
                }
            }
        })
    }

    /// What the server, its replicas and the controller have logged so far.
    pub fn service_logs(&self) -> Vec<ServiceLog> {
        self.server
            .iter()
            .chain(&self.replicas)
            .map(|server| &server.service)
            .chain(&self.controller)
            .map(|service| ServiceLog {
                name: service.name.clone(),
                text: std::fs::read_to_string(&service.log).unwrap_or_default(),
            })
            .collect()
    }

    /// Every job of every user that has not ended.
    pub fn unfinished_jobs(&self) -> anyhow::Result<Vec<Job>> {
        self.with_store(async |store| {
            store
                .list_unfinished_jobs()
                .await
                .map_err(|e| anyhow!("cannot list unfinished jobs: {e}"))
        })
    }

    // --- Docker -----------------------------------------------------------

    /// This installation's containers, by their label.
    pub fn containers(&self) -> anyhow::Result<Vec<ContainerInfo>> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--no-trunc", "--filter"])
            .arg(format!("label={LABEL_INSTALLATION}={}", self.prefix))
            .args([
                "--format",
                &format!("{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{LABEL_JOB}\"}}}}"),
            ])
            .output()
            .context("cannot run `docker ps`")?;
        if !out.status.success() {
            bail!(
                "`docker ps` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut fields = line.split('\t');
                ContainerInfo {
                    name: fields.next().unwrap_or_default().to_string(),
                    state: fields.next().unwrap_or_default().to_string(),
                    job_id: fields.next().and_then(|id| id.parse().ok()),
                }
            })
            .collect())
    }

    /// Waits until no container of this installation exists.
    pub fn wait_for_no_containers(&self) {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let left = match self.containers() {
                Ok(list) if list.is_empty() => return,
                Ok(list) => list,
                Err(e) => panic!("{e:#}"),
            };
            if Instant::now() >= deadline {
                panic!("containers outlived their jobs: {left:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// The end state every test must reach: no job queued or running and no
    /// container left.
    pub fn assert_settled(&self) {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let unfinished = match self.unfinished_jobs() {
                Ok(jobs) if jobs.is_empty() => break,
                Ok(jobs) => jobs,
                Err(e) => panic!("{e:#}"),
            };
            if Instant::now() >= deadline {
                panic!("jobs never ended: {unfinished:#?}");
            }
            std::thread::sleep(POLL);
        }
        self.wait_for_no_containers();
    }

    /// Removes this installation's containers and its pip cache volumes.
    fn remove_docker_leftovers(&self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={LABEL_INSTALLATION}={}", self.prefix))
            .output();
        if let Ok(ids) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // The pip cache volumes (one per user) carry the installation label.
        let volumes = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter"])
            .arg(format!("label={LABEL_INSTALLATION}={}", self.prefix))
            .output();
        if let Ok(volumes) = volumes {
            let names: Vec<String> = String::from_utf8_lossy(&volumes.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !names.is_empty() {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f"])
                    .args(&names)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // The controller first, so that it starts no container while we clean up.
        let mut services: Vec<Service> = Vec::new();
        services.extend(self.controller.take());
        services.extend(self.server.take().map(|s| s.service));
        services.extend(self.replicas.drain(..).map(|s| s.service));
        for service in &mut services {
            service.kill();
        }
        self.remove_docker_leftovers();
        if let Some(name) = self
            .postgres_url
            .as_deref()
            .and_then(|url| url.rsplit_once('/'))
            .map(|(_, name)| name.to_string())
        {
            let _ = self.block_on(postgres_admin_sql(&format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )));
        }
        if failed {
            for service in &services {
                eprintln!(
                    "--- last lines of the {} log ({}):\n{}",
                    service.name,
                    service.log.display(),
                    service.log_tail()
                );
            }
            if std::env::var_os("CI_TESTS_KEEP").is_some() {
                if let Some(root) = self.root.take() {
                    let kept = root.keep();
                    eprintln!("--- kept the test's folder: {}", kept.display());
                }
            }
        }
    }
}

/// How every test installation's container prefix starts; the test
/// process's id follows, so leftovers of a killed test run can be told apart.
const PREFIX_START: &str = "citest-";

/// The id of the test process that made an installation, from its prefix
/// (`citest-<pid>-<random>-`).
fn owner_pid(installation: &str) -> Option<u32> {
    installation
        .strip_prefix(PREFIX_START)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// A fresh, empty database on the PostgreSQL server `CI_TEST_POSTGRES_URL`
/// names (`scripts/postgres.sh` starts one and prints its URL); its URL.
async fn create_postgres_database() -> String {
    let base = std::env::var("CI_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "CI_TEST_POSTGRES_URL must name a PostgreSQL server: run \
             `export CI_TEST_POSTGRES_URL=$(bash scripts/postgres.sh)` (scripts/test does)"
        )
    });
    let name = format!("e2e_{}", Uuid::new_v4().simple());
    postgres_admin_sql(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create a test database: {e:#}"));
    let (server, _) = base
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("CI_TEST_POSTGRES_URL is not a database URL: {base}"));
    format!("{server}/{name}")
}

/// Runs one SQL statement on the PostgreSQL server of `CI_TEST_POSTGRES_URL`,
/// as the user named there (the throwaway server's owner); the rows affected.
pub async fn postgres_admin_sql(sql: &str) -> anyhow::Result<u64> {
    use sqlx::Connection as _;
    let base = std::env::var("CI_TEST_POSTGRES_URL").context("CI_TEST_POSTGRES_URL is not set")?;
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .with_context(|| format!("cannot connect to {base}"))?;
    let done = sqlx::query(sql)
        .execute(&mut conn)
        .await
        .with_context(|| sql.to_string())?;
    conn.close().await.ok();
    Ok(done.rows_affected())
}

/// Removes the containers and pip cache volumes of test installations whose
/// test process is gone: a test killed from outside (a harness timeout) had
/// no chance to clean up after itself. Installations of live processes, and
/// anything not made by these tests, are left alone.
fn sweep_stale_installations() {
    let dead = |installation: &str| {
        owner_pid(installation).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label={LABEL_INSTALLATION}"))
        .args([
            "--format",
            &format!("{{{{.ID}}}}\t{{{{.Label \"{LABEL_INSTALLATION}\"}}}}"),
        ])
        .output();
    if let Ok(listed) = listed {
        let stale: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, installation)| dead(installation))
            .map(|(id, _)| id.to_string())
            .collect();
        if !stale.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&stale)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let volumes = Command::new("docker")
        .args(["volume", "ls", "--format", "{{.Name}}", "--filter"])
        .arg(format!("name={PREFIX_START}"))
        .output();
    if let Ok(volumes) = volumes {
        let stale: Vec<String> = String::from_utf8_lossy(&volumes.stdout)
            .lines()
            .filter(|name| dead(name))
            .map(str::to_string)
            .collect();
        if !stale.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&stale)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub state: String,
    pub job_id: Option<JobId>,
}

/// The port of `http://host:port`.
fn port_of(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// The UUID after `label` on a line of `text` (`  ID:    <uuid>`).
fn labelled_uuid(text: &str, label: &str) -> Option<Uuid> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(label))
        .find_map(|rest| rest.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_after_their_prefix() {
        let id = Uuid::new_v4();
        let text = format!("noise\nJob ID: {id}\nYou can reconnect ...\n");
        assert_eq!(id_after(&text, "Job ID: "), Some(id));
        assert_eq!(id_after("Job ID: nope", "Job ID: "), None);
        let admin = format!("✓ User created successfully\n  ID:    {id}\n  Name:  X\n");
        assert_eq!(labelled_uuid(&admin, "ID:"), Some(id));
    }

    #[test]
    fn installations_name_their_test_process() {
        assert_eq!(owner_pid("citest-4242-0a1b2c3d-"), Some(4242));
        assert_eq!(owner_pid("citest-4242-0a1b2c3d-ci-pip-cache"), Some(4242));
        assert_eq!(owner_pid("ciproc-4242-"), None);
        assert_eq!(owner_pid("citest-abc-"), None);
        assert_eq!(owner_pid(""), None);
    }

    #[test]
    fn ports_are_read_from_urls() {
        assert_eq!(port_of("http://127.0.0.1:41234"), Some(41234));
        assert_eq!(port_of("http://127.0.0.1:8000/"), Some(8000));
        assert_eq!(port_of("http://localhost"), None);
    }

    #[test]
    fn long_output_is_abbreviated_in_messages() {
        let text: String = (0..1000).map(|i| format!("{i}\n")).collect();
        let short = abbreviate(&text);
        assert!(short.contains("[… 880 lines …]"), "{short}");
        assert!(short.starts_with("0\n") && short.ends_with("999"));
    }
}
