//! The web page in a real browser: Debian's Chromium driven over WebDriver
//! (chromedriver + fantoccini) against the real server and controller running
//! real jobs. Screenshots of the list and of a job page are saved under
//! `target/screenshots/`.
//!
//! `scripts/test` installs `chromium` and `chromium-driver` when missing.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use std::path::PathBuf;

use std::time::{Duration, Instant};

use ci_testkit::browser::{start_chromium, start_chromium_downloading_to, Chromium};
use ci_testkit::{
    assert_same_lines, copy_fixture, slow_project, slow_ticks, TestSystem, JOB_DEADLINE,
};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

/// The longest a page may take to show what a step waits for.
const PAGE_DEADLINE: Duration = Duration::from_secs(30);
/// How often a waiting step looks at the page again.
const PAGE_POLL: Duration = Duration::from_millis(50);

/// One headless Chromium with a fresh profile (the kit's), driven from these
/// synchronous tests through a runtime of its own.
struct Browser {
    runtime: tokio::runtime::Runtime,
    chromium: Option<Chromium>,
}

impl Browser {
    fn start() -> Browser {
        Browser::start_with(None)
    }

    /// A browser whose downloads land in `dir`, unasked.
    fn start_downloading_to(dir: &std::path::Path) -> Browser {
        Browser::start_with(Some(dir))
    }

    fn start_with(downloads: Option<&std::path::Path>) -> Browser {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let chromium = runtime
            .block_on(async {
                match downloads {
                    Some(dir) => start_chromium_downloading_to(&[], dir).await,
                    None => start_chromium(&[]).await,
                }
            })
            .unwrap_or_else(|e| panic!("{e}"));
        Browser {
            runtime,
            chromium: Some(chromium),
        }
    }

