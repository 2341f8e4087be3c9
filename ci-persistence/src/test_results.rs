//! Test results: a job's report (its cases and totals, or why it has none)
//! and the flakiness rule, which compares outcomes of jobs on the same code.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;

use ci_common::test_results::{
    JobReport, ProjectTest, ProjectTests, TestCase, TestOutcome, TestRun, TestTotals,
    PROJECT_HISTORY_JOBS,
};
use ci_common::{JobId, UserId};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::store::{Backend, Store};

/// Rows per INSERT: 9 parameters each stays far below SQLite's limit of
/// 32 766 bound parameters and PostgreSQL's 65 535.
const CASES_PER_INSERT: usize = 500;

/// The summary's `tests` columns, beside a job aliased `j` joined with
/// [`TESTS_JOIN`].
pub(crate) const TESTS_COLUMNS: &str = "r.passed AS tests_passed, r.failed AS tests_failed, \
     r.errors AS tests_errors, r.skipped AS tests_skipped, r.duration_us AS tests_duration_us";
pub(crate) const TESTS_JOIN: &str = "LEFT JOIN job_test_reports r ON r.job_id = j.id";

/// `'failed', 'error', 'xpassed'`: the failure outcomes, for an SQL `IN`.
fn failure_outcomes_sql() -> String {
    TestOutcome::ALL
        .into_iter()
        .filter(|o| o.is_failure())
        .map(|o| format!("'{}'", o.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` AND column IN ('failed', …)` for `outcomes`, nothing when empty. The
/// outcomes are the enum's own words, not the caller's text.
fn outcome_filter(column: &str, outcomes: &[TestOutcome]) -> String {
    if outcomes.is_empty() {
        return String::new();
    }
    let names: Vec<String> = outcomes
        .iter()
        .map(|o| format!("'{}'", o.as_str()))
        .collect();
    format!(" AND {column} IN ({})", names.join(", "))
}

fn seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

fn micros(seconds: f64) -> i64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1e6).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// The `tests` object of a row selected with [`TESTS_COLUMNS`]: null when the
/// job has no report (no row, or a row with a reason).
pub(crate) fn totals(row: &AnyRow) -> Result<Option<TestTotals>> {
    let Some(passed) = row.try_get::<Option<i64>, _>("tests_passed")? else {
        return Ok(None);
    };
    Ok(Some(TestTotals {
        passed,
        failed: row.try_get::<Option<i64>, _>("tests_failed")?.unwrap_or(0),
        errors: row.try_get::<Option<i64>, _>("tests_errors")?.unwrap_or(0),
        skipped: row.try_get::<Option<i64>, _>("tests_skipped")?.unwrap_or(0),
        duration_seconds: seconds(
            row.try_get::<Option<i64>, _>("tests_duration_us")?
                .unwrap_or(0),
        ),
    }))
}

fn case(row: &AnyRow) -> Result<TestCase> {
    let outcome: String = row.try_get("outcome")?;
    Ok(TestCase {
        id: row.try_get("test_id")?,
        file: row.try_get("file")?,
        name: row.try_get("name")?,
        outcome: TestOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("test outcome {outcome:?}")))?,
        duration_seconds: seconds(row.try_get("duration_us")?),
        message: row.try_get("message")?,
        traceback: row.try_get("traceback")?,
    })
}

/// For each test of a job, the other jobs on the same code that disagree.
pub type FlakyJobs = HashMap<String, Vec<JobId>>;

/// One piece of a report being parsed, as [`Store::put_job_cases`] takes it.
#[derive(Debug)]
pub enum ReportChunk {
    /// The next cases, in report order.
    Cases(Vec<TestCase>),
    /// The report was read whole: what came is all of it.
    Done,
    /// The report turned out bad: no results, for this reason.
    Failed(String),
}

