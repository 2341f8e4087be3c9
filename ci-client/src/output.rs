//! What `ci` prints, kept apart from the printing so tests can check it.

use chrono::{DateTime, TimeZone, Utc};
use ci_common::api::JobSummary;
use ci_common::test_results::TestTotals;
use ci_common::JobStatus;

/// Printed on stderr after an authentication failure, as the reference client does.
pub const AUTH_HELP: &str =
    "\nAuthentication required. Please provide an API key using one of:\n  \
1. Command line flag: --api-key <key>\n  \
2. Environment variable: CI_API_KEY=<key>\n  \
3. Config file: ~/.ci/config (format: api_key=<key>)\n";

/// How an ended job ended, in one sentence: passed, failed with its exit
/// code, could not run (with the reason), or was cancelled; with how long it
/// ran when that is known. `ci` ends every followed job with it.
pub fn describe_end(job: &JobSummary) -> String {
    let id = job.job_id;
    let took = job
        .duration_seconds
        .map(|s| format!(" in {}", format_duration(s)))
        .unwrap_or_default();
    match (job.status, job.success) {
        (JobStatus::Cancelled, _) => format!("Job {id} was cancelled."),
        (_, Some(true)) => match job.exit_code {
            Some(code) => format!("Job {id} passed (exit code {code}){took}."),
            None => format!("Job {id} passed{took}."),
        },
        (_, _) => match (job.exit_code, job.reason.as_deref()) {
            (Some(code), _) => format!("Job {id} failed with exit code {code}{took}."),
            (None, Some(reason)) => format!("Job {id} could not run: {}", reason.trim_end()),
            (None, None) => format!("Job {id} failed{took}."),
        },
    }
}

/// Seconds for people: `0.4s`, `12.3s`, `2m 05s`, `1h 02m`.
pub fn format_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 60.0 {
        return format!("{seconds:.1}s");
    }
    let whole = seconds.round() as u64;
    if whole < 3600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// Column widths of `ci list`: the reference's first five columns (times
/// wider, for their offset), then the additions.
const ID_WIDTH: usize = 38;
const STATUS_WIDTH: usize = 12;
const TIME_WIDTH: usize = 26;
const SUCCESS_WIDTH: usize = 8;
const DURATION_WIDTH: usize = 10;
const PROJECT_WIDTH: usize = 20;
const PYTHON_WIDTH: usize = 6;

/// `ci list --project NAME --status STATUS --limit N`: which of the
/// caller's jobs (newest first, as `GET /jobs` sends them) to show. The
/// contract gives `GET /jobs` no filters, so they are applied here; the
/// limit counts the jobs that match, not the jobs sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub project: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: Option<usize>,
}

