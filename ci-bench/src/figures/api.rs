//! Figure 4: the API under load. A user with N ended jobs; authenticated
//! `GET /jobs/{id}` and `GET /jobs` on 64 keep-alive connections for a fixed
//! time, against `GET /health` (no database, no auth) with the same client in
//! the same run, which shows what the machine and the client allow at all.

use std::time::Duration;

use futures::future::try_join_all;

use super::{progress, Context};
use crate::cpu::CpuMeter;
use crate::error::{BenchError, Result};
use crate::load::{self, LoadResult};
use crate::report::{Figure, Target};
use crate::system::System;

pub const TARGET_GET_JOB_RPS: f64 = 15_000.0;
pub const TARGET_GET_JOB_P99_MS: f64 = 10.0;

pub async fn measure(system: &System, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let key = system.user_with_key("api").await?;
    let api = system.api(&key)?;
    let n = ctx.plan.api_jobs;
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let batch = try_join_all(
            chunk
                .iter()
                .map(|_| api.submit_async(&ctx.fixtures.passing.zip)),
        )
        .await?;
        ids.extend(batch);
    }
    progress(format!(
        "api: waiting for the {n} jobs of the API user to end"
    ));
    api.wait_ended(&ids, Duration::from_millis(500), Duration::from_secs(1800))
        .await?;
    let job = ids
        .get(ids.len() / 2)
        .copied()
        .ok_or_else(|| BenchError::Setup("the API figure needs at least one job".into()))?;

    let shape = ctx.plan.api_shape;
    let server = [system.server_pid()];
    let (health, health_cpu) = loaded(system, "/health", &key, &server, ctx).await?;
    let (one, one_cpu) = loaded(system, &format!("/jobs/{job}"), &key, &server, ctx).await?;
    let (list, list_cpu) = loaded(system, "/jobs", &key, &server, ctx).await?;

    let common = |f: Figure, r: &LoadResult, cpu: f64| {
        f.extra("server_cpu_us_per_req", format!("{cpu:.1}"))
            .extra("health_server_cpu_us_per_req", format!("{health_cpu:.1}"))
            .extra("errors", r.errors)
            .extra("requests", r.ok)
            .extra("connections", shape.connections)
            .extra("seconds", shape.duration.as_secs_f64())
            .extra("jobs", n)
            .extra("db", ctx.database)
    };
    Ok(vec![
        common(
            Figure::new(
                "api_get_job_rps",
                "4 GET /jobs/{id} throughput",
                one.rps(),
                "req/s",
            )
            .baseline(health.rps(), "req/s")
            .target(Target::AtLeast(TARGET_GET_JOB_RPS)),
            &one,
            one_cpu,
        ),
        common(
            Figure::new(
                "api_get_job_p50_ms",
                "4 GET /jobs/{id} p50",
                one.p50_ms(),
                "ms",
            )
            .baseline(health.p50_ms(), "ms"),
            &one,
            one_cpu,
        ),
        common(
            Figure::new(
                "api_get_job_p99_ms",
                "4 GET /jobs/{id} p99",
                one.p99_ms(),
                "ms",
            )
            .baseline(health.p99_ms(), "ms")
            .target(Target::AtMost(TARGET_GET_JOB_P99_MS)),
            &one,
            one_cpu,
        ),
        common(
            Figure::new(
                "api_list_jobs_rps",
                &format!("4 GET /jobs ({n} jobs) throughput"),
                list.rps(),
                "req/s",
            )
            .baseline(health.rps(), "req/s"),
            &list,
            list_cpu,
        ),
        common(
            Figure::new(
                "api_list_jobs_p50_ms",
                &format!("4 GET /jobs ({n} jobs) p50"),
                list.p50_ms(),
                "ms",
            )
            .baseline(health.p50_ms(), "ms"),
            &list,
            list_cpu,
        ),
        common(
            Figure::new(
                "api_list_jobs_p99_ms",
                &format!("4 GET /jobs ({n} jobs) p99"),
                list.p99_ms(),
                "ms",
            )
            .baseline(health.p99_ms(), "ms"),
            &list,
            list_cpu,
        ),
    ])
}

/// One load run and the server's CPU time per request during it, in µs
/// (measured over warm-up and window alike, divided by all requests sent).
async fn loaded(
    system: &System,
    path: &str,
    key: &str,
    server: &[Option<u32>],
    ctx: &Context<'_>,
) -> Result<(LoadResult, f64)> {
    let meter = CpuMeter::start(server);
    let r = load::run(system.addr, path, Some(key), ctx.plan.api_shape).await?;
    let cpu_ms = meter
        .elapsed_ms(server)
        .first()
        .copied()
        .unwrap_or(f64::NAN);
    let shape = ctx.plan.api_shape;
    // Requests over the whole run, estimated from the window's rate.
    let all = r.rps() * (shape.warmup + shape.duration).as_secs_f64();
    let per_request_us = cpu_ms * 1000.0 / all.max(1.0);
    progress(format!(
        "api: GET {path}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, server CPU {per_request_us:.0} µs/request",
        r.rps(),
        r.p50_ms(),
        r.p99_ms(),
        r.errors
    ));
    Ok((r, per_request_us))
}
