//! Retention with the real binaries: jobs aged by the test (their times
//! moved back in the database) disappear with their output, test results and
//! archives once the controller's reaper runs, while a running and a queued
//! job just as old stay and go on; on SQLite the file's free pages go back
//! to the file system. On both databases.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use ci_common::{JobId, JobStatus};
use ci_testkit::database::{age_archives_sql, age_job_sql};
use ci_testkit::{
    copy_fixture, incompressible_bytes, lines_with, slow_project, wait_for, wait_for_value,
    TestSystem, JOB_DEADLINE, SETTLE_DEADLINE,
};

/// Days the test moves every job and archive into the past: far beyond the
/// default retention of 30 days.
const AGE_DAYS: i64 = 400;
/// Bytes of incompressible data in the big job's project: its archive is
/// what the SQLite file must give back.
const BIG_FILE_BYTES: usize = 3 * 1024 * 1024;

fn count(sys: &TestSystem, sql: &str) -> i64 {
    sys.integer_sql(sql).unwrap()
}

fn rows_of_job(sys: &TestSystem, table: &str, id: JobId) -> i64 {
    count(
        sys,
        &format!("SELECT COUNT(*) FROM {table} WHERE job_id = '{id}'"),
    )
}

fn archive_stored(sys: &TestSystem, digest: &str) -> bool {
    count(
        sys,
        &format!("SELECT COUNT(*) FROM archives WHERE digest = '{digest}'"),
    ) == 1
}

