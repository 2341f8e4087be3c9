//! Figure 13: what operating the service costs (issue 16 §5).
//!
//! - `GET /jobs/{id}` under load on the system's server (per-request metrics
//!   and an access-log line per request) against a second server on the same
//!   database with both off (`CI_OBSERVE_REQUESTS=false`), in the same run,
//!   ABBA, so a busy neighbour slows both alike. The figure is the ratio of
//!   their throughputs, off ÷ on.
//! - The controller's `GET /metrics` with 10 000 finished jobs in the
//!   database (its job gauges are read from the database at scrape time),
//!   against its `GET /ready` on the same listener.

use std::time::{Duration, Instant};

use ci_persistence::{Store, StoreOptions};

use super::{progress, Context};
use crate::error::{BenchError, Result};
use crate::load::{self, LoadResult, LoadShape};
use crate::report::{Figure, Target};
use crate::system::{System, SystemOptions};

/// Issue 16: the figure with metrics and access logs on stays within 10 % of
/// the one with them off.
pub const TARGET_OBSERVED_RATIO: f64 = 1.1;
/// Issue 16: a scrape of a controller with 10 000 finished jobs.
pub const TARGET_SCRAPE_MS: f64 = 20.0;
/// The finished jobs the scrape is measured over.
pub const FINISHED_JOBS: usize = 10_000;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    System::run(options, async |system| measure_on(system, ctx).await).await
}

async fn measure_on(system: &System, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let key = system.user_with_key("operations").await?;
    let api = system.api(&key)?;
    let job = api.submit_async(&ctx.fixtures.passing.zip).await?;
    api.wait_ended(&[job], Duration::from_millis(200), Duration::from_secs(600))
        .await?;
    let (_quiet, quiet_addr) =
        system.start_server("ci-server-unobserved", &[("CI_OBSERVE_REQUESTS", "false")])?;
    // The breakdown: metrics on, access lines filtered out.
    let (_unlogged, unlogged_addr) =
        system.start_server("ci-server-unlogged", &[("RUST_LOG", "warn")])?;
    let path = format!("/jobs/{job}");
    let shape = ctx.plan.api_shape;
    // ABCCBA: both on, metrics only, both off.
    let mut runs: [Vec<LoadResult>; 3] = Default::default();
    for variant in [0, 1, 2, 2, 1, 0] {
        let addr = [system.addr, unlogged_addr, quiet_addr][variant];
        let r = load::run(addr, &path, Some(&key), shape).await?;
        progress(format!(
            "operations: GET {path} with {}: {:.0} req/s, p50 {:.2} ms",
            ["metrics and access log", "metrics only", "neither"][variant],
            r.rps(),
            r.p50_ms()
        ));
        runs[variant].push(r);
    }
    let [on, metrics_only, off] = &runs;
    let (on_rps, off_rps) = (mean(on, LoadResult::rps), mean(off, LoadResult::rps));
    let metrics_only_rps = mean(metrics_only, LoadResult::rps);
    let (on_p50, off_p50) = (mean(on, LoadResult::p50_ms), mean(off, LoadResult::p50_ms));

    progress(format!(
        "operations: {FINISHED_JOBS} finished jobs into the database"
    ));
    let filled = Instant::now();
    fill(system).await?;
    let fill_secs = filled.elapsed().as_secs_f64();
    let status = system
        .controller_status_url
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| BenchError::Setup(format!("status URL {}", system.controller_status_url)))?;
    // One scraper at a time, as Prometheus scrapes.
    let scrape_shape = LoadShape {
        connections: 1,
        warmup: Duration::from_millis(500),
        duration: shape.duration.min(Duration::from_secs(5)),
    };
    let ready = load::run(status, "/ready", None, scrape_shape).await?;
    let scrape = load::run(status, "/metrics", None, scrape_shape).await?;
    progress(format!(
        "operations: controller /metrics p50 {:.2} ms, p99 {:.2} ms ({} scrapes); /ready p50 {:.2} ms",
        scrape.p50_ms(),
        scrape.p99_ms(),
        scrape.ok,
        ready.p50_ms()
    ));

    let common = |f: Figure| {
        f.extra("connections", shape.connections)
            .extra("seconds", shape.duration.as_secs_f64())
            .extra("db", ctx.database)
    };
    Ok(vec![
        common(
            Figure::new(
                "ops_observed_get_job_ratio",
                "12 GET /jobs/{id} throughput, metrics+access log off ÷ on",
                off_rps / on_rps.max(f64::MIN_POSITIVE),
                "×",
            )
            .target(Target::AtMost(TARGET_OBSERVED_RATIO))
            .extra("on_rps", format!("{on_rps:.0}"))
            .extra("metrics_only_rps", format!("{metrics_only_rps:.0}"))
            .extra("off_rps", format!("{off_rps:.0}")),
        ),
        common(
            Figure::new(
                "ops_observed_get_job_p50_ms",
                "12 GET /jobs/{id} p50, metrics+access log on",
                on_p50,
                "ms",
            )
            .baseline(off_p50, "ms"),
        ),
        Figure::new(
            "ops_controller_scrape_p50_ms",
            &format!("12 controller /metrics p50, {FINISHED_JOBS} finished jobs"),
            scrape.p50_ms(),
            "ms",
        )
        .baseline(ready.p50_ms(), "ms")
        .target(Target::AtMost(TARGET_SCRAPE_MS))
        .extra("p99_ms", format!("{:.2}", scrape.p99_ms()))
        .extra("ready_p99_ms", format!("{:.2}", ready.p99_ms()))
        .extra("scrapes", scrape.ok)
        .extra("fill_seconds", format!("{fill_secs:.1}"))
        .extra("db", ctx.database),
    ])
}

