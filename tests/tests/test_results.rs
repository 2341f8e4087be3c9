//! Test results as data, end to end: the real `ci`, server, controller and
//! Docker engine, with the `test-outcomes` and `flaky-once` fixtures.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_testkit::{copy_fixture, lines_with, run, run_within, TestSystem, JOB_DEADLINE};
use serde_json::{json, Value};

const FILE: &str = "tests/test_outcomes.py";

fn stderr_summary(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("Tests: "))
        .collect()
}

#[test]
fn every_outcome_is_stored_summarised_listed_and_shown() {
    let sys = TestSystem::start();
    let project = copy_fixture("test-outcomes");
    let out = sys.submit_sync(&project);
    out.assert_code(1);
    let id = out.job_id().unwrap();
    // After the output, on stderr: one summary line, then each failed test.
    let summary = [
        "Tests: 3 passed, 2 failed, 1 errors, 2 skipped in".to_string(),
        format!("FAILED {FILE}::test_fails - AssertionError: arithmetic is broken"),
        format!(
            "ERROR {FILE}::test_errors - failed on setup with \"RuntimeError: the fixture cannot set up\""
        ),
        format!("XPASS {FILE}::test_xpasses_strictly - [XPASS(strict)] fixed already"),
    ];
    let check_summary = |stderr: &str, what: &str| {
        let lines = stderr_summary(stderr);
        assert_eq!(lines.len(), summary.len(), "{what}: {stderr}");
        assert!(lines[0].starts_with(&summary[0]), "{what}: {stderr}");
        assert_eq!(lines[1..], summary[1..], "{what}: {stderr}");
    };
    check_summary(&out.stderr, "ci submit test");
    assert!(
        !out.stdout.contains("Tests: "),
        "stdout is the job's\n{out}"
    );

    let waited = run(sys.ci().args(["wait", &id.to_string()]));
    waited.assert_code(1);
    check_summary(&waited.stderr, "ci wait");
    let replayed = run(sys.ci().args(["wait", "--all", &id.to_string()]));
    check_summary(&replayed.stderr, "ci wait --all");

    // The table: outcome, test, duration.
    let table = run(sys.ci().args(["tests", &id.to_string()]));
    table.assert_code(0);
    let rows: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["OUTCOME", "TEST", "DURATION"], "{table}");
    let outcomes: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[1])).collect();
    let expect = |o, t: &str| (o, format!("{FILE}::{t}"));
    let expected = [
        expect("PASSED", "test_passes"),
        expect("FAILED", "test_fails"),
        expect("ERROR", "test_errors"),
        expect("SKIPPED", "test_skipped"),
        expect("XFAIL", "test_xfails"),
        expect("XPASS", "test_xpasses_strictly"),
        expect("PASSED", "TestGroup::test_in_class[1]"),
        expect("PASSED", "TestGroup::test_in_class[2]"),
    ];
    let expected: Vec<(&str, &str)> = expected.iter().map(|(o, t)| (*o, t.as_str())).collect();
    assert_eq!(outcomes, expected, "{table}");
    assert!(rows[1..].iter().all(|r| r[2].ends_with('s')), "{table}");

    // JSON, failures only.
    let failed = run(sys
        .ci()
        .args(["tests", &id.to_string(), "--failed", "--json"]));
    failed.assert_code(0);
    let body: Value = serde_json::from_str(&failed.stdout).unwrap();
    let cases = body["cases"].as_array().unwrap();
    let got: Vec<_> = cases
        .iter()
        .map(|c| (c["outcome"].as_str().unwrap(), c["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("failed", &*format!("{FILE}::test_fails")),
            ("error", &*format!("{FILE}::test_errors")),
            ("xpassed", &*format!("{FILE}::test_xpasses_strictly")),
        ]
    );
    assert_eq!(cases[0]["file"], FILE);
    assert_eq!(cases[0]["name"], "test_fails");
    assert!(cases[0]["traceback"]
        .as_str()
        .unwrap()
        .contains("assert 1 + 1 == 3"));
    assert_eq!(cases[0]["flaky"], false);
    assert_eq!(cases[0]["flaky_jobs"], json!([]));
    assert_eq!(cases[0]["new_failure"], false);
    let totals = json!({"passed": 3, "failed": 2, "errors": 1, "skipped": 2});
    for (key, value) in totals.as_object().unwrap() {
        assert_eq!(&body["summary"][key], value, "{key}");
    }

    // `ci list` shows the counts; `ci list --json` and GET /jobs/{id} the object.
    let list = run(sys.ci().args(["list"]));
    let row = lines_with(&list.stdout, &id.to_string());
    assert!(row[0].ends_with("3 passed, 3 failed"), "{list}");
    let listed = run(sys.ci().args(["list", "--json"]));
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["tests"]["passed"], 3);
    let job = sys.job(id).unwrap();
    assert_eq!(job.tests.map(|t| (t.passed, t.failed)), Some((3, 2)));
    sys.assert_settled();
}

