//! Output streaming under load and under failure: a large output arrives whole,
//! replicas serve each other's jobs, and a server restart in the middle of a
//! stream costs no line and repeats none.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_testkit::relay::Relay;
use ci_testkit::{
    assert_same_lines, copy_fixture, id_after, lines_with, run, slow_project, slow_ticks, wait_for,
    RunningCi, TestSystem, JOB_DEADLINE,
};

const BIG_LINES: usize = 100_000;
const BIG_MARKER: &str = "BIG-OUTPUT-END after 100000 lines";

fn big_lines() -> Vec<String> {
    (1..=BIG_LINES).map(|i| format!("line {i:06}")).collect()
}

/// Lines starting with `prefix`, in order.
#[test]
fn a_hundred_thousand_lines_arrive_in_order_exactly_once() {
    let sys = TestSystem::start();
    let out = sys.submit_sync(&copy_fixture("big-output"));

    out.assert_code(0);
    assert_same_lines(
        "the numbered lines of the live stream",
        &lines_with(&out.stdout, "line "),
        &big_lines(),
    );
    let lines = out.stdout_lines();
    let marker: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i] == BIG_MARKER)
        .collect();
    assert_eq!(marker.len(), 1, "the end marker once");
    assert_eq!(
        lines[marker[0] - 1],
        "line 100000",
        "the marker follows the last line"
    );
    assert!(out.stdout.contains("1 passed"));

    // And a replay gives exactly the same.
    let id = out.job_id().unwrap();
    let replay = run(sys.ci().args(["wait", "--all", &id.to_string()]));
    replay.assert_code(0);
    assert_same_lines("the replay", &replay.stdout_lines(), &out.stdout_lines());
    sys.assert_settled();
}

#[test]
fn two_replicas_on_one_database_stream_the_same_job() {
    let mut sys = TestSystem::start();
    let replica = sys.start_replica();
    let project = slow_project(5);

    // Submitted through the first server...
    let mut submit = RunningCi::spawn(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
    );
    submit.wait_for_stderr("the job id", JOB_DEADLINE, |err| {
        id_after(err, "Job ID: ").is_some()
    });
    let id = id_after(&submit.stderr(), "Job ID: ").unwrap();
    // ...followed from the start through the second, while it runs.
    let mut follow = RunningCi::spawn(sys.ci().env("CI_SERVER_URL", &replica).args([
        "wait",
        "--all",
        &id.to_string(),
    ]));

    let submitted = submit.finish(JOB_DEADLINE);
    let followed = follow.finish(JOB_DEADLINE);

    submitted.assert_code(0);
    followed.assert_code(0);
    assert_same_lines(
        "the ticks",
        &lines_with(&submitted.stdout, "tick "),
        &slow_ticks(5),
    );
    assert_eq!(
        followed.stdout, submitted.stdout,
        "both replicas must stream the same output"
    );

    // The replica knows the job too.
    let listed = run(sys
        .ci()
        .env("CI_SERVER_URL", &replica)
        .args(["list", "--json"]));
    listed.assert_code(0);
    assert!(listed.stdout.contains(&id.to_string()), "{listed}");
    sys.assert_settled();
}

