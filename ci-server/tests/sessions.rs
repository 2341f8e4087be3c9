//! Browser sessions (`POST /session`, `DELETE /session`) and the session
//! cookie's rules, over HTTP against the real router: the cookie works
//! wherever the bearer key does, state-changing requests with it need the
//! server's own `Origin`, and it ends with sign-out, revocation and deactivation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use reqwest::Method;
use serde_json::json;
use support::{error_detail, spawn_app, within, TestApp};

/// Signs in with `key`; the raw `Set-Cookie` header of a 204.
async fn sign_in_header(app: &TestApp, key: &str, extra: &[(&str, &str)]) -> String {
    let mut request = app.post("/session").json(&json!({ "api_key": key }));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = within("sign-in", request.send()).await.unwrap();
    assert_eq!(response.status(), 204);
    response
        .headers()
        .get(SET_COOKIE)
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap()
        .to_string()
}

/// Signs in with the app's key; the `ci_session=…` pair to send back.
async fn sign_in(app: &TestApp) -> String {
    cookie_pair(&sign_in_header(app, &app.key, &[]).await)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

/// A request with the session cookie and no `Authorization` header, with
/// `origin` as its `Origin` when given.
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header(COOKIE, format!("theme=dark; {cookie}"));
    if let Some(origin) = origin {
        request = request.header(ORIGIN, origin);
    }
    within("a response", request.send()).await.unwrap()
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie() {
    let app = spawn_app().await;
    let header = sign_in_header(&app, &app.key, &[]).await;
    let attributes: Vec<&str> = header.split(';').map(str::trim).collect();
    let id = attributes[0].strip_prefix("ci_session=").expect(&header);
    assert_eq!(id.len(), 64, "{header}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{header}");
    assert_eq!(
        attributes[1..],
        ["HttpOnly", "SameSite=Strict", "Path=/"],
        "{header}"
    );
    // Each sign-in is a session of its own.
    assert_ne!(sign_in(&app).await, attributes[0]);

    // Behind a TLS-terminating proxy the cookie is Secure.
    let header = sign_in_header(&app, &app.key, &[("x-forwarded-proto", "https")]).await;
    assert!(header.ends_with("; Secure"), "{header}");
}

#[tokio::test]
async fn a_wrong_key_gets_no_session() {
    let app = spawn_app().await;
    let unknown = ci_common::generate_api_key().unwrap().secret;
    for key in ["not-a-key", unknown.as_str()] {
        let response = within(
            "sign-in",
            app.post("/session").json(&json!({ "api_key": key })).send(),
        )
        .await
        .unwrap();
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert_eq!(
            error_detail(response, 401).await,
            "Invalid or revoked API key"
        );
    }
    // A sign-in form on another site cannot sign a visitor in.
    let response = within(
        "sign-in",
        app.post("/session")
            .header(ORIGIN, "http://evil.example")
            .json(&json!({ "api_key": app.key }))
            .send(),
    )
    .await
    .unwrap();
    assert!(response.headers().get(SET_COOKIE).is_none());
    assert_eq!(
        error_detail(response, 403).await,
        "Cross-site request refused"
    );
}

#[tokio::test]
async fn the_cookie_works_wherever_the_key_does() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let own = app.address.clone();
    let job = app.submit_async().await;

    let listed = with_cookie(&app, Method::GET, "/jobs", &cookie, None).await;
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(listed[0]["job_id"], job.to_string());
    let path = format!("/jobs/{job}");
    assert_eq!(
        with_cookie(&app, Method::GET, &path, &cookie, None)
            .await
            .status(),
        200
    );
    // EventSource cannot send headers: the stream takes the cookie.
    let stream = with_cookie(&app, Method::GET, &format!("{path}/stream"), &cookie, None).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(stream);

    let cancel = format!("{path}/cancel");
    let cancelled = with_cookie(&app, Method::POST, &cancel, &cookie, Some(&own)).await;
    assert_eq!(cancelled.status(), 200);
    assert!(
        app.store
            .get_job(job)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );

    // Another replica knows the session too.
    let b = app.spawn_replica().await;
    assert_eq!(
        with_cookie(&b, Method::GET, &path, &cookie, None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_state_change_with_the_cookie_needs_the_servers_own_origin() {
    let app = spawn_app().await;
    let cookie = sign_in(&app).await;
    let job = app.submit_async().await;
    let cancel = format!("/jobs/{job}/cancel");
    let https_own = app.address.replace("http://", "https://");
    for origin in [
        None,
        Some("http://evil.example"),
        Some("null"),
        Some(https_own.as_str()),
    ] {
        for (method, path) in [
            (Method::POST, cancel.as_str()),
            (Method::POST, "/submit-async"),
            (Method::DELETE, "/session"),
        ] {
            let response = with_cookie(&app, method.clone(), path, &cookie, origin).await;
            assert_eq!(
                error_detail(response, 403).await,
                "Cross-site request refused",
                "{method} {path} from {origin:?}"
            );
        }
    }
    // Nothing changed: not cancelled, nothing queued, still signed in.
    assert!(
        !app.store
            .get_job(job)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    assert_eq!(
        app.store
            .list_jobs_for_user(app.user.id)
            .await
            .unwrap()
            .len(),
        1
    );
    // Reading is no state change: a foreign Origin on a GET is answered.
    let path = format!("/jobs/{job}");
    let read = with_cookie(
        &app,
        Method::GET,
        &path,
        &cookie,
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(read.status(), 200);
    // The bearer key is no ambient authority: no Origin needed.
    let response = within(
        "cancel",
        app.post(&cancel)
            .header(ORIGIN, "http://evil.example")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
}

/// `GET /jobs` with the cookie, on each app, is 401 "Session ended".
async fn assert_session_ended(apps: &[&TestApp], cookie: &str, why: &str) {
    for app in apps {
        let response = with_cookie(app, Method::GET, "/jobs", cookie, None).await;
        assert_eq!(
            error_detail(response, 401).await,
            "Session ended; sign in again",
            "{why}"
        );
    }
}

#[tokio::test]
async fn signing_out_ends_the_session_on_every_replica() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let cookie = sign_in(&a).await;
    let other = sign_in(&a).await;

    let response = with_cookie(&a, Method::DELETE, "/session", &cookie, Some(&a.address)).await;
    assert_eq!(response.status(), 204);
    let cleared = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("ci_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_session_ended(&[&a, &b], &cookie, "signed out").await;
    // The user's other session and key are untouched.
    assert_eq!(
        with_cookie(&b, Method::GET, "/jobs", &other, None)
            .await
            .status(),
        200
    );
    // Signing out again, or without a session, is harmless.
    for cookie in [cookie.as_str(), "x=1"] {
        let again = with_cookie(&a, Method::DELETE, "/session", cookie, Some(&a.address)).await;
        assert_eq!(again.status(), 204);
    }
    // A made-up session id is no session.
    let made_up = format!("ci_session={}", "ab".repeat(32));
    assert_session_ended(&[&a], &made_up, "made up").await;
    assert_session_ended(&[&a], "ci_session=short", "malformed").await;
}

#[tokio::test]
async fn revoking_the_key_ends_its_sessions_on_every_replica() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let cookie = sign_in(&a).await;
    let job = a.submit_async().await;
    assert_eq!(
        with_cookie(&b, Method::GET, "/jobs", &cookie, None)
            .await
            .status(),
        200
    );

    a.open_store()
        .await
        .revoke_api_key(a.key_record.id)
        .await
        .unwrap();
    let stream = format!("/jobs/{job}/stream");
    for path in ["/jobs", stream.as_str()] {
        let response = with_cookie(&b, Method::GET, path, &cookie, None).await;
        assert_eq!(response.status(), 401, "GET {path}");
    }
    assert_session_ended(&[&a, &b], &cookie, "revoked").await;
}

#[tokio::test]
async fn deactivating_the_user_ends_their_sessions_for_good() {
    let a = spawn_app().await;
    let b = a.spawn_replica().await;
    let cookie = sign_in(&a).await;
    let admin = a.open_store().await;
    admin.set_user_active(a.user.id, false).await.unwrap();
    assert_session_ended(&[&b, &a], &cookie, "deactivated").await;
    // Reactivated, the key works again, the ended session does not.
    admin.set_user_active(a.user.id, true).await.unwrap();
    assert_session_ended(&[&a, &b], &cookie, "reactivated").await;
    assert_ne!(sign_in(&a).await, cookie);
}
