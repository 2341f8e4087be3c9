//! `/health`, `/ready` and authentication, over HTTP against the real router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ci_common::generate_api_key;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Value};
use support::{error_detail, spawn_app, within, TestApp};

/// Every route but `/health`, on a job the app's user owns, so that a request
/// that got past authentication would succeed.
fn protected_routes(job: ci_common::JobId) -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/submit-async".to_string()),
        (Method::POST, "/submit-stream".to_string()),
        (Method::POST, "/submit".to_string()),
        (Method::GET, "/jobs".to_string()),
        (Method::GET, format!("/jobs/{job}")),
        (Method::GET, format!("/jobs/{job}/stream")),
        (Method::POST, format!("/jobs/{job}/cancel")),
    ]
}

async fn send(
    app: &TestApp,
    method: &Method,
    path: &str,
    auth: Option<HeaderValue>,
) -> reqwest::Response {
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(value) = auth {
        request = request.header(AUTHORIZATION, value);
    }
    within("a response", request.send()).await.expect("request")
}

fn bearer(key: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {key}")).expect("header")
}

#[tokio::test]
async fn health_is_ok_without_auth() {
    let app = spawn_app().await;
    for auth in [None, Some(HeaderValue::from_static("Bearer nonsense"))] {
        let response = send(&app, &Method::GET, "/health", auth).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn a_missing_or_unusable_authorization_header_is_403() {
    let app = spawn_app().await;
    let job = app.queue_job_for(app.user.id).await;
    let unusable = [
        None,
        Some(HeaderValue::from_static("Basic dXNlcjpwYXNzd29yZA==")),
        // The right key under another scheme is no better.
        Some(HeaderValue::from_str(&format!("Basic {}", app.key)).unwrap()),
        Some(HeaderValue::from_str(&format!("Token {}", app.key)).unwrap()),
        Some(HeaderValue::from_str(&format!("Bearer:{}", app.key)).unwrap()),
        Some(HeaderValue::from_str(&app.key).unwrap()),
        Some(HeaderValue::from_static("Bearer")),
        Some(HeaderValue::from_static("Bearer ")),
        Some(HeaderValue::from_static("Bearer    ")),
        Some(HeaderValue::from_static("")),
        // Bytes that are not visible ASCII: not readable as a header string.
        Some(HeaderValue::from_bytes(b"Bearer ci_\xff\xfe\xfd").unwrap()),
    ];
    for (method, path) in protected_routes(job) {
        for auth in &unusable {
            let response = send(&app, &method, &path, auth.clone()).await;
            let detail = error_detail(response, 403).await;
            assert_eq!(detail, "Not authenticated", "{method} {path} with {auth:?}");
        }
    }
    // Nothing was queued or cancelled on the way.
    let jobs = app.store.list_jobs_for_user(app.user.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = app.store.get_job(jobs[0].job_id).await.unwrap().unwrap();
    assert!(!job.cancel_requested);
}

#[tokio::test]
async fn a_key_that_is_not_valid_is_401() {
    let app = spawn_app().await;
    let job = app.queue_job_for(app.user.id).await;
    let unknown = generate_api_key().unwrap().secret;
    let invalid = [
        "not-a-key".to_string(),
        "ci_short".to_string(),
        format!("{}x", app.key),
        app.key.to_uppercase(),
        unknown,
    ];
    for (method, path) in protected_routes(job) {
        for key in &invalid {
            let response = send(&app, &method, &path, Some(bearer(key))).await;
            let detail = error_detail(response, 401).await;
            assert_eq!(
                detail, "Invalid or revoked API key",
                "{method} {path} with {key}"
            );
        }
    }
}

#[tokio::test]
async fn the_scheme_is_case_insensitive_and_the_key_works() {
    let app = spawn_app().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let value = HeaderValue::from_str(&format!("{scheme} {}", app.key)).unwrap();
        let response = send(&app, &Method::GET, "/jobs", Some(value)).await;
        assert_eq!(response.status(), 200, "scheme {scheme}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!([]));
    }
}

async fn status(app: &TestApp, path: &str, key: &str) -> u16 {
    send(app, &Method::GET, path, Some(bearer(key)))
        .await
        .status()
        .as_u16()
}

async fn jobs_status(app: &TestApp, key: &str) -> u16 {
    status(app, "/jobs", key).await
}

/// `path` answers 401 for `key`.
async fn assert_refused_at(app: &TestApp, path: &str, key: &str, why: &str) {
    let response = send(app, &Method::GET, path, Some(bearer(key))).await;
    let detail = error_detail(response, 401).await;
    assert_eq!(detail, "Invalid or revoked API key", "{why}: GET {path}");
}

async fn assert_refused(app: &TestApp, key: &str, why: &str) {
    assert_refused_at(app, "/jobs", key, why).await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once_on_every_replica() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let (_, other_key, _) = a.new_user().await;
    // GET /jobs/{id} authenticates in a query of its own: check it too.
    let job = format!("/jobs/{}", a.submit_async().await);
    for app in [&a, &b] {
        assert_eq!(jobs_status(app, &a.key).await, 200);
        assert_eq!(status(app, &job, &a.key).await, 200);
    }

    // Revoked from another process, as ci-admin does.
    let admin = a.open_store().await;
    admin.revoke_api_key(a.key_record.id).await.unwrap();

    assert_refused(&a, &a.key, "revoked key on replica A").await;
    assert_refused(&b, &b.key, "revoked key on replica B").await;
    assert_refused_at(&a, &job, &a.key, "revoked key on replica A").await;
    assert_refused_at(&b, &job, &b.key, "revoked key on replica B").await;
    // Other keys are untouched (403: authenticated, but not the job's owner).
    assert_eq!(jobs_status(&a, &other_key).await, 200);
    assert_eq!(jobs_status(&b, &other_key).await, 200);
    assert_eq!(status(&b, &job, &other_key).await, 403);
}

#[tokio::test]
async fn a_deactivated_users_keys_stop_working_until_reactivated() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let (other, other_key, _) = a.new_user().await;
    let second_key = generate_api_key().unwrap();
    a.store
        .create_api_key(other.id, "second", &second_key)
        .await
        .unwrap();
    let job = format!("/jobs/{}", a.submit_async_as(&other_key).await);
    for key in [&other_key, &second_key.secret] {
        assert_eq!(jobs_status(&a, key).await, 200);
        assert_eq!(jobs_status(&b, key).await, 200);
        assert_eq!(status(&b, &job, key).await, 200);
    }

    let admin = a.open_store().await;
    admin.set_user_active(other.id, false).await.unwrap();
    for key in [&other_key, &second_key.secret] {
        assert_refused(&a, key, "inactive user on replica A").await;
        assert_refused(&b, key, "inactive user on replica B").await;
        assert_refused_at(&a, &job, key, "inactive user on replica A").await;
        assert_refused_at(&b, &job, key, "inactive user on replica B").await;
    }
    // Another user is not affected.
    assert_eq!(jobs_status(&b, &a.key).await, 200);

    admin.set_user_active(other.id, true).await.unwrap();
    for key in [&other_key, &second_key.secret] {
        assert_eq!(jobs_status(&a, key).await, 200);
        assert_eq!(jobs_status(&b, key).await, 200);
        assert_eq!(status(&a, &job, key).await, 200);
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let response = app.get("/no-such-route").send().await.unwrap();
    assert_eq!(error_detail(response, 404).await, "Not Found");
    let response = app.client.delete(app.url("/jobs")).send().await.unwrap();
    let allow = response.headers().get("allow").cloned();
    assert_eq!(error_detail(response, 405).await, "Method Not Allowed");
    assert_eq!(allow.unwrap(), "GET,HEAD");
    let response = app.get("/submit-async").send().await.unwrap();
    assert_eq!(error_detail(response, 405).await, "Method Not Allowed");
}

#[tokio::test]
async fn ready_without_auth_when_the_database_answers_with_a_current_schema() {
    let app = spawn_app().await;
    for auth in [None, Some(HeaderValue::from_static("Bearer nonsense"))] {
        let response = send(&app, &Method::GET, "/ready", auth).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"status": "ready"}));
    }
}

#[tokio::test]
async fn not_ready_when_a_migration_of_this_build_is_missing() {
    use sqlx::Connection as _;
    let app = spawn_app().await;
    // As if an older binary had made the schema: the newest migration is gone.
    let url = format!("sqlite://{}", app.db_path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let forgotten = sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(forgotten.rows_affected(), 1);
    conn.close().await.unwrap();

    let response = send(&app, &Method::GET, "/ready", None).await;
    assert_eq!(
        error_detail(response, 503).await,
        "The database schema is not current"
    );
}

#[tokio::test]
async fn not_ready_when_the_database_does_not_answer() {
    let app = spawn_app().await;
    let ready = send(&app, &Method::GET, "/ready", None).await;
    assert_eq!(ready.status(), 200, "ready before the database goes");
    app.store.close().await;
    let response = send(&app, &Method::GET, "/ready", None).await;
    assert_eq!(
        error_detail(response, 503).await,
        "The job database is unavailable"
    );
    // `/health` says the process lives; only `/ready` asks the database.
    let health = send(&app, &Method::GET, "/health", None).await;
    assert_eq!(health.status(), 200);
}