    fn client(&self) -> &Client {
        &self.chromium.as_ref().unwrap().client
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[0]` is `arg`) in the page.
    fn js(&self, script: &str, arg: Value) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![arg]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something other than null/false; returns it.
    fn wait_js(&self, what: &str, script: &str, arg: Value) -> Value {
        let deadline = Instant::now() + PAGE_DEADLINE;
        loop {
            let value = self.js(script, arg.clone());
            if !(value.is_null() || value == Value::Bool(false)) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {PAGE_DEADLINE:?} waiting for {what}");
            }
            std::thread::sleep(PAGE_POLL);
        }
    }

    fn wait_for(&self, what: &str, css: &str) {
        self.wait_js(
            what,
            "return document.querySelector(arguments[0]) !== null;",
            json!(css),
        );
    }

    fn click(&self, css: &str) {
        self.runtime
            .block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.click().await
            })
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!(css),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The `ci_session` cookie as the browser holds it (HttpOnly: only the
    /// driver sees it, not the page).
    fn session_cookie(&self) -> Option<String> {
        let cookies = self
            .runtime
            .block_on(self.client().get_all_cookies())
            .unwrap();
        cookies
            .iter()
            .find(|c| c.name() == "ci_session")
            .map(|c| format!("ci_session={}", c.value()))
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The status of a request sent from outside the browser with `cookie`.
    fn http(&self, method: &str, url: &str, cookie: &str, origin: Option<&str>) -> u16 {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = reqwest::Client::new()
            .request(method, url)
            .header("cookie", cookie);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = self
            .runtime
            .block_on(request.send())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        response.status().as_u16()
    }

    /// Signs in through the form and waits for the job list.
    fn sign_in(&self, server: &str, key: &str) {
        self.goto(&format!("{server}/"));
        self.wait_for("the sign-in form", "#sign-in #api-key");
        self.type_into("#api-key", key);
        self.click("#sign-in button[type=submit]");
        self.wait_for("the job list", "table.jobs tbody#jobs");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(chromium) = self.chromium.take() {
            // chromedriver goes with it.
            let _ = self.runtime.block_on(chromium.client.close());
        }
    }
}

/// The lines the page holds for the job it shows, as plain text (without
/// the colours pytest prints in jobs), as `ci` prints them to a pipe.
fn page_lines(browser: &Browser) -> Vec<String> {
    let lines = browser.js("return window.ciJobPage.lines();", Value::Null);
    lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut plain = ci_client::OutputFilter::new(ci_client::OutputMode::Plain);
            plain.filter(l.as_str().unwrap()) + &plain.finish()
        })
        .collect()
}

fn ticks_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("tick "))
        .cloned()
        .collect()
}

#[test]
fn a_job_appears_and_its_log_follows_live_across_a_killed_replica() {
    let mut sys = TestSystem::start();
    let server = sys.server_url();
    let browser = Browser::start();
    browser.sign_in(&server, &sys.user.api_key);
    // The key was only in the form: nothing the page can read holds it.
    let stored = browser.js(
        "return JSON.stringify([document.cookie, {...localStorage}, {...sessionStorage}]);",
        Value::Null,
    );
    assert!(
        !stored.as_str().unwrap().contains(&sys.user.api_key),
        "{stored}"
    );

    // A marker that a reload would wipe out.
    browser.js("window.notReloaded = true;", Value::Null);
    let seconds = 8;
    let job = sys.submit_async(&slow_project(seconds));
    browser.wait_js(
        "the job submitted with ci in the list",
        "return document.querySelector(`tr[data-job='${arguments[0]}']`) !== null;",
        json!(job.to_string()),
    );
    assert_eq!(
        browser.js("return window.notReloaded === true;", Value::Null),
        json!(true),
        "the list reloaded instead of updating"
    );
    browser.screenshot("job-list.png");

    browser.click(&format!("tr[data-job='{job}'] a.job-link"));
    browser.wait_js(
        "the first lines, live, while the job runs",
        "return window.ciJobPage && window.ciJobPage.lines().some(l => l.startsWith('tick ')) \
         && !window.ciJobPage.streamEnded();",
        Value::Null,
    );
    let before = ticks_of(&page_lines(&browser)).len();
    assert!(before < seconds as usize, "the job ended before the kill");

    // The replica the page streams from dies; the page reconnects (with
    // Last-Event-ID) to the server started again on the same address.
    sys.restart_server();
    browser.wait_js(
        "the end of the stream after the restart",
        "return window.ciJobPage.streamEnded();",
        Value::Null,
    );
    let lines = page_lines(&browser);
    assert_same_lines(
        "the page's tick lines",
        &ticks_of(&lines),
        &slow_ticks(seconds),
    );
    assert_eq!(
        lines.iter().filter(|l| l.as_str() == "SLOW-END").count(),
        1,
        "the end marker once"
    );
    let deadline = Instant::now() + JOB_DEADLINE;
    while browser.text("#job-status") != "passed" {
        assert!(Instant::now() < deadline, "status never became passed");
        std::thread::sleep(PAGE_POLL);
    }

    // A deep link opens the page scrolled to the line, highlighted.
    let tick_line = lines.iter().position(|l| l == "tick 005 of 008").unwrap() + 1;
    browser.goto(&format!("{server}/jobs/{job}#L{tick_line}"));
    browser.wait_js(
        "the linked line highlighted and on screen",
        "const row = document.querySelector(`.row.highlight[data-line='${arguments[0]}']`); \
         if (!row) return false; const r = row.getBoundingClientRect(), \
         v = document.getElementById('log').getBoundingClientRect(); \
         return r.top >= v.top && r.bottom <= v.bottom;",
        json!(tick_line),
    );

    // Search covers the whole log; next and previous move through it.
    browser.type_into("#search", "tick 00");
    browser.wait_js(
        "the search's answer",
        "return document.getElementById('search-count').textContent.includes('/ 8 lines');",
        Value::Null,
    );
    let first = browser.text("#search-count");
    browser.click("#search-next");
    let second = browser.text("#search-count");
    assert_ne!(first, second, "next did not move");
    browser.click("#search-prev");
    assert_eq!(
        browser.text("#search-count"),
        first,
        "previous did not move back"
    );
    browser.screenshot("job-page.png");
    sys.assert_settled();
}

#[test]
fn cancel_sign_out_revocation_and_cross_site_requests() {
    let sys = TestSystem::start();
    let server = sys.server_url();
    let browser = Browser::start();
    browser.sign_in(&server, &sys.user.api_key);
    let cookie = browser.session_cookie().expect("a session cookie");
    assert_eq!(
        browser.js("return document.cookie;", Value::Null),
        json!(""),
        "the session cookie is HttpOnly"
    );

    let job = sys.submit_async(&slow_project(120));
    browser.goto(&format!("{server}/jobs/{job}"));
    browser.wait_js(
        "the job running, its ticks arriving",
        "return window.ciJobPage && window.ciJobPage.lines().some(l => l.startsWith('tick '));",
        Value::Null,
    );

    // A cross-site POST with the cookie: from another site in the same
    // browser (localhost is another site than 127.0.0.1, so SameSite=Strict
    // keeps the cookie home), and forged with a foreign Origin outside it.
    let other_site = server.replace("127.0.0.1", "localhost");
    // `/health` is a document without the page's content security policy,
    // which would refuse to connect elsewhere at all.
    browser.goto(&format!("{other_site}/health"));
    let sent = browser.js(
        "return fetch(arguments[0], {method: 'POST', credentials: 'include', mode: 'no-cors'}) \
         .then(r => r.type, e => String(e));",
        json!(format!("{server}/jobs/{job}/cancel")),
    );
    assert_eq!(sent, json!("opaque"), "the cross-site POST was not sent");
    let cancel = format!("{server}/jobs/{job}/cancel");
    let forged = browser.http("POST", &cancel, &cookie, Some("http://evil.example"));
    assert_eq!(forged, 403);
    let job_now = sys.job(job).unwrap();
    assert_eq!(
        job_now.status.as_str(),
        "running",
        "a cross-site POST cancelled the job"
    );

    // Cancel from the page.
    browser.goto(&format!("{server}/jobs/{job}"));
    browser.wait_for("the cancel button", "#cancel:not([hidden])");
    browser.click("#cancel");
    let deadline = Instant::now() + JOB_DEADLINE;
    while browser.text("#job-status") != "cancelled" {
        assert!(
            Instant::now() < deadline,
            "the page never showed the job cancelled"
        );
        std::thread::sleep(PAGE_POLL);
    }

    // Sign out: the form again, and the old cookie is refused.
    browser.click("#sign-out");
    browser.wait_for("the sign-in form after signing out", "#sign-in");
    let after = browser.http("GET", &format!("{server}/jobs"), &cookie, None);
    assert_eq!(after, 401);

    // Signed in again, the key is revoked: the page's next request is
    // refused and it asks to sign in, without a reload.
    browser.sign_in(&server, &sys.user.api_key);
    browser.js("window.notReloaded = true;", Value::Null);
    sys.admin_ok(&["key", "revoke", &sys.user.key_id.to_string()]);
    browser.wait_for("the sign-in form after the revocation", "#sign-in");
    assert_eq!(
        browser.js("return window.notReloaded === true;", Value::Null),
        json!(true)
    );
    assert!(browser.text("#sign-in-error").contains("session ended"));
    // And the revoked key cannot sign in again.
    browser.type_into("#api-key", &sys.user.api_key);
    browser.click("#sign-in button[type=submit]");
    browser.wait_js(
        "the refusal",
        "return document.getElementById('sign-in-error').textContent.includes('not valid');",
        Value::Null,
    );
}

#[test]
fn the_first_failure_is_one_click_away() {
    let sys = TestSystem::start();
    let server = sys.server_url();
    let browser = Browser::start();
    browser.sign_in(&server, &sys.user.api_key);
    let job = sys.submit_async(&copy_fixture("failing"));
    browser.goto(&format!("{server}/jobs/{job}"));
    browser.wait_js(
        "the failed job's whole log",
        "return window.ciJobPage && window.ciJobPage.streamEnded();",
        Value::Null,
    );
    let deadline = Instant::now() + JOB_DEADLINE;
    while browser.text("#job-status") != "failed" {
        assert!(Instant::now() < deadline, "status never became failed");
        std::thread::sleep(PAGE_POLL);
    }
    // The log's end is on screen (following); the first failure is above it.
    browser.wait_for("the button enabled", "#first-failure:not([disabled])");
    browser.click("#first-failure");
    let line = browser.wait_js(
        "the first failure highlighted",
        "const row = document.querySelector('.row.highlight'); \
         return row ? [Number(row.dataset.line), row.querySelector('.tx').textContent] : null;",
        Value::Null,
    );
    let number = line[0].as_u64().unwrap() as usize;
    let text = line[1].as_str().unwrap();
    assert!(
        browser.js("return location.hash;", Value::Null) == json!(format!("#L{number}")),
        "the failure's line is not in the address"
    );
    let lines = page_lines(&browser);
    let first_failure = lines
        .iter()
        .position(|l| l.starts_with("FAILED ") || l.starts_with("___") || l.starts_with("E   "))
        .unwrap();
    assert_eq!(number, first_failure + 1, "highlighted {text:?}");
}

#[test]
fn colours_are_rendered_and_markup_in_the_log_is_only_text() {
    let sys = TestSystem::start();
    let server = sys.server_url();
    let browser = Browser::start();
    browser.sign_in(&server, &sys.user.api_key);
    let project = copy_fixture("passing");
    project.write(
        "tests/test_printing.py",
        "def test_prints(capsys):\n\
         \x20   with capsys.disabled():\n\
         \x20       print()\n\
         \x20       print('\\x1b[31mRED-WORD\\x1b[0m plain')\n\
         \x20       print('<img src=x onerror=\"window.injected = 1\"><b>BOLD-TAG</b>')\n",
    );
    let job = sys.submit_async(&project);
    browser.goto(&format!("{server}/jobs/{job}"));
    browser.wait_js(
        "the whole log",
        "return window.ciJobPage && window.ciJobPage.streamEnded();",
        Value::Null,
    );
    let rendered = browser.wait_js(
        "both lines on screen",
        "const rows = [...document.querySelectorAll('#log .row .tx')]; \
         const red = rows.find(r => r.textContent.includes('RED-WORD')); \
         const tag = rows.find(r => r.textContent.includes('BOLD-TAG')); \
         if (!red || !tag) return null; \
         const span = [...red.querySelectorAll('span')].find(s => s.textContent === 'RED-WORD'); \
         return [span ? getComputedStyle(span).color : 'no span', tag.textContent, \
                 tag.querySelectorAll('img, b').length, window.injected === undefined];",
        Value::Null,
    );
    assert_eq!(
        rendered[0],
        json!("rgb(187, 0, 0)"),
        "the red word: {rendered}"
    );
    assert_eq!(
        rendered[1],
        json!("<img src=x onerror=\"window.injected = 1\"><b>BOLD-TAG</b>")
    );
    assert_eq!(rendered[2], json!(0), "markup from the log became elements");
    assert_eq!(rendered[3], json!(true), "a script from the log ran");
}

/// pytest's header of a test's traceback section, `____ name ____`.
fn is_section_of(line: &str, name: &str) -> bool {
    line.starts_with('_') && line.ends_with('_') && line.contains(&format!(" {name} "))
}

#[test]
fn failed_tests_link_to_their_lines_and_the_raw_log_downloads() {
    let sys = TestSystem::start();
    let server = sys.server_url();
    let downloads = tempfile::tempdir().unwrap();
    let browser = Browser::start_downloading_to(downloads.path());
    browser.sign_in(&server, &sys.user.api_key);
    let job = sys.submit_async(&copy_fixture("test-outcomes"));
    browser.goto(&format!("{server}/jobs/{job}"));
    // Listed once the job has ended: each failed test with the line it links to.
    let listed = browser.wait_js(
        "the failed tests, listed",
        "const items = [...document.querySelectorAll('#failed-tests li')]; \
         if (!window.ciJobPage || !window.ciJobPage.streamEnded() || items.length === 0) return null; \
         return items.map(li => { const a = li.querySelector('a.failed-test'); \
           return [li.dataset.test, a ? a.getAttribute('href') : null]; });",
        Value::Null,
    );
    let lines = page_lines(&browser);
    let file = "tests/test_outcomes.py";
    let listed: Vec<(String, usize)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let href = item[1]
                .as_str()
                .unwrap_or_else(|| panic!("not linked: {item}"));
            let line: usize = href.strip_prefix("#L").unwrap().parse().unwrap();
            (item[0].as_str().unwrap().to_string(), line)
        })
        .collect();
    let names: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{file}::test_fails"),
            format!("{file}::test_errors"),
            format!("{file}::test_xpasses_strictly"),
        ],
        "the failures, errors and strict xpasses, in report order"
    );
    let line_of = |n: usize| lines[n - 1].as_str();
    assert!(
        is_section_of(line_of(listed[0].1), "test_fails"),
        "{:?}",
        line_of(listed[0].1)
    );
    assert!(
        is_section_of(line_of(listed[1].1), "ERROR at setup of test_errors"),
        "{:?}",
        line_of(listed[1].1)
    );
    let xpass = line_of(listed[2].1);
    assert!(
        is_section_of(xpass, "test_xpasses_strictly")
            || xpass.starts_with(&format!("FAILED {file}::test_xpasses_strictly")),
        "{xpass:?}"
    );

    // A click opens the line, highlighted.
    browser.click(&format!(
        "#failed-tests li[data-test=\"{file}::test_errors\"] a"
    ));
    browser.wait_js(
        "the error's line highlighted",
        "const row = document.querySelector(`.row.highlight[data-line='${arguments[0]}']`); \
         return row !== null && location.hash === `#L${arguments[0]}`;",
        json!(listed[1].1),
    );
    browser.screenshot("job-failed-tests.png");

    // The raw log: downloaded by the browser with its session, as served.
    browser.click("#download");
    let downloaded = downloads.path().join(format!("job-{job}.log"));
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        // Chromium writes `….crdownload` and renames it when done.
        let finished = downloaded.exists()
            && std::fs::read_dir(downloads.path()).unwrap().all(|e| {
                !e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".crdownload")
            });
        if finished {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no finished download in {}: {:?}",
            downloads.path().display(),
            std::fs::read_dir(downloads.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(PAGE_POLL);
    }
    let served = browser
        .runtime
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{server}/jobs/{job}/log"))
                .bearer_auth(&sys.user.api_key)
                .send()
                .await?
                .bytes()
                .await
        })
        .unwrap();
    let file_bytes = std::fs::read(&downloaded).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&file_bytes),
        String::from_utf8_lossy(&served),
        "the downloaded log is the served one"
    );
    assert!(
        String::from_utf8_lossy(&file_bytes).contains("test_fails"),
        "the log holds the job's output"
    );
}
