//! A whole CI installation per test, made of the real binaries, in the style
//! of Zero To Production's `spawn_app()`.
//!
//! [`TestSystem::start`] gives a test its own temporary folder with its own
//! SQLite file (or a scratch PostgreSQL database), its own `HOME`, and its own
//! container prefix (so tests share the Docker engine without seeing each
//! other's containers), runs `ci-admin` to create a user and an API key, and
//! starts `ci-server` (on a free port) and `ci-controller` (its status
//! listener on a free port too). It is ready when the controller's `/ready`
//! says `leader`. The test then drives the real `ci` binary through
//! [`TestSystem::ci`] and checks what it prints, what the API says and which
//! containers exist.
//!
//! Everything started is stopped when the [`TestSystem`] is dropped, also when
//! the test panics: the processes are killed and this installation's
//! containers and pip cache volume are removed. Should the test process itself
//! be killed (a harness timeout), the services die with it (see
//! [`crate::process`]), and the containers such a test leaves behind are
//! removed by the next test that starts: the container prefix names the test
//! process (`citest-<pid>-<random>-`), and installations whose process is gone
//! are swept.
//!
//! The binaries are taken from the folder the test executable was built into
//! (`target/debug`); build them first with `cargo build --workspace --bins`
//! (`CI_TESTS_BIN_DIR` points elsewhere). Set `CI_TESTS_KEEP=1` to keep the
//! temporary folder (database, service logs) of a failed test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ci_client::ApiClient;
use ci_common::api::JobSummary;
use ci_common::{ApiKeyId, Job, JobId, UserId};
use ci_persistence::DatabaseLocation;
use ci_persistence::{Store, StoreOptions};
use tempfile::TempDir;

use crate::cli::{run, run_within, CiOutput};
use crate::database;
use crate::docker::{self, ContainerInfo};
use crate::fixtures::{copy_fixture, Project};
use crate::process::{
    binary, command, port_of, Service, CONTROLLER_ANNOUNCEMENT, SERVER_ANNOUNCEMENT,
};
use crate::status::{self, LEADER};
use crate::wait::POLL;
use crate::{postgres, JOB_DEADLINE, SERVICE_START, SETTLE_DEADLINE};

/// The reconcile interval the tests' controllers run with.
const RECONCILE_INTERVAL: &str = "0.5";
/// Service logs: informative, without sqlx's per-statement lines.
const SERVICE_LOG_FILTER: &str = "info,sqlx=warn";
/// How every test installation's container prefix starts; the test
/// process's id follows, so leftovers of a killed test run can be told apart.
const PREFIX_START: &str = "citest-";

/// One service's log (see [`TestSystem::service_logs`]).
#[derive(Debug, Clone)]
pub struct ServiceLog {
    /// `server`, `replica-1`, `controller`, …
    pub name: String,
    pub text: String,
}

/// One running `ci-server`.
struct Server {
    service: Service,
    url: String,
}

/// The running `ci-controller` and where its status listener answers.
struct Controller {
    service: Service,
    status_url: String,
}

/// Who uses the system: a user made with `ci-admin`, with one API key.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub email: String,
    pub api_key: String,
    /// The key's id, for `ci-admin key revoke`.
    pub key_id: ApiKeyId,
}

