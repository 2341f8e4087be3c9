//! Shared by the controller's integration tests: project zips, a store with a
//! user, and the `ci-controller` binary run as a process.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ci_common::config::DatabaseLocation;
use ci_common::{Job, JobOptions};
use ci_controller::runtime::LABEL_INSTALLATION;
use ci_persistence::{NewJob, Store};
use uuid::Uuid;
use zip::write::SimpleFileOptions;

/// A zip of the given files, as `ci` would upload it.
pub fn project(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, body) in files {
        w.start_file(*name, SimpleFileOptions::default()).unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A running `ci-controller` whose stderr is collected line by line.
pub struct Controller {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    pub fn start(db: &Path, prefix: &str) -> Controller {
        Self::start_with(db, prefix, &[])
    }

    /// Starts the binary with extra environment variables.
    pub fn start_with(db: &Path, prefix: &str, env: &[(&str, &str)]) -> Controller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ci-controller"))
            .env("CI_DB_PATH", db)
            .env("CI_CONTAINER_PREFIX", prefix)
            .env("CI_JOB_NETWORK", "none")
            .env("CI_RECONCILE_INTERVAL", "0.5")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Controller { child, log }
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the controller's log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Setup {
    pub store: Store,
    pub db: PathBuf,
    pub prefix: String,
    pub user: Uuid,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let store = Store::open(&DatabaseLocation::SqliteFile(db.clone()))
            .await
            .unwrap();
        let prefix = format!("ciproc-{}-", &Uuid::new_v4().simple().to_string()[..8]);
        let user = store
            .create_user("T", &format!("{prefix}@example.com"))
            .await
            .unwrap()
            .id;
        Setup {
            store,
            db,
            prefix,
            user,
            _dir: dir,
        }
    }

    pub async fn submit(&self, files: &[(&str, &str)]) -> Uuid {
        let digest = self.store.put_archive(&project(files)).await.unwrap();
        let id = Uuid::new_v4();
        self.store
            .create_job(&NewJob {
                id,
                user_id: self.user,
                archive_digest: digest,
                options: JobOptions::default(),
            })
            .await
            .unwrap();
        id
    }

    pub async fn wait_for(
        &self,
        id: Uuid,
        what: &str,
        cond: impl Fn(&Job) -> bool,
        within: Duration,
    ) -> Job {
        let deadline = Instant::now() + within;
        loop {
            let job = self.store.get_job(id).await.unwrap().unwrap();
            if cond(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn output(&self, id: Uuid) -> String {
        self.store
            .read_log(id, 0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    pub fn container_states(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--format", "{{.State}}", "--filter"])
            .arg(format!("label={LABEL_INSTALLATION}={}", self.prefix))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label={LABEL_INSTALLATION}={prefix} | xargs -r docker rm -fv; \
                 docker volume ls -q --filter label={LABEL_INSTALLATION}={prefix} | xargs -r docker volume rm -f",
                prefix = self.prefix
            ))
            .output();
    }
}