#[test]
fn a_server_restart_in_the_middle_of_streams_loses_and_repeats_nothing() {
    const SECONDS: u32 = 12;
    let mut sys = TestSystem::start();
    let project = slow_project(SECONDS);

    // Three clients across the restart: the submit itself, a `ci wait` from
    // now on, and a `ci wait --all`.
    let mut submit = RunningCi::spawn(
        sys.ci()
            .args(["submit", "test"])
            .current_dir(project.path()),
    );
    submit.wait_for_stdout("the first tick", JOB_DEADLINE, |out| {
        out.contains("tick 001")
    });
    let id = id_after(&submit.stderr(), "Job ID: ").unwrap();
    let mut wait = RunningCi::spawn(sys.ci().args(["wait", &id.to_string()]));
    let mut wait_all = RunningCi::spawn(sys.ci().args(["wait", "--all", &id.to_string()]));
    for client in [&mut submit, &mut wait, &mut wait_all] {
        client.wait_for_stdout("tick 002", JOB_DEADLINE, |out| out.contains("tick 002"));
    }

    sys.kill_server();
    // The job goes on while the server is away; let it print two more lines.
    let stored_ticks =
        |sys: &TestSystem| lines_with(&sys.stored_output(id).unwrap(), "tick ").len();
    let at_kill = stored_ticks(&sys);
    wait_for("output while the server is down", JOB_DEADLINE, || {
        stored_ticks(&sys) >= at_kill + 2
    });
    assert!(
        !submit.has_exited() && !wait.has_exited() && !wait_all.has_exited(),
        "the clients must keep trying while the server is away"
    );
    sys.start_server();

    let submitted = submit.finish(JOB_DEADLINE);
    let waited = wait.finish(JOB_DEADLINE);
    let waited_all = wait_all.finish(JOB_DEADLINE);
    let stored = sys.stored_output_piped(id).unwrap();

    for out in [&submitted, &waited, &waited_all] {
        out.assert_code(0);
        assert_eq!(
            out.stdout.matches("SLOW-END").count(),
            1,
            "the end once\n{out}"
        );
    }
    assert_same_lines(
        "the ticks of the submit",
        &lines_with(&submitted.stdout, "tick "),
        &slow_ticks(SECONDS),
    );
    assert_same_lines(
        "the submit's output",
        &submitted.stdout_lines(),
        &stored.lines().collect::<Vec<_>>(),
    );
    assert_same_lines(
        "the output of `ci wait --all`",
        &waited_all.stdout_lines(),
        &stored.lines().collect::<Vec<_>>(),
    );
    // `ci wait` began mid-job, after `tick 001` was out: it printed only what
    // came after, a tail of the output without gaps.
    assert!(!waited.stdout.contains("tick 001"), "{waited}");
    assert!(!waited.stdout.contains("test session starts"), "{waited}");
    assert!(
        stored.ends_with(&waited.stdout),
        "`ci wait` printed something else than the end of the output\n{waited}"
    );
    let ticks = lines_with(&waited.stdout, "tick ");
    let all_ticks = slow_ticks(SECONDS);
    assert_same_lines(
        "the ticks `ci wait` saw",
        &ticks,
        &all_ticks[all_ticks.len() - ticks.len()..],
    );
    assert!(ticks.contains(&"tick 002 of 012"), "{waited}");
    sys.assert_settled();
}

/// A test that prints a line, stays silent until the file `/tmp/ci-gate`
/// exists in its container, then prints five more.
const GATED_TEST: &str = r#"import pathlib
import time


def test_gate():
    print(flush=True)
    print("GATE-WAITING", flush=True)
    gate = pathlib.Path("/tmp/ci-gate")
    deadline = time.monotonic() + 120
    while not gate.exists():
        assert time.monotonic() < deadline, "the gate never opened"
        time.sleep(0.05)
    for i in range(1, 6):
        print(f"after the gate {i}", flush=True)
"#;

#[test]
fn a_wait_from_now_that_has_seen_nothing_yet_resumes_where_it_began() {
    let mut sys = TestSystem::start();
    let project = slow_project(0);
    project.write("test_gate.py", GATED_TEST);
    let id = sys.submit_async(&project);
    wait_for("the job to wait at its gate", JOB_DEADLINE, || {
        sys.stored_output(id)
            .is_ok_and(|out| out.contains("GATE-WAITING"))
    });

    // `ci wait` from now on, while the job is silent: it has received no
    // event when the server dies. It talks through a relay, which shows when
    // the server has begun answering the stream (its headers went out).
    let relay = Relay::start(sys.server_addr()).unwrap();
    let mut wait = RunningCi::spawn(
        sys.ci()
            .env("CI_SERVER_URL", relay.url())
            .args(["wait", &id.to_string()]),
    );
    wait_for("the server to serve the stream", JOB_DEADLINE, || {
        relay.server_sent("content-type: text/event-stream")
    });
    sys.kill_server();

    // The job prints and ends while the server is away.
    let opened = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker exec $(docker ps -q --filter label=ci.job-id={id}) touch /tmp/ci-gate"
        ))
        .status()
        .unwrap();
    assert!(opened.success(), "cannot open the job's gate");
    wait_for("the job to end", JOB_DEADLINE, || {
        sys.stored_job(id)
            .ok()
            .flatten()
            .is_some_and(|job| job.status.is_terminal())
    });
    assert!(!wait.has_exited(), "`ci wait` must keep trying");
    sys.start_server();

    let waited = wait.finish(JOB_DEADLINE);
    waited.assert_code(0);
    assert!(!waited.stdout.contains("GATE-WAITING"), "{waited}");
    for i in 1..=5 {
        assert_eq!(
            waited
                .stdout
                .matches(&format!("after the gate {i}\n"))
                .count(),
            1,
            "line {i} once\n{waited}"
        );
    }
    let stored = sys.stored_output_piped(id).unwrap();
    assert!(
        stored.ends_with(&waited.stdout),
        "`ci wait` printed something else than the end of the output\n{waited}"
    );
}
