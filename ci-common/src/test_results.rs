//! Test results as data: the test cases of a job's JUnit report, their
//! totals (the job summary's `tests` object) and how the API shows them.

use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// How one test case ended, as pytest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    Passed,
    Failed,
    Error,
    Skipped,
    Xfailed,
    /// Only a strict xfail that passed shows in a JUnit report (as a failure
    /// `[XPASS(strict)] …`); pytest writes a non-strict one as a plain pass.
    Xpassed,
}

impl TestOutcome {
    pub const ALL: [TestOutcome; 6] = [
        TestOutcome::Passed,
        TestOutcome::Failed,
        TestOutcome::Error,
        TestOutcome::Skipped,
        TestOutcome::Xfailed,
        TestOutcome::Xpassed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "failed",
            TestOutcome::Error => "error",
            TestOutcome::Skipped => "skipped",
            TestOutcome::Xfailed => "xfailed",
            TestOutcome::Xpassed => "xpassed",
        }
    }

    pub fn parse(s: &str) -> Option<TestOutcome> {
        TestOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Outcomes that made pytest fail the run: what `--failed` lists and what
    /// can disagree with a pass on the same code.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            TestOutcome::Failed | TestOutcome::Error | TestOutcome::Xpassed
        )
    }
}

impl std::fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One test case of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    /// pytest's node id, `tests/test_x.py::TestA::test_b`.
    pub id: String,
    /// The test's file, when the report names it.
    pub file: Option<String>,
    pub name: String,
    pub outcome: TestOutcome,
    pub duration_seconds: f64,
    /// For failures and errors (and skips): pytest's one-line message.
    pub message: Option<String>,
    /// For failures and errors: the traceback, cut to a limit.
    pub traceback: Option<String>,
}

/// The job summary's `tests` object: totals of the job's report. `failed`
/// counts strict xpasses too and `skipped` counts xfails, as pytest's own
/// summary line does.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TestTotals {
    pub passed: i64,
    pub failed: i64,
    pub errors: i64,
    pub skipped: i64,
    pub duration_seconds: f64,
}

impl TestTotals {
    /// The totals of `cases`.
    pub fn of(cases: &[TestCase]) -> TestTotals {
        let mut totals = TestTotals::default();
        for case in cases {
            match case.outcome {
                TestOutcome::Passed => totals.passed += 1,
                TestOutcome::Failed | TestOutcome::Xpassed => totals.failed += 1,
                TestOutcome::Error => totals.errors += 1,
                TestOutcome::Skipped | TestOutcome::Xfailed => totals.skipped += 1,
            }
            totals.duration_seconds += case.duration_seconds;
        }
        totals
    }
}

/// A job's stored report: its totals and cases, or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub enum JobReport {
    Cases(Vec<TestCase>),
    /// No results, and why (no report, malformed, over a limit, never ran).
    Missing {
        reason: String,
    },
}

/// One case as `GET /jobs/{id}/tests` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCaseView {
    #[serde(flatten)]
    pub case: TestCase,
    /// Failed here and passed in another job on the same code (same archive
    /// digest), or the other way round.
    pub flaky: bool,
    /// The jobs on the same code whose outcome disagrees with this one.
    pub flaky_jobs: Vec<JobId>,
    /// Failed here, and did not fail in the project's previous job: see
    /// the store's `new_failures` for the exact rule.
    pub new_failure: bool,
}

/// `GET /jobs/{id}/tests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTests {
    pub job_id: JobId,
    pub summary: Option<TestTotals>,
    pub cases: Vec<TestCaseView>,
    /// Why there are no results, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How many of a project's latest jobs `GET /projects/{name}/tests` looks
/// at: enough to see a test flip and a failure rate move, few enough that a
/// big suite's history stays a bounded read.
pub const PROJECT_HISTORY_JOBS: usize = 20;

/// One test of a project over its recent jobs, as `GET /projects/{name}/tests`
/// shows it. The contract's fields first; the rest are beyond it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectTest {
    /// pytest's node id.
    pub id: String,
    /// Its outcomes in the jobs of the window that ran it, newest first.
    pub recent: Vec<TestOutcome>,
    /// Failures (failed, error, strict xpass) over runs, in the window.
    pub failure_rate: f64,
    pub median_duration_seconds: f64,
    /// Failed in one job and passed in another on the same code (same
    /// archive digest), within the window.
    pub flaky: bool,
    pub runs: usize,
    pub failures: usize,
    pub last_outcome: TestOutcome,
    pub last_duration_seconds: f64,
    pub mean_duration_seconds: f64,
}