#[test]
fn a_job_that_never_reached_pytest_has_no_results_and_says_so() {
    let sys = TestSystem::start();
    let project = copy_fixture("passing");
    // Not installable without a network: pip fails before pytest runs.
    project.write("requirements.txt", "ci-no-such-package-anywhere==1.0\n");
    let out = sys.submit_sync(&project);
    out.assert_code(1);
    let id = out.job_id().unwrap();
    let lines = stderr_summary(&out.stderr);
    assert_eq!(
        lines,
        // pip runs in the preparation of the job's environment, before any
        // container of the job's own.
        ["Tests: no results (No test results: Installing the requirements failed (pip exited with 1); no environment was stored)"],
        "{out}"
    );
    let shown = run(sys.ci().args(["tests", &id.to_string()]));
    shown.assert_code(0);
    assert!(
        shown.stdout.starts_with("No test results: ")
            && shown.stdout.contains("Installing the requirements failed"),
        "{shown}"
    );
    let json = run(sys.ci().args(["tests", &id.to_string(), "--json"]));
    let body: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(body["summary"], Value::Null);
    assert_eq!(body["cases"], json!([]));
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .contains("Installing the requirements failed"));
    assert_eq!(sys.job(id).unwrap().tests, None);
}

#[test]
fn a_hostile_report_written_by_the_job_leaves_its_result_alone() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    project.write(
        "conftest.py",
        "def pytest_unconfigure(config):\n    path = '/ci-report/junit.xml'\n    open(path, 'w').write('<!DOCTYPE x [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><testsuites><testsuite><testcase classname=\"t\" name=\"&b;\"/></testsuite></testsuites>')\n",
    );
    let out = sys.submit_sync(&project);
    out.assert_code(0);
    let id = out.job_id().unwrap();
    let shown = run(sys.ci().args(["tests", &id.to_string()]));
    assert_eq!(
        shown.stdout, "No test results: the test report declares a DTD, which is refused\n",
        "{shown}"
    );
}

