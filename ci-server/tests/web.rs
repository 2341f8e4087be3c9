//! The page's routes: `/` and a job asked for as HTML serve the page, its
//! assets come from the server itself, and the JSON API at `/jobs/{id}` is
//! unchanged for clients that do not ask for HTML.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use support::{spawn_app, within, TestApp};

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get(app: &TestApp, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    within("a response", request.send()).await.unwrap()
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_server_without_a_key() {
    let app = spawn_app().await;
    let page = get(&app, "/", Some(BROWSER_ACCEPT)).await;
    assert_eq!(page.status(), 200);
    assert_eq!(content_type(&page), "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/assets/app.js">"#), "{html}");
    assert!(html.contains(r#"href="/assets/app.css""#), "{html}");
    // Nothing is fetched from elsewhere.
    assert!(
        !html.contains("//cdn") && !html.contains("src=\"http"),
        "{html}"
    );

    for (path, kind) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let asset = get(&app, path, None).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(content_type(&asset), kind, "{path}");
        assert!(!asset.text().await.unwrap().is_empty(), "{path}");
    }
}

#[tokio::test]
async fn a_job_is_the_page_for_a_browser_and_json_for_clients() {
    let app = spawn_app().await;
    let job = app.submit_async().await;
    let path = format!("/jobs/{job}");

    // The page itself needs no key: it reads the job with the session cookie.
    let page = get(&app, &path, Some(BROWSER_ACCEPT)).await;
    assert_eq!(page.status(), 200);
    assert_eq!(content_type(&page), "text/html; charset=utf-8");

    for accept in [None, Some("application/json"), Some("*/*")] {
        let response = within("a response", {
            let mut request = app.get(&path);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request.send()
        })
        .await
        .unwrap();
        assert_eq!(response.status(), 200, "Accept {accept:?}");
        assert!(content_type(&response).starts_with("application/json"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["job_id"], job.to_string(), "Accept {accept:?}");
    }
    // Without a key, the JSON API still refuses.
    let refused = get(&app, &path, Some("application/json")).await;
    assert_eq!(refused.status(), 403);
}
