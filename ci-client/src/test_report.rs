//! What `ci tests` and the end of `ci submit test` / `ci wait` print about a
//! job's test results, kept apart from the printing so tests can check it.

use ci_common::test_results::{JobTests, ProjectTests, TestCaseView, TestOutcome};

/// How an outcome is shown in tables and summaries (pytest's words).
fn outcome_label(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::Passed => "PASSED",
        TestOutcome::Failed => "FAILED",
        TestOutcome::Error => "ERROR",
        TestOutcome::Skipped => "SKIPPED",
        TestOutcome::Xfailed => "XFAIL",
        TestOutcome::Xpassed => "XPASS",
    }
}

fn seconds(s: f64) -> String {
    format!("{s:.2}s")
}

/// The flakiness note of a case, when it has one.
fn flaky_note(case: &TestCaseView) -> Option<String> {
    if !case.flaky {
        return None;
    }
    let jobs: Vec<String> = case.flaky_jobs.iter().map(|j| j.to_string()).collect();
    Some(if case.case.outcome.is_failure() {
        format!(
            "flaky: failed, but passed on the same code in job {}",
            jobs.join(", ")
        )
    } else {
        format!(
            "flaky: passed, but failed on the same code in job {}",
            jobs.join(", ")
        )
    })
}

/// `ci tests <job_id>`: one line per case (outcome, test, duration), flaky
/// cases marked; or why there are no results.
pub fn format_tests_table(tests: &JobTests) -> String {
    if tests.summary.is_none() {
        return format!(
            "No test results: {}\n",
            tests.reason.as_deref().unwrap_or("the job has no report")
        );
    }
    if tests.cases.is_empty() {
        return "No matching tests.\n".to_string();
    }
    let width = tests
        .cases
        .iter()
        .map(|c| c.case.id.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:<8} {:<width$} {:>9}\n", "OUTCOME", "TEST", "DURATION");
    for case in &tests.cases {
        out.push_str(&format!(
            "{:<8} {:<width$} {:>9}",
            outcome_label(case.case.outcome),
            case.case.id,
            seconds(case.case.duration_seconds)
        ));
        if case.flaky {
            out.push_str("  [flaky]");
        }
        out.push('\n');
    }
    out
}

/// pytest's one-letter progress mark of an outcome (`.FEsxX`), for a
/// test's recent outcomes in one short column.
fn outcome_mark(outcome: TestOutcome) -> char {
    match outcome {
        TestOutcome::Passed => '.',
        TestOutcome::Failed => 'F',
        TestOutcome::Error => 'E',
        TestOutcome::Skipped => 's',
        TestOutcome::Xfailed => 'x',
        TestOutcome::Xpassed => 'X',
    }
}

/// `ci tests --project NAME [--flaky] [--slowest N]`: the tests to show.
/// `--flaky` keeps the flaky ones; `--slowest N` keeps the N with the
/// longest median duration, slowest first (else they stay by id).
pub fn select_project_tests(
    mut tests: ProjectTests,
    flaky_only: bool,
    slowest: Option<usize>,
) -> ProjectTests {
    if flaky_only {
        tests.tests.retain(|t| t.flaky);
    }
    if let Some(n) = slowest {
        tests.tests.sort_by(|a, b| {
            b.median_duration_seconds
                .total_cmp(&a.median_duration_seconds)
                .then_with(|| a.id.cmp(&b.id))
        });
        tests.tests.truncate(n);
    }
    tests
}

