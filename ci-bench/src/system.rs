//! The system under test: the real `ci-server` and `ci-controller` binaries on
//! a database of their own (a scratch SQLite file, or a fresh PostgreSQL
//! database), with their own container prefix and network `none`, so the
//! benchmark shares nothing with another installation on the same engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, Executor as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::docker::{self, ManualJob, LABEL_BENCH};
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
    server: Child,
    controller: Child,
    database: Database,
    bin_dir: PathBuf,
    image: String,
    /// The user the by-hand jobs run as (their pip cache volume's owner).
    manual_user: uuid::Uuid,
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
            Some(url) => create_postgres_database(url, &format!("ci_bench_{tag}")).await?,
        };
        let db_env = db_env(&database);

        let mut server = Command::new(options.bin_dir.join("ci-server"));
        server
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(scratch.path(), "ci-server.log")?)
            .kill_on_drop(true);
        clean_env(&mut server, &db_env);
        let mut server = server
            .spawn()
            .map_err(BenchError::io("starting ci-server"))?;
        let addr = match read_listen_address(&mut server).await {
            Ok(addr) => addr,
            Err(e) => {
                let log = tail(&scratch.path().join("ci-server.log"));
                return Err(BenchError::Setup(format!(
                    "ci-server did not start: {e}\n{log}"
                )));
            }
        };

        let mut controller = Command::new(options.bin_dir.join("ci-controller"));
        controller
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(scratch.path(), "ci-controller.log")?)
            .kill_on_drop(true);
        clean_env(&mut controller, &db_env);
        controller
            .env("CI_CONTAINER_PREFIX", &prefix)
            .env("CI_JOB_NETWORK", "none")
            .env("CI_PYTHON_BASE_IMAGE", &options.image);
        if let Some(n) = options.max_concurrent_jobs {
            controller.env("CI_MAX_CONCURRENT_JOBS", n.to_string());
        }
        controller.env("CI_TEST_REPORTS", options.test_reports.to_string());
        let controller = controller
            .spawn()
            .map_err(BenchError::io("starting ci-controller"))?;

        let system = System {
            base_url: format!("http://{addr}"),
            addr,
            scratch,
            prefix,
            server,
            controller,
            database,
            bin_dir: options.bin_dir.clone(),
            image: options.image.clone(),
            manual_user: uuid::Uuid::new_v4(),
            done: false,
        };
        system.wait_healthy(Duration::from_secs(30)).await?;
        Ok(system)
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.id()
    }

    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.id()
    }

    async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let client = reqwest::Client::new();
        loop {
            let ok = client
                .get(format!("{}/health", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::timeout("ci-server's /health", limit));
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

    /// Stops the processes (SIGTERM, then SIGKILL), removes every container and
    /// volume of this system, and drops a PostgreSQL database it made.
    pub async fn shutdown(mut self) -> Result<()> {
        for child in [&mut self.server, &mut self.controller] {
            terminate(child).await;
        }
        self.remove_docker_leftovers();
        if let Database::Postgres {
            admin_url, name, ..
        } = &self.database
        {
            drop_postgres_database(admin_url, name).await?;
        }
        self.done = true;
        Ok(())
    }

    fn remove_docker_leftovers(&self) {
        docker::remove_labelled_blocking(&format!(
            "{}={}",
            ci_controller::runtime::LABEL_INSTALLATION,
            self.prefix
        ));
        docker::remove_labelled_blocking(&format!("{LABEL_BENCH}={}", self.prefix));
        docker::remove_volume_blocking(&format!("{}ci-pip-cache", self.prefix));
        docker::remove_labelled_volumes_blocking(&format!(
            "{}={}",
            ci_controller::runtime::LABEL_INSTALLATION,
            self.prefix
        ));
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.server.start_kill();
        let _ = self.controller.start_kill();
        self.remove_docker_leftovers();
        if let Database::Postgres { name, .. } = &self.database {
            eprintln!("ci-bench: left the PostgreSQL database {name} behind");
        }
    }
}

/// SIGTERM, a few seconds' grace, then SIGKILL.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The child sees no `CI_*` setting of the person running the benchmark, only ours.
fn clean_env(cmd: &mut Command, vars: &[(&'static str, String)]) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CI_") {
            cmd.env_remove(name);
        }
    }
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

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).map_err(BenchError::io(format!("creating {}", path.display())))
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    format!("--- {} ---\n{}", path.display(), lines[from..].join("\n"))
}

/// Reads `Listening on http://ADDR` from the server's stdout, then keeps
/// draining it so a later print never meets a closed pipe.
async fn read_listen_address(server: &mut Child) -> Result<SocketAddr> {
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("ci-server has no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let limit = Duration::from_secs(30);
    let addr = tokio::time::timeout(limit, async {
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(BenchError::io("reading ci-server's output"))?
        {
            if let Some(addr) = parse_listen_line(&line) {
                return Ok(addr);
            }
        }
        Err(BenchError::Setup(
            "ci-server exited before printing its address".into(),
        ))
    })
    .await
    .map_err(|_| BenchError::timeout("ci-server's `Listening on` line", limit))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("Listening on http://")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

fn parse_api_key(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("API Key:"))
        .map(|k| k.trim().to_string())
        .filter(|k| k.starts_with("ci_"))
}

/// The URL of a fresh database `name` on the server of `admin_url`.
async fn create_postgres_database(admin_url: &str, name: &str) -> Result<Database> {
    let mut url = reqwest::Url::parse(admin_url)
        .map_err(|e| BenchError::Setup(format!("--database-url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(BenchError::Setup(
            "--database-url must be a postgres:// URL".into(),
        ));
    }
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await?;
    conn.close().await?;
    url.set_path(&format!("/{name}"));
    Ok(Database::Postgres {
        admin_url: admin_url.to_string(),
        name: name.to_string(),
        url: url.to_string(),
    })
}

async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_address_and_the_key_are_read_from_output() {
        assert_eq!(
            parse_listen_line("Listening on http://127.0.0.1:41234"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(parse_listen_line("something else"), None);
        let out = "✓ API key created\nAPI Key: ci_abcDEF123_-\n⚠ shown once\n";
        assert_eq!(parse_api_key(out).as_deref(), Some("ci_abcDEF123_-"));
        assert_eq!(parse_api_key("API Key: nope"), None);
    }
}
