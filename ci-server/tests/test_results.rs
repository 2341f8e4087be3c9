//! `GET /jobs/{id}/tests` and the summary's `tests` object, over HTTP against
//! the real router; the tests play the controller through the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ci_common::test_results::{JobReport, TestCase, TestOutcome};
use ci_common::JobId;
use ci_persistence::JobOutcome;
use serde_json::{json, Value};
use support::{error_detail, project_zip, spawn_app, TestApp};

fn case(name: &str, outcome: TestOutcome, seconds: f64) -> TestCase {
    TestCase {
        id: format!("tests/test_x.py::TestA::{name}"),
        file: Some("tests/test_x.py".into()),
        name: name.into(),
        outcome,
        duration_seconds: seconds,
        message: outcome.is_failure().then(|| format!("{name} broke")),
        traceback: outcome.is_failure().then(|| "Traceback".into()),
    }
}

/// A job on `zip` that ran and ended with `report` stored, as the
/// controller leaves it.
async fn ended_job(app: &TestApp, zip: Vec<u8>, report: &JobReport) -> JobId {
    let id = app.submit_zip(zip).await;
    app.store.mark_running(id, "c", "img", None).await.unwrap();
    app.store.put_job_report(id, report).await.unwrap();
    app.store
        .finish_job(id, &JobOutcome::exited(1))
        .await
        .unwrap();
    id
}

