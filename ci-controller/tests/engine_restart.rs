//! A Docker engine restart while jobs run. The test starts an engine of its
//! own (its own socket, data and exec folders, no network), so restarting it
//! touches no other test's containers. It runs in a network namespace of its
//! own: an engine started with `--bridge=none` deletes the host's `docker0`,
//! which would take the bridge network away from the host's engine.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ci_common::JobStatus;
use ci_controller::config::DEFAULT_IMAGE;
use support::{Controller, Setup};

struct PrivateEngine {
    root: PathBuf,
    child: Option<Child>,
}

impl PrivateEngine {
    fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn start(root: &Path) -> PrivateEngine {
        let mut engine = PrivateEngine {
            root: root.to_path_buf(),
            child: None,
        };
        engine.boot();
        engine
    }

    fn boot(&mut self) {
        let log = std::fs::File::create(self.root.join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("-H")
            .arg(self.host())
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/docker-engine.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the private engine did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the engine as an operator would: SIGTERM, which stops its
    /// containers and unmounts its data root.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// An engine restart under running jobs.
    fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_end_when_the_engine_restarts_under_them_and_new_jobs_run_after() {
    let s = Setup::new().await;
    let root = tempfile::Builder::new()
        .prefix("ci-engine-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut engine = PrivateEngine::start(root.path());
    // The job image, copied from the main engine.
    let copy = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {DEFAULT_IMAGE} | docker -H {} load -q",
            engine.host()
        ))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );

    let host = engine.host();
    let mut controller =
        Controller::start_with(&s.db, &s.prefix, &[("DOCKER_HOST", host.as_str())]);
    controller.wait_for_status(ci_testkit::status::LEADER, Duration::from_secs(30));
    let id = s
        .submit(&[(
            "test_long.py",
            "import time\n\ndef test_long():\n    print('running', flush=True)\n    time.sleep(120)\n",
        )])
        .await;
    s.wait_for(
        id,
        "the job to run",
        |j| j.status == JobStatus::Running,
        Duration::from_secs(60),
    )
    .await;

    engine.restart();

    let job = s
        .wait_for(
            id,
            "the job to end",
            |j| j.status.is_terminal(),
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    let out = s.output(id).await;
    let reason = job.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("stopped from outside") || reason.contains("disappeared"),
        "a reason is given: {reason:?}\n{out}"
    );
    assert!(
        out.trim_end().ends_with(reason.trim_end()),
        "the reason is the last output: {out}"
    );

    // The controller carries on with the restarted engine.
    let next = s
        .submit(&[("test_ok.py", "def test_ok():\n    assert True\n")])
        .await;
    let job = s
        .wait_for(
            next,
            "a new job to end",
            |j| j.status.is_terminal(),
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(job.success, Some(true), "{}", s.output(next).await);
    // Removing a container follows its job's end: give it the time the other
    // tests give (the check used to race the removal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&engine.docker(&["ps", "-aq"]).stdout)
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no container outlives its job: {}\n{}",
            String::from_utf8_lossy(&engine.docker(&["ps", "-a"]).stdout),
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