fn mean(results: &[LoadResult], f: fn(&LoadResult) -> f64) -> f64 {
    results.iter().map(f).sum::<f64>() / results.len().max(1) as f64
}

/// Writes [`FINISHED_JOBS`] ended jobs (the rows a real history leaves:
/// submitted, run, ended; one in ten failed) straight into the system's
/// database, in batches. Inserted ended, never queued, so the running
/// controller has nothing to start.
async fn fill(system: &System) -> Result<()> {
    let location = system.database_location();
    // Opening the store installs sqlx's drivers and checks the schema.
    let store = Store::open_with(&location, StoreOptions::default())
        .await
        .map_err(store_error)?;
    let user = store
        .create_user("History", "history@example.com")
        .await
        .map_err(store_error)?;
    let digest = store
        .put_archive(b"PK\x05\x06 operations history")
        .await
        .map_err(store_error)?;
    let url = match &location {
        ci_persistence::DatabaseLocation::SqliteFile(path) => {
            format!("sqlite://{}", path.display())
        }
        ci_persistence::DatabaseLocation::Url(url) => url.clone(),
    };
    let pool = sqlx::AnyPool::connect(&url)
        .await
        .map_err(|e| BenchError::Setup(format!("filling the database: {e}")))?;
    let now = chrono::Utc::now().timestamp_micros();
    for batch in (0..FINISHED_JOBS).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = batch
            .iter()
            .map(|&n| {
                let failed = n % 10 == 0;
                let created = now - 60_000_000 + n as i64;
                format!(
                    "('{}', '{}', 'completed', {}, {}, {created}, {}, {}, '{digest}')",
                    ci_common::JobId::random(),
                    user.id,
                    i64::from(!failed),
                    i64::from(failed),
                    created + 1_000,
                    created + 2_000_000,
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO jobs (id, user_id, status, success, exit_code, created_at, started_at, \
             ended_at, archive_digest) VALUES {}",
            rows.join(", ")
        );
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .map_err(|e| BenchError::Setup(format!("filling the database: {e}")))?;
    }
    pool.close().await;
    Ok(())
}

fn store_error(e: ci_persistence::StoreError) -> BenchError {
    BenchError::Setup(format!("filling the database: {e}"))
}
