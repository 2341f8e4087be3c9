//! Figure 7: stream fan-out. ci-server's CPU (from `/proc/<pid>/stat`) over
//! equal windows with (a) many idle event streams on one quiet job, (b) two
//! jobs printing steadily, each followed by one stream, and (c) both at once;
//! the figure is c ÷ (a + b), all measured in the same run. When every stream
//! wakes for every job's output, (c) costs streams × flushes and the ratio
//! grows with the stream count; when a stream wakes only for its own job, (c)
//! is about the sum of its parts.

use std::time::Duration;

use ci_common::api::StreamEvent;
use ci_common::JobId;
use futures::future::try_join_all;

use super::memory::first_output;
use super::{progress, Context};
use crate::cpu::CpuMeter;
use crate::error::{BenchError, Result};
use crate::http::{Api, EventStream};
use crate::report::{Figure, Target};
use crate::system::{System, SystemOptions};

/// From the issue.
pub const TARGET_RATIO: f64 = 1.3;

/// Jobs printing at once in windows (b) and (c).
const PRINTERS: usize = 2;

/// Streams opened at once; the rest wait for the batch (the listen backlog).
const OPEN_BATCH: usize = 100;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let mut options = options.clone();
    // The quiet job and the printers run at once, whatever the CPU count.
    options.max_concurrent_jobs = Some(1 + PRINTERS);
    System::run(&options, async |system| measure_on(system, ctx).await).await
}

async fn measure_on(system: &System, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let server = system
        .server_pid()
        .ok_or_else(|| BenchError::Setup("ci-server has exited".into()))?;
    let key = system.user_with_key("fanout").await?;
    let api = system.api(&key)?;
    let streams = ctx.plan.fanout_streams;
    let window = ctx.plan.fanout_window;

    // For the record: the server with nothing to do (on SQLite, its change
    // watcher's polling is all there is).
    let nothing = cpu_over(server, window).await?;
    progress(format!(
        "fanout: idle ci-server {nothing:.0} ms CPU in {window:?}"
    ));

    let quiet = api.submit_async(&ctx.fixtures.long_sleeper.zip).await?;
    let mut idle = Vec::with_capacity(streams);
    while idle.len() < streams {
        let batch = OPEN_BATCH.min(streams - idle.len());
        let opened = try_join_all((0..batch).map(|_| first_output(system, &key, quiet))).await?;
        idle.extend(opened);
    }
    let a = cpu_over(server, window).await?;
    progress(format!(
        "fanout (a) {streams} idle streams: ci-server {a:.0} ms CPU in {window:?}"
    ));

    let mut printers = Vec::with_capacity(PRINTERS);
    for _ in 0..PRINTERS {
        printers.push(api.submit_async(&ctx.fixtures.printer.zip).await?);
    }
    let followers = try_join_all(printers.iter().map(|&job| follow(system, &key, job))).await?;
    let c = cpu_over(server, window).await?;
    progress(format!(
        "fanout (c) both: ci-server {c:.0} ms CPU in {window:?}"
    ));

    drop(idle);
    let b = cpu_over(server, window).await?;
    progress(format!(
        "fanout (b) {PRINTERS} printing jobs: ci-server {b:.0} ms CPU in {window:?}"
    ));

    let printed: Vec<u64> = followers
        .iter()
        .map(|f| f.lines.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    end_jobs(&api, &[&[quiet][..], &printers[..]].concat()).await?;
    for f in followers {
        f.task.abort();
    }
    if printed.contains(&0) {
        return Err(BenchError::protocol(
            "the printing jobs' streams",
            format!("some printed nothing while measured: {printed:?}"),
        ));
    }

    Ok(vec![Figure::new(
        "fanout_ratio",
        &format!("7 ci-server CPU: {streams} idle streams + {PRINTERS} printing jobs / sum of each alone"),
        c / (a + b),
        "x",
    )
    .baseline(a + b, "ms")
    .target(Target::AtMost(TARGET_RATIO))
    .extra("idle_server_ms", format!("{nothing:.0}"))
    .extra("idle_ms", format!("{a:.0}"))
    .extra("printing_ms", format!("{b:.0}"))
    .extra("both_ms", format!("{c:.0}"))
    .extra("streams", streams)
    .extra("window_s", window.as_secs_f64())
    .extra("db", ctx.database)])
}

/// Milliseconds of CPU the process used over the next `window`.
async fn cpu_over(pid: u32, window: Duration) -> Result<f64> {
    let pids = [Some(pid)];
    let meter = CpuMeter::start(&pids);
    tokio::time::sleep(window).await;
    let used = meter.elapsed_ms(&pids)[0];
    if used.is_nan() {
        return Err(BenchError::Setup(
            "ci-server's CPU time cannot be read".into(),
        ));
    }
    Ok(used)
}

/// A stream reading one printing job's output as it comes, counting the
/// events after the first.
struct Follower {
    lines: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Follows `job` once it has printed its first line.
async fn follow(system: &System, key: &str, job: JobId) -> Result<Follower> {
    let mut stream: EventStream = first_output(system, key, job).await?;
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = lines.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.next_event().await {
            if matches!(event, StreamEvent::Log { .. }) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    Ok(Follower { lines, task })
}

/// Cancels the jobs and waits until they have ended.
async fn end_jobs(api: &Api, jobs: &[JobId]) -> Result<()> {
    for &job in jobs {
        api.cancel(job).await?;
    }
    api.wait_ended(jobs, Duration::from_millis(200), Duration::from_secs(60))
        .await?;
    Ok(())
}
