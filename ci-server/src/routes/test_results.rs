//! `GET /jobs/{id}/tests`: a job's test cases, with the same auth rules as
//! the job itself; `GET /projects/{name}/tests`: the history of a project's
//! tests over the caller's jobs.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ci_common::test_results::{JobReport, JobTests, ProjectTests, TestCaseView, TestOutcome};
use serde::Deserialize;

use crate::app::App;
use crate::auth::{AuthUser, BearerKey};
use crate::error::ApiError;
use crate::routes::owned_job;

#[derive(Debug, Deserialize)]
pub struct TestsQuery {
    #[serde(default)]
    outcome: Option<String>,
}

pub async fn job_tests(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<TestsQuery>, QueryRejection>,
) -> Result<Json<JobTests>, ApiError> {
    let job = owned_job(&app, &key, id).await?;
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?;
    // One outcome, as the contract has it, or several separated by commas
    // (beyond it: `ci` asks for failed,error,xpassed in one request).
    let mut outcomes = Vec::new();
    for raw in query.outcome.as_deref().unwrap_or("").split(',') {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let outcome = TestOutcome::parse(raw).ok_or_else(|| {
            let known: Vec<_> = TestOutcome::ALL.iter().map(|o| o.as_str()).collect();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("outcome must be one of {}", known.join(", ")),
            )
        })?;
        outcomes.push(outcome);
    }
    let no_results = |reason: String| JobTests {
        job_id: job.id,
        summary: None,
        cases: Vec::new(),
        reason: Some(reason),
    };
    let tests = match app.store.job_report(job.id, &outcomes).await? {
        None if job.status.is_terminal() => {
            no_results("No test results were stored for this job".into())
        }
        None => no_results("The job has not ended yet".into()),
        Some(JobReport::Missing { reason }) => no_results(reason),
        Some(JobReport::Cases(cases)) => {
            let summary = app.store.job_test_totals(job.id).await?;
            let mut flaky = app.store.flaky_tests(job.id, &outcomes).await?;
            let new_failures = app.store.new_failures(job.id).await?;
            let cases = cases
                .into_iter()
                .map(|case| {
                    let flaky_jobs = flaky.remove(&case.id).unwrap_or_default();
                    TestCaseView {
                        new_failure: new_failures.contains(&case.id),
                        case,
                        flaky: !flaky_jobs.is_empty(),
                        flaky_jobs,
                    }
                })
                .collect();
            JobTests {
                job_id: job.id,
                summary,
                cases,
                reason: None,
            }
        }
    };
    Ok(Json(tests))
}

/// `GET /projects/{name}/tests`: per test of the project, its outcomes over
/// the caller's latest jobs of it (newest first), its failure rate, median
/// duration and flakiness. Only the caller's jobs: a project name is the
/// client's word, not something the server vouches for, so two users'
/// projects of one name never mix. A name without jobs is an empty list,
/// not a 404: the project exists as soon as a job names it.
pub async fn project_tests(
    State(app): State<App>,
    AuthUser(user): AuthUser,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ProjectTests>, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "Not Found"))?;
    Ok(Json(app.store.project_tests(user.id, &name).await?))
}