/// `GET /projects/{name}/tests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectTests {
    pub project: String,
    /// By node id.
    pub tests: Vec<ProjectTest>,
    /// The jobs the history covers, newest first (beyond the contract): the
    /// caller's latest ended jobs of the project with test results, at most
    /// [`PROJECT_HISTORY_JOBS`].
    #[serde(default)]
    pub jobs: Vec<JobId>,
}

/// One run of a test in a project's history: what [`ProjectTest::of_runs`]
/// takes.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRun<'a> {
    pub outcome: TestOutcome,
    pub duration_seconds: f64,
    /// The digest of the archive the job ran: equal digests, equal code.
    pub archive_digest: &'a str,
}

impl ProjectTest {
    /// A test's history from its runs, newest first; `None` without runs.
    pub fn of_runs(id: String, runs: &[TestRun<'_>]) -> Option<ProjectTest> {
        let last = runs.first()?;
        let failures = runs.iter().filter(|r| r.outcome.is_failure()).count();
        let mut durations: Vec<f64> = runs.iter().map(|r| r.duration_seconds).collect();
        durations.sort_by(f64::total_cmp);
        let middle = durations.len() / 2;
        let median = if durations.len().is_multiple_of(2) {
            (durations[middle - 1] + durations[middle]) / 2.0
        } else {
            durations[middle]
        };
        let flaky = runs.iter().any(|failed| {
            failed.outcome.is_failure()
                && runs.iter().any(|passed| {
                    passed.outcome == TestOutcome::Passed
                        && passed.archive_digest == failed.archive_digest
                })
        });
        Some(ProjectTest {
            id,
            recent: runs.iter().map(|r| r.outcome).collect(),
            failure_rate: failures as f64 / runs.len() as f64,
            median_duration_seconds: median,
            flaky,
            runs: runs.len(),
            failures,
            last_outcome: last.outcome,
            last_duration_seconds: last.duration_seconds,
            mean_duration_seconds: durations.iter().sum::<f64>() / runs.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_as_pytest_names_them() {
        for outcome in TestOutcome::ALL {
            assert_eq!(TestOutcome::parse(outcome.as_str()), Some(outcome));
            assert_eq!(
                serde_json::to_value(outcome).ok(),
                Some(serde_json::Value::String(outcome.as_str().into()))
            );
        }
        assert_eq!(TestOutcome::parse("passing"), None);
    }

    #[test]
    fn totals_count_xfails_as_skipped_and_strict_xpasses_as_failed() {
        let case = |outcome, d| TestCase {
            id: "t".into(),
            file: None,
            name: "t".into(),
            outcome,
            duration_seconds: d,
            message: None,
            traceback: None,
        };
        let cases: Vec<_> = TestOutcome::ALL.into_iter().map(|o| case(o, 0.5)).collect();
        assert_eq!(
            TestTotals::of(&cases),
            TestTotals {
                passed: 1,
                failed: 2,
                errors: 1,
                skipped: 2,
                duration_seconds: 3.0
            }
        );
    }

    #[test]
    fn a_tests_history_has_its_rate_median_and_flakiness() {
        let run = |outcome, duration_seconds, archive_digest| TestRun {
            outcome,
            duration_seconds,
            archive_digest,
        };
        let history = ProjectTest::of_runs(
            "t.py::test_x".into(),
            &[
                run(TestOutcome::Failed, 4.0, "b"),
                run(TestOutcome::Passed, 1.0, "a"),
                run(TestOutcome::Error, 2.0, "a"),
                run(TestOutcome::Passed, 3.0, "c"),
            ],
        )
        .unwrap();
        assert_eq!(
            history.recent,
            [
                TestOutcome::Failed,
                TestOutcome::Passed,
                TestOutcome::Error,
                TestOutcome::Passed
            ]
        );
        assert_eq!((history.runs, history.failures), (4, 2));
        assert_eq!(history.failure_rate, 0.5);
        assert_eq!(history.median_duration_seconds, 2.5);
        assert_eq!(history.mean_duration_seconds, 2.5);
        assert_eq!(history.last_outcome, TestOutcome::Failed);
        assert_eq!(history.last_duration_seconds, 4.0);
        assert!(history.flaky, "an error and a pass on archive a");

        let steady = ProjectTest::of_runs(
            "t.py::test_y".into(),
            &[
                run(TestOutcome::Failed, 1.0, "b"),
                run(TestOutcome::Passed, 3.0, "a"),
                run(TestOutcome::Skipped, 2.0, "b"),
            ],
        )
        .unwrap();
        assert!(
            !steady.flaky,
            "a skip is no pass; different code may differ"
        );
        assert_eq!(steady.median_duration_seconds, 2.0);
        assert_eq!(ProjectTest::of_runs("t".into(), &[]), None);
    }
}
