//! `ci list` and `ci list --json`: the caller's jobs, newest first.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use chrono::{DateTime, Utc};
use ci_common::JobId;
use ci_common::JobStatus;
use ci_testkit::{copy_fixture, run, slow_project, CiOutput, TestSystem, JOB_DEADLINE};
use serde_json::Value;

/// One row of the table, split into its columns.
#[derive(Debug)]
struct Row {
    id: String,
    status: String,
    start: String,
    end: String,
    success: String,
}

/// Parses the table: header, rule, rows. Times are `YYYY-MM-DD HH:MM:SS
/// +HH:MM` (three words) or `N/A`.
fn table(out: &CiOutput) -> Vec<Row> {
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_default();
    // The contract's five columns first, then the additions.
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>().join(" "),
        "JOB ID STATUS START TIME END TIME SUCCESS DURATION SUBMITTED PROJECT PYTHON TESTS",
        "table header: the reference's columns first\n{out}"
    );
    let rule = lines.next().unwrap_or_default();
    assert!(
        rule.chars().all(|c| c == '-'),
        "a rule under the header\n{out}"
    );
    assert_eq!(
        rule.chars().count(),
        header.trim_end().chars().count(),
        "the rule is as wide as the header\n{out}"
    );
    lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let mut next = || words.next().unwrap_or_default().to_string();
            let id = next();
            let status = next();
            let time = |next: &mut dyn FnMut() -> String| {
                let first = next();
                if first == "N/A" {
                    first
                } else {
                    format!("{first} {} {}", next(), next())
                }
            };
            let start = time(&mut next);
            let end = time(&mut next);
            let success = next();
            Row {
                id,
                status,
                start,
                end,
                success,
            }
        })
        .collect()
}

fn json(out: &CiOutput) -> Vec<Value> {
    match serde_json::from_str(&out.stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!("`ci list --json` did not print a JSON array ({other:?})\n{out}"),
    }
}

/// An ISO-8601 UTC time ending in `Z`, as the contract says.
fn iso_time(value: &Value, what: &str) -> Option<DateTime<Utc>> {
    match value {
        Value::Null => None,
        Value::String(text) => {
            assert!(text.ends_with('Z'), "{what} {text:?} does not end in Z");
            assert!(text.contains('T'), "{what} {text:?} is not ISO-8601");
            let time = DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{what} {text:?} is not ISO-8601: {e}"));
            Some(time.with_timezone(&Utc))
        }
        other => panic!("{what} is neither a string nor null: {other}"),
    }
}

/// The table's rendering of a JSON time with `--utc`: to the second with
/// its offset, or `N/A`.
fn as_table_time(time: Option<DateTime<Utc>>) -> String {
    time.map(|t| t.format("%Y-%m-%d %H:%M:%S +00:00").to_string())
        .unwrap_or_else(|| "N/A".to_string())
}

#[test]
fn a_user_without_jobs_is_told_so() {
    let mut sys = TestSystem::start();
    // Someone else's job must not count.
    let other = sys.create_user("Other");
    let id = run(sys
        .ci_as(&other.api_key)
        .args(["submit", "test", "--async"])
        .current_dir(copy_fixture("no-requirements").path()))
    .assert_code(0)
    .submitted_job_id()
    .unwrap();

    let out = run(sys.ci().arg("list"));
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), "No jobs found.", "{out}");

    let out = run(sys.ci().args(["list", "--json"]));
    out.assert_code(0);
    assert!(json(&out).is_empty(), "{out}");

    sys.wait_for_job_end_as(&other.api_key, id);
    sys.assert_settled();
}

#[test]
fn list_shows_the_callers_jobs_newest_first_as_a_table_and_as_json() {
    // One job at a time, so that a second slow job stays queued.
    let mut sys = TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "1")
        .start();
    let other = sys.create_user("Other");
    let others = run(sys
        .ci_as(&other.api_key)
        .args(["submit", "test"])
        .current_dir(copy_fixture("no-requirements").path()))
    .assert_code(0)
    .job_id()
    .unwrap();

    let passed = sys.submit_sync(&copy_fixture("no-requirements"));
    passed.assert_code(0);
    let passed = passed.job_id().unwrap();
    let failed = sys.submit_sync(&copy_fixture("failing"));
    failed.assert_code(1);
    let failed = failed.job_id().unwrap();
    let running = sys.submit_async(&slow_project(60));
    sys.wait_for_job(running, "running", JOB_DEADLINE, |j| {
        j.status == JobStatus::Running
    });
    let queued = sys.submit_async(&slow_project(60));
    assert_eq!(sys.job(queued).unwrap().status, JobStatus::Queued);

    let newest_first: Vec<String> = [queued, running, failed, passed]
        .iter()
        .map(JobId::to_string)
        .collect();

    // The table, in UTC to compare with the JSON.
    let out = run(sys.ci().args(["list", "--utc"]));
    out.assert_code(0);
    let rows = table(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, newest_first, "the caller's jobs, newest first\n{out}");
    assert!(!out.stdout.contains(&others.to_string()), "{out}");
    let expected = [
        ("queued", false, false, "-"),
        ("running", true, false, "-"),
        ("completed", true, true, "✗"),
        ("completed", true, true, "✓"),
    ];
    for (row, (status, started, ended, success)) in rows.iter().zip(expected) {
        assert_eq!(row.status, status, "{row:?}\n{out}");
        assert_eq!(row.start != "N/A", started, "{row:?}\n{out}");
        assert_eq!(row.end != "N/A", ended, "{row:?}\n{out}");
        assert_eq!(row.success, success, "{row:?}\n{out}");
    }

    // The same jobs as JSON, with the same times.
    let out = run(sys.ci().args(["list", "--json"]));
    out.assert_code(0);
    let jobs = json(&out);
    let ids: Vec<&str> = jobs
        .iter()
        .map(|j| j["job_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, newest_first, "{out}");
    let expected = [
        ("queued", Value::Null),
        ("running", Value::Null),
        ("completed", Value::Bool(false)),
        ("completed", Value::Bool(true)),
    ];
    for ((job, (status, success)), row) in jobs.iter().zip(expected).zip(&rows) {
        assert_eq!(job["status"], status, "{job}");
        assert_eq!(job["success"], success, "{job}");
        let start = iso_time(&job["start_time"], "start_time");
        let end = iso_time(&job["end_time"], "end_time");
        assert_eq!(as_table_time(start), row.start, "{job} vs {row:?}");
        assert_eq!(as_table_time(end), row.end, "{job} vs {row:?}");
        if let (Some(start), Some(end)) = (start, end) {
            assert!(start <= end, "{job}");
        }
    }

    sys.cancel(queued).unwrap();
    sys.cancel(running).unwrap();
    for id in [queued, running] {
        assert_eq!(sys.wait_for_job_end(id).status, JobStatus::Cancelled);
    }
    let out = run(sys.ci().args(["list", "--json"]));
    let jobs = json(&out);
    assert_eq!(jobs[0]["status"], "cancelled", "{out}");
    assert_eq!(jobs[1]["status"], "cancelled", "{out}");
    sys.assert_settled();
}
