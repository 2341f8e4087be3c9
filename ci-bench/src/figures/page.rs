//! Figure 7: the web page in real headless Chromium (Debian's `chromium`
//! driven through `chromedriver`). A finished job with a big log (100 000
//! lines; 10 000 in `--quick`) against the same page for a job with a nearly
//! empty log (the five-test job), in the same run: time until the whole log is
//! on screen after navigation, the worst frame while scrolling to the end and
//! back, the tab's JavaScript heap, and a whole-log search with one match in 50
//! lines (2 000 matches over 100 000). Then a running job printing 2 000 lines
//! a second: how long after the container printed a line it is on the page
//! (p95), against the same job's stream read by a plain HTTP client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ci_common::JobId;
use ci_testkit::browser::{start_chromium, Chromium};
use fantoccini::Client;
use serde_json::{json, Value};

use super::{progress, Context};
use crate::error::{BenchError, Result};
use crate::fixtures::{LIVE_LINE_PREFIX, PAGE_NEEDLE};
use crate::http::{Api, EventStream};
use crate::report::{Figure, Target};
use crate::stats::percentile;
use crate::system::System;

/// The targets.
const INTERACTIVE_MS: f64 = 1500.0;
const FRAME_MS: f64 = 50.0;
const HEAP_MB: f64 = 150.0;
const LIVE_P95_MS: f64 = 250.0;
const SEARCH_MS: f64 = 200.0;

/// The longest any one step in the browser may take.
const STEP_LIMIT: Duration = Duration::from_secs(120);

pub async fn measure(system: &System, key: &str, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let api = system.api(key)?;
    let lines = ctx.plan.log_lines;
    progress(format!("page: a finished {lines}-line job and a small one"));
    let big = finished_job(&api, &ctx.fixtures.page_log.zip).await?;
    let small = finished_job(&api, &ctx.fixtures.passing.zip).await?;

    let browser = Browser::start().await?;
    let result = async {
        browser.sign_in(&system.base_url, key).await?;
        // Small and big alternate, so neither always runs on a warmer browser.
        let (mut small_runs, mut big_runs) = (Vec::new(), Vec::new());
        for round in 0..ctx.plan.log_runs.max(1) {
            if round % 2 == 0 {
                small_runs.push(browser.open_finished(&system.base_url, small).await?);
                big_runs.push(browser.open_finished(&system.base_url, big).await?);
            } else {
                big_runs.push(browser.open_finished(&system.base_url, big).await?);
                small_runs.push(browser.open_finished(&system.base_url, small).await?);
            }
        }
        let search = browser.search(PAGE_NEEDLE).await?;
        let expected_matches = lines / 50;
        if search.matches != expected_matches {
            return Err(BenchError::Setup(format!(
                "page: the search found {} lines with {PAGE_NEEDLE:?}, expected {expected_matches}",
                search.matches
            )));
        }
        progress("page: a running job printing 2 000 lines a second");
        let live = live_latency(&browser, system, &api, key, ctx).await?;
        Ok::<_, BenchError>((small_runs, big_runs, search, live))
    }
    .await;
    browser.close().await;
    let (small_runs, big_runs, search, live) = result?;

    let worst = |runs: &[Opened], f: fn(&Opened) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    let mut figures = vec![
        Figure::new(
            "page_interactive_ms",
            &format!("page: finished {lines}-line job, whole log on screen after navigation"),
            worst(&big_runs, |o| o.ready_ms),
            "ms",
        )
        .baseline(worst(&small_runs, |o| o.ready_ms), "ms")
        .target(Target::AtMost(INTERACTIVE_MS))
        .extra("runs", big_runs.len()),
        Figure::new(
            "page_scroll_worst_frame_ms",
            "page: worst frame scrolling to the end and back",
            worst(&big_runs, |o| o.worst_frame_ms),
            "ms",
        )
        .baseline(worst(&small_runs, |o| o.worst_frame_ms), "ms")
        .target(Target::AtMost(FRAME_MS))
        .extra("p95_frame_ms", worst(&big_runs, |o| o.p95_frame_ms))
        .extra(
            "baseline_p95_frame_ms",
            worst(&small_runs, |o| o.p95_frame_ms),
        ),
        Figure::new(
            "page_heap_mb",
            "page: the tab's JavaScript heap with the big log",
            worst(&big_runs, |o| o.heap_mb),
            "MB",
        )
        .baseline(worst(&small_runs, |o| o.heap_mb), "MB")
        .target(Target::AtMost(HEAP_MB)),
        Figure::new(
            "page_search_ms",
            &format!(
                "page: search with {} matches over {lines} lines",
                search.matches
            ),
            search.ms,
            "ms",
        )
        .target(Target::AtMost(SEARCH_MS)),
    ];
    figures.push(
        Figure::new(
            "page_live_line_p95_ms",
            "page: a running job's line on screen after the container printed it (p95)",
            live.page_p95_ms,
            "ms",
        )
        .baseline(live.stream_p95_ms, "ms")
        .target(Target::AtMost(LIVE_P95_MS))
        .extra("lines", live.lines)
        .extra("lines_per_s", live.rate),
    );
    Ok(figures)
}

