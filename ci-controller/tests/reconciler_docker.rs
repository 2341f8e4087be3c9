//! The reconciler against the real Docker engine and a real SQLite file: jobs
//! run, fail with reasons, are cancelled, time out and wait for capacity, and
//! only this installation's containers are ever touched.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ci_common::{Job, JobStatus};
use ci_common::{JobId, UserId};
use ci_controller::runtime::{ContainerRuntime, ContainerSpec, LABEL_INSTALLATION, LABEL_JOB};
use ci_controller::{ControllerConfig, DockerRuntime, Reconciler};
use ci_persistence::DatabaseLocation;
use ci_persistence::Store;
use support::project;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Harness {
    store: Store,
    runtime: DockerRuntime,
    config: ControllerConfig,
    user: UserId,
    prefix: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(tune: impl FnOnce(&mut ControllerConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseLocation::SqliteFile(dir.path().join("jobs.db")))
            .await
            .unwrap();
        let runtime = DockerRuntime::connect()
            .await
            .expect("a Docker engine (scripts/docker-engine.sh)");
        let prefix = format!("cictl-{}-", &Uuid::new_v4().simple().to_string()[..8]);
        let mut config = ControllerConfig {
            container_prefix: prefix.clone(),
            network_mode: "none".into(),
            reconcile_interval: Duration::from_millis(300),
            pip_cache_volume: None,
            ..ControllerConfig::default()
        };
        tune(&mut config);
        let user = store
            .create_user("T", &format!("{prefix}@example.com"))
            .await
            .unwrap()
            .id;
        let mut h = Harness {
            store,
            runtime,
            config,
            user,
            prefix,
            shutdown: CancellationToken::new(),
            _dir: dir,
        };
        h.shutdown = h.spawn_controller();
        h
    }

    /// Starts a reconciler on the same database and engine; cancelling the
    /// token stops it as a killed controller would stop: mid-work.
    fn spawn_controller(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let reconciler = Reconciler::new(
            self.store.clone(),
            Arc::new(self.runtime.clone()),
            self.config.clone(),
        );
        tokio::spawn(reconciler.run(token.clone()));
        token
    }

    fn installation(&self) -> String {
        self.prefix.clone()
    }

    async fn submit(&self, zip: Vec<u8>) -> JobId {
        support::queue_job(&self.store, self.user, &zip).await
    }

    async fn wait_for(&self, id: JobId, what: &str, cond: impl Fn(&Job) -> bool, secs: u64) -> Job {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.store.get_job(id).await.unwrap().unwrap();
            if cond(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ended(&self, id: JobId) -> Job {
        self.wait_for(id, "the job to end", |j| j.status.is_terminal(), 60)
            .await
    }

    async fn output(&self, id: JobId) -> String {
        self.store
            .read_log(id, 0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect()
    }

    async fn containers(&self) -> usize {
        self.runtime.list(&self.installation()).await.unwrap().len()
    }

    async fn no_containers_left(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.containers().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "containers outlived their jobs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        ci_testkit::docker::remove_labelled(LABEL_INSTALLATION, &self.prefix);
    }
}

const PASSING: &[(&str, &str)] = &[
    ("calc.py", "def add(a, b):\n    return a + b\n"),
    (
        "test_calc.py",
        "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_and_its_container_is_removed() {
    let h = Harness::start(|_| {}).await;
    let id = h.submit(project(PASSING)).await;
    let job = h.ended(id).await;
    assert_eq!(
        (job.status, job.success, job.exit_code),
        (JobStatus::Completed, Some(true), Some(0))
    );
    let out = h.output(id).await;
    // In pytest's colours (the job has PY_COLORS=1).
    assert!(
        out.contains("test_calc.py::test_add \u{1b}[32mPASSED"),
        "{out}"
    );
    assert!(out.contains("1 passed"), "{out}");
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tests_record_the_exit_code() {
    let h = Harness::start(|_| {}).await;
    let id = h
        .submit(project(&[(
            "test_x.py",
            "def test_x():\n    assert 1 == 2\n",
        )]))
        .await;
    let job = h.ended(id).await;
    assert_eq!((job.success, job.exit_code), (Some(false), Some(1)));
    assert!(h.output(id).await.contains("1 failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_escapes_its_folder_fails_with_the_reason() {
    let h = Harness::start(|_| {}).await;
    let id = h.submit(project(&[("../../etc/evil.py", "x = 1\n")])).await;
    let job = h.ended(id).await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    let out = h.output(id).await;
    assert!(out.contains("outside the workspace"), "{out}");
    assert_eq!(h.containers().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_job_with_the_reason() {
    let h = Harness::start(|c| c.image = "ci-no-such-image:missing".into()).await;
    let id = h.submit(project(PASSING)).await;
    let job = h.ended(id).await;
    assert_eq!(job.success, Some(false));
    let out = h.output(id).await;
    assert!(
        out.contains("ci-no-such-image:missing") && out.contains("not found"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_time_limit_is_stopped() {
    let h = Harness::start(|c| c.job_timeout = Duration::from_secs(2)).await;
    let id = h
        .submit(project(&[(
            "test_slow.py",
            "import time\n\ndef test_slow():\n    time.sleep(120)\n",
        )]))
        .await;
    let job = h.ended(id).await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    assert_eq!(
        job.failure_reason.as_deref(),
        Some("Job timed out after 2 seconds")
    );
    assert!(h
        .output(id)
        .await
        .ends_with("Job timed out after 2 seconds\n"));
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_the_container() {
    let h = Harness::start(|_| {}).await;
    let id = h
        .submit(project(&[(
            "test_slow.py",
            "import time\n\ndef test_slow():\n    print('started', flush=True)\n    time.sleep(120)\n",
        )]))
        .await;
    h.wait_for(id, "the job to run", |j| j.status == JobStatus::Running, 30)
        .await;
    h.store.request_cancel(id).await.unwrap();
    let job = h.ended(id).await;
    assert_eq!((job.status, job.success), (JobStatus::Cancelled, None));
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_capacity_wait_queued() {
    let h = Harness::start(|c| c.max_concurrent_jobs = 1).await;
    let slow = project(&[(
        "test_slow.py",
        "import time\n\ndef test_slow():\n    time.sleep(120)\n",
    )]);
    let first = h.submit(slow).await;
    h.wait_for(
        first,
        "the first job to run",
        |j| j.status == JobStatus::Running,
        30,
    )
    .await;
    let second = h.submit(project(PASSING)).await;
    // A negative property needs a window: several resync passes (300 ms each)
    // go by while the first job runs, and none may start the second.
    let window = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < window {
        assert_eq!(
            h.store.get_job(second).await.unwrap().unwrap().status,
            JobStatus::Queued
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.store.request_cancel(first).await.unwrap();
    let job = h.ended(second).await;
    assert_eq!(job.success, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_removed_and_other_installations_left_alone() {
    let h = Harness::start(|_| {}).await;
    let spec = |installation: &str, name: String| ContainerSpec {
        name,
        image: ControllerConfig::default().image,
        cmd: vec!["sleep".into(), "300".into()],
        labels: [
            (LABEL_JOB.to_string(), JobId::random().to_string()),
            (LABEL_INSTALLATION.to_string(), installation.to_string()),
        ]
        .into(),
        user: "1000:1000".into(),
        working_dir: "/workspace".into(),
        network_mode: "none".into(),
        ..ContainerSpec::default()
    };
    let other = format!("{}other", h.prefix);
    let mine = h
        .runtime
        .create(&spec(&h.installation(), format!("{}orphan", h.prefix)))
        .await
        .unwrap();
    // The running controller may sweep the orphan before it is started (the
    // engine then refuses the start); either way it must end up removed.
    if let Err(e) = h.runtime.start(&mine).await {
        eprintln!("the orphan was swept before it started: {e}");
    }
    let theirs = h
        .runtime
        .create(&spec(&other, format!("{other}-keep")))
        .await
        .unwrap();
    h.no_containers_left().await;
    assert!(
        h.runtime.inspect(&mine).await.unwrap().is_none(),
        "the orphan is removed"
    );
    assert!(
        h.runtime.inspect(&theirs).await.unwrap().is_some(),
        "another installation's container stays"
    );
    h.runtime.remove(&theirs).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_controller_adopts_a_running_job_and_resumes_its_output_exactly() {
    let mut h = Harness::start(|_| {}).await;
    let lines = 30_000;
    let test = format!(
        "import sys, time\n\ndef test_print(capsys):\n    with capsys.disabled():\n        sys.stdout.write('\\n')\n        for i in range({lines}):\n            sys.stdout.write('line %06d\\n' % i)\n            if i % 500 == 0:\n                sys.stdout.flush()\n                time.sleep(0.05)\n"
    );
    let id = h.submit(project(&[("test_print.py", test.as_str())])).await;
    h.wait_for(id, "some output to be stored", |j| j.last_seq >= 3, 60)
        .await;
    // The first controller dies in the middle of the output…
    h.shutdown.cancel();
    let stored_before = h.store.get_job(id).await.unwrap().unwrap().last_seq;
    // …and a second one takes over.
    h.shutdown = h.spawn_controller();
    let job = h.ended(id).await;
    assert_eq!(job.success, Some(true), "{}", h.output(id).await);
    assert!(job.last_seq > stored_before);
    let out = h.output(id).await;
    let printed: Vec<&str> = out.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (0..lines).map(|i| format!("line {i:06}")).collect();
    assert_eq!(printed.len(), expected.len(), "no line lost, none repeated");
    assert!(
        printed.iter().zip(&expected).all(|(a, b)| *a == b.as_str()),
        "in order"
    );
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_fails_and_leaves_other_jobs_alone() {
    let h = Harness::start(|c| c.memory_bytes = 128 * 1024 * 1024).await;
    let hog = h
        .submit(project(&[(
            "test_hog.py",
            "def test_hog():\n    blocks = []\n    for _ in range(64):\n        blocks.append(bytearray(32 * 1024 * 1024))\n",
        )]))
        .await;
    let neighbour = h.submit(project(PASSING)).await;
    let job = h.ended(hog).await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    let out = h.output(hog).await;
    assert!(out.contains("memory limit of 128 MiB"), "{out}");
    assert_eq!(h.ended(neighbour).await.success, Some(true));
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_hits_the_pids_limit_and_fails() {
    let h = Harness::start(|c| c.pids_limit = 64).await;
    let bomb = h
        .submit(project(&[(
            "test_bomb.py",
            "import os, time\n\ndef test_bomb():\n    children = 0\n    try:\n        while True:\n            if os.fork() == 0:\n                time.sleep(60)\n                os._exit(0)\n            children += 1\n    except OSError as e:\n        print('fork refused after %d children: %s' % (children, e))\n        raise\n",
        )]))
        .await;
    let neighbour = h.submit(project(PASSING)).await;
    let job = h.ended(bomb).await;
    assert_eq!(job.success, Some(false));
    let out = h.output(bomb).await;
    let refused = out
        .lines()
        .find_map(|l| l.strip_prefix("fork refused after "))
        .unwrap_or_else(|| panic!("the fork bomb was not stopped: {out}"));
    let children: u32 = refused.split(' ').next().unwrap().parse().unwrap();
    assert!(children < 64, "{children} children despite a limit of 64");
    assert_eq!(h.ended(neighbour).await.success, Some(true));
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_at_the_limit_and_the_job_still_ends() {
    let h = Harness::start(|c| c.pump.max_log_bytes = 200_000).await;
    let id = h
        .submit(project(&[(
            "test_chatty.py",
            "import sys\n\ndef test_chatty(capsys):\n    with capsys.disabled():\n        for i in range(200000):\n            sys.stdout.write('chatter %d\\n' % i)\n",
        )]))
        .await;
    let job = h.ended(id).await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    let out = h.output(id).await;
    assert!(out.len() <= 200_000 + 200, "{} bytes kept", out.len());
    assert!(out.contains("chatter 0\n"));
    assert!(
        out.contains("[ci] Output truncated: the job printed more than 200000 bytes"),
        "{}",
        &out[out.len().saturating_sub(500)..]
    );
    assert!(!out.contains("chatter 199999"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_shared_fairly_between_users() {
    let h = Harness::start(|c| c.max_concurrent_jobs = 1).await;
    let quick = project(PASSING);
    // One user queues many jobs, then another user queues one.
    let greedy: Vec<JobId> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(h.submit(quick.clone()).await);
        }
        ids
    };
    let other_user = h
        .store
        .create_user("O", &format!("other-{}@example.com", h.prefix))
        .await
        .unwrap()
        .id;
    let modest = support::queue_job(&h.store, other_user, &quick).await;
    let mut ended = Vec::new();
    for id in greedy.iter().chain([&modest]) {
        ended.push((h.ended(*id).await.started_at.unwrap(), *id));
    }
    ended.sort();
    let position = ended.iter().position(|(_, id)| *id == modest).unwrap();
    assert!(
        position <= 1,
        "the other user's job started at position {position} of 5"
    );
}

/// Writes to the root file system fail; the workspace, /tmp and the home
/// folder take writes. Printed as `name=ok|ro` lines for the assertions.
const WRITE_PROBE: &str = r#"import os

PLACES = {
    "root": "/probe",
    "usr": "/usr/lib/probe",
    "venv": "/opt/venv/probe",
    "workspace": "/workspace/probe",
    "tmp": "/tmp/probe",
    "home": os.path.expanduser("~/probe"),
}


def test_writes():
    print()
    for name, path in PLACES.items():
        try:
            with open(path, "w") as f:
                f.write("x")
            print(f"{name}=ok")
        except OSError as e:
            print(f"{name}=ro {e.strerror}")
"#;

impl Harness {
    /// Runs [`WRITE_PROBE`] with `extra` files beside it; its output.
    async fn probe_writes(&self, extra: &[(&str, &str)]) -> String {
        let mut files = vec![
            ("test_probe.py", WRITE_PROBE),
            ("pytest.ini", "[pytest]\naddopts = -s\n"),
        ];
        files.extend_from_slice(extra);
        let id = self.submit(project(&files)).await;
        let job = self.ended(id).await;
        let out = self.output(id).await;
        assert_eq!(job.success, Some(true), "{out}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_requirements_runs_on_a_read_only_root() {
    let h = Harness::start(|_| {}).await;
    let out = h.probe_writes(&[]).await;
    for line in [
        "root=ro Read-only file system",
        "usr=ro Read-only file system",
        "venv=ro Read-only file system",
        "workspace=ok",
        "tmp=ok",
        "home=ok",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
    }
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_requirements_install_nothing_in_it_runs_read_only_unless_configured_off() {
    // Requirements are installed in the job's environment, never by the job
    // (only its own project is, which needs the network; see
    // tests/tests/environments.rs): with nothing to install, a read-only root
    // with the user's pip cache.
    let h = Harness::start(|_| {}).await;
    let out = h
        .probe_writes(&[("requirements.txt", "# nothing to install\n")])
        .await;
    for line in ["venv=ro Read-only file system", "workspace=ok", "home=ok"] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
    }

    // An installation that turns the read-only root off.
    let h = Harness::start(|c| c.read_only_rootfs = false).await;
    let out = h.probe_writes(&[]).await;
    assert!(out.lines().any(|l| l == "venv=ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_project_arrives_whole() {
    // About 30 MB through the container's standard input, far beyond any
    // pipe buffer; the test regenerates the file and compares every byte.
    const LINES: u64 = 1_000_000;
    let data: String = (0..LINES)
        .map(|i| format!("line {i} {}\n", (i * 7919) % 1_000_003))
        .collect();
    let test = format!(
        "import pathlib\n\n\ndef test_data_arrived_whole():\n    \
         expected = ''.join(f'line {{i}} {{(i * 7919) % 1000003}}\\n' for i in range({LINES}))\n    \
         assert pathlib.Path('data.txt').read_text() == expected\n"
    );
    let h = Harness::start(|_| {}).await;
    let id = h
        .submit(project(&[("data.txt", &data), ("test_data.py", &test)]))
        .await;
    let job = h.ended(id).await;
    let out = h.output(id).await;
    assert_eq!(job.success, Some(true), "{out}");
    assert!(out.contains("1 passed"), "{out}");
}

/// Sets the uncompressed size the central directory declares for the entry
/// at `index`, as a lying archive would.
fn declare_size(mut zip: Vec<u8>, index: usize, size: u32) -> Vec<u8> {
    let end = zip
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])
        .expect("an end record");
    let mut at = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap()) as usize;
    for _ in 0..index {
        let field = |o: usize| u16::from_le_bytes([zip[at + o], zip[at + o + 1]]) as usize;
        at += 46 + field(28) + field(30) + field(32);
    }
    zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
    zip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_larger_than_it_declares_is_cut_off_mid_stream_and_fails_the_job() {
    let h = Harness::start(|_| {}).await;
    // 4 MiB of zeros declared as 64 KiB: the directory passes every check,
    // the streamed tar is already in the container when the lie shows.
    let zeros = "\0".repeat(4 * 1024 * 1024);
    let zip = project(&[
        ("test_ok.py", "def test_ok():\n    pass\n"),
        ("zeros.bin", &zeros),
    ]);
    let id = h.submit(declare_size(zip, 1, 64 * 1024)).await;
    let job = h.ended(id).await;
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    let out = h.output(id).await;
    assert!(
        out.contains("\"zeros.bin\" holds more data than its header declares"),
        "{out}"
    );
    assert!(!out.contains("passed"), "the job must not have run: {out}");
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_budget_goes_on_after_an_adoption() {
    let mut h = Harness::start(|c| c.pump.max_log_bytes = 200_000).await;
    // 400 kB over about 4 s, so the controller can die in the middle.
    let id = h
        .submit(project(&[(
            "test_chatty.py",
            "import sys, time\n\ndef test_chatty(capsys):\n    with capsys.disabled():\n        for i in range(4000):\n            sys.stdout.write('chatter %06d %s\\n' % (i, 'x' * 85))\n            if i % 100 == 0:\n                sys.stdout.flush()\n                time.sleep(0.1)\n",
        )]))
        .await;
    h.wait_for(id, "some output to be stored", |j| j.last_seq >= 3, 60)
        .await;
    h.shutdown.cancel();
    h.shutdown = h.spawn_controller();
    let job = h.ended(id).await;
    assert_eq!(job.success, Some(true));
    let out = h.output(id).await;
    assert_eq!(
        out.matches("[ci] Output truncated").count(),
        1,
        "one cut, however many controllers: {}",
        &out[out.len().saturating_sub(500)..]
    );
    assert!(out.len() <= 200_000 + 200, "{} bytes kept", out.len());
    assert!(out.contains("chatter 000000"));
}

/// One test of each outcome, as `fixtures/test-outcomes` has them.
const OUTCOMES: &str = include_str!("../../fixtures/test-outcomes/tests/test_outcomes.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_report_is_read_after_the_job_exited_on_either_kind_of_root() {
    use ci_common::test_results::{JobReport, TestOutcome};
    let h = Harness::start(|_| {}).await;
    // Without requirements the job runs on a read-only root; with one (already
    // installed, so no network) on a writable one.
    let read_only = h
        .submit(project(&[("tests/test_outcomes.py", OUTCOMES)]))
        .await;
    let writable = h
        .submit(project(&[
            ("tests/test_outcomes.py", OUTCOMES),
            ("requirements.txt", "# nothing to install\n"),
        ]))
        .await;
    for id in [read_only, writable] {
        let job = h.ended(id).await;
        assert_eq!(job.exit_code, Some(1), "{}", h.output(id).await);
        let Some(JobReport::Cases(cases)) = h.store.job_report(id, &[]).await.unwrap() else {
            panic!("no report: {:?}", h.store.job_report(id, &[]).await);
        };
        let outcome = |name: &str| {
            cases
                .iter()
                .find(|c| c.id == format!("tests/test_outcomes.py::{name}"))
                .map(|c| c.outcome)
        };
        assert_eq!(outcome("test_passes"), Some(TestOutcome::Passed));
        assert_eq!(outcome("test_fails"), Some(TestOutcome::Failed));
        assert_eq!(outcome("test_errors"), Some(TestOutcome::Error));
        assert_eq!(outcome("test_skipped"), Some(TestOutcome::Skipped));
        assert_eq!(outcome("test_xfails"), Some(TestOutcome::Xfailed));
        assert_eq!(outcome("test_xpasses_strictly"), Some(TestOutcome::Xpassed));
        assert_eq!(
            outcome("TestGroup::test_in_class[2]"),
            Some(TestOutcome::Passed)
        );
    }
    h.no_containers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_report_written_by_the_job_never_changes_its_result() {
    use ci_common::test_results::JobReport;
    let h = Harness::start(|_| {}).await;
    // After pytest wrote its report, the job replaces it (pytest_unconfigure
    // runs after the report is written).
    let hostile = |replace: &str| {
        let conftest = format!(
            "import os\n\ndef pytest_unconfigure(config):\n    path = '/ci-report/junit.xml'\n    os.remove(path)\n{replace}"
        );
        project(&[
            ("conftest.py", &conftest),
            ("test_ok.py", "def test_ok():\n    pass\n"),
        ])
    };
    let laughs = h
        .submit(hostile(
            "    open(path, 'w').write('<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><testsuites><testsuite><testcase classname=\"t\" name=\"&b;\"/></testsuite></testsuites>')\n",
        ))
        .await;
    let link = h
        .submit(hostile("    os.symlink('/etc/passwd', path)\n"))
        .await;
    let oversized = h
        .submit(hostile(
            "    with open(path, 'w') as f:\n        f.write('<testsuites>' + ' ' * (31 * 1024 * 1024))\n",
        ))
        .await;
    let truncated = h
        .submit(hostile(
            "    open(path, 'w').write('<testsuites><testsuite><testcase name=\"a\"')\n",
        ))
        .await;
    for (id, why) in [
        (laughs, "DTD"),
        (link, "not a regular file"),
        (oversized, "over the limit of 31457280 bytes"),
        (truncated, "truncated"),
    ] {
        let job = h.ended(id).await;
        assert_eq!(
            (job.success, job.exit_code),
            (Some(true), Some(0)),
            "{}",
            h.output(id).await
        );
        match h.store.job_report(id, &[]).await.unwrap() {
            Some(JobReport::Missing { reason }) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
