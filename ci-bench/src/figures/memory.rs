//! Figure 6: memory. Peak resident memory (VmHWM) of a fresh `ci-server` when
//! idle and after holding many event streams on one running job, and of a fresh
//! `ci-controller` after running many jobs at once. The baseline of the loaded
//! figures is the same process idle, so the growth per stream or job shows.

use std::time::{Duration, Instant};

use ci_common::api::StreamEvent;
use ci_common::JobId;
use ci_common::JobStatus;
use futures::future::try_join_all;

use super::{progress, Context};
use crate::error::{BenchError, Result};
use crate::http::{Api, EventStream};
use crate::report::{Figure, Target};
use crate::system::{System, SystemOptions};

pub const TARGET_SERVER_IDLE_MB: f64 = 30.0;
pub const TARGET_SERVER_STREAMS_MB: f64 = 150.0;
pub const TARGET_CONTROLLER_JOBS_MB: f64 = 60.0;

/// Streams opened at once; the rest wait for the batch (the listen backlog).
const OPEN_BATCH: usize = 100;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let mut options = options.clone();
    options.max_concurrent_jobs = Some(ctx.plan.controller_jobs);
    System::run(&options, async |system| measure_on(system, ctx).await).await
}

async fn measure_on(system: &System, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let server = system
        .server_pid()
        .ok_or_else(|| BenchError::Setup("ci-server has exited".into()))?;
    let controller = system
        .controller_pid()
        .ok_or_else(|| BenchError::Setup("ci-controller has exited".into()))?;
    // Idle: started, migrated, leader taken, nothing asked of it yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server_idle = vm_hwm_mb(server)?;
    let controller_idle = vm_hwm_mb(controller)?;
    progress(format!(
        "memory: idle ci-server {server_idle:.1} MB, idle ci-controller {controller_idle:.1} MB"
    ));

    let key = system.user_with_key("memory").await?;
    let api = system.api(&key)?;
    let streams = ctx.plan.sse_streams;
    let server_streams = hold_streams(system, &api, &key, ctx, server).await?;
    progress(format!(
        "memory: ci-server with {streams} open streams {server_streams:.1} MB"
    ));

    let jobs = ctx.plan.controller_jobs;
    let max_running = run_at_once(&api, ctx).await?;
    let controller_jobs = vm_hwm_mb(controller)?;
    progress(format!(
        "memory: ci-controller after {jobs} jobs ({max_running} seen running at once) {controller_jobs:.1} MB"
    ));

    Ok(vec![
        Figure::new(
            "mem_server_idle_mb",
            "6 ci-server idle, peak RSS",
            server_idle,
            "MB",
        )
        .target(Target::AtMost(TARGET_SERVER_IDLE_MB))
        .extra("db", ctx.database),
        Figure::new(
            "mem_server_streams_mb",
            &format!("6 ci-server with {streams} open streams, peak RSS"),
            server_streams,
            "MB",
        )
        .baseline(server_idle, "MB")
        .target(Target::AtMost(TARGET_SERVER_STREAMS_MB))
        .extra("streams", streams)
        .extra(
            "kb_per_stream",
            format!(
                "{:.1}",
                (server_streams - server_idle) * 1024.0 / streams as f64
            ),
        ),
        Figure::new(
            "mem_controller_jobs_mb",
            &format!("6 ci-controller running {jobs} jobs, peak RSS"),
            controller_jobs,
            "MB",
        )
        .baseline(controller_idle, "MB")
        .target(Target::AtMost(TARGET_CONTROLLER_JOBS_MB))
        .extra("jobs", jobs)
        .extra("max_running", max_running),
    ])
}

/// Opens the streams on one running job, waits until each has had output,
/// reads the server's peak, then cancels the job.
async fn hold_streams(
    system: &System,
    api: &Api,
    key: &str,
    ctx: &Context<'_>,
    server: u32,
) -> Result<f64> {
    let job = api.submit_async(&ctx.fixtures.long_sleeper.zip).await?;
    let mut open = Vec::with_capacity(ctx.plan.sse_streams);
    while open.len() < ctx.plan.sse_streams {
        let batch = OPEN_BATCH.min(ctx.plan.sse_streams - open.len());
        let opened = try_join_all((0..batch).map(|_| first_output(system, key, job))).await?;
        open.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = vm_hwm_mb(server)?;
    api.cancel(job).await?;
    api.wait_ended(&[job], Duration::from_millis(200), Duration::from_secs(60))
        .await?;
    drop(open);
    Ok(peak)
}

/// A stream on `job` that has delivered the job's first output.
pub(crate) async fn first_output(system: &System, key: &str, job: JobId) -> Result<EventStream> {
    let mut stream = EventStream::open(system.addr, key, job).await?;
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, async {
        loop {
            match stream.next_event().await? {
                Some(StreamEvent::Log { .. }) => return Ok(()),
                Some(_) => {}
                None => {
                    return Err(BenchError::protocol(
                        format!("GET /jobs/{job}/stream"),
                        "ended before the job printed anything",
                    ))
                }
            }
        }
    })
    .await
    .map_err(|_| BenchError::timeout("the long job's first output", limit))??;
    Ok(stream)
}

/// Submits the plan's jobs at once and waits until all have ended; the most
/// seen running at the same time.
async fn run_at_once(api: &Api, ctx: &Context<'_>) -> Result<usize> {
    let n = ctx.plan.controller_jobs;
    let ids = try_join_all((0..n).map(|_| api.submit_async(&ctx.fixtures.sleeper.zip))).await?;
    let limit = Duration::from_secs(600);
    let deadline = Instant::now() + limit;
    let mut max_running = 0;
    loop {
        let jobs = api.list_jobs().await?;
        let ours: Vec<_> = jobs.iter().filter(|j| ids.contains(&j.job_id)).collect();
        let running = ours
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .count();
        max_running = max_running.max(running);
        if ours.len() == n && ours.iter().all(|j| j.status.is_terminal()) {
            if let Some(bad) = ours.iter().find(|j| j.success != Some(true)) {
                return Err(BenchError::protocol(
                    format!("job {}", bad.job_id),
                    "a sleeping job did not pass",
                ));
            }
            return Ok(max_running);
        }
        if Instant::now() > deadline {
            return Err(BenchError::timeout(
                "the memory figure's jobs to end",
                limit,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Peak resident set of a process, in MiB, from `/proc/PID/status`.
pub fn vm_hwm_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {path}")))?;
    parse_vm_hwm_kb(&status)
        .map(|kb| kb as f64 / 1024.0)
        .ok_or_else(|| BenchError::Setup(format!("no VmHWM line in {path}")))
}

fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_proc_status() {
        let status =
            "Name:\tci-server\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t 20000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(23456));
        assert_eq!(parse_vm_hwm_kb("Name: x\n"), None);
        assert!(vm_hwm_mb(std::process::id()).unwrap() > 0.0);
    }
}
