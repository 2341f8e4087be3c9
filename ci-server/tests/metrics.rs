//! `GET /metrics`, the per-request metrics and the request id, on the real
//! router over a free port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ci_server::ServerConfig;
use support::{project_zip, spawn_app, spawn_app_with, test_config, within, TestApp};

async fn metrics_text(app: &TestApp) -> String {
    let response = within("GET /metrics", app.client.get(app.url("/metrics")).send())
        .await
        .expect("metrics request");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.expect("metrics body")
}

/// The value of the one sample of `series`, or `None` when there is none.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn requests_are_counted_by_route_template_never_by_job_id() {
    let app = spawn_app().await;
    let zip = project_zip("test_a.py");
    let zip_len = zip.len() as f64;
    let first = app.submit_zip(zip).await;
    let second = app.submit_async().await;
    for id in [first, second, first] {
        let r = app.get(&format!("/jobs/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = app.get("/no/such/path").send().await.unwrap();
    assert_eq!(r.status(), 404);

    let text = metrics_text(&app).await;
    assert_eq!(
        sample(
            &text,
            r#"ci_http_requests_total{route="/jobs/{id}",method="GET",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"ci_http_requests_total{route="/submit-async",method="POST",status="200"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"ci_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"ci_http_request_duration_seconds_count{route="/jobs/{id}",method="GET"}"#
        ),
        Some(3.0),
        "{text}"
    );
    let uploaded = sample(&text, "ci_http_upload_bytes_total").expect("upload bytes");
    assert!(uploaded >= zip_len, "{uploaded} < {zip_len}");
    for id in [first, second] {
        assert!(!text.contains(&id.to_string()), "a job id in:\n{text}");
    }
    assert!(!text.contains("/no/such/path"), "a raw path in:\n{text}");
}

#[tokio::test]
async fn authentication_failures_are_counted_by_reason() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    let none = app.client.get(app.url("/jobs")).send().await.unwrap();
    assert_eq!(none.status(), 403);
    let fake = format!("ci_{}", "A".repeat(43));
    for path in ["/jobs".to_string(), format!("/jobs/{job}")] {
        let bad = app
            .client
            .get(app.url(&path))
            .bearer_auth(&fake)
            .send()
            .await
            .unwrap();
        assert!(bad.status() == 401 || bad.status() == 403, "{path}");
    }
    let text = metrics_text(&app).await;
    assert_eq!(
        sample(
            &text,
            r#"ci_http_auth_failures_total{reason="no_credentials"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let invalid = sample(
        &text,
        r#"ci_http_auth_failures_total{reason="invalid_key"}"#,
    )
    .expect("invalid keys counted");
    assert_eq!(invalid, 2.0, "{text}");
}

#[tokio::test]
async fn open_streams_are_counted_while_open() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    let stream = app.stream(job, "?from_beginning=true", None).await;
    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "ci_http_open_streams"), Some(1.0), "{text}");
    drop(stream);
    // The server learns that the client went when its next write fails or
    // the connection closes: wait for it, under a deadline.
    within("the stream to be counted closed", async {
        loop {
            if sample(&metrics_text(&app).await, "ci_http_open_streams") == Some(0.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_metrics_token_is_asked_for_when_set() {
    let app = spawn_app_with(ServerConfig {
        metrics_token: Some("s3cret-token".into()),
        ..test_config()
    })
    .await;
    let without = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("s3cret-tokeN")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let text = right.text().await.unwrap();
    assert_eq!(
        sample(
            &text,
            r#"ci_http_auth_failures_total{reason="metrics_token"}"#
        ),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let made = app.client.get(app.url("/health")).send().await.unwrap();
    let id = made
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a request id made");
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id}");

    let kept = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "lb-1234.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "lb-1234.abc");

    // One that would put anything into the log lines is replaced.
    let replaced = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id}");
}