impl JobFilter {
    /// The jobs that match, in their order, at most `limit` of them.
    pub fn apply(&self, jobs: Vec<JobSummary>) -> Vec<JobSummary> {
        jobs.into_iter()
            .filter(|job| {
                self.project
                    .as_deref()
                    .is_none_or(|p| job.project.as_deref() == Some(p))
                    && self.status.is_none_or(|s| job.status == s)
            })
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// The `ci list` table, one line per job, or `No jobs found.`; every line ends
/// in a newline. The contract's five columns come first, in its order, then
/// duration, submitted time, project and Python. Times are shown in `zone`
/// to the second, with its offset.
pub fn format_job_table<Tz: TimeZone>(jobs: &[JobSummary], zone: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    if jobs.is_empty() {
        return "No jobs found.\n".to_string();
    }
    let header = table_row([
        "JOB ID",
        "STATUS",
        "START TIME",
        "END TIME",
        "SUCCESS",
        "DURATION",
        "SUBMITTED",
        "PROJECT",
        "PYTHON",
        "TESTS",
    ]);
    let mut out = header.clone();
    out.push_str(&"-".repeat(header.trim_end().chars().count()));
    out.push('\n');
    for job in jobs {
        let duration = job.duration_seconds.map(format_duration);
        out.push_str(&table_row([
            &job.job_id.to_string(),
            job.status.as_str(),
            &format_time(job.start_time, zone),
            &format_time(job.end_time, zone),
            format_success(job.success),
            duration.as_deref().unwrap_or("-"),
            &format_time(job.submitted_at, zone),
            job.project.as_deref().unwrap_or("-"),
            job.python.as_deref().unwrap_or("-"),
            &format_test_counts(job.tests.as_ref()),
        ]));
    }
    out
}

fn table_row(
    [id, status, start, end, success, duration, submitted, project, python, tests]: [&str; 10],
) -> String {
    format!(
        "{id:<ID_WIDTH$} {status:<STATUS_WIDTH$} {start:<TIME_WIDTH$} {end:<TIME_WIDTH$} \
         {success:<SUCCESS_WIDTH$} {duration:<DURATION_WIDTH$} {submitted:<TIME_WIDTH$} \
         {project:<PROJECT_WIDTH$} {python:<PYTHON_WIDTH$} {tests}\n"
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

fn format_time<Tz: TimeZone>(time: Option<DateTime<Utc>>, zone: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    time.map(|t| {
        t.with_timezone(zone)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    })
    .unwrap_or_else(|| "N/A".to_string())
}

fn format_success(success: Option<bool>) -> &'static str {
    match success {
        None => "-",
        Some(true) => "✓",
        Some(false) => "✗",
    }
}

/// `ci show`: the summary, one field a line.
pub fn format_job_details<Tz: TimeZone>(job: &JobSummary, zone: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let result = match (job.status, job.success) {
        (JobStatus::Completed, Some(true)) => "passed",
        (JobStatus::Completed, _) => "failed",
        (JobStatus::Cancelled, _) => "cancelled",
        _ => "-",
    };
    let tests = job.tests.as_ref().map(|t| {
        format!(
            "{} passed, {} failed, {} errors, {} skipped",
            t.passed, t.failed, t.errors, t.skipped
        )
    });
    let rows = [
        ("Job ID", job.job_id.to_string()),
        ("Status", job.status.to_string()),
        ("Result", result.to_string()),
        ("Exit code", or_dash(job.exit_code.map(|c| c.to_string()))),
        (
            "Reason",
            or_dash(job.reason.as_deref().map(|r| r.trim_end().to_string())),
        ),
        ("Python", or_dash(job.python.clone())),
        ("Project", or_dash(job.project.clone())),
        ("Submitted", format_time(job.submitted_at, zone)),
        ("Started", format_time(job.start_time, zone)),
        ("Ended", format_time(job.end_time, zone)),
        (
            "Duration",
            or_dash(job.duration_seconds.map(format_duration)),
        ),
        ("Engine", or_dash(job.engine.clone())),
        ("Tests", or_dash(tests)),
    ];
    rows.iter()
        .map(|(name, value)| format!("{:<11}{value}\n", format!("{name}:")))
        .collect()
}

/// `ci list --json`: the summaries as a JSON array, two-space indented.
pub fn format_job_json(jobs: &[JobSummary]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
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
            success,
            start_time: start.map(at),
            end_time: end.map(at),
            ..JobSummary::new(id.parse().expect("uuid"), status)
        }
    }

    #[test]
    fn ends_are_described_by_how_they_happened() {
        let id = "1222e26a-e4d2-4dda-8ffa-ba333257cc1b";
        let mut j = job(id, JobStatus::Completed, Some(true), None, None);
        assert_eq!(describe_end(&j), format!("Job {id} passed."));
        j.exit_code = Some(0);
        j.duration_seconds = Some(3.25);
        assert_eq!(
            describe_end(&j),
            format!("Job {id} passed (exit code 0) in 3.2s.")
        );
        j.duration_seconds = None;
        j.success = Some(false);
        j.exit_code = Some(2);
        assert_eq!(
            describe_end(&j),
            format!("Job {id} failed with exit code 2.")
        );
        j.exit_code = None;
        j.reason = Some("Job timed out after 5 seconds\n".into());
        assert_eq!(
            describe_end(&j),
            format!("Job {id} could not run: Job timed out after 5 seconds")
        );
        let c = job(id, JobStatus::Cancelled, None, None, None);
        assert_eq!(describe_end(&c), format!("Job {id} was cancelled."));
    }

    #[test]
    fn empty_list_says_so() {
        assert_eq!(format_job_table(&[], &Utc), "No jobs found.\n");
    }

    #[test]
    fn table_keeps_the_contract_columns_first_and_shows_the_offset() {
        // 2025-10-12 19:30:00 UTC
        let t0 = 1_760_297_400;
        let mut done = job(
            "1222e26a-e4d2-4dda-8ffa-ba333257cc1b",
            JobStatus::Completed,
            Some(true),
            Some(t0),
            Some(t0 + 5),
        );
        done.duration_seconds = Some(5.0);
        done.submitted_at = done.start_time;
        done.project = Some("demo".into());
        done.python = Some("3.13".into());
        done.tests = Some(TestTotals {
            passed: 12,
            failed: 1,
            errors: 1,
            ..TestTotals::default()
        });
        let queued = job(
            "00000000-0000-4000-8000-000000000002",
            JobStatus::Queued,
            None,
            None,
            None,
        );
        let zone = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
        let table = format_job_table(&[done, queued], &zone);
        let lines: Vec<&str> = table.lines().collect();
        let header = "JOB ID                                 STATUS       START TIME                 END TIME                   SUCCESS  DURATION   SUBMITTED                  PROJECT              PYTHON TESTS";
        assert_eq!(lines[0], header);
        // The rule is as wide as the header.
        assert_eq!(lines[1], "-".repeat(header.chars().count()));
        assert_eq!(
            lines[2],
            "1222e26a-e4d2-4dda-8ffa-ba333257cc1b   completed    2025-10-12 21:30:00 +02:00 2025-10-12 21:30:05 +02:00 ✓        5.0s       2025-10-12 21:30:00 +02:00 demo                 3.13   12 passed, 2 failed"
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "00000000-0000-4000-8000-000000000002",
                "queued",
                "N/A",
                "N/A",
                "-",
                "-",
                "N/A",
                "-",
                "-",
                "-"
            ]
        );
        let utc = format_job_table(
            &[job(
                "1222e26a-e4d2-4dda-8ffa-ba333257cc1b",
                JobStatus::Running,
                None,
                Some(t0),
                None,
            )],
            &Utc,
        );
        assert!(utc.contains("2025-10-12 19:30:00 +00:00"), "{utc}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(0.42), "0.4s");
        assert_eq!(format_duration(125.0), "2m 05s");
        assert_eq!(format_duration(3725.0), "1h 02m");
    }

    #[test]
    fn details_show_every_field() {
        let mut j = job(
            "1222e26a-e4d2-4dda-8ffa-ba333257cc1b",
            JobStatus::Completed,
            Some(false),
            Some(0),
            Some(3),
        );
        j.exit_code = Some(1);
        j.duration_seconds = Some(3.0);
        let text = format_job_details(&j, &Utc);
        for line in [
            "Status:    completed",
            "Result:    failed",
            "Exit code: 1",
            "Reason:    -",
            "Python:    -",
            "Duration:  3.0s",
            "Tests:     -",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
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

    #[test]
    fn the_list_filter_keeps_matching_jobs_up_to_the_limit() {
        let mut jobs = Vec::new();
        for (i, (status, project)) in [
            (JobStatus::Completed, Some("calc")),
            (JobStatus::Running, Some("calc")),
            (JobStatus::Completed, None),
            (JobStatus::Completed, Some("other")),
            (JobStatus::Completed, Some("calc")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut summary = JobSummary::new(Uuid::from_u128(i as u128).into(), status);
            summary.project = project.map(str::to_string);
            jobs.push(summary);
        }
        let ids = |filter: JobFilter| -> Vec<u128> {
            filter
                .apply(jobs.clone())
                .iter()
                .map(|j| j.job_id.as_uuid().as_u128())
                .collect()
        };
        assert_eq!(ids(JobFilter::default()), [0, 1, 2, 3, 4]);
        let calc = JobFilter {
            project: Some("calc".into()),
            ..JobFilter::default()
        };
        assert_eq!(ids(calc.clone()), [0, 1, 4]);
        assert_eq!(
            ids(JobFilter {
                status: Some(JobStatus::Completed),
                limit: Some(2),
                ..calc
            }),
            [0, 4]
        );
        assert_eq!(
            ids(JobFilter {
                limit: Some(0),
                ..JobFilter::default()
            }),
            Vec::<u128>::new()
        );
    }
}
