//! The everyday `ci` of issue 15 on a real installation: how ended and
//! cancelled jobs are reported, refused keys on big uploads, the summary's
//! fields, logs and reruns.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_common::JobStatus;
use ci_tests::{
    copy_fixture, run, slow_project, CiOutput, Project, RunningCi, TestSystem, COMMAND_DEADLINE,
    JOB_DEADLINE,
};

/// A project of `megabytes` MB of incompressible data next to a passing test.
fn big_project(megabytes: usize) -> Project {
    let project = copy_fixture("no-requirements");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..megabytes * 1024 * 1024)
        .map(|_| {
            // xorshift: cheap noise that deflate cannot shrink.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(project.path().join("blob.bin"), data).unwrap();
    project
}

fn assert_refused(out: &CiOutput, reason: &str) {
    out.assert_code(1);
    assert!(out.stderr.contains(reason), "{reason:?} expected\n{out}");
    assert!(
        out.stderr
            .contains("Authentication required. Please provide an API key using one of:"),
        "{out}"
    );
    assert!(!out.stderr.contains("Broken pipe"), "{out}");
}

/// Bug 1: the server's refusal arrived while `ci` was still uploading and was
/// lost to a broken pipe in a third of the runs. A refused key is now told
/// every time, before anything is packed.
#[test]
fn a_refused_key_is_reported_for_a_big_upload_every_time() {
    let sys = TestSystem::start();
    let project = big_project(60);
    let bogus = format!("ci_{}", "x".repeat(40));
    for _ in 0..5 {
        for async_mode in [false, true] {
            let mut args = vec!["submit", "test"];
            if async_mode {
                args.push("--async");
            }
            let no_key = run(sys.ci_without_key().args(&args).current_dir(project.path()));
            assert_refused(&no_key, "Not authenticated");
            let wrong_key = run(sys.ci_as(&bogus).args(&args).current_dir(project.path()));
            assert_refused(&wrong_key, "Invalid or revoked API key");
        }
    }
    assert!(sys.unfinished_jobs().unwrap().is_empty());
}

/// Bug 2: a cancelled job is not a failed one, whether `ci wait` joins it
/// after the fact or is following it when it is cancelled.
#[test]
fn cancelled_jobs_are_reported_as_cancelled() {
    let sys = TestSystem::start();
    let id = sys.submit_async(&slow_project(60));
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", &id.to_string()]));
    wait.wait_for_stdout("a tick", JOB_DEADLINE, |out| out.contains("tick "));
    sys.cancel(id).unwrap();
    let out = wait.finish(COMMAND_DEADLINE);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("Job {id} was cancelled.")),
        "{out}"
    );
    assert_eq!(sys.wait_for_job_end(id).status, JobStatus::Cancelled);

    // Joined afterwards: how it ended, and how to see its output.
    let out = run(sys.ci().args(["wait", &id.to_string()]));
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("Job {id} was cancelled.")),
        "{out}"
    );
    assert!(!out.stdout.contains("Job already completed."), "{out}");
    assert!(out.stderr.contains("--all"), "{out}");
    // Replayed: its output, then the same word.
    let out = run(sys.ci().args(["wait", "--all", &id.to_string()]));
    out.assert_code(1);
    assert!(out.stdout.contains("tick 001 of 060"), "{out}");
    assert!(
        out.stderr.contains(&format!("Job {id} was cancelled.")),
        "{out}"
    );
    sys.assert_settled();
}

/// `ci wait` on a job that completed says how it ended and that `--all`
/// replays it.
#[test]
fn waiting_on_an_ended_job_says_how_it_ended() {
    let sys = TestSystem::start();
    let passed = sys.submit_sync(&copy_fixture("no-requirements"));
    passed.assert_code(0);
    let failed = sys.submit_sync(&copy_fixture("failing"));
    failed.assert_code(1);

    let id = passed.job_id().unwrap();
    let out = run(sys.ci().args(["wait", &id.to_string()]));
    out.assert_code(0);
    assert_eq!(out.stdout, "Job already completed.\n", "{out}");
    assert!(out.stderr.contains(&format!("Job {id} passed.")), "{out}");
    assert!(out.stderr.contains(&format!("ci wait --all {id}")), "{out}");

    let id = failed.job_id().unwrap();
    let out = run(sys.ci().args(["wait", &id.to_string()]));
    out.assert_code(1);
    assert!(
        out.stderr
            .contains(&format!("Job {id} failed with exit code 1.")),
        "{out}"
    );
    sys.assert_settled();
}
