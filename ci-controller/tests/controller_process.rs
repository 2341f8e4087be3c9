//! The `ci-controller` binary as a process: one leader at a time, a standby
//! that takes over when the leader is killed, and jobs that survive their
//! controller's death with their output whole and their real exit code.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use ci_common::JobStatus;
use ci_persistence::Store;
use ci_testkit::status::{LEADER, STANDBY};
use support::{Controller, Setup};

/// Who holds the controller lease, as the database says.
async fn lease_holder(store: &Store) -> Option<String> {
    store
        .lease_holder(ci_controller::leader::LEASE_NAME)
        .await
        .unwrap()
}

#[test]
fn the_kit_knows_the_installation_label() {
    assert_eq!(
        ci_testkit::LABEL_INSTALLATION,
        ci_controller::runtime::LABEL_INSTALLATION
    );
    assert_eq!(ci_testkit::LABEL_JOB, ci_controller::runtime::LABEL_JOB);
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
    leader.wait_for_status(LEADER, Duration::from_secs(20));
    let holder = lease_holder(&s.store).await;
    assert!(holder.is_some(), "the leader holds the lease");
    let mut standby = Controller::start(&s.db, &s.prefix);
    // Up (its listener answers once the database and Docker are open), not
    // leading, and the lease still the first one's.
    standby.wait_for_status(STANDBY, Duration::from_secs(20));
    assert_eq!(lease_holder(&s.store).await, holder, "{}", standby.log());

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
    standby.wait_for_status(LEADER, Duration::from_secs(15));
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
    first.wait_for_status(LEADER, Duration::from_secs(20));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_metrics_address_turns_the_status_listener_off() {
    use std::io::Read;
    use std::process::Stdio;
    let s = Setup::new().await;
    let mut cmd =
        ci_testkit::process::command(std::path::Path::new(env!("CARGO_BIN_EXE_ci-controller")));
    let mut child = cmd
        .env("CI_DB_PATH", &s.db)
        .env("CI_CONTAINER_PREFIX", &s.prefix)
        .env("CI_JOB_NETWORK", "none")
        .env("CI_METRICS_ADDR", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It leads (the lease row names it) without a listener to say so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&s.store).await.is_none() {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the controller exited"
        );
        assert!(Instant::now() < deadline, "the controller never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(stdout, "", "no `Metrics on` announcement");
}
