//! `ci submit test` (sync and `--async`) and `ci wait`, against the real
//! server, controller and Docker engine, with the fixture projects.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_common::JobStatus;
use ci_testkit::{copy_fixture, run, run_within, slow_project, TestSystem, JOB_DEADLINE};

#[test]
fn a_passing_project_streams_pytest_output_and_exits_0() {
    let sys = TestSystem::start();
    let project = copy_fixture("passing");

    let out = sys.submit_sync(&project);

    out.assert_code(0);
    let id = out
        .job_id()
        .unwrap_or_else(|| panic!("no `Job ID: <uuid>` on stderr\n{out}"));
    assert!(
        out.stderr.contains(&format!(
            "You can reconnect from another terminal with: ci wait {id}"
        )),
        "no reconnect hint on stderr\n{out}"
    );
    // stdout is the job's output: pytest's, and nothing of the client's.
    assert!(out.stdout.contains("test session starts"), "{out}");
    for test in [
        "test_add",
        "test_subtract",
        "test_multiply",
        "test_divide",
        "test_divide_by_zero",
        "test_shout",
        "test_words",
    ] {
        assert!(
            out.stdout.contains(&format!("::{test} PASSED")),
            "{test} did not pass\n{out}"
        );
    }
    assert!(out.stdout.contains("7 passed"), "{out}");
    assert!(
        !out.stdout.contains("Job ID"),
        "the job id belongs on stderr\n{out}"
    );

    let job = sys.job(id).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    assert!(
        job.start_time.is_some() && job.end_time.is_some(),
        "{job:?}"
    );
    sys.assert_settled();
}

#[test]
fn a_failing_test_makes_the_submit_exit_1() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&copy_fixture("failing"));

    out.assert_code(1);
    assert!(out.stdout.contains("1 failed, 2 passed"), "{out}");
    assert!(
        out.stdout
            .contains("intentional failure in the failing fixture"),
        "pytest's failure report is part of the output\n{out}"
    );
    let job = sys.job(out.job_id().unwrap()).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    sys.assert_settled();
}

#[test]
fn code_that_does_not_even_parse_makes_the_submit_exit_1() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&copy_fixture("broken"));

    out.assert_code(1);
    assert!(out.stdout.contains("SyntaxError"), "{out}");
    assert!(out.stdout.contains("error during collection"), "{out}");
    let job = sys.job(out.job_id().unwrap()).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    sys.assert_settled();
}

#[test]
fn a_project_without_requirements_runs_its_tests() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&copy_fixture("no-requirements"));

    out.assert_code(0);
    assert!(out.stdout.contains("2 passed"), "{out}");
    let job = sys.job(out.job_id().unwrap()).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    sys.assert_settled();
}

#[test]
fn a_job_that_cannot_run_makes_the_submit_exit_1_with_the_reason() {
    let image = "ci-tests-no-such-image:missing";
    let sys = TestSystem::options()
        .controller_env("CI_PYTHON_BASE_IMAGE", image)
        .start();
    let out = sys.submit_sync(&copy_fixture("passing"));

    out.assert_code(1);
    assert!(
        out.stdout.contains(image),
        "the reason, naming the image, is the job's output\n{out}"
    );
    let job = sys.job(out.job_id().unwrap()).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    sys.assert_settled();
}

/// What the uploaded project must not contain, checked from inside the job:
/// dot-files, dot-folders, `__pycache__` and what `.gitignore` ignores.
const UPLOAD_CHECK: &str = r#"import os

LEFT_OUT = [
    ".gitignore",
    ".env",
    ".secrets/token.txt",
    ".git/config",
    "__pycache__/stale.cpython-311.pyc",
    "tests/__pycache__/stale.cpython-311.pyc",
    "debug.log",
    "build/artifact.txt",
    "tests/test_ignored_by_git.py",
]
KEPT = ["calculator.py", "tests/test_calculator.py", "data/kept.txt"]


def test_left_out_files_were_not_uploaded():
    present = [path for path in LEFT_OUT if os.path.exists(path)]
    assert present == [], f"uploaded although they must be left out: {present}"


def test_project_files_were_uploaded():
    missing = [path for path in KEPT if not os.path.exists(path)]
    assert missing == [], f"missing from the upload: {missing}"
"#;

