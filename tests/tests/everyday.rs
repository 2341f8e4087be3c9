//! The everyday `ci` of issue 15 on a real installation: how ended and
//! cancelled jobs are reported, refused keys on big uploads, the summary's
//! fields, logs and reruns.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_common::JobStatus;
use ci_testkit::{
    copy_fixture, run, slow_project, CiOutput, Project, RunningCi, TestSystem, COMMAND_DEADLINE,
    JOB_DEADLINE,
};

/// A project of `megabytes` MB of incompressible data next to a passing test.
fn big_project(megabytes: usize) -> Project {
    let project = copy_fixture("no-requirements");
    let data = ci_testkit::incompressible_bytes(megabytes * 1024 * 1024, 1);
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
    assert!(
        out.stderr
            .contains(&format!("Job {id} passed (exit code 0) in ")),
        "{out}"
    );
    assert!(out.stderr.contains(&format!("ci wait --all {id}")), "{out}");

    let id = failed.job_id().unwrap();
    let out = run(sys.ci().args(["wait", &id.to_string()]));
    out.assert_code(1);
    assert!(
        out.stderr
            .contains(&format!("Job {id} failed with exit code 1 in ")),
        "{out}"
    );
    sys.assert_settled();
}

/// Every followed job ends with one closing line on stderr; `ci show`,
/// `ci logs`, `ci rerun` and id prefixes work on what it printed.
#[test]
fn a_finished_job_can_be_shown_read_and_rerun_by_a_prefix_of_its_id() {
    let sys = TestSystem::start();
    let failed = sys.submit_sync(&copy_fixture("failing"));
    failed.assert_code(1);
    let id = failed.job_id().unwrap();
    let closing: Vec<&str> = failed
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("Job {id} ")))
        .collect();
    assert_eq!(closing.len(), 1, "{failed}");
    assert!(
        closing[0].starts_with(&format!("Job {id} failed with exit code 1 in ")),
        "{failed}"
    );
    let prefix = &id.to_string()[..8];

    let out = run(sys.ci().args(["show", prefix]));
    out.assert_code(0);
    for line in [
        format!("Job ID:    {id}"),
        "Status:    completed".to_string(),
        "Result:    failed".to_string(),
        "Exit code: 1".to_string(),
    ] {
        assert!(out.stdout.contains(&line), "{line:?}\n{out}");
    }
    let out = run(sys.ci().args(["show", "--json", prefix]));
    out.assert_code(0);
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["job_id"], id.to_string());
    assert_eq!(shown["exit_code"], 1);
    assert!(shown["duration_seconds"].as_f64().is_some(), "{shown}");

    // The stored output, whole and its tail (as `ci` prints it to a pipe).
    let stored = sys.stored_output_piped(id).unwrap();
    let out = run(sys.ci().args(["logs", prefix]));
    out.assert_code(0);
    assert_eq!(out.stdout, stored);
    let out = run(sys.ci().args(["logs", "--tail", "3", prefix]));
    let last3: Vec<&str> = stored.lines().rev().take(3).collect::<Vec<_>>();
    let last3: Vec<&str> = last3.into_iter().rev().collect();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), last3, "{out}");

    // The same code again, followed: the same result.
    let out = run(sys.ci().args(["rerun", "--wait", prefix]));
    out.assert_code(1);
    let again = out.job_id().expect("the rerun names its job");
    assert_ne!(again, id);
    assert!(out.stdout.contains("failed"), "{out}");
    let jobs = [
        sys.stored_job(id).unwrap().unwrap(),
        sys.stored_job(again).unwrap().unwrap(),
    ];
    assert_eq!(jobs[0].archive_digest, jobs[1].archive_digest);

    // Too short a prefix, or one nobody's job has.
    let out = run(sys.ci().args(["show", &id.to_string()[..4]]));
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{out}");
    let out = run(sys.ci().args(["wait", "ffffffffff"]));
    out.assert_code(1);
    assert!(out.stderr.contains("not found"), "{out}");
    sys.assert_settled();
}

