//! `ci tests <job_id> [--failed] [--json]`, and the test summary printed at
//! the end of `ci submit test` and `ci wait`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use ci_client::test_report::{
    format_end_of_job_summary, format_project_tests_table, format_tests_table, select_project_tests,
};
use ci_client::ApiClient;
use ci_common::JobId;

use crate::commands::{about_job, resolve_job_id, Context};

/// `ci tests <job_id> [--failed] [--json]`.
pub async fn tests(
    context: &Context,
    raw_job_id: &str,
    failed: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let api = context.api()?;
    let job_id = resolve_job_id(&api, raw_job_id).await?;
    let tests = api
        .job_tests(job_id, failed)
        .await
        .map_err(about_job(job_id))?;
    write_tests(&tests, json, format_tests_table)
}

/// `ci tests --project NAME [--flaky] [--slowest N] [--json]`.
pub async fn project_tests(
    context: &Context,
    project: &str,
    flaky_only: bool,
    slowest: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let tests = context.api()?.project_tests(project).await?;
    let tests = select_project_tests(tests, flaky_only, slowest);
    write_tests(&tests, json, format_project_tests_table)
}

/// Prints `tests` on stdout as pretty JSON, or as `table` makes it.
fn write_tests<T: serde::Serialize>(
    tests: &T,
    json: bool,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    let text = if json {
        let mut text =
            serde_json::to_string_pretty(tests).context("cannot format the tests as JSON")?;
        text.push('\n');
        text
    } else {
        table(tests)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the tests")?;
    Ok(ExitCode::SUCCESS)
}

/// After a job's output: its test summary on stderr. Best-effort: a server
/// without test results (an older one) or a failed request prints nothing
/// and never changes the exit code.
pub async fn print_end_of_job_summary(api: &ApiClient, job_id: JobId) {
    if let Ok(tests) = api.job_tests(job_id, true).await {
        eprint!("{}", format_end_of_job_summary(&tests));
    }
}
