//! Load: 200 `ci submit test --async` at once through two API replicas on one
//! SQLite file. Every submit gets its job, every job ends with the result its
//! project deserves, and nothing anywhere says the database was locked or
//! answered a server error.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ci_common::JobStatus;
use ci_tests::{run_within, wait_for, Project, TestSystem};

const SUBMITS: usize = 200;
/// Generous: 200 short jobs, four at a time, on a busy two-core machine.
const ALL_ENDED: Duration = Duration::from_secs(600);
const SUBMIT_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn two_hundred_async_submits_through_two_replicas_all_end_rightly() {
    let mut sys = TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "4")
        .start();
    let replica = sys.start_replica();
    let users = [
        sys.user.clone(),
        sys.create_user("Second User"),
        sys.create_user("Third User"),
    ];
    let passing = sys.copy_fixture("no-requirements");
    let failing = sys.copy_fixture("no-requirements");
    failing.write("test_fails.py", "def test_fails():\n    assert 1 == 2\n");
    let servers = [sys.server_url(), replica];

    // Every submit at once, each a real `ci` process.
    let submits: Vec<(bool, std::process::Command)> = (0..SUBMITS)
        .map(|i| {
            let should_pass = i % 3 != 0;
            let project: &Project = if should_pass { &passing } else { &failing };
            let mut cmd = sys.ci_as(&users[i % users.len()].api_key);
            cmd.args(["submit", "test", "--async"])
                .current_dir(project.path())
                .env("CI_SERVER_URL", &servers[i % servers.len()]);
            (should_pass, cmd)
        })
        .collect();
    let started = std::time::Instant::now();
    let outcomes: Vec<(bool, ci_tests::CiOutput)> = std::thread::scope(|scope| {
        let handles: Vec<_> = submits
            .into_iter()
            .map(|(should_pass, mut cmd)| {
                scope.spawn(move || (should_pass, run_within(&mut cmd, SUBMIT_DEADLINE)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut expected = HashMap::new();
    for (should_pass, out) in &outcomes {
        // A 5xx or a refused connection would make `ci` exit 1.
        out.assert_code(0);
        let id = out
            .submitted_job_id()
            .unwrap_or_else(|| panic!("no job id\n{out}"));
        assert!(
            expected.insert(id, *should_pass).is_none(),
            "job id {id} given twice"
        );
    }
    assert_eq!(expected.len(), SUBMITS);
    let submitted = started.elapsed();

    wait_for("every job to end", ALL_ENDED, || {
        sys.unfinished_jobs().is_ok_and(|jobs| jobs.is_empty())
    });
    let mut seen = HashSet::new();
    for (&id, &should_pass) in &expected {
        let job = sys.stored_job(id).unwrap().expect("the job is stored");
        assert_eq!(job.status, JobStatus::Completed, "job {id}");
        assert_eq!(
            job.success,
            Some(should_pass),
            "job {id}: {}",
            sys.stored_output(id).unwrap()
        );
        seen.insert(id);
    }
    assert_eq!(seen.len(), SUBMITS);
    eprintln!(
        "{SUBMITS} submits answered within {:.1} s; every job ended within {:.1} s",
        submitted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    for log in sys.service_logs() {
        assert!(
            !log.text.contains("database is locked"),
            "{} says the database was locked",
            log.name
        );
        assert!(
            !log.text.lines().any(|l| l.contains(" ERROR ")),
            "{} logged an error:\n{}",
            log.name,
            log.text
        );
    }
    sys.assert_settled();
}
