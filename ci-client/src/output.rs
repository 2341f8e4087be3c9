//! What `ci` prints, kept apart from the printing so tests can check it.

use chrono::{DateTime, Utc};
use ci_common::api::JobSummary;
use ci_common::test_results::TestTotals;

/// Printed on stderr after an authentication failure, as the reference client does.
pub const AUTH_HELP: &str =
    "\nAuthentication required. Please provide an API key using one of:\n  \
1. Command line flag: --api-key <key>\n  \
2. Environment variable: CI_API_KEY=<key>\n  \
3. Config file: ~/.ci/config (format: api_key=<key>)\n";

/// Column widths of `ci list`, the reference client's layout.
const ID_WIDTH: usize = 38;
const STATUS_WIDTH: usize = 12;
const TIME_WIDTH: usize = 22;
const SUCCESS_WIDTH: usize = 8;
/// The rule under the header is longer than the header, as in the reference.
const RULE_WIDTH: usize = 110;

/// The `ci list` table, one line per job, or `No jobs found.`; every line ends
/// in a newline. Times are shown in UTC to the second.
pub fn format_job_table(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "No jobs found.\n".to_string();
    }
    let mut out = table_row(
        "JOB ID",
        "STATUS",
        "START TIME",
        "END TIME",
        "SUCCESS",
        "TESTS",
    );
    out.push_str(&"-".repeat(RULE_WIDTH));
    out.push('\n');
    for job in jobs {
        out.push_str(&table_row(
            &job.job_id.to_string(),
            job.status.as_str(),
            &format_time(job.start_time),
            &format_time(job.end_time),
            format_success(job.success),
            &format_test_counts(job.tests.as_ref()),
        ));
    }
    out
}

fn table_row(id: &str, status: &str, start: &str, end: &str, success: &str, tests: &str) -> String {
    format!(
        "{id:<ID_WIDTH$} {status:<STATUS_WIDTH$} {start:<TIME_WIDTH$} {end:<TIME_WIDTH$} {success:<SUCCESS_WIDTH$} {tests}\n"
    )
}

/// `ci list`'s TESTS column: passed and failed counts (errors count as
/// failed there), `-` without a report.
fn format_test_counts(tests: Option<&TestTotals>) -> String {
    match tests {
        None => "-".to_string(),
        Some(t) => format!("{} passed, {} failed", t.passed, t.failed + t.errors),
    }
}

fn format_time(time: Option<DateTime<Utc>>) -> String {
    time.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "N/A".to_string())
}

fn format_success(success: Option<bool>) -> &'static str {
    match success {
        None => "-",
        Some(true) => "✓",
        Some(false) => "✗",
    }
}

/// `ci list --json`: the summaries as a JSON array, two-space indented.
pub fn format_job_json(jobs: &[JobSummary]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ci_common::JobStatus;
    use uuid::Uuid;

    fn job(
        id: &str,
        status: JobStatus,
        success: Option<bool>,
        start: Option<i64>,
        end: Option<i64>,
    ) -> JobSummary {
        let at = |secs: i64| {
            Utc.timestamp_opt(secs, 123_456_000)
                .single()
                .expect("valid time")
        };
        JobSummary {
            job_id: Uuid::parse_str(id).expect("uuid"),
            status,
            success,
            start_time: start.map(at),
            end_time: end.map(at),
            exit_code: None,
            last_event_id: None,
            tests: None,
        }
    }

    #[test]
    fn empty_list_says_so() {
        assert_eq!(format_job_table(&[]), "No jobs found.\n");
    }

    #[test]
    fn table_matches_the_reference_layout() {
        // 2025-10-12 19:30:00 UTC
        let t0 = 1_760_297_400;
        let jobs = [
            job(
                "1222e26a-e4d2-4dda-8ffa-ba333257cc1b",
                JobStatus::Completed,
                Some(true),
                Some(t0),
                Some(t0 + 5),
            ),
            job(
                "7ad3f8c9-2b41-4e89-9c12-5a8e7b3d1f4e",
                JobStatus::Running,
                None,
                Some(t0 + 70),
                None,
            ),
            job(
                "00000000-0000-4000-8000-000000000001",
                JobStatus::Completed,
                Some(false),
                Some(t0),
                Some(t0 + 1),
            ),
            job(
                "00000000-0000-4000-8000-000000000002",
                JobStatus::Queued,
                None,
                None,
                None,
            ),
        ];
        let mut jobs = jobs;
        jobs[0].tests = Some(TestTotals {
            passed: 12,
            ..TestTotals::default()
        });
        let table = format_job_table(&jobs);
        let lines: Vec<&str> = table.lines().collect();
        let expected = [
            "JOB ID                                 STATUS       START TIME             END TIME               SUCCESS  TESTS",
            "--------------------------------------------------------------------------------------------------------------",
            "1222e26a-e4d2-4dda-8ffa-ba333257cc1b   completed    2025-10-12 19:30:00    2025-10-12 19:30:05    ✓        12 passed, 0 failed",
            "7ad3f8c9-2b41-4e89-9c12-5a8e7b3d1f4e   running      2025-10-12 19:31:10    N/A                    -        -",
            "00000000-0000-4000-8000-000000000001   completed    2025-10-12 19:30:00    2025-10-12 19:30:01    ✗        -",
            "00000000-0000-4000-8000-000000000002   queued       N/A                    N/A                    -        -",
        ];
        assert_eq!(lines, expected);
        // The reference's columns, then the test counts.
        assert!(lines[0].starts_with("JOB ID                                 STATUS       START TIME             END TIME               SUCCESS "));
    }

    #[test]
    fn json_has_the_contract_fields() {
        let jobs = [job(
            "1222e26a-e4d2-4dda-8ffa-ba333257cc1b",
            JobStatus::Completed,
            Some(true),
            Some(0),
            None,
        )];
        let text = format_job_json(&jobs).expect("serialises");
        assert!(
            text.starts_with("[\n  {\n    \"job_id\": \"1222e26a"),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value[0]["status"], "completed");
        assert_eq!(value[0]["success"], true);
        assert_eq!(value[0]["start_time"], "1970-01-01T00:00:00.123456Z");
        assert!(value[0]["end_time"].is_null());
        assert_eq!(format_job_json(&[]).expect("serialises"), "[]");
    }
}
