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
    /// Failed now, passed in the project's previous job. Always false until
    /// jobs carry their project.
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
}