async fn json_of(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_cases_of_a_job_are_served_with_their_summary() {
    let app = spawn_app().await;
    let report = JobReport::Cases(vec![
        case("test_ok", TestOutcome::Passed, 0.5),
        case("test_bad", TestOutcome::Failed, 0.25),
        case("test_later", TestOutcome::Skipped, 0.0),
        case("test_known", TestOutcome::Xfailed, 0.0),
        case("test_setup", TestOutcome::Error, 0.0),
    ]);
    let id = ended_job(&app, project_zip("test_x.py"), &report).await;
    let body = json_of(&app, &format!("/jobs/{id}/tests")).await;
    let summary =
        json!({"passed": 1, "failed": 1, "errors": 1, "skipped": 2, "duration_seconds": 0.75});
    assert_eq!(body["job_id"], id.to_string());
    assert_eq!(body["summary"], summary);
    let cases = body["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    assert_eq!(
        cases[1],
        json!({
            "id": "tests/test_x.py::TestA::test_bad",
            "file": "tests/test_x.py",
            "name": "test_bad",
            "outcome": "failed",
            "duration_seconds": 0.25,
            "message": "test_bad broke",
            "traceback": "Traceback",
            "flaky": false,
            "flaky_jobs": [],
            "new_failure": false,
        })
    );
    let failed = json_of(&app, &format!("/jobs/{id}/tests?outcome=failed")).await;
    let ids: Vec<_> = failed["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["tests/test_x.py::TestA::test_bad"]);
    assert_eq!(failed["summary"], summary, "the summary is the whole job's");
    let failing = json_of(&app, &format!("/jobs/{id}/tests?outcome=failed,error")).await;
    let ids: Vec<_> = failing["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "tests/test_x.py::TestA::test_bad",
            "tests/test_x.py::TestA::test_setup"
        ],
        "several outcomes, in report order"
    );
    // The job summary carries the totals.
    assert_eq!(
        json_of(&app, &format!("/jobs/{id}")).await["tests"],
        summary
    );
    assert_eq!(json_of(&app, "/jobs").await[0]["tests"], summary);
    let bad = app
        .get(&format!("/jobs/{id}/tests?outcome=exploded"))
        .send()
        .await
        .unwrap();
    assert!(error_detail(bad, 422)
        .await
        .contains("outcome must be one of"));
}

#[tokio::test]
async fn a_job_without_a_report_has_no_summary_and_says_why() {
    let app = spawn_app().await;
    let reason = "pytest wrote no test report";
    let id = ended_job(
        &app,
        project_zip("test_x.py"),
        &JobReport::Missing {
            reason: reason.into(),
        },
    )
    .await;
    let body = json_of(&app, &format!("/jobs/{id}/tests")).await;
    assert_eq!(
        body,
        json!({"job_id": id.to_string(), "summary": null, "cases": [], "reason": reason})
    );
    assert_eq!(
        json_of(&app, &format!("/jobs/{id}")).await["tests"],
        Value::Null
    );
    let queued = app.submit_zip(project_zip("test_y.py")).await;
    let body = json_of(&app, &format!("/jobs/{queued}/tests")).await;
    assert_eq!(body["reason"], "The job has not ended yet");
}

#[tokio::test]
async fn a_test_that_failed_and_passed_on_the_same_code_is_flaky() {
    let app = spawn_app().await;
    let zip = project_zip("test_x.py");
    let failing = JobReport::Cases(vec![case("test_flips", TestOutcome::Failed, 0.1)]);
    let passing = JobReport::Cases(vec![case("test_flips", TestOutcome::Passed, 0.1)]);
    let first = ended_job(&app, zip.clone(), &failing).await;
    let second = ended_job(&app, zip, &passing).await;
    let other_code = ended_job(&app, project_zip("test_z.py"), &passing).await;
    let body = json_of(&app, &format!("/jobs/{first}/tests")).await;
    assert_eq!(body["cases"][0]["flaky"], true);
    assert_eq!(body["cases"][0]["flaky_jobs"], json!([second.to_string()]));
    let body = json_of(&app, &format!("/jobs/{other_code}/tests")).await;
    assert_eq!(body["cases"][0]["flaky"], false, "other code is no witness");
}

#[tokio::test]
async fn the_tests_of_a_job_have_the_jobs_auth_rules() {
    let app = spawn_app().await;
    let id = app.submit_async().await;
    let (_, other_key, _) = app.new_user().await;
    let theirs = app
        .client
        .get(app.url(&format!("/jobs/{id}/tests")))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(theirs, 403).await, "Access denied");
    let unknown = app
        .get(&format!("/jobs/{}/tests", ci_common::JobId::random()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(unknown, 404).await, "Job not found");
    let no_key = app
        .client
        .get(app.url(&format!("/jobs/{id}/tests")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(no_key, 403).await, "Not authenticated");
    let bad_key = app
        .client
        .get(app.url(&format!("/jobs/{id}/tests")))
        .bearer_auth("ci_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_detail(bad_key, 401).await,
        "Invalid or revoked API key"
    );
}

/// A job of `project` on `zip` that ran and ended with `report` stored.
async fn ended_project_job(
    app: &TestApp,
    project: &str,
    zip: Vec<u8>,
    report: &JobReport,
) -> JobId {
    let form = support::zip_form(zip).text("project", project.to_string());
    let response = app
        .client
        .post(app.url("/submit-async"))
        .bearer_auth(&app.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let id: JobId = body["job_id"].as_str().unwrap().parse().unwrap();
    app.store.mark_running(id, "c", "img", None).await.unwrap();
    app.store.put_job_report(id, report).await.unwrap();
    app.store
        .finish_job(id, &JobOutcome::exited(1))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_failure_that_passed_in_the_projects_previous_job_is_new() {
    let app = spawn_app().await;
    let before = JobReport::Cases(vec![
        case("test_turns", TestOutcome::Passed, 0.1),
        case("test_broken", TestOutcome::Failed, 0.1),
    ]);
    let now = JobReport::Cases(vec![
        case("test_turns", TestOutcome::Failed, 0.1),
        case("test_broken", TestOutcome::Failed, 0.1),
    ]);
    let first = ended_project_job(&app, "calc", project_zip("test_x.py"), &before).await;
    let second = ended_project_job(&app, "calc", project_zip("test_y.py"), &now).await;
    let new_of = |body: &Value| -> Vec<(String, bool)> {
        body["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["new_failure"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let body = json_of(&app, &format!("/jobs/{second}/tests")).await;
    assert_eq!(
        new_of(&body),
        [("test_turns".into(), true), ("test_broken".into(), false)]
    );
    let body = json_of(&app, &format!("/jobs/{first}/tests?outcome=failed")).await;
    assert_eq!(
        new_of(&body),
        [("test_broken".into(), false)],
        "no history before"
    );
}

#[tokio::test]
async fn a_projects_tests_are_its_history_over_the_callers_jobs() {
    let app = spawn_app().await;
    let zip = project_zip("test_x.py");
    let older = JobReport::Cases(vec![
        case("test_flips", TestOutcome::Failed, 1.0),
        case("test_slow", TestOutcome::Passed, 3.0),
    ]);
    let newer = JobReport::Cases(vec![
        case("test_flips", TestOutcome::Passed, 2.0),
        case("test_slow", TestOutcome::Passed, 5.0),
    ]);
    let first = ended_project_job(&app, "calc", zip.clone(), &older).await;
    let second = ended_project_job(&app, "calc", zip, &newer).await;
    let body = json_of(&app, "/projects/calc/tests").await;
    assert_eq!(body["project"], "calc");
    assert_eq!(body["jobs"], json!([second.to_string(), first.to_string()]));
    assert_eq!(
        body["tests"][0],
        json!({
            "id": "tests/test_x.py::TestA::test_flips",
            "recent": ["passed", "failed"],
            "failure_rate": 0.5,
            "median_duration_seconds": 1.5,
            "flaky": true,
            "runs": 2,
            "failures": 1,
            "last_outcome": "passed",
            "last_duration_seconds": 2.0,
            "mean_duration_seconds": 1.5,
        })
    );
    assert_eq!(body["tests"][1]["flaky"], false);
    assert_eq!(body["tests"][1]["median_duration_seconds"], 4.0);

    // Another user's project of the same name is theirs alone.
    let (_, other_key, _) = app.new_user().await;
    let theirs: Value = app
        .client
        .get(app.url("/projects/calc/tests"))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs, json!({"project": "calc", "tests": [], "jobs": []}));
    let no_key = app
        .client
        .get(app.url("/projects/calc/tests"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_detail(no_key, 403).await, "Not authenticated");
    // Names are path segments: a space is sent encoded.
    let spaced = json_of(&app, "/projects/my%20calc/tests").await;
    assert_eq!(spaced["project"], "my calc");
}