/// `ci tests --project NAME`: one line per test (runs, failure rate, median
/// duration, last outcome, recent outcomes newest first as pytest's marks),
/// flaky tests marked.
pub fn format_project_tests_table(tests: &ProjectTests) -> String {
    if tests.jobs.is_empty() {
        return format!("No test results for project {}.\n", tests.project);
    }
    if tests.tests.is_empty() {
        return "No matching tests.\n".to_string();
    }
    let width = tests
        .tests
        .iter()
        .map(|t| t.id.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$} {:>4} {:>6} {:>9} {:<8} RECENT (newest first)\n",
        "TEST", "RUNS", "FAIL%", "MEDIAN", "LAST"
    );
    for test in &tests.tests {
        let recent: String = test.recent.iter().map(|o| outcome_mark(*o)).collect();
        out.push_str(&format!(
            "{:<width$} {:>4} {:>5.0}% {:>9} {:<8} {recent}",
            test.id,
            test.runs,
            test.failure_rate * 100.0,
            seconds(test.median_duration_seconds),
            outcome_label(test.last_outcome),
        ));
        if test.flaky {
            out.push_str("  [flaky]");
        }
        out.push('\n');
    }
    out
}

/// The first line of a message, for one-line summaries.
fn first_line(message: Option<&str>) -> &str {
    message
        .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
}