#[test]
fn a_test_that_fails_then_passes_on_the_same_code_is_flaky() {
    let sys = TestSystem::start();
    let project = copy_fixture("flaky-once");
    let first = sys.submit_sync(&project);
    first.assert_code(1);
    let second = sys.submit_sync(&project);
    second.assert_code(0);
    let (first, second) = (first.job_id().unwrap(), second.job_id().unwrap());
    let test = "tests/test_flaky_once.py::test_fails_on_its_first_run";

    let (status, body) = sys
        .get_json(&format!("/jobs/{first}/tests"), &sys.user.api_key)
        .unwrap();
    assert_eq!(status, 200);
    let case = body["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == test)
        .cloned()
        .unwrap();
    assert_eq!(case["outcome"], "failed");
    assert_eq!(case["flaky"], true);
    assert_eq!(case["flaky_jobs"], json!([second.to_string()]));
    let steady = body["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "tests/test_flaky_once.py::test_steady")
        .cloned()
        .unwrap();
    assert_eq!(steady["flaky"], false);

    // Marked in `ci tests` of both jobs, and in the end-of-job summary.
    for job in [first, second] {
        let table = run(sys.ci().args(["tests", &job.to_string()]));
        let row = lines_with(&table.stdout, "PASSED")
            .into_iter()
            .chain(lines_with(&table.stdout, "FAILED"))
            .find(|l| l.contains(test))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.ends_with("[flaky]"), "{table}");
    }
    let waited = run(sys.ci().args(["wait", &first.to_string()]));
    assert!(
        waited.stderr.contains(&format!(
            "FAILED {test} - AssertionError: first run: failing on purpose (flaky: failed, but passed on the same code in job {second})"
        )),
        "{waited}"
    );
}

#[test]
fn a_test_that_passed_in_the_projects_previous_job_is_a_new_failure() {
    let sys = TestSystem::start();
    let project = copy_fixture("no-requirements");
    project.write(
        "test_turning.py",
        "import pathlib\n\n\
         def test_turns():\n    assert pathlib.Path('state.txt').read_text() == 'good', 'state went bad'\n\n\
         def test_always_broken():\n    assert False, 'never worked'\n",
    );
    let submit = || {
        run_within(
            sys.ci()
                .args(["submit", "test", "--project", "turning"])
                .current_dir(project.path()),
            JOB_DEADLINE,
        )
    };
    project.write("state.txt", "good");
    let first = submit();
    first.assert_code(1);
    let broken = "FAILED test_turning.py::test_always_broken - AssertionError: never worked";
    assert!(
        stderr_summary(&first.stderr).contains(&broken),
        "the project's first job has nothing to be new against\n{first}"
    );
    project.write("state.txt", "bad");
    let second = submit();
    second.assert_code(1);
    let summary = stderr_summary(&second.stderr);
    assert!(
        summary.contains(
            &"FAILED test_turning.py::test_turns - AssertionError: state went bad (new failure: it did not fail in the project's previous job)"
        ),
        "{second}"
    );
    assert!(
        summary.contains(&broken),
        "failed before too: not new\n{second}"
    );
    let (first, second) = (first.job_id().unwrap(), second.job_id().unwrap());
    let (_, body) = sys
        .get_json(
            &format!("/jobs/{second}/tests?outcome=failed"),
            &sys.user.api_key,
        )
        .unwrap();
    let new: Vec<_> = body["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["new_failure"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(new, [("test_turns", true), ("test_always_broken", false)]);

    // The project's history: `ci tests --project`, as JSON and as a table.
    let history = run(sys.ci().args(["tests", "--project", "turning", "--json"]));
    history.assert_code(0);
    let history: Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(
        history["jobs"],
        json!([second.to_string(), first.to_string()])
    );
    let recent: Vec<_> = history["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap(),
                t["recent"].clone(),
                t["failure_rate"].clone(),
            )
        })
        .collect();
    assert_eq!(
        recent,
        [
            (
                "test_greeting.py::test_greet",
                json!(["passed", "passed"]),
                json!(0.0)
            ),
            (
                "test_greeting.py::test_greet_empty",
                json!(["passed", "passed"]),
                json!(0.0)
            ),
            (
                "test_turning.py::test_always_broken",
                json!(["failed", "failed"]),
                json!(1.0)
            ),
            (
                "test_turning.py::test_turns",
                json!(["failed", "passed"]),
                json!(0.5)
            ),
        ],
        "{history}"
    );
    let table = run(sys.ci().args(["tests", "--project", "turning"]));
    table.assert_code(0);
    let row = lines_with(&table.stdout, "test_turning.py::test_turns");
    assert!(row[0].ends_with(" F."), "{table}");
    let slowest = run(sys
        .ci()
        .args(["tests", "--project", "turning", "--slowest", "1", "--json"]));
    let slowest: Value = serde_json::from_str(&slowest.stdout).unwrap();
    assert_eq!(slowest["tests"].as_array().unwrap().len(), 1, "{slowest}");
    let flaky = run(sys.ci().args(["tests", "--project", "turning", "--flaky"]));
    assert_eq!(
        flaky.stdout, "No matching tests.\n",
        "different code each time: {flaky}"
    );

    // `ci list` filtered by project, status and count.
    let listed = run(sys.ci().args([
        "list",
        "--json",
        "--project",
        "turning",
        "--status",
        "completed",
        "--limit",
        "1",
    ]));
    listed.assert_code(0);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["job_id"], second.to_string());
    let none = run(sys.ci().args(["list", "--project", "elsewhere"]));
    assert_eq!(none.stdout, "No jobs found.\n");
    let running = run(sys
        .ci()
        .args(["list", "--project", "turning", "--status", "running"]));
    assert_eq!(running.stdout, "No jobs found.\n");
    let bad = run(sys.ci().args(["list", "--status", "finished"]));
    bad.assert_code(2);
    assert!(
        bad.stderr
            .contains("expected one of queued, running, completed, cancelled"),
        "{bad}"
    );
}
