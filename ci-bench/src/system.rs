//! The system under test: the real `ci-server` and `ci-controller` binaries on
//! a database of their own (a scratch SQLite file, or a fresh PostgreSQL
//! database), with their own container prefix and network `none`, so the
//! benchmark shares nothing with another installation on the same engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ci_testkit::process::{self, Service, CONTROLLER_ANNOUNCEMENT, SERVER_ANNOUNCEMENT};
use ci_testkit::{postgres, status};
use tokio::process::Command;

use crate::docker::{ManualJob, LABEL_BENCH};
use crate::error::{BenchError, Result};
use crate::http::Api;
use ci_controller::ControllerConfig;

/// How to start one system.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Where `ci`, `ci-server`, `ci-controller` and `ci-admin` are.
    pub bin_dir: PathBuf,
    pub image: String,
    /// A PostgreSQL server URL to make a fresh database in; SQLite when `None`.
    pub postgres: Option<String>,
    /// `CI_MAX_CONCURRENT_JOBS`; the controller's default (the CPU count) when `None`.
    pub max_concurrent_jobs: Option<usize>,
    /// More `CI_*` settings for the controller (limits a figure must raise).
    pub controller_env: Vec<(String, String)>,
    /// `CI_TEST_REPORTS`: whether the controller collects test reports (off
    /// for the test-results figure's baseline).
    pub test_reports: bool,
}