/// Inserts `cases`, numbered from `first_ordinal`, in statements of
/// [`CASES_PER_INSERT`] rows. On SQLite the parameters are anonymous (`?`,
/// bound in order): SQLite finds a numbered one (`$7`) by a linear search of
/// the statement's parameter names, so binding 4 500 of them costs millions
/// of comparisons; that made storing 5 000 cases take about 470 ms instead
/// of 24 (a probe at load 20, release build). PostgreSQL needs `$N`.
async fn insert_cases(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    job_id: &str,
    first_ordinal: usize,
    cases: &[TestCase],
) -> Result<()> {
    for (chunk_index, chunk) in cases.chunks(CASES_PER_INSERT).enumerate() {
        let mut sql = String::from(
            "INSERT INTO job_test_cases (job_id, ordinal, test_id, file, name, outcome, duration_us, message, traceback) VALUES ",
        );
        for i in 0..chunk.len() {
            let p = i * 9;
            if i > 0 {
                sql.push_str(", ");
            }
            if backend == Backend::Sqlite {
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?)");
                continue;
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8,
                p + 9
            ));
        }
        let mut query = sqlx::query(&sql);
        for (i, case) in chunk.iter().enumerate() {
            let ordinal = (first_ordinal + chunk_index * CASES_PER_INSERT + i) as i64;
            query = query
                .bind(job_id)
                .bind(ordinal)
                .bind(&case.id)
                .bind(&case.file)
                .bind(&case.name)
                .bind(case.outcome.as_str())
                .bind(micros(case.duration_seconds))
                .bind(&case.message)
                .bind(&case.traceback);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Stores a job's report once: its cases and totals, or why it has none.
    /// A second call for the same job (a controller that retried after
    /// storing) keeps the first.
    pub async fn put_job_report(&self, job_id: JobId, report: &JobReport) -> Result<()> {
        let id = job_id.to_string();
        let mut tx = self.begin_write().await?;
        let (totals, reason) = match report {
            JobReport::Cases(cases) => (Some(TestTotals::of(cases)), None),
            JobReport::Missing { reason } => (None, Some(reason.as_str())),
        };
        let inserted = sqlx::query(
            "INSERT INTO job_test_reports (job_id, passed, failed, errors, skipped, duration_us, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&id)
        .bind(totals.map(|t| t.passed))
        .bind(totals.map(|t| t.failed))
        .bind(totals.map(|t| t.errors))
        .bind(totals.map(|t| t.skipped))
        .bind(totals.map(|t| micros(t.duration_seconds)))
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(());
        }
        if let JobReport::Cases(cases) = report {
            insert_cases(&mut tx, self.backend, &id, 0, cases).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a report whose cases arrive in chunks while it is parsed, so
    /// a big report's cases are never all in memory. Each chunk is its own
    /// short write, so a big report never holds the (SQLite) writer for
    /// long: the controller's lease renewals and other jobs' output go in
    /// between. The cases count only once the report's row is written, on
    /// [`ReportChunk::Done`]; on [`ReportChunk::Failed`], or a sender gone
    /// without a word, they are deleted and the reason is stored instead. A
    /// report stored before is kept; cases left by an attempt that died
    /// half-way are deleted first.
    pub async fn put_job_cases(
        &self,
        job_id: JobId,
        mut chunks: tokio::sync::mpsc::Receiver<ReportChunk>,
    ) -> Result<()> {
        let id = job_id.to_string();
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM job_test_reports WHERE job_id = $1")
                .bind(&id)
                .fetch_optional(&self.reader)
                .await?;
        if stored.is_some() {
            return Ok(());
        }
        self.delete_unreported_cases(&id).await?;
        let mut totals = TestTotals::default();
        let mut count = 0;
        let failure = loop {
            match chunks.recv().await {
                Some(ReportChunk::Cases(cases)) => {
                    let mut tx = self.begin_write().await?;
                    insert_cases(&mut tx, self.backend, &id, count, &cases).await?;
                    tx.commit().await?;
                    count += cases.len();
                    let more = TestTotals::of(&cases);
                    totals.passed += more.passed;
                    totals.failed += more.failed;
                    totals.errors += more.errors;
                    totals.skipped += more.skipped;
                    totals.duration_seconds += more.duration_seconds;
                }
                Some(ReportChunk::Done) => break None,
                Some(ReportChunk::Failed(reason)) => break Some(reason),
                None => break Some("reading the test report stopped before its end".to_string()),
            }
        };
        if let Some(reason) = failure {
            self.delete_unreported_cases(&id).await?;
            return self
                .put_job_report(job_id, &JobReport::Missing { reason })
                .await;
        }
        let inserted = sqlx::query(
            "INSERT INTO job_test_reports (job_id, passed, failed, errors, skipped, duration_us, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&id)
        .bind(totals.passed)
        .bind(totals.failed)
        .bind(totals.errors)
        .bind(totals.skipped)
        .bind(micros(totals.duration_seconds))
        .execute(&self.writer)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Another writer stored a report meanwhile; this one's cases go.
            tracing::warn!(%job_id, "a test report was stored twice; the first is kept");
        }
        Ok(())
    }

    /// Deletes the cases of a job that has no report row: an unfinished
    /// attempt's.
    async fn delete_unreported_cases(&self, job_id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM job_test_cases WHERE job_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM job_test_reports r WHERE r.job_id = $1)",
        )
        .bind(job_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A job's report as stored, its cases in report order and only those
    /// with one of `outcomes` (all when empty); `None` when none was stored
    /// (yet).
    pub async fn job_report(
        &self,
        job_id: JobId,
        outcomes: &[TestOutcome],
    ) -> Result<Option<JobReport>> {
        let id = job_id.to_string();
        let reason: Option<Option<String>> =
            sqlx::query_scalar("SELECT reason FROM job_test_reports WHERE job_id = $1")
                .bind(&id)
                .fetch_optional(&self.reader)
                .await?;
        let Some(reason) = reason else {
            return Ok(None);
        };
        if let Some(reason) = reason {
            return Ok(Some(JobReport::Missing { reason }));
        }
        let filter = outcome_filter("outcome", outcomes);
        let sql = format!(
            "SELECT test_id, file, name, outcome, duration_us, message, traceback FROM job_test_cases \
             WHERE job_id = $1{filter} ORDER BY ordinal"
        );
        let rows = sqlx::query(&sql).bind(&id).fetch_all(&self.reader).await?;
        Ok(Some(JobReport::Cases(
            rows.iter().map(case).collect::<Result<_>>()?,
        )))
    }

    /// The job's totals, null without a report.
    pub async fn job_test_totals(&self, job_id: JobId) -> Result<Option<TestTotals>> {
        let sql = format!("SELECT {TESTS_COLUMNS} FROM jobs j {TESTS_JOIN} WHERE j.id = $1");
        let row = sqlx::query(&sql)
            .bind(job_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(match row {
            Some(row) => totals(&row)?,
            None => None,
        })
    }

    /// The flakiness rule: a test of `job_id` that failed where another job of
    /// the same owner on the same archive digest (the same code) passed it, or
    /// passed where another failed, with the jobs that disagree, oldest first.
    /// Only the owner's jobs count, so one user never learns of another's.
    /// With `outcomes`, only the job's cases with one of them are looked at
    /// (all when empty): the end-of-job summary asks about the failures
    /// alone, and a big suite run often on one archive would otherwise have
    /// every passing case compared with every other run of it.
    pub async fn flaky_tests(&self, job_id: JobId, outcomes: &[TestOutcome]) -> Result<FlakyJobs> {
        let failures = failure_outcomes_sql();
        let only = outcome_filter("c.outcome", outcomes);
        let sql = format!(
            "SELECT DISTINCT c.test_id AS test_id, oj.id AS other_job, oj.created_at AS other_created \
             FROM job_test_cases c \
             JOIN jobs j ON j.id = c.job_id \
             JOIN jobs oj ON oj.archive_digest = j.archive_digest AND oj.user_id = j.user_id AND oj.id <> j.id \
             JOIN job_test_cases o ON o.job_id = oj.id AND o.test_id = c.test_id \
             JOIN job_test_reports r ON r.job_id = oj.id AND r.reason IS NULL \
             WHERE c.job_id = $1{only} AND ( \
               (c.outcome IN ({failures}) AND o.outcome = 'passed') OR \
               (c.outcome = 'passed' AND o.outcome IN ({failures}))) \
             ORDER BY other_created, other_job"
        );
        let rows = sqlx::query(&sql)
            .bind(job_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        let mut flaky = FlakyJobs::new();
        for row in rows {
            let test: String = row.try_get("test_id")?;
            let other: String = row.try_get("other_job")?;
            let other = other
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("job id {other:?}: {e}")))?;
            let jobs = flaky.entry(test).or_default();
            if !jobs.contains(&other) {
                jobs.push(other);
            }
        }
        Ok(flaky)
    }

    /// The new failures of `job_id`: the ids of its failed cases (failed,
    /// error, strict xpass) that did not fail in the project's previous job.
    ///
    /// The previous job is, among the jobs of the same owner with the same
    /// project name, the one that ended last before this one ended (any
    /// time, while this one has not ended) and has test results: a job
    /// without results (it never reached pytest, its report was bad) says
    /// nothing about the tests, so it is passed over. Ordering by end, not
    /// by submission, makes the answer final once this job has ended: no
    /// job can end before it later. A failure is new when the test passed
    /// there, was skipped or xfailed there, or was not there at all (a new
    /// test, or one deselected there); a test that failed there too is an
    /// old failure. Without a project, or without a previous job (the
    /// project's first results), nothing is new: there is nothing to be
    /// new against. Only the owner's jobs count, as for flakiness.
    pub async fn new_failures(&self, job_id: JobId) -> Result<HashSet<String>> {
        let failures = failure_outcomes_sql();
        let previous = "SELECT p.id FROM jobs j \
             JOIN jobs p ON p.user_id = j.user_id AND p.project = j.project AND p.id <> j.id \
             JOIN job_test_reports pr ON pr.job_id = p.id AND pr.reason IS NULL \
             WHERE j.id = $1 AND p.ended_at IS NOT NULL AND (j.ended_at IS NULL \
               OR p.ended_at < j.ended_at OR (p.ended_at = j.ended_at AND p.id < j.id)) \
             ORDER BY p.ended_at DESC, p.id DESC LIMIT 1";
        let previous: Option<String> = sqlx::query_scalar(previous)
            .bind(job_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        let Some(previous) = previous else {
            return Ok(HashSet::new());
        };
        let sql = format!(
            "SELECT c.test_id FROM job_test_cases c WHERE c.job_id = $1 AND c.outcome IN ({failures}) \
             AND NOT EXISTS (SELECT 1 FROM job_test_cases o WHERE o.job_id = $2 \
               AND o.test_id = c.test_id AND o.outcome IN ({failures}))"
        );
        let ids: Vec<String> = sqlx::query_scalar(&sql)
            .bind(job_id.to_string())
            .bind(previous)
            .fetch_all(&self.reader)
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// The history of a project's tests over the owner's latest
    /// [`PROJECT_HISTORY_JOBS`] ended jobs of that project that have test
    /// results (newest end first), as `GET /projects/{name}/tests` shows it.
    /// The cases are read as a stream and folded per test, so only the
    /// per-test history is held, never all the rows.
    pub async fn project_tests(&self, user_id: UserId, project: &str) -> Result<ProjectTests> {
        let rows = sqlx::query(
            "SELECT j.id, j.archive_digest FROM jobs j \
             JOIN job_test_reports r ON r.job_id = j.id AND r.reason IS NULL \
             WHERE j.user_id = $1 AND j.project = $2 AND j.ended_at IS NOT NULL \
             ORDER BY j.ended_at DESC, j.id DESC LIMIT $3",
        )
        .bind(user_id.to_string())
        .bind(project)
        .bind(PROJECT_HISTORY_JOBS as i64)
        .fetch_all(&self.reader)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut digests = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            jobs.push(
                id.parse::<JobId>()
                    .map_err(|e| StoreError::Corrupt(format!("job id {id:?}: {e}")))?,
            );
            digests.push(row.try_get::<String, _>("archive_digest")?);
        }
        if jobs.is_empty() {
            return Ok(ProjectTests {
                project: project.to_string(),
                tests: Vec::new(),
                jobs,
            });
        }
        let newness: HashMap<String, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), i))
            .collect();
        let placeholders: Vec<String> = (1..=jobs.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT job_id, test_id, outcome, duration_us FROM job_test_cases WHERE job_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in &jobs {
            query = query.bind(id.to_string());
        }
        // Per test: (job's place in the window, outcome, duration).
        let mut runs: HashMap<String, Vec<(usize, TestOutcome, f64)>> = HashMap::new();
        let mut cases = query.fetch(&self.reader);
        while let Some(row) = cases.try_next().await? {
            let job: String = row.try_get("job_id")?;
            let place = *newness
                .get(&job)
                .ok_or_else(|| StoreError::Corrupt(format!("case of job {job:?}")))?;
            let outcome: String = row.try_get("outcome")?;
            let outcome = TestOutcome::parse(&outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("test outcome {outcome:?}")))?;
            runs.entry(row.try_get("test_id")?).or_default().push((
                place,
                outcome,
                seconds(row.try_get("duration_us")?),
            ));
        }
        drop(cases);
        let mut tests: Vec<ProjectTest> = runs
            .into_iter()
            .filter_map(|(id, mut runs)| {
                runs.sort_by_key(|(place, _, _)| *place);
                let runs: Vec<TestRun<'_>> = runs
                    .iter()
                    .map(|&(place, outcome, duration_seconds)| TestRun {
                        outcome,
                        duration_seconds,
                        archive_digest: &digests[place],
                    })
                    .collect();
                ProjectTest::of_runs(id, &runs)
            })
            .collect();
        tests.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ProjectTests {
            project: project.to_string(),
            tests,
            jobs,
        })
    }
}
