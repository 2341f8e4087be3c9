//! Shared by the controller's integration tests: project zips, a store with a
//! user, and the `ci-controller` binary run as a process.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ci_common::Job;
use ci_common::{JobId, UserId};
use ci_persistence::DatabaseLocation;
use ci_persistence::{NewJob, Store};
use ci_testkit::process::{self, Service};
use ci_testkit::{docker, status};
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

/// Queues a job of `user` for `zip` through the store, as the API does.
pub async fn queue_job(store: &Store, user: UserId, zip: &[u8]) -> JobId {
    let digest = store.put_archive(zip).await.unwrap();
    store
        .create_job(&NewJob::new(user, digest))
        .await
        .unwrap()
        .id
}

/// A running `ci-controller` (started with the test kit: no `CI_*` variable
/// inherited, its log in a file), with its status listener on a free port.
pub struct Controller {
    service: Service,
    status_url: String,
    _log_dir: tempfile::TempDir,
}

impl Controller {
    pub fn start(db: &Path, prefix: &str) -> Controller {
        Self::start_with(db, prefix, &[])
    }

    /// Starts the binary with extra environment variables; returns once its
    /// status listener has announced itself.
    pub fn start_with(db: &Path, prefix: &str, env: &[(&str, &str)]) -> Controller {
        let log_dir = tempfile::tempdir().unwrap();
        let mut cmd = process::command(Path::new(env!("CARGO_BIN_EXE_ci-controller")));
        cmd.env("CI_DB_PATH", db)
            .env("CI_CONTAINER_PREFIX", prefix)
            .env("CI_JOB_NETWORK", "none")
            .env("CI_RECONCILE_INTERVAL", "0.5")
            .env("CI_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let (service, status_url) = Service::start_announcing(
            "controller",
            &mut cmd,
            &log_dir.path().join("controller.log"),
            process::CONTROLLER_ANNOUNCEMENT,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Controller {
            service,
            status_url,
            _log_dir: log_dir,
        }
    }

    /// Waits until the controller's `/ready` says `wanted` (`leader` or
    /// `standby`).
    pub fn wait_for_status(&mut self, wanted: &str, within: Duration) {
        let url = self.status_url.clone();
        let service = &mut self.service;
        status::wait_for_ready_status(
            &format!("the controller's /ready to say {wanted:?}"),
            &url,
            wanted,
            within,
            || service.is_running(),
        );
    }

    /// What the controller has logged, for failure messages.
    pub fn log(&self) -> String {
        self.service.log_text()
    }

    pub fn kill(&mut self) {
        self.service.kill();
    }
}

pub struct Setup {
    pub store: Store,
    pub db: PathBuf,
    pub prefix: String,
    pub user: UserId,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let store = Store::open(&DatabaseLocation::SqliteFile(db.clone()))
            .await
            .unwrap();
        let prefix = format!(
            "ciproc-{}-",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
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

    pub async fn submit(&self, files: &[(&str, &str)]) -> JobId {
        queue_job(&self.store, self.user, &project(files)).await
    }

    pub async fn wait_for(
        &self,
        id: JobId,
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

    pub async fn output(&self, id: JobId) -> String {
        self.store
            .read_log(id, 0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    pub fn container_states(&self) -> Vec<String> {
        docker::installation_containers(&self.prefix)
            .unwrap()
            .into_iter()
            .map(|c| c.state)
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        docker::remove_installation(&self.prefix);
    }
}
