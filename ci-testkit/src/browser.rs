//! Headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromedriver` (installed by `scripts/test`), a fresh profile each time, and
//! the flags these machines need (no sandbox as root; no background
//! networking, which the closed network would refuse many times a start).
//! The page's browser tests and its benchmark figure both start it here.

use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use tokio::process::{Child, Command};

use crate::KitError;

/// How long chromedriver gets to answer after its start.
const DRIVER_START: Duration = Duration::from_secs(30);
/// How often a session is asked for until chromedriver listens.
const DRIVER_POLL: Duration = Duration::from_millis(50);

/// A WebDriver session of its own Chromium; the driver is killed when this is
/// dropped (close the `client` first for a clean end).
pub struct Chromium {
    pub client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

/// Starts chromedriver on a free port and opens a session of a headless
/// Chromium with a fresh profile and `extra_args` beside the usual flags.
pub async fn start_chromium(extra_args: &[&str]) -> Result<Chromium, KitError> {
    start_chromium_with_prefs(extra_args, None).await
}

/// [`start_chromium`] whose downloads go to `dir` without asking, so a test
/// can click a download link and read the file.
pub async fn start_chromium_downloading_to(
    extra_args: &[&str],
    dir: &std::path::Path,
) -> Result<Chromium, KitError> {
    let prefs = serde_json::json!({
        "download.default_directory": dir.display().to_string(),
        "download.prompt_for_download": false,
        "download.directory_upgrade": true,
    });
    start_chromium_with_prefs(extra_args, Some(prefs)).await
}

/// [`start_chromium`] with Chromium's profile preferences `prefs`.
async fn start_chromium_with_prefs(
    extra_args: &[&str],
    prefs: Option<serde_json::Value>,
) -> Result<Chromium, KitError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(KitError::io("finding a free port for chromedriver"))?
        .port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            KitError::Setup(format!(
                "cannot start chromedriver ({e}): apt-get install chromium chromium-driver"
            ))
        })?;
    let profile = tempfile::Builder::new()
        .prefix("ci-chromium-")
        .tempdir()
        .map_err(KitError::io("creating a browser profile"))?;
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,860",
    ]
    .iter()
    .chain(extra_args)
    .map(|a| a.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut options = serde_json::json!({ "binary": "/usr/bin/chromium", "args": args });
    if let Some(prefs) = prefs {
        options["prefs"] = prefs;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_string(), options);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + DRIVER_START;
    // chromedriver answers once it listens; until then connecting fails.
    let client = loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => break client,
            Err(e) if Instant::now() >= deadline => {
                return Err(KitError::Setup(format!("no WebDriver session: {e}")))
            }
            Err(_) => tokio::time::sleep(DRIVER_POLL).await,
        }
    };
    Ok(Chromium {
        client,
        _driver: driver,
        _profile: profile,
    })
}