enum Database {
    Sqlite(PathBuf),
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

/// A running system. Stop it with [`System::shutdown`]; dropping it kills the
/// processes and removes its containers too, for the error paths.
pub struct System {
    scratch: tempfile::TempDir,
    pub prefix: String,
    pub base_url: String,
    pub addr: SocketAddr,
    server: Service,
    controller: Service,
    /// The controller's status listener (`/ready`, `/metrics`).
    pub controller_status_url: String,
    database: Database,
    bin_dir: PathBuf,
    image: String,
    /// The user the by-hand jobs run as (their pip cache volume's owner).
    manual_user: ci_common::UserId,
    done: bool,
}

impl System {
    pub async fn start(options: &SystemOptions) -> Result<System> {
        for bin in ["ci", "ci-server", "ci-controller", "ci-admin"] {
            let path = options.bin_dir.join(bin);
            if !path.is_file() {
                return Err(BenchError::Setup(format!(
                    "{} is missing: build the binaries first (cargo build --release --workspace --bins) or pass --bin-dir",
                    path.display()
                )));
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix("ci-bench-")
            .tempdir()
            .map_err(BenchError::io("creating a scratch folder"))?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = format!("bench{tag}-");
        let database = match &options.postgres {
            None => Database::Sqlite(scratch.path().join("jobs.db")),
            Some(url) => create_postgres_database(url).await?,
        };
        let db_env = db_env(&database);

        // The kit's start-up: no `CI_*` of the caller, the child dies with
        // the benchmark, the address read from the announcement on stdout.
        let started = Instant::now();
        let mut server = process::command(&options.bin_dir.join("ci-server"));
        // The figures open a thousand streams and queue hundreds of jobs of
        // one user: far past the caps that protect a shared installation.
        server
            .env("CI_MAX_STREAMS_PER_USER", "100000")
            .env("CI_MAX_QUEUED_JOBS_PER_USER", "100000")
            .env("CI_MAX_UPLOADS_PER_USER", "100000");
        server
            .args(["--host", "127.0.0.1", "--port", "0"])
            .envs(db_env.iter().map(|(name, value)| (*name, value)));
        let (server, server_url) = start_announcing(
            "ci-server",
            &mut server,
            &scratch.path().join("ci-server.log"),
            SERVER_ANNOUNCEMENT,
        )?;
        let addr: SocketAddr = server_url
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| BenchError::Setup(format!("ci-server announced {server_url:?}")))?;

        let mut controller = process::command(&options.bin_dir.join("ci-controller"));
        controller
            .envs(db_env.iter().map(|(name, value)| (*name, value)))
            .env("CI_CONTAINER_PREFIX", &prefix)
            .env("CI_JOB_NETWORK", "none")
            .env("CI_PYTHON_BASE_IMAGE", &options.image)
            .env("CI_METRICS_ADDR", "127.0.0.1:0");
        if let Some(n) = options.max_concurrent_jobs {
            controller.env("CI_MAX_CONCURRENT_JOBS", n.to_string());
        }
        controller.env("CI_TEST_REPORTS", options.test_reports.to_string());
        controller.envs(options.controller_env.iter().cloned());
        let (mut controller, status_url) = start_announcing(
            "ci-controller",
            &mut controller,
            &scratch.path().join("ci-controller.log"),
            CONTROLLER_ANNOUNCEMENT,
        )?;
        wait_leading(&mut controller, &status_url, started).await?;

        let system = System {
            base_url: format!("http://{addr}"),
            addr,
            scratch,
            prefix,
            server,
            controller,
            controller_status_url: status_url,
            database,
            bin_dir: options.bin_dir.clone(),
            image: options.image.clone(),
            manual_user: ci_common::UserId::random(),
            done: false,
        };
        system.wait_ready(START_LIMIT).await?;
        Ok(system)
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Another `ci-server` on this system's database with `env` beside it
    /// (a replica set up otherwise, for a baseline); stopped when dropped.
    pub fn start_server(&self, name: &str, env: &[(&str, &str)]) -> Result<(Service, SocketAddr)> {
        let mut server = process::command(&self.bin_dir.join("ci-server"));
        server
            .args(["--host", "127.0.0.1", "--port", "0"])
            .envs(db_env(&self.database).iter().map(|(n, v)| (*n, v)))
            .envs(env.iter().map(|(n, v)| (*n, *v)));
        let (service, url) = start_announcing(
            name,
            &mut server,
            &self.scratch.path().join(format!("{name}.log")),
            SERVER_ANNOUNCEMENT,
        )?;
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| BenchError::Setup(format!("{name} announced {url:?}")))?;
        Ok((service, addr))
    }

    /// Where this system's database is, for a figure that fills it directly.
    pub fn database_location(&self) -> ci_persistence::DatabaseLocation {
        match &self.database {
            Database::Sqlite(path) => ci_persistence::DatabaseLocation::SqliteFile(path.clone()),
            Database::Postgres { url, .. } => ci_persistence::DatabaseLocation::Url(url.clone()),
        }
    }

    pub fn server_pid(&self) -> Option<u32> {
        u32::try_from(self.server.pid().as_raw()).ok()
    }

    pub fn controller_pid(&self) -> Option<u32> {
        u32::try_from(self.controller.pid().as_raw()).ok()
    }

    /// Waits until the server's `/ready` answers 200: its database answers
    /// and holds the current schema.
    async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let base = self.base_url.clone();
            let answer = tokio::task::spawn_blocking(move || status::get_json(&base, "/ready"))
                .await
                .map_err(|e| BenchError::Setup(format!("asking ci-server's /ready: {e}")))?;
            if answer.is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::timeout("ci-server's /ready", limit));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `ci-admin ARGS` on this system's database.
    pub async fn admin(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(self.bin_dir.join("ci-admin"));
        cmd.args(args).stdin(Stdio::null());
        clean_env(&mut cmd, &db_env(&self.database));
        let out = cmd
            .output()
            .await
            .map_err(BenchError::io("running ci-admin"))?;
        if !out.status.success() {
            return Err(BenchError::Command {
                command: format!("ci-admin {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new user and an API key for it, made with `ci-admin` as an operator would.
    pub async fn user_with_key(&self, name: &str) -> Result<String> {
        let email = format!("{name}@{}example.com", self.prefix);
        self.admin(&["user", "create", "--name", name, "--email", &email])
            .await?;
        let out = self
            .admin(&["key", "create", "--email", &email, "--name", "bench"])
            .await?;
        parse_api_key(&out).ok_or_else(|| BenchError::Command {
            command: "ci-admin key create".into(),
            detail: format!("no `API Key: ci_…` line in its output: {out}"),
        })
    }

    pub fn api(&self, key: &str) -> Result<Api> {
        Api::new(&self.base_url, key)
    }

    /// `ci ARGS` as a user with `key` would run it in `dir`.
    pub fn ci(&self, key: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("ci"));
        clean_env(&mut cmd, &[]);
        cmd.current_dir(dir)
            .env("CI_SERVER_URL", &self.base_url)
            .env("CI_API_KEY", key)
            // No ~/.ci/config of the person running the benchmark.
            .env("HOME", self.scratch.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// The controller's configuration as this system starts it (the same
    /// prefix, network and image as the environment it is given).
    pub fn controller_config(&self) -> ControllerConfig {
        let mut config = ControllerConfig {
            image: self.image.clone(),
            network_mode: "none".into(),
            ..ControllerConfig::default()
        };
        config.set_container_prefix(&self.prefix);
        config
    }

    /// The same job by hand, labelled so this system's cleanup finds it.
    pub fn manual_job(&self) -> ManualJob {
        ManualJob {
            config: self.controller_config(),
            bench_label: self.prefix.clone(),
            user: self.manual_user,
            install: ci_controller::container_spec::JobInstall::default(),
        }
    }

    /// Submits a passing job and waits for it to end: proves the controller
    /// leads and warms the engine, so the first measured job is not the first.
    pub async fn warm_up(&self, api: &Api, zip: &[u8]) -> Result<()> {
        let id = api.submit_async(zip).await?;
        let ended = api
            .wait_ended(&[id], Duration::from_millis(100), Duration::from_secs(120))
            .await
            .map_err(|e| {
                BenchError::Setup(format!(
                    "the warm-up job did not end: {e}\n{}",
                    tail(&self.scratch.path().join("ci-controller.log"))
                ))
            })?;
        if ended.first().and_then(|j| j.success) != Some(true) {
            return Err(BenchError::Setup(format!(
                "the warm-up job failed; the job image or engine is broken\n{}",
                tail(&self.scratch.path().join("ci-controller.log"))
            )));
        }
        Ok(())
    }

    /// The last lines of both logs, for error messages.
    pub fn logs_tail(&self) -> String {
        format!(
            "{}\n{}",
            tail(&self.scratch.path().join("ci-server.log")),
            tail(&self.scratch.path().join("ci-controller.log"))
        )
    }

    /// Starts a system, runs `measure` on it and shuts it down whatever
    /// happened. A failed measurement is the error (with the processes' last
    /// log lines, which say why more often than the error does), else a
    /// failed shutdown.
    pub async fn run<T>(
        options: &SystemOptions,
        measure: impl AsyncFnOnce(&System) -> Result<T>,
    ) -> Result<T> {
        let system = System::start(options).await?;
        let result = measure(&system).await.map_err(|e| {
            BenchError::Setup(format!("{e}\nlast log lines:\n{}", system.logs_tail()))
        });
        let stopped = system.shutdown().await;
        let value = result?;
        stopped?;
        Ok(value)
    }

    /// Stops the processes (SIGTERM, then SIGKILL), removes every container and
    /// volume of this system, and drops a PostgreSQL database it made.
    pub async fn shutdown(mut self) -> Result<()> {
        for service in [&mut self.server, &mut self.controller] {
            tokio::task::block_in_place(|| service.terminate(STOP_GRACE));
        }
        self.remove_docker_leftovers();
        if let Database::Postgres { admin_url, url, .. } = &self.database {
            drop_postgres_database(admin_url, url).await?;
        }
        self.done = true;
        Ok(())
    }

    fn remove_docker_leftovers(&self) {
        // The installation's containers and pip cache volumes, and the
        // by-hand baseline's containers and cache volume.
        ci_testkit::docker::remove_installation(&self.prefix);
        ci_testkit::docker::remove_labelled(LABEL_BENCH, &self.prefix);
        ci_testkit::docker::remove_volumes(&[format!("{}ci-pip-cache", self.prefix)]);
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.server.kill();
        self.controller.kill();
        self.remove_docker_leftovers();
        if let Database::Postgres { name, .. } = &self.database {
            eprintln!("ci-bench: left the PostgreSQL database {name} behind");
        }
    }
}

/// How long a service may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a service may take to come up.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts a service with the kit and reads its announced URL.
fn start_announcing(
    name: &str,
    cmd: &mut std::process::Command,
    log: &Path,
    announcement: &str,
) -> Result<(Service, String)> {
    tokio::task::block_in_place(|| {
        Service::start_announcing(name, cmd, log, announcement, START_LIMIT)
    })
    .map_err(|e| BenchError::Setup(format!("{name} did not start: {e}")))
}

/// Waits until the controller's `/ready` says it leads, so the first
/// measured job does not wait for the lease.
async fn wait_leading(controller: &mut Service, status_url: &str, started: Instant) -> Result<()> {
    loop {
        let url = status_url.to_string();
        let said = tokio::task::spawn_blocking(move || status::ready_status(&url))
            .await
            .map_err(|e| BenchError::Setup(format!("asking the controller's /ready: {e}")))?;
        if said.as_deref().is_ok_and(|s| s == status::LEADER) {
            return Ok(());
        }
        if !controller.is_running() {
            return Err(BenchError::Setup(format!(
                "ci-controller exited before it led\n{}",
                controller.log_tail()
            )));
        }
        if started.elapsed() > START_LIMIT {
            return Err(BenchError::timeout(
                "ci-controller's /ready to say leader",
                START_LIMIT,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The child sees no `CI_*` setting of the person running the benchmark
/// (the kit's scrub), only ours.
fn clean_env(cmd: &mut Command, vars: &[(&'static str, String)]) {
    process::scrub_ci_env(cmd.as_std_mut());
    for (name, value) in vars {
        cmd.env(name, value);
    }
}

fn db_env(database: &Database) -> Vec<(&'static str, String)> {
    match database {
        Database::Sqlite(path) => vec![("CI_DB_PATH", path.display().to_string())],
        Database::Postgres { url, .. } => vec![("CI_DATABASE_URL", url.clone())],
    }
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    format!("--- {} ---\n{}", path.display(), process::tail(path, 15))
}

fn parse_api_key(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("API Key:"))
        .map(|k| k.trim().to_string())
        .filter(|k| k.starts_with("ci_"))
}

/// A fresh database on the server of `admin_url` (the kit's scratch databases).
async fn create_postgres_database(admin_url: &str) -> Result<Database> {
    let url = postgres::create_database(admin_url, "ci_bench")
        .await
        .map_err(|e| BenchError::Setup(format!("cannot make a database: {e}")))?;
    Ok(Database::Postgres {
        admin_url: admin_url.to_string(),
        name: postgres::database_name(&url).unwrap_or_default(),
        url,
    })
}

async fn drop_postgres_database(admin_url: &str, url: &str) -> Result<()> {
    postgres::drop_database(admin_url, url)
        .await
        .map_err(|e| BenchError::Setup(format!("cannot drop the database: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_output() {
        let out = "✓ API key created\nAPI Key: ci_abcDEF123_-\n⚠ shown once\n";
        assert_eq!(parse_api_key(out).as_deref(), Some("ci_abcDEF123_-"));
        assert_eq!(parse_api_key("API Key: nope"), None);
    }
}
