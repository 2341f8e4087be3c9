//! Ctrl-C: a sync submit cancels its job; `ci wait` only stops watching.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::time::Duration;

use ci_common::JobStatus;
use ci_testkit::{
    id_after, slow_project, wait_for, RunningCi, TestSystem, COMMAND_DEADLINE, JOB_DEADLINE,
};

#[test]
fn ctrl_c_during_a_sync_submit_cancels_the_job_and_removes_its_container() {
    let sys = TestSystem::start();
    let project = slow_project(60);
    let mut ci = RunningCi::spawn(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
    );
    ci.wait_for_stdout("the job's first tick", JOB_DEADLINE, |out| {
        out.contains("tick 001 of 060")
    });
    let id = id_after(&ci.stderr(), "Job ID: ").expect("a `Job ID:` line before any output");
    let containers = sys.containers().unwrap();
    assert!(
        containers
            .iter()
            .any(|c| c.job_id == Some(id) && c.state == "running"),
        "the job runs in a container: {containers:?}"
    );

    ci.interrupt();
    let out = ci.finish(COMMAND_DEADLINE);

    out.assert_code(130);
    assert!(out.stderr.contains("cancelled"), "{out}");
    assert!(!out.stderr.contains("Traceback"), "{out}");
    let job = sys.wait_for_job(id, "cancelled", Duration::from_secs(30), |j| {
        j.status.is_terminal()
    });
    assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
    sys.wait_for_no_containers();
    let output = sys.stored_output(id).unwrap();
    assert!(
        !output.contains("SLOW-END"),
        "the job ran to its end:\n{output}"
    );
    sys.assert_settled();
}

#[test]
fn ctrl_c_during_wait_stops_waiting_and_leaves_the_job_running() {
    let sys = TestSystem::start();
    let id = sys.submit_async(&slow_project(60));
    let mut ci = RunningCi::spawn(sys.ci().args(["wait", &id.to_string()]));
    ci.wait_for_stdout("a tick", JOB_DEADLINE, |out| out.contains("tick "));

    ci.interrupt();
    let out = ci.finish(COMMAND_DEADLINE);

    out.assert_code(130);
    assert!(
        out.stderr
            .contains(&format!("Stopped waiting for job {id}.")),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("The job continues to run on the server. Use 'ci wait' to reconnect."),
        "{out}"
    );
    // The job goes on: it is still running and still printing.
    let before = sys.stored_job(id).unwrap().unwrap();
    assert_eq!(before.status, JobStatus::Running, "{before:?}");
    assert!(!before.cancel_requested, "{before:?}");
    wait_for("the job to print more", Duration::from_secs(30), || {
        let now = sys.stored_job(id).unwrap().unwrap();
        assert_eq!(now.status, JobStatus::Running, "{now:?}");
        now.last_seq > before.last_seq
    });

    // Done with it: cancel, and everything is cleaned up.
    sys.cancel(id).unwrap();
    assert_eq!(sys.wait_for_job_end(id).status, JobStatus::Cancelled);
    sys.assert_settled();
}