/// Scripts get `{"job_id": …}` or the bare id; `ci list` shows local times
/// with their offset and a submitted time for queued jobs; `--json` has
/// every key.
#[test]
fn scripts_get_ids_and_lists_get_every_field() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    let out = run(sys
        .ci()
        .args(["submit", "test", "--async", "--json"])
        .current_dir(project.path()));
    out.assert_code(0);
    let body: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let first: ci_common::JobId = body["job_id"].as_str().unwrap().parse().unwrap();
    let out = run(sys
        .ci()
        .args(["submit", "test", "--async", "-q"])
        .current_dir(project.path()));
    out.assert_code(0);
    let second: ci_common::JobId = out.stdout.trim().parse().unwrap();
    sys.wait_for_job_end(first);
    sys.wait_for_job_end(second);

    let out = run(sys.ci().arg("list").env("TZ", "Asia/Kolkata"));
    out.assert_code(0);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&first.to_string()))
        .unwrap();
    // Start, end and submitted: each with India's offset.
    assert_eq!(row.matches("+05:30").count(), 3, "{out}");

    let out = run(sys.ci().args(["list", "--json"]));
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    for job in &jobs {
        for key in [
            "job_id",
            "status",
            "success",
            "start_time",
            "end_time",
            "submitted_at",
            "duration_seconds",
            "python",
            "project",
            "engine",
            "exit_code",
            "reason",
            "tests",
        ] {
            assert!(job.get(key).is_some(), "{key} in {job}");
        }
        assert!(
            job["submitted_at"].as_str().unwrap().ends_with('Z'),
            "{job}"
        );
    }
    sys.assert_settled();
}

/// From a subfolder, the project root is found and named; an empty folder
/// is refused before anything is sent.
#[test]
fn the_project_root_is_found_from_a_subfolder() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    project.write("requirements.txt", "");
    project.write("docs/notes.md", "notes\n");
    let out = run(sys
        .ci()
        .args(["submit", "test"])
        .current_dir(project.path().join("docs")));
    out.assert_code(0);
    assert!(
        out.stderr.contains(&format!(
            "Uploading the project at {}",
            project.path().display()
        )),
        "{out}"
    );

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join(".hidden"), "x").unwrap();
    let out = run(sys.ci().args(["submit", "test"]).current_dir(empty.path()));
    out.assert_code(1);
    assert!(out.stderr.contains("nothing to upload"), "{out}");
    sys.assert_settled();
}

/// A job waiting for a free runner is not silent on a terminal: a status
/// line says it is queued and its place in the whole queue (another user's
/// job submitted before it counts), and goes when the job ends.
#[test]
fn a_queued_job_says_so_on_a_terminal() {
    let mut sys = TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "1")
        .start();
    let running = sys.submit_async(&slow_project(60));
    sys.wait_for_job(running, "running", JOB_DEADLINE, |j| {
        j.status == JobStatus::Running
    });
    let other = sys.create_user("Other");
    let project = copy_fixture("no-requirements");
    let theirs = run(sys
        .ci_as(&other.api_key)
        .args(["submit", "test", "--async"])
        .current_dir(project.path()));
    theirs.assert_code(0);
    let theirs = theirs.submitted_job_id().unwrap();
    let queued = sys.submit_async(&project);
    let mut cmd = sys.ci();
    cmd.args(["wait", &queued.to_string()]);
    let mut wait = RunningCi::spawn(&mut ci_testkit::cli::on_terminal(&cmd));
    wait.wait_for_stdout("the queued line", JOB_DEADLINE, |out| {
        out.contains(&format!("Job {queued} is queued")) && out.contains("position 2 in the queue")
    });
    run(sys
        .ci_as(&other.api_key)
        .args(["cancel", &theirs.to_string()]))
    .assert_code(0);
    sys.cancel(queued).unwrap();
    let out = wait.finish(COMMAND_DEADLINE);
    assert!(
        out.stdout.contains(&format!("Job {queued} was cancelled.")),
        "{out}"
    );
    // Piped, the same wait shows no status line.
    let piped = run(sys.ci().args(["wait", "--all", &queued.to_string()]));
    assert!(!piped.stderr.contains("is queued"), "{piped}");
    sys.cancel(running).unwrap();
    sys.wait_for_job_end(running);
    sys.assert_settled();
}

/// Ctrl-C on a sync submit whose job is still queued cancels it, as it does
/// a running one.
#[test]
fn ctrl_c_on_a_queued_submit_cancels_the_job() {
    let sys = TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "1")
        .start();
    let running = sys.submit_async(&slow_project(60));
    sys.wait_for_job(running, "running", JOB_DEADLINE, |j| {
        j.status == JobStatus::Running
    });
    let project = copy_fixture("no-requirements");
    let mut submit = RunningCi::spawn(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
    );
    submit.wait_for_stderr("the job id", JOB_DEADLINE, |err| err.contains("Job ID: "));
    let queued = ci_testkit::id_after(&submit.stderr(), "Job ID: ").unwrap();
    assert_eq!(sys.job(queued).unwrap().status, JobStatus::Queued);
    submit.interrupt();
    let out = submit.finish(COMMAND_DEADLINE);
    out.assert_code(130);
    assert!(out.stderr.contains("cancelled"), "{out}");
    assert_eq!(sys.wait_for_job_end(queued).status, JobStatus::Cancelled);
    sys.cancel(running).unwrap();
    sys.wait_for_job_end(running);
    sys.assert_settled();
}