#[test]
fn dot_files_pycache_and_gitignored_files_are_not_uploaded() {
    let sys = TestSystem::start();
    let project = copy_fixture("passing");
    project.write(
        ".gitignore",
        "*.log\nbuild/\ntests/test_ignored_by_git.py\n",
    );
    project.write(".env", "SECRET=1\n");
    project.write(".secrets/token.txt", "secret\n");
    project.write(".git/config", "[core]\n");
    project.write("__pycache__/stale.cpython-311.pyc", "not bytecode\n");
    project.write("tests/__pycache__/stale.cpython-311.pyc", "not bytecode\n");
    project.write("debug.log", "noise\n");
    project.write("build/artifact.txt", "artefact\n");
    // Would fail the job, were it uploaded.
    project.write(
        "tests/test_ignored_by_git.py",
        "def test_gitignored_file_was_uploaded():\n    assert False, 'a .gitignored file was uploaded'\n",
    );
    project.write("data/kept.txt", "kept\n");
    project.write("tests/test_upload.py", UPLOAD_CHECK);

    let out = sys.submit_sync(&project);

    out.assert_code(0);
    assert!(
        out.stdout
            .contains("::test_left_out_files_were_not_uploaded PASSED"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("::test_project_files_were_uploaded PASSED"),
        "{out}"
    );
    assert!(!out.stdout.contains("test_ignored_by_git"), "{out}");
    assert!(out.stdout.contains("9 passed"), "{out}");
    sys.assert_settled();
}

#[test]
fn async_submit_prints_the_job_id_and_returns_at_once() {
    let sys = TestSystem::start();
    // A job of a minute: if `--async` waited for it, we would notice.
    let project = slow_project(60);

    let out = run(sys
        .ci()
        .args(["submit", "test", "--async"])
        .current_dir(project.path()));

    out.assert_code(0);
    let id = out
        .submitted_job_id()
        .unwrap_or_else(|| panic!("no `Job submitted: <uuid>` on stdout\n{out}"));
    assert_eq!(out.stdout.trim(), format!("Job submitted: {id}"), "{out}");
    let job = sys.job(id).unwrap();
    assert!(
        matches!(job.status, JobStatus::Queued | JobStatus::Running),
        "the job should still be on its way: {job:?}"
    );

    sys.cancel(id).unwrap();
    let job = sys.wait_for_job_end(id);
    assert_eq!(job.status, JobStatus::Cancelled);
    sys.assert_settled();
}

#[test]
fn wait_exits_with_the_result_of_an_async_job() {
    let sys = TestSystem::start();
    let passing = sys.submit_async(&copy_fixture("passing"));
    let failing = sys.submit_async(&copy_fixture("failing"));

    let out = run_within(sys.ci().args(["wait", &passing.to_string()]), JOB_DEADLINE);
    out.assert_code(0);
    let out = run_within(sys.ci().args(["wait", &failing.to_string()]), JOB_DEADLINE);
    out.assert_code(1);

    // `ci wait` returned because the jobs ended, not before.
    let job = sys.job(passing).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(true))
    );
    let job = sys.job(failing).unwrap();
    assert_eq!(
        (job.status, job.success),
        (JobStatus::Completed, Some(false))
    );
    sys.assert_settled();
}

#[test]
fn wait_all_replays_the_whole_output_of_an_ended_job() {
    let sys = TestSystem::start();
    let live = sys.submit_sync(&copy_fixture("failing"));
    live.assert_code(1);
    let id = live.job_id().unwrap();

    let replay = run(sys.ci().args(["wait", &id.to_string(), "--all"]));

    replay.assert_code(1);
    assert_eq!(
        replay.stdout, live.stdout,
        "`ci wait --all` must print exactly what the live submit printed"
    );
    assert_eq!(replay.stdout, sys.stored_output_piped(id).unwrap());
    sys.assert_settled();
}

#[test]
fn wait_for_an_ended_job_says_it_already_completed() {
    let sys = TestSystem::start();
    let passed = sys.submit_sync(&copy_fixture("no-requirements"));
    passed.assert_code(0);
    let failed = sys.submit_sync(&copy_fixture("failing"));
    failed.assert_code(1);

    for (out, expected_code) in [(&passed, 0), (&failed, 1)] {
        let id = out.job_id().unwrap();
        let wait = run(sys.ci().args(["wait", &id.to_string()]));
        wait.assert_code(expected_code);
        assert!(
            format!("{}{}", wait.stdout, wait.stderr).contains("Job already completed."),
            "{wait}"
        );
        // Without --all only output from now on: nothing of the old run.
        assert!(!wait.stdout.contains("test session starts"), "{wait}");
    }
    sys.assert_settled();
}

#[test]
fn wait_for_an_unknown_job_says_not_found() {
    let sys = TestSystem::start();
    let unknown = ci_common::JobId::random().to_string();
    for args in [
        vec!["wait", unknown.as_str()],
        vec!["wait", &unknown, "--all"],
    ] {
        let out = run(sys.ci().args(&args));
        out.assert_code(1);
        assert!(out.stderr.contains("not found"), "{out}");
    }
}

#[test]
fn wait_for_another_users_job_is_denied() {
    let mut sys = TestSystem::start();
    let intruder = sys.create_user("Intruder");
    let id = sys.submit_async(&copy_fixture("no-requirements"));

    for all in [false, true] {
        let mut cmd = sys.ci_as(&intruder.api_key);
        cmd.args(["wait", &id.to_string()]);
        if all {
            cmd.arg("--all");
        }
        let out = run(&mut cmd);
        out.assert_code(1);
        assert!(out.stderr.contains("Access denied"), "{out}");
        assert!(
            !out.stdout.contains("test session starts"),
            "nothing of the job may leak\n{out}"
        );
    }

    let job = sys.wait_for_job_end(id);
    assert_eq!(job.success, Some(true), "{job:?}");
    sys.assert_settled();
}