/// Submits a job and waits until it has ended.
async fn finished_job(api: &Api, zip: &[u8]) -> Result<JobId> {
    let id = api.submit_async(zip).await?;
    api.wait_ended(&[id], Duration::from_millis(100), STEP_LIMIT)
        .await?;
    Ok(id)
}

struct Opened {
    ready_ms: f64,
    worst_frame_ms: f64,
    p95_frame_ms: f64,
    heap_mb: f64,
}

struct Searched {
    ms: f64,
    matches: usize,
}

struct Live {
    page_p95_ms: f64,
    stream_p95_ms: f64,
    lines: usize,
    rate: usize,
}

/// Lines a second the live job prints.
pub const LIVE_RATE: usize = 2000;

async fn live_latency(
    browser: &Browser,
    system: &System,
    api: &Api,
    key: &str,
    ctx: &Context<'_>,
) -> Result<Live> {
    let id = api.submit_async(&ctx.fixtures.live_log.zip).await?;
    // The plain client reads the same stream at the same time.
    let addr: SocketAddr = system
        .base_url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| BenchError::Setup(format!("server address {}: {e}", system.base_url)))?;
    let mut stream = EventStream::open(addr, key, id).await?;
    let reader = tokio::spawn(async move {
        // (line number, printed at, arrived at), in seconds since the epoch.
        let mut arrivals = Vec::new();
        let mut partial = String::new();
        while let Some(event) = stream.next_event().await? {
            let now = unix_seconds();
            if let ci_common::api::StreamEvent::Log { data } = event {
                partial.push_str(&data);
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    if let Some((n, printed)) = live_line(&line) {
                        arrivals.push((n, printed, now));
                    }
                }
            }
        }
        Ok::<_, BenchError>(arrivals)
    });

    browser
        .goto(&format!("{}/jobs/{id}", system.base_url))
        .await?;
    browser
        .wait_js(
            "the job page",
            "return !!window.ciJobPage && !!document.querySelector('#log .rows');",
        )
        .await?;
    // Each time the rows on screen reach a later live line: when, and which.
    // At 2 000 lines a second a frame can bring more lines than the screen
    // holds; those scroll past in that frame, which is when they were shown.
    browser
        .js(&format!(
            "window.liveShown = [];
             const rows = document.querySelector('#log .rows');
             let highest = -1;
             new MutationObserver(() => {{
               const now = Date.now() / 1000;
               for (const row of rows.children) {{
                 const m = /{LIVE_LINE_PREFIX}(\\d+) /.exec(row.textContent);
                 if (m && Number(m[1]) > highest) highest = Number(m[1]);
               }}
               const last = window.liveShown[window.liveShown.length - 1];
               if (highest >= 0 && (!last || last[1] < highest)) window.liveShown.push([now, highest]);
             }}).observe(rows, {{ childList: true }});
             return true;"
        ))
        .await?;
    browser
        .wait_js(
            "the live job's end",
            "return window.ciJobPage.streamEnded();",
        )
        .await?;
    let shown = browser.js("return window.liveShown;").await?;
    let shown: Vec<(f64, u64)> = shown
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let arrivals = reader
        .await
        .map_err(|e| BenchError::Setup(format!("the stream reader failed: {e}")))??;
    let expected = live_lines(ctx.plan.quick);
    if arrivals.len() != expected {
        return Err(BenchError::Setup(format!(
            "page: the plain stream had {} live lines, expected {expected}",
            arrivals.len()
        )));
    }
    let stream: Vec<f64> = arrivals
        .iter()
        .map(|&(_, printed, now)| (now - printed) * 1000.0)
        .collect();
    let mut page = Vec::with_capacity(arrivals.len());
    for &(n, printed, _) in &arrivals {
        let at = shown.partition_point(|&(_, highest)| highest < n);
        match shown.get(at) {
            Some(&(when, _)) => page.push((when - printed) * 1000.0),
            None => {
                return Err(BenchError::Setup(format!(
                    "page: live line {n} was never on screen"
                )))
            }
        }
    }
    Ok(Live {
        page_p95_ms: percentile(&page, 95.0).unwrap_or(f64::NAN),
        stream_p95_ms: percentile(&stream, 95.0).unwrap_or(f64::NAN),
        lines: page.len(),
        rate: LIVE_RATE,
    })
}

/// How many lines the live fixture prints: 5 s of them (2 s in `--quick`).
pub fn live_lines(quick: bool) -> usize {
    LIVE_RATE * if quick { 2 } else { 5 }
}

