//! Where `ci` takes its API key from, what it says when the server refuses
//! it, and what it says when there is no server at all.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::process::Command;

use ci_common::JobStatus;
use ci_testkit::{
    copy_fixture, run, slow_project, CiOutput, Project, RunningCi, TestSystem, COMMAND_DEADLINE,
    JOB_DEADLINE,
};

const HELP: [&str; 4] = [
    "Authentication required. Please provide an API key using one of:",
    "--api-key <key>",
    "CI_API_KEY=<key>",
    "~/.ci/config (format: api_key=<key>)",
];
const NOT_AUTHENTICATED: &str = "Not authenticated";
const INVALID_KEY: &str = "Invalid or revoked API key";

fn assert_refused(out: &CiOutput, reason: &str) {
    out.assert_code(1);
    assert!(
        out.stderr.contains(reason),
        "stderr should give the server's reason {reason:?}\n{out}"
    );
    for line in HELP {
        assert!(out.stderr.contains(line), "no {line:?} in the help\n{out}");
    }
}

/// Every command that talks to the server.
fn every_command() -> Vec<Vec<String>> {
    let some_job = ci_common::JobId::random().to_string();
    [
        vec!["list"],
        vec!["list", "--json"],
        vec!["submit", "test"],
        vec!["submit", "test", "--async"],
        vec!["wait", &some_job],
        vec!["wait", &some_job, "--all"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_string).collect())
    .collect()
}

fn run_all(sys: &TestSystem, project: &Project, make: impl Fn() -> Command, reason: &str) {
    for args in every_command() {
        let out = run(make().args(&args).current_dir(project.path()));
        assert_refused(&out, reason);
    }
    // None of the refused submits made a job.
    assert!(sys.unfinished_jobs().unwrap().is_empty());
    let out = run(sys.ci().arg("list"));
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No jobs found.", "{out}");
}

#[test]
fn without_a_key_every_command_fails_with_the_help() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    run_all(&sys, &project, || sys.ci_without_key(), NOT_AUTHENTICATED);
}

#[test]
fn with_an_unknown_key_every_command_fails_with_the_help() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    let bogus = format!("ci_{}", "x".repeat(40));
    run_all(&sys, &project, || sys.ci_as(&bogus), INVALID_KEY);
}

#[test]
fn a_revoked_key_stops_working_at_once() {
    let sys = TestSystem::start();
    run(sys.ci().arg("list")).assert_code(0);

    let out = sys.admin_ok(&["key", "revoke", &sys.user.key_id.to_string()]);
    assert!(out.contains("API key revoked"), "{out}");

    assert_refused(&run(sys.ci().arg("list")), INVALID_KEY);
    let project = copy_fixture("no-requirements");
    assert_refused(
        &run(sys
            .ci()
            .args(["submit", "test", "--async"])
            .current_dir(project.path())),
        INVALID_KEY,
    );
    assert!(sys.unfinished_jobs().unwrap().is_empty());
}

/// A `ci wait` whose key is revoked while its stream is open stops within
/// seconds, on the server's error event, with the reason and the help, and
/// says the job goes on; it does not follow the job to its end. (Before the
/// event was a `StreamEvent`, `ci` skipped it, reconnected and was refused:
/// the same reason, but without the line about the stream.)
#[test]
fn a_stream_whose_key_is_revoked_ends_with_the_reason_and_the_job_goes_on() {
    let sys = TestSystem::start();
    // Longer than the command deadline: only the revocation can end the wait.
    let id = sys.submit_async(&slow_project(300));
    let mut ci = RunningCi::spawn(sys.ci().args(["wait", &id.to_string()]));
    ci.wait_for_stdout("a tick, so the stream is open", JOB_DEADLINE, |out| {
        out.contains("tick ")
    });

    sys.admin_ok(&["key", "revoke", &sys.user.key_id.to_string()]);
    let out = ci.finish(COMMAND_DEADLINE);

    assert_refused(&out, INVALID_KEY);
    assert!(
        out.stderr.contains(&format!(
            "the server stopped streaming job {id}, which goes on"
        )),
        "{out}"
    );
    assert!(!out.stdout.contains("SLOW-END"), "{out}");
    let job = sys.stored_job(id).unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running, "{job:?}");
}

#[test]
fn a_deactivated_user_is_refused_until_activated_again() {
    let sys = TestSystem::start();
    let id = sys.user.id.to_string();
    run(sys.ci().arg("list")).assert_code(0);

    let out = sys.admin_ok(&["user", "deactivate", &id]);
    assert!(out.contains("User deactivated"), "{out}");
    assert_refused(&run(sys.ci().arg("list")), INVALID_KEY);
    let project = copy_fixture("no-requirements");
    assert_refused(
        &run(sys
            .ci()
            .args(["submit", "test"])
            .current_dir(project.path())),
        INVALID_KEY,
    );

    let out = sys.admin_ok(&["user", "activate", &id]);
    assert!(out.contains("User activated"), "{out}");
    let out = run(sys.ci().arg("list"));
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No jobs found.", "{out}");
}

#[test]
fn the_key_comes_from_the_flag_then_the_environment_then_the_config_file() {
    let mut sys = TestSystem::start();
    // Two users told apart by their job lists: the first has a job, the
    // second has none.
    let with_job = sys.user.clone();
    let without = sys.create_user("No Jobs");
    let job = sys.submit_async(&copy_fixture("no-requirements"));
    sys.wait_for_job_end(job);
    let job = job.to_string();

    // Which user did `ci list` act as?
    let acted_as = |out: CiOutput| -> &'static str {
        out.assert_code(0);
        if out.stdout.contains(&job) {
            "with job"
        } else if out.stdout.trim() == "No jobs found." {
            "without"
        } else {
            panic!("unexpected list\n{out}")
        }
    };
    let config = |key: Option<&str>| match key {
        Some(key) => sys.write_config(&format!("api_key={key}\n")),
        None => sys.write_config(""),
    };
    let list = |flag: Option<&str>, env: Option<&str>| {
        let mut cmd = match env {
            Some(key) => sys.ci_as(key),
            None => sys.ci_without_key(),
        };
        cmd.arg("list");
        if let Some(key) = flag {
            cmd.args(["--api-key", key]);
        }
        acted_as(run(&mut cmd))
    };
    let a = with_job.api_key.as_str();
    let b = without.api_key.as_str();

    // The config file alone.
    config(Some(a));
    assert_eq!(list(None, None), "with job");
    config(Some(b));
    assert_eq!(list(None, None), "without");
    // The environment wins over the file.
    assert_eq!(list(None, Some(a)), "with job");
    config(Some(a));
    assert_eq!(list(None, Some(b)), "without");
    // The flag wins over both.
    assert_eq!(list(Some(b), Some(a)), "without");
    config(Some(b));
    assert_eq!(list(Some(a), Some(b)), "with job");
    // The flag alone.
    config(None);
    assert_eq!(list(Some(a), None), "with job");
    assert_eq!(list(Some(b), None), "without");
    sys.assert_settled();
}

#[test]
fn an_unreachable_server_is_named_in_one_line() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    // A port nobody listens on: bound, then freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");

    for args in every_command() {
        let out = run(sys
            .ci()
            .env("CI_SERVER_URL", &url)
            .args(&args)
            .current_dir(project.path()));
        out.assert_code(1);
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "one line, not {}\n{out}", lines.len());
        assert!(lines[0].contains(&url), "the line names {url}\n{out}");
    }
    assert!(sys.unfinished_jobs().unwrap().is_empty());
}