/// The controller's `/metrics` at `addr`, as text.
fn scrape(addr: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// The value of the sample `series` (name and labels as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn ended_jobs_go_and_unfinished_ones_stay(mut sys: TestSystem) {
    let on_sqlite = sys.postgres_url().is_none();

    // Two jobs that end: one with a big project, one that fails.
    let big = copy_fixture("passing");
    std::fs::write(
        big.path().join("data.bin"),
        incompressible_bytes(BIG_FILE_BYTES, 16),
    )
    .unwrap();
    let big_job = sys.submit_async(&big);
    let failing_job = sys.submit_async(&copy_fixture("failing"));
    for id in [big_job, failing_job] {
        sys.wait_for_job_end(id);
    }
    let ended = [big_job, failing_job];
    let ended_archives: Vec<String> = ended
        .iter()
        .map(|id| sys.stored_job(*id).unwrap().unwrap().archive_digest)
        .collect();
    assert!(rows_of_job(&sys, "job_events", big_job) > 0);
    assert!(
        rows_of_job(&sys, "job_test_cases", big_job) > 0,
        "the passing fixture's cases are stored"
    );

    // One job running (it takes the only slot) and one queued behind it.
    let running = sys.submit_async(&slow_project(600));
    sys.wait_for_job(running, "running with output", JOB_DEADLINE, |j| {
        j.status == JobStatus::Running
    });
    wait_for("the slow job's first tick", JOB_DEADLINE, || {
        sys.stored_output(running)
            .is_ok_and(|out| !lines_with(&out, "tick ").is_empty())
    });
    let queued = sys.submit_async(&copy_fixture("passing"));
    assert_eq!(sys.job(queued).unwrap().status, JobStatus::Queued);
    let unfinished = [running, queued];
    let unfinished_archives: Vec<String> = unfinished
        .iter()
        .map(|id| sys.stored_job(*id).unwrap().unwrap().archive_digest)
        .collect();

    // Everything 400 days old.
    for id in ended.iter().chain(&unfinished) {
        assert_eq!(sys.execute_sql(&age_job_sql(*id, AGE_DAYS)).unwrap(), 1);
    }
    sys.execute_sql(&age_archives_sql(AGE_DAYS)).unwrap();
    // On SQLite, free pages the reaper did not make: they go back too.
    let before = on_sqlite.then(|| {
        sys.execute_sql("CREATE TABLE retention_scratch AS SELECT randomblob(1048576) AS b")
            .unwrap();
        sys.execute_sql("DROP TABLE retention_scratch").unwrap();
        let free = count(&sys, "PRAGMA freelist_count");
        assert!(free > 200, "a dropped MiB left {free} free pages");
        (free, count(&sys, "PRAGMA page_count"))
    });

    // The reaper runs when a term of leadership starts (the test's
    // controllers otherwise wait an hour between rounds).
    sys.restart_controller();
    wait_for("the ended jobs to be reaped", SETTLE_DEADLINE, || {
        ended
            .iter()
            .all(|id| sys.stored_job(*id).is_ok_and(|job| job.is_none()))
    });
    // The new controller's reaper counted them, by kind (its metrics
    // started at zero with the process).
    let controller = sys.controller_status_addr().unwrap();
    wait_for(
        "the reaper to count the ended jobs",
        SETTLE_DEADLINE,
        || {
            sample(
                &scrape(&controller),
                r#"ci_reaper_removed_total{kind="jobs"}"#,
            ) == Some(2.0)
        },
    );

    for (id, digest) in ended.iter().zip(&ended_archives) {
        for table in ["job_events", "job_test_cases", "job_test_reports"] {
            assert_eq!(rows_of_job(&sys, table, *id), 0, "{table} of {id}");
        }
        wait_for("the ended jobs' archives to go", SETTLE_DEADLINE, || {
            !archive_stored(&sys, digest)
        });
        assert_eq!(
            count(
                &sys,
                &format!("SELECT COUNT(*) FROM archive_chunks WHERE digest = '{digest}'")
            ),
            0
        );
        let (status, _) = sys
            .get_json(&format!("/jobs/{id}"), &sys.user.api_key)
            .unwrap();
        assert_eq!(status, 404, "GET /jobs/{id}");
    }
    // Both ended jobs' archives, the 3 MiB one among them (counted just
    // after the step that removed them returns).
    let metrics = wait_for_value("the reaper to count the archives", SETTLE_DEADLINE, || {
        let metrics = scrape(&controller);
        (sample(&metrics, r#"ci_reaper_removed_total{kind="archives"}"#) == Some(2.0))
            .then_some(metrics)
    });
    assert!(
        sample(&metrics, r#"ci_reaper_removed_total{kind="log_chunks"}"#) > Some(0.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "ci_reaper_removed_archive_bytes_total") >= Some(BIG_FILE_BYTES as f64),
        "{metrics}"
    );
    let listed: Vec<JobId> = sys
        .get_json("/jobs", &sys.user.api_key)
        .unwrap()
        .1
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        unfinished.iter().all(|id| listed.contains(id)),
        "{listed:?}"
    );

    // The running and the queued job, as old, are untouched and go on.
    for digest in &unfinished_archives {
        assert!(archive_stored(&sys, digest));
    }
    let ticks = lines_with(&sys.stored_output(running).unwrap(), "tick ").len();
    wait_for("the running job to print on", JOB_DEADLINE, || {
        sys.stored_output(running)
            .is_ok_and(|out| lines_with(&out, "tick ").len() > ticks)
    });
    assert_eq!(sys.job(running).unwrap().status, JobStatus::Running);
    assert_eq!(sys.job(queued).unwrap().status, JobStatus::Queued);

    if let Some((free_before, pages_before)) = before {
        // The scratch MiB and the 3 MiB archive went back to the file system.
        let archive_pages = i64::try_from(BIG_FILE_BYTES / 4096).unwrap();
        let (free, pages) =
            wait_for_value("the free pages to be given back", SETTLE_DEADLINE, || {
                let free = count(&sys, "PRAGMA freelist_count");
                let pages = count(&sys, "PRAGMA page_count");
                (free < free_before && pages < pages_before - archive_pages)
                    .then_some((free, pages))
            });
        assert!(
            pages <= pages_before - free_before - archive_pages / 2,
            "{pages} pages left of {pages_before} ({free_before} free then, {free} now)"
        );
    }

    // Once the running job is cancelled, the queued one runs to its end.
    sys.cancel(running).unwrap();
    let ran = sys.wait_for_job_end(queued);
    assert_eq!(ran.success, Some(true), "{ran:?}");
    sys.assert_settled();
}

fn system() -> ci_testkit::Options {
    TestSystem::options()
        .controller_env("CI_MAX_CONCURRENT_JOBS", "1")
        // The running job, aged 400 days, is not over its time limit: only
        // the reaper is under test.
        .controller_env("CI_JOB_TIMEOUT", "100000000")
        .controller_env("CI_REAP_INTERVAL", "1h")
}

#[test]
fn ended_jobs_go_and_unfinished_ones_stay_on_sqlite() {
    ended_jobs_go_and_unfinished_ones_stay(system().start());
}

#[test]
fn ended_jobs_go_and_unfinished_ones_stay_on_postgres() {
    ended_jobs_go_and_unfinished_ones_stay(system().postgres().start());
}
