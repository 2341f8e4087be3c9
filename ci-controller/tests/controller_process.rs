//! The `ci-controller` binary as a process: one leader at a time, a standby
//! that takes over when the leader is killed, and jobs that survive their
//! controller's death with their output whole and their real exit code.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ci_common::config::DatabaseLocation;
use ci_common::{Job, JobStatus};
use ci_controller::runtime::LABEL_INSTALLATION;
use ci_persistence::{NewJob, Store};
use uuid::Uuid;
use zip::write::SimpleFileOptions;

/// A running `ci-controller` whose stderr is collected line by line.
struct Controller {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    fn start(db: &Path, prefix: &str) -> Controller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ci-controller"))
            .env("CI_DB_PATH", db)
            .env("CI_CONTAINER_PREFIX", prefix)
            .env("CI_JOB_NETWORK", "none")
            .env("CI_RECONCILE_INTERVAL", "0.5")
            .env("RUST_LOG", "info")
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

    fn wait_for_log(&self, needle: &str, within: Duration) {
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

    fn kill(&mut self) {
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

struct Setup {
    store: Store,
    db: PathBuf,
    prefix: String,
    user: Uuid,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
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

    async fn submit(&self, files: &[(&str, &str)]) -> Uuid {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in files {
            w.start_file(*name, SimpleFileOptions::default()).unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        let digest = self
            .store
            .put_archive(&w.finish().unwrap().into_inner())
            .await
            .unwrap();
        let id = Uuid::new_v4();
        self.store
            .create_job(&NewJob {
                id,
                user_id: self.user,
                archive_digest: digest,
            })
            .await
            .unwrap();
        id
    }

    async fn wait_for(
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

    async fn output(&self, id: Uuid) -> String {
        self.store
            .read_log(id, 0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    fn container_states(&self) -> Vec<String> {
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
                "docker ps -aq --filter label={LABEL_INSTALLATION}={} | xargs -r docker rm -f",
                self.prefix
            ))
            .output();
    }
}

fn printing_test(lines: usize) -> String {
    format!(
        "import sys, time\n\ndef test_print(capsys):\n    with capsys.disabled():\n        sys.stdout.write('\\n')\n        for i in range({lines}):\n            sys.stdout.write('line %06d\\n' % i)\n            if i % 200 == 0:\n                sys.stdout.flush()\n                time.sleep(0.05)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_loses_no_output() {
    let s = Setup::new().await;
    let mut leader = Controller::start(&s.db, &s.prefix);
    leader.wait_for_log("this controller is the leader", Duration::from_secs(20));
    let standby = Controller::start(&s.db, &s.prefix);
    standby.wait_for_log("standing by", Duration::from_secs(20));

    let lines = 10_000;
    let id = s.submit(&[("test_print.py", &printing_test(lines))]).await;
    s.wait_for(
        id,
        "output to be stored",
        |j| j.last_seq >= 2,
        Duration::from_secs(60),
    )
    .await;
    leader.kill();
    let killed_at = Instant::now();
    standby.wait_for_log("this controller is the leader", Duration::from_secs(15));
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "takeover took {:?}",
        killed_at.elapsed()
    );

    let job = s
        .wait_for(
            id,
            "the job to end",
            |j| j.status.is_terminal(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    let out = s.output(id).await;
    let printed: Vec<&str> = out.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (0..lines).map(|i| format!("line {i:06}")).collect();
    assert_eq!(
        printed,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "every line once, in order"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.container_states().is_empty() {
        assert!(Instant::now() < deadline, "the container outlived its job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_while_no_controller_runs_ends_with_its_real_exit_code() {
    let s = Setup::new().await;
    let mut first = Controller::start(&s.db, &s.prefix);
    first.wait_for_log("this controller is the leader", Duration::from_secs(20));
    let id = s
        .submit(&[(
            "test_late.py",
            "import time\n\ndef test_late():\n    print('about to fail', flush=True)\n    time.sleep(2)\n    assert False, 'failed while nobody watched'\n",
        )])
        .await;
    s.wait_for(
        id,
        "the job to run",
        |j| j.status == JobStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    first.kill();
    // The container finishes on its own while no controller runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.container_states() != ["exited"] {
        assert!(
            Instant::now() < deadline,
            "the container did not exit: {:?}",
            s.container_states()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _second = Controller::start(&s.db, &s.prefix);
    let job = s
        .wait_for(
            id,
            "the job to end",
            |j| j.status.is_terminal(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        (job.status, job.success, job.exit_code),
        (JobStatus::Completed, Some(false), Some(1))
    );
    let out = s.output(id).await;
    assert!(out.contains("failed while nobody watched"), "{out}");
    assert_eq!(
        out.matches("about to fail").count(),
        2,
        "once in the traceback's source, once as captured stdout; never repeated: {out}"
    );
}