/// How to set up a [`TestSystem`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Docker network mode of job containers; `none` unless a test needs
    /// PyPI.
    pub job_network: String,
    /// More environment for the controller (`CI_MAX_CONCURRENT_JOBS`, …).
    pub controller_env: Vec<(String, String)>,
    /// More environment for every `ci-server` (`CI_MAX_UPLOAD_BYTES`,
    /// `CI_LOG_FORMAT`, …).
    pub server_env: Vec<(String, String)>,
    /// Run on a fresh database of the PostgreSQL server named by
    /// `CI_TEST_POSTGRES_URL` instead of a SQLite file.
    pub postgres: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            job_network: "none".to_string(),
            controller_env: Vec::new(),
            server_env: Vec::new(),
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

    pub fn server_env(mut self, name: &str, value: &str) -> Self {
        self.server_env.push((name.to_string(), value.to_string()));
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
    controller: Option<Controller>,
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
    /// [`Self::api_as`]'s clients, by key.
    api_clients: std::sync::Mutex<std::collections::HashMap<String, ApiClient>>,
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
        docker::sweep_dead_installations(PREFIX_START);
        let prefix = docker::owned_prefix(PREFIX_START);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let postgres_url = options.postgres.then(|| {
            runtime
                .block_on(postgres::create_database(&postgres::server_url(), "e2e"))
                .unwrap_or_else(|e| panic!("cannot create a test database: {e}"))
        });

        let mut system = TestSystem {
            controller: None,
            server: None,
            replicas: Vec::new(),
            port: 0,
            options,
            prefix,
            user: TestUser {
                id: UserId::nil(),
                email: String::new(),
                api_key: String::new(),
                key_id: ApiKeyId::nil(),
            },
            db,
            postgres_url,
            home,
            http,
            api_clients: std::sync::Mutex::default(),
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
    /// On PostgreSQL the URL names the program as `application_name`, so the
    /// database can tell whose sessions it sees ([`Self::listening_services`]).
    fn database_env(&self, cmd: &mut Command, program: &str) {
        match &self.postgres_url {
            Some(url) => cmd.env(
                "CI_DATABASE_URL",
                format!("{url}?application_name={program}"),
            ),
            None => cmd.env("CI_DB_PATH", &self.db),
        };
    }

    /// The services whose change listener is connected to this
    /// installation's PostgreSQL database right now, as the database sees
    /// them: (`ci-server` or `ci-controller`, session pid), one per process.
    pub fn listening_services(&self) -> anyhow::Result<Vec<(String, i32)>> {
        let url = self.postgres_url.as_deref().context("not on PostgreSQL")?;
        let name = postgres::database_name(url).context("a database URL without a name")?;
        let sessions =
            self.block_on(postgres::listening_sessions(&postgres::server_url(), &name))?;
        Ok(sessions
            .into_iter()
            .filter(|(application, _)| application.starts_with("ci-"))
            .collect())
    }

    /// Runs one SQL statement on this installation's database, behind the
    /// services' back (see [`crate::database`]); the rows it changed.
    pub fn execute_sql(&self, sql: &str) -> anyhow::Result<u64> {
        let location = self.database_location();
        Ok(self.block_on(database::execute(&location, sql))?)
    }

    /// The one integer `sql` answers on this installation's database.
    pub fn integer_sql(&self, sql: &str) -> anyhow::Result<i64> {
        let location = self.database_location();
        Ok(self.block_on(database::integer(&location, sql))?)
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

    /// The main server's address, kept across restarts.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    // --- services ---------------------------------------------------------

    fn spawn_server(&self, port: u16, name: &str) -> Server {
        let log = self.root().join(format!("{name}.log"));
        let mut cmd = command(&binary("ci-server"));
        self.database_env(&mut cmd, "ci-server");
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("HOME", &self.home)
            .env("RUST_LOG", SERVICE_LOG_FILTER);
        for (name, value) in &self.options.server_env {
            cmd.env(name, value);
        }
        let (service, url) =
            Service::start_announcing(name, &mut cmd, &log, SERVER_ANNOUNCEMENT, SERVICE_START)
                .unwrap_or_else(|e| panic!("ci-server ({name}) did not start: {e}"));
        Server { service, url }
    }

    fn start_controller(&mut self) {
        let log = self.root().join("controller.log");
        let mut cmd = command(&binary("ci-controller"));
        self.database_env(&mut cmd, "ci-controller");
        cmd.env("HOME", &self.home)
            .env("CI_CONTAINER_PREFIX", &self.prefix)
            .env("CI_JOB_NETWORK", &self.options.job_network)
            .env("CI_RECONCILE_INTERVAL", RECONCILE_INTERVAL)
            .env("CI_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", SERVICE_LOG_FILTER);
        for (name, value) in &self.options.controller_env {
            cmd.env(name, value);
        }
        let (service, status_url) = Service::start_announcing(
            "controller",
            &mut cmd,
            &log,
            CONTROLLER_ANNOUNCEMENT,
            SERVICE_START,
        )
        .unwrap_or_else(|e| panic!("ci-controller did not start: {e}"));
        self.controller = Some(Controller {
            service,
            status_url,
        });
        // Ready once it holds the lease; fail fast if it dies instead.
        self.wait_for_controller_status(LEADER, SERVICE_START);
    }

    /// `host:port` of the controller's status listener (`/ready`, `/metrics`).
    pub fn controller_status_addr(&self) -> Option<String> {
        let controller = self.controller.as_ref()?;
        Some(
            controller
                .status_url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
        )
    }

    /// Waits until the controller's `/ready` says `wanted` (`leader` or
    /// `standby`); fails the test, with the controller's log, when it exits
    /// or `within` passes first.
    pub fn wait_for_controller_status(&mut self, wanted: &str, within: Duration) {
        let Some(controller) = self.controller.as_mut() else {
            panic!("no controller runs");
        };
        let url = controller.status_url.clone();
        let what = format!("the controller's /ready to say {wanted:?}");
        let deadline = Instant::now() + within;
        loop {
            let seen = match status::ready_status(&url) {
                Ok(status) if status == wanted => return,
                Ok(status) => format!("{status:?}"),
                Err(e) => e.to_string(),
            };
            if !controller.service.is_running() {
                panic!(
                    "the controller exited while waiting for {what}; its log:\n{}",
                    controller.service.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}; last seen: {seen}; its log:\n{}",
                    controller.service.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the main server's `/ready` answers 200 `{"status":"ready"}`.
    pub fn server_is_ready(&self) -> bool {
        status::get_json(&self.server_url(), "/ready").is_ok_and(|(code, body)| {
            code == 200 && body.get("status").and_then(|s| s.as_str()) == Some(status::READY)
        })
    }

    /// Whether the controller process is still alive (it has not exited).
    pub fn controller_is_running(&mut self) -> bool {
        self.controller
            .as_mut()
            .is_some_and(|controller| controller.service.is_running())
    }

    /// Kills the controller (SIGKILL: mid-work, nothing cleaned up, its
    /// lease left to expire).
    pub fn kill_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.service.kill();
        }
    }

    /// Stops the controller, if one runs, as a service manager would
    /// (SIGTERM: it hands the lease over and leaves the containers running),
    /// and starts it again; back once the new one leads (after a
    /// [`Self::kill_controller`], once the killed one's lease has expired).
    /// A new term of leadership starts afresh: it adopts the running
    /// containers and runs a reaper round.
    pub fn restart_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.service.terminate(SETTLE_DEADLINE);
        }
        self.start_controller();
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
        self.database_env(&mut cmd, "ci-admin");
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
        let id: UserId = labelled_id(&out, "ID:")
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
        let api = self.api_as(key)?;
        Ok(self.block_on(api.get_job(id))?)
    }

    /// Asks the server to cancel one of [`Self::user`]'s jobs.
    pub fn cancel(&self, id: JobId) -> anyhow::Result<()> {
        let api = self.api_as(&self.user.api_key)?;
        self.block_on(api.cancel_job(id))?;
        Ok(())
    }

    /// `ci`'s own typed client on the main server, with `key`; one per key,
    /// so that polling reuses its connection.
    pub fn api_as(&self, key: &str) -> anyhow::Result<ApiClient> {
        let mut clients = self
            .api_clients
            .lock()
            .map_err(|_| anyhow!("a test thread panicked holding the API clients"))?;
        if let Some(client) = clients.get(key) {
            return Ok(client.clone());
        }
        let client = ApiClient::new(&self.server_url(), Some(key.to_string()))?;
        clients.insert(key.to_string(), client.clone());
        Ok(client)
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

    /// The job's stored output as `ci` prints it to a pipe: without the
    /// colour sequences (jobs have pytest's colours on), byte for byte else.
    pub fn stored_output_piped(&self, id: JobId) -> anyhow::Result<String> {
        let stored = self.stored_output(id)?;
        let mut filter = ci_client::OutputFilter::new(ci_client::OutputMode::Plain);
        Ok(filter.filter(&stored))
    }

    /// What the server, its replicas and the controller have logged so far.
    pub fn service_logs(&self) -> Vec<ServiceLog> {
        self.server
            .iter()
            .chain(&self.replicas)
            .map(|server| &server.service)
            .chain(self.controller.iter().map(|c| &c.service))
            .map(|service| ServiceLog {
                name: service.name.clone(),
                text: service.log_text(),
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
        Ok(docker::installation_containers(&self.prefix)?)
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
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // The controller first, so that it starts no container while we clean up.
        let mut services: Vec<Service> = Vec::new();
        services.extend(self.controller.take().map(|c| c.service));
        services.extend(self.server.take().map(|s| s.service));
        services.extend(self.replicas.drain(..).map(|s| s.service));
        for service in &mut services {
            service.kill();
        }
        docker::remove_installation(&self.prefix);
        if let Some(url) = &self.postgres_url {
            let admin = postgres::server_url();
            let _ = self.block_on(postgres::drop_database(&admin, url));
        }
        if failed {
            for service in &services {
                eprintln!(
                    "--- last lines of the {} log ({}):\n{}",
                    service.name,
                    service.log_path().display(),
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

/// The id after `label` on a line of `text` (`  ID:    <uuid>`).
fn labelled_id<T: std::str::FromStr>(text: &str, label: &str) -> Option<T> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(label))
        .find_map(|rest| rest.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_read_from_ci_admin() {
        let id = UserId::random();
        let admin = format!("✓ User created successfully\n  ID:    {id}\n  Name:  X\n");
        assert_eq!(labelled_id(&admin, "ID:"), Some(id));
        assert_eq!(labelled_id::<UserId>("  ID:    nope", "ID:"), None);
    }
}