/// A live line's number and the container's clock when it was printed.
fn live_line(line: &str) -> Option<(u64, f64)> {
    let rest = line.trim_end().strip_prefix(LIVE_LINE_PREFIX)?;
    let (n, printed) = rest.split_once(' ')?;
    Some((n.parse().ok()?, printed.parse().ok()?))
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Headless Chromium with a fresh profile (the test kit's), with exact heap
/// figures and a collection on demand.
struct Browser {
    client: Client,
    _chromium: Chromium,
}

impl Browser {
    async fn start() -> Result<Browser> {
        let chromium = start_chromium(&["--enable-precise-memory-info", "--js-flags=--expose-gc"])
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Browser {
            client: chromium.client.clone(),
            _chromium: chromium,
        })
    }

    async fn close(self) {
        // chromedriver goes with the kit's handle.
        let _ = self.client.close().await;
    }

    async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .map_err(|e| BenchError::protocol(format!("browser: open {url}"), e.to_string()))
    }

    async fn js(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .map_err(|e| BenchError::protocol("browser: script", format!("{e}: {script}")))
    }

    /// Waits until `script` returns something other than null or false.
    async fn wait_js(&self, what: &str, script: &str) -> Result<Value> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let value = self.js(script).await?;
            if !(value.is_null() || value == Value::Bool(false)) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::timeout(format!("the page: {what}"), STEP_LIMIT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signs in as the page does, from a document on the server's origin.
    async fn sign_in(&self, base: &str, key: &str) -> Result<()> {
        self.goto(&format!("{base}/health")).await?;
        let status = self
            .client
            .execute(
                "return fetch('/session', {method: 'POST', headers: {'Content-Type': 'application/json'}, \
                 body: JSON.stringify({api_key: arguments[0]})}).then(r => r.status);",
                vec![json!(key)],
            )
            .await
            .map_err(|e| BenchError::protocol("browser: sign in", e.to_string()))?;
        if status != json!(204) {
            return Err(BenchError::protocol(
                "browser: POST /session",
                status.to_string(),
            ));
        }
        Ok(())
    }

    /// Opens a finished job's page: when its whole log was on screen, the
    /// worst frame scrolling to the end and back, and the heap after that.
    async fn open_finished(&self, base: &str, job: JobId) -> Result<Opened> {
        // From a blank page, so the previous page's heap is gone.
        self.goto("about:blank").await?;
        self.goto(&format!("{base}/jobs/{job}")).await?;
        let ready = self
            .wait_js(
                "the finished job's log on screen",
                "return window.ciJobPage && window.ciJobPage.readyAt();",
            )
            .await?;
        let frames = self
            .js("const el = document.getElementById('log');
                 const max = el.scrollHeight - el.clientHeight, steps = 90;
                 return new Promise(resolve => {
                   let i = 0, last = 0;
                   const frames = [];
                   const frame = t => {
                     if (i > 0) frames.push(t - last);
                     last = t;
                     if (i <= steps) el.scrollTop = max * i / steps;
                     else if (i <= 2 * steps) el.scrollTop = max * (2 * steps - i) / steps;
                     else {
                       frames.sort((a, b) => a - b);
                       return resolve([frames[frames.length - 1], frames[Math.floor(frames.length * 0.95)]]);
                     }
                     i++;
                     requestAnimationFrame(frame);
                   };
                   requestAnimationFrame(frame);
                 });")
            .await?;
        let heap = self
            .js("window.gc && window.gc(); return performance.memory.usedJSHeapSize / 1e6;")
            .await?;
        Ok(Opened {
            ready_ms: ready.as_f64().unwrap_or(f64::NAN),
            worst_frame_ms: frames[0].as_f64().unwrap_or(f64::NAN),
            p95_frame_ms: frames[1].as_f64().unwrap_or(f64::NAN),
            heap_mb: heap.as_f64().unwrap_or(f64::NAN),
        })
    }

    /// Searches the page's log as a person does (the term, then Enter): the
    /// time until the answer is on screen, and how many lines matched.
    async fn search(&self, term: &str) -> Result<Searched> {
        let answer = self
            .client
            .execute(
                "const box = document.getElementById('search');
                 const t0 = performance.now();
                 box.value = arguments[0];
                 box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
                 return new Promise(resolve => requestAnimationFrame(() => resolve(
                   [performance.now() - t0, document.getElementById('search-count').textContent])));",
                vec![json!(term)],
            )
            .await
            .map_err(|e| BenchError::protocol("browser: search", e.to_string()))?;
        let ms = answer[0].as_f64().unwrap_or(f64::NAN);
        let text = answer[1].as_str().unwrap_or_default();
        // "1 / 2000 lines (2000 matches)"
        let matches = text
            .split(" / ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(Searched { ms, matches })
    }
}
