//! Load: 200 `ci submit test --async` at once through two API replicas on one
//! SQLite file. Every submit gets its job, every job ends with the result its
//! project deserves, and nothing anywhere says the database was locked or
//! answered a server error.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::collections::HashMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ci_common::api::JobSummary;
use ci_common::{JobId, JobStatus};
use ci_testkit::{run_within, wait_for, CiOutput, Project, TestSystem, TestUser};

const SUBMITS: usize = 200;
/// Generous: 200 short jobs, four at a time, on a busy two-core machine (about
/// two minutes when the machine is otherwise idle).
const ALL_ENDED: Duration = Duration::from_secs(600);
const SUBMIT_DEADLINE: Duration = Duration::from_secs(120);
/// pytest's exit codes: every test passed; some test failed.
const PYTEST_PASSED: i64 = 0;
const PYTEST_TESTS_FAILED: i64 = 1;

/// What one submit was for.
struct Expected {
    user: usize,
    should_pass: bool,
}

#[test]
fn two_hundred_async_submits_through_two_replicas_all_end_rightly() {
    let mut sys = TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "4")
        // A third of the submits are one user's, all at once: past the
        // per-user cap of uploads in flight, which is not what this measures.
        .server_env("CI_MAX_UPLOADS_PER_USER", "1000")
        .start();
    let replica = sys.start_replica();
    let users: [TestUser; 3] = [
        sys.user.clone(),
        sys.create_user("Second User"),
        sys.create_user("Third User"),
    ];
    // No requirements.txt: nothing to install, so each job is one short pytest.
    let passing = sys.copy_fixture("no-requirements");
    let failing = sys.copy_fixture("no-requirements");
    failing.write("test_fails.py", "def test_fails():\n    assert 1 == 2\n");
    let servers = [sys.server_url(), replica];

    // Every submit at once, each a real `ci` process: half through each
    // replica, the users and the two projects interleaved differently.
    let submits: Vec<(Expected, std::process::Command)> = (0..SUBMITS)
        .map(|i| {
            let should_pass = i % 3 != 0;
            let user = i % users.len();
            let project: &Project = if should_pass { &passing } else { &failing };
            let mut cmd = sys.ci_as(&users[user].api_key);
            cmd.args(["submit", "test", "--async"])
                .current_dir(project.path())
                .env("CI_SERVER_URL", &servers[i % servers.len()]);
            (Expected { user, should_pass }, cmd)
        })
        .collect();
    let all_ready = Barrier::new(SUBMITS);
    let started = Instant::now();
    let outcomes: Vec<(Expected, CiOutput)> = std::thread::scope(|scope| {
        let handles: Vec<_> = submits
            .into_iter()
            .map(|(expected, mut cmd)| {
                let all_ready = &all_ready;
                scope.spawn(move || {
                    all_ready.wait();
                    (expected, run_within(&mut cmd, SUBMIT_DEADLINE))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let submitted = started.elapsed();

    let mut expected: HashMap<JobId, Expected> = HashMap::new();
    for (wanted, out) in outcomes {
        // `ci submit` does not retry: a 5xx or a refused connection exits 1.
        out.assert_code(0);
        assert!(
            !mentions_server_error(&out.stderr),
            "a submit saw a server error\n{out}"
        );
        let id = out
            .submitted_job_id()
            .unwrap_or_else(|| panic!("no job id\n{out}"));
        assert!(
            expected.insert(id, wanted).is_none(),
            "job id {id} given twice"
        );
    }
    assert_eq!(expected.len(), SUBMITS, "distinct job ids");

    // Through the API, as each user sees their jobs; every poll must answer.
    let per_user: Vec<usize> = (0..users.len())
        .map(|u| expected.values().filter(|e| e.user == u).count())
        .collect();
    wait_for("every job to end", ALL_ENDED, || {
        users.iter().zip(&per_user).all(|(user, &count)| {
            let jobs = list_jobs(&sys, user);
            jobs.len() == count && jobs.iter().all(|job| job.status.is_terminal())
        })
    });
    let ended = started.elapsed();

    for (user_index, user) in users.iter().enumerate() {
        let listed: HashMap<JobId, JobSummary> = list_jobs(&sys, user)
            .into_iter()
            .map(|job| (job.job_id, job))
            .collect();
        let mine: Vec<(&JobId, &Expected)> = expected
            .iter()
            .filter(|(_, e)| e.user == user_index)
            .collect();
        assert_eq!(
            listed.len(),
            mine.len(),
            "{}'s jobs: {listed:#?}",
            user.email
        );
        for (id, wanted) in mine {
            let job = listed
                .get(id)
                .unwrap_or_else(|| panic!("{} does not see job {id}", user.email));
            let output = || sys.stored_output(*id).unwrap();
            assert_eq!(job.status, JobStatus::Completed, "job {id}: {}", output());
            assert_eq!(
                job.success,
                Some(wanted.should_pass),
                "job {id}: {}",
                output()
            );
            // pytest itself decided: a job that could not run also fails, but
            // without pytest's exit code for failed tests.
            let code = if wanted.should_pass {
                PYTEST_PASSED
            } else {
                PYTEST_TESTS_FAILED
            };
            assert_eq!(job.exit_code, Some(code), "job {id}: {}", output());
            let stored = sys.stored_job(*id).unwrap().expect("the job is stored");
            assert_eq!(stored.user_id, user.id, "job {id} belongs to its submitter");
            assert_eq!(stored.failure_reason, None, "job {id}: {}", output());
        }
    }
    eprintln!(
        "{SUBMITS} submits answered within {:.1} s; every job ended within {:.1} s",
        submitted.as_secs_f64(),
        ended.as_secs_f64()
    );

    // The only 5xx the server sends (503) is logged as an error first, and a
    // handler that panicked (500) leaves a panic message.
    for log in sys.service_logs() {
        assert!(
            !log.text.contains("database is locked"),
            "{} says the database was locked:\n{}",
            log.name,
            log.text
        );
        assert!(
            !log.text.lines().any(|l| l.contains(" ERROR ")),
            "{} logged an error:\n{}",
            log.name,
            log.text
        );
        assert!(
            !log.text.contains("panicked"),
            "{} panicked:\n{}",
            log.name,
            log.text
        );
    }
    sys.assert_settled();
}

/// `GET /jobs` as `user`; anything but 200 fails the test.
fn list_jobs(sys: &TestSystem, user: &TestUser) -> Vec<JobSummary> {
    let (status, body) = sys.get_json("/jobs", &user.api_key).unwrap();
    assert_eq!(status, 200, "GET /jobs as {}: {body}", user.email);
    serde_json::from_value(body).unwrap()
}

/// Whether `ci`'s error output reports a server error or a busy database.
fn mentions_server_error(stderr: &str) -> bool {
    [
        "500",
        "503",
        "Internal Server Error",
        "Service Unavailable",
        "unavailable",
        "database is locked",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}