/// Printed on stderr after a job's output: one summary line, then one line
/// per failed test with its message (and whether it is flaky).
pub fn format_end_of_job_summary(tests: &JobTests) -> String {
    let Some(summary) = tests.summary else {
        return format!(
            "Tests: no results ({})\n",
            tests.reason.as_deref().unwrap_or("no report")
        );
    };
    let mut out = format!(
        "Tests: {} passed, {} failed, {} errors, {} skipped in {}\n",
        summary.passed,
        summary.failed,
        summary.errors,
        summary.skipped,
        seconds(summary.duration_seconds)
    );
    for case in tests.cases.iter().filter(|c| c.case.outcome.is_failure()) {
        out.push_str(outcome_label(case.case.outcome));
        out.push(' ');
        out.push_str(&case.case.id);
        let message = first_line(case.case.message.as_deref());
        if !message.is_empty() {
            out.push_str(" - ");
            out.push_str(message);
        }
        let notes: Vec<String> = case
            .new_failure
            .then(|| "new failure: it did not fail in the project's previous job".to_string())
            .into_iter()
            .chain(flaky_note(case))
            .collect();
        if !notes.is_empty() {
            out.push_str(" (");
            out.push_str(&notes.join("; "));
            out.push(')');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_common::test_results::{TestCase, TestTotals};
    use ci_common::JobId;
    use uuid::Uuid;

    fn view(
        id: &str,
        outcome: TestOutcome,
        message: Option<&str>,
        flaky_jobs: Vec<JobId>,
    ) -> TestCaseView {
        TestCaseView {
            case: TestCase {
                id: id.into(),
                file: None,
                name: id.into(),
                outcome,
                duration_seconds: 0.5,
                message: message.map(str::to_string),
                traceback: None,
            },
            flaky: !flaky_jobs.is_empty(),
            flaky_jobs,
            new_failure: false,
        }
    }

    fn tests(cases: Vec<TestCaseView>) -> JobTests {
        JobTests {
            job_id: JobId::nil(),
            summary: Some(TestTotals {
                passed: 1,
                failed: 1,
                errors: 1,
                skipped: 0,
                duration_seconds: 1.5,
            }),
            cases,
            reason: None,
        }
    }

    #[test]
    fn the_summary_names_each_failure_with_its_message_and_flakiness() {
        let other = JobId::from_uuid(Uuid::from_u128(7));
        let text = format_end_of_job_summary(&tests(vec![
            view("t.py::test_ok", TestOutcome::Passed, None, vec![]),
            view(
                "t.py::test_bad",
                TestOutcome::Failed,
                Some("assert 1 == 2\nmore"),
                vec![other],
            ),
            view(
                "t.py::test_setup",
                TestOutcome::Error,
                Some("failed on setup"),
                vec![],
            ),
        ]));
        assert_eq!(
            text,
            format!(
                "Tests: 1 passed, 1 failed, 1 errors, 0 skipped in 1.50s\n\
                 FAILED t.py::test_bad - assert 1 == 2 (flaky: failed, but passed on the same code in job {other})\n\
                 ERROR t.py::test_setup - failed on setup\n"
            )
        );
        let none = JobTests {
            summary: None,
            cases: vec![],
            reason: Some("pytest wrote no test report".into()),
            job_id: JobId::nil(),
        };
        assert_eq!(
            format_end_of_job_summary(&none),
            "Tests: no results (pytest wrote no test report)\n"
        );
    }

    #[test]
    fn a_new_failure_says_so_in_the_summary() {
        let mut new = view("t.py::test_new", TestOutcome::Failed, Some("boom"), vec![]);
        new.new_failure = true;
        let text = format_end_of_job_summary(&tests(vec![new]));
        assert_eq!(
            text.lines().nth(1),
            Some("FAILED t.py::test_new - boom (new failure: it did not fail in the project's previous job)")
        );
    }

    fn project() -> ProjectTests {
        let history = |id: &str, recent: Vec<TestOutcome>, median, flaky| {
            let failures = recent.iter().filter(|o| o.is_failure()).count();
            ci_common::test_results::ProjectTest {
                id: id.into(),
                failure_rate: failures as f64 / recent.len() as f64,
                median_duration_seconds: median,
                flaky,
                runs: recent.len(),
                failures,
                last_outcome: recent[0],
                last_duration_seconds: median,
                mean_duration_seconds: median,
                recent,
            }
        };
        ProjectTests {
            project: "calc".into(),
            tests: vec![
                history(
                    "t.py::test_a",
                    vec![TestOutcome::Failed, TestOutcome::Passed],
                    0.5,
                    true,
                ),
                history("t.py::test_b", vec![TestOutcome::Passed], 2.0, false),
                history("t.py::test_c", vec![TestOutcome::Skipped], 1.0, false),
            ],
            jobs: vec![JobId::nil()],
        }
    }

    #[test]
    fn a_projects_table_has_rates_medians_and_recent_marks() {
        assert_eq!(
            format_project_tests_table(&project()),
            "TEST         RUNS  FAIL%    MEDIAN LAST     RECENT (newest first)\n\
             t.py::test_a    2    50%     0.50s FAILED   F.  [flaky]\n\
             t.py::test_b    1     0%     2.00s PASSED   .\n\
             t.py::test_c    1     0%     1.00s SKIPPED  s\n"
        );
        let none = ProjectTests {
            tests: vec![],
            jobs: vec![],
            ..project()
        };
        assert_eq!(
            format_project_tests_table(&none),
            "No test results for project calc.\n"
        );
        let unmatched = ProjectTests {
            tests: vec![],
            ..project()
        };
        assert_eq!(
            format_project_tests_table(&unmatched),
            "No matching tests.\n"
        );
    }

    #[test]
    fn flaky_and_slowest_select_the_projects_tests() {
        let ids = |t: ProjectTests| -> Vec<String> { t.tests.into_iter().map(|t| t.id).collect() };
        assert_eq!(
            ids(select_project_tests(project(), true, None)),
            ["t.py::test_a"]
        );
        assert_eq!(
            ids(select_project_tests(project(), false, Some(2))),
            ["t.py::test_b", "t.py::test_c"]
        );
        assert_eq!(
            ids(select_project_tests(project(), false, None)),
            ["t.py::test_a", "t.py::test_b", "t.py::test_c"]
        );
    }

    #[test]
    fn the_table_has_outcome_test_and_duration() {
        let text = format_tests_table(&tests(vec![
            view("t.py::test_ok", TestOutcome::Passed, None, vec![]),
            view(
                "t.py::test_flips",
                TestOutcome::Failed,
                None,
                vec![JobId::nil()],
            ),
        ]));
        assert_eq!(
            text,
            "OUTCOME  TEST              DURATION\n\
             PASSED   t.py::test_ok        0.50s\n\
             FAILED   t.py::test_flips     0.50s  [flaky]\n"
        );
    }
}
