//! Figure 8: how soon a waiter on SQLite learns of another process's write.
//! Two stores opened on one scratch file, as ci-server and ci-controller
//! would: one watches a job, the other appends to it; the time from the
//! append's start until the watch wakes. Measured right after a change (the
//! watcher polls fastest then) and after a quiet spell longer than its fast
//! spell (it has backed off to its slowest pace, which bounds the latency of a
//! first change), interleaved in the same run.

use std::time::{Duration, Instant};

use ci_common::JobId;
use ci_persistence::DatabaseLocation;
use ci_persistence::{JobWatch, NewJob, Store, StoreOptions};

use super::{ms, progress, Context};
use crate::error::{BenchError, Result};
use crate::report::{Figure, Target};
use crate::stats::{median, percentile};

/// Proposed here: the watcher's slowest pace (25 ms by default) is the worst
/// latency after a quiet spell, so the median must stay under it.
pub const TARGET_QUIET_MS: f64 = 25.0;

/// Between two appends right after a change: within the watcher's fast spell.
const HOT_GAP: Duration = Duration::from_millis(2);

pub async fn measure(ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new()
        .prefix("ci-bench-watcher-")
        .tempdir()
        .map_err(BenchError::io("creating a scratch folder"))?;
    let location = DatabaseLocation::SqliteFile(dir.path().join("jobs.db"));
    let open = || async {
        Store::open_with(&location, StoreOptions::default())
            .await
            .map_err(store_error)
    };
    let (waiter, writer) = (open().await?, open().await?);
    let job = running_job(&writer).await?;
    let mut watch = waiter.changes().subscribe_job(job);
    // The watcher's first look at the job may wake it once; take that first.
    wake_after(&writer, &mut watch, job, Duration::ZERO).await?;

    let (samples, quiet) = (ctx.plan.watcher_samples, ctx.plan.watcher_quiet);
    let (mut hot, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        hot.push(ms(wake_after(&writer, &mut watch, job, HOT_GAP).await?));
        cold.push(ms(wake_after(&writer, &mut watch, job, quiet).await?));
    }
    let (hot_ms, cold_ms) = (
        median(&hot).unwrap_or(f64::NAN),
        median(&cold).unwrap_or(f64::NAN),
    );
    let cold_max = percentile(&cold, 100.0).unwrap_or(f64::NAN);
    progress(format!(
        "watcher: another process's write seen after {cold_ms:.1} ms (max {cold_max:.1}) after {quiet:?} of quiet, {hot_ms:.1} ms right after a change"
    ));
    drop(watch);
    waiter.close().await;
    writer.close().await;
    Ok(vec![Figure::new(
        "watcher_quiet_ms",
        &format!("8 SQLite: another process's write seen, after {quiet:?} quiet, p50"),
        cold_ms,
        "ms",
    )
    .baseline(hot_ms, "ms")
    .target(Target::AtMost(TARGET_QUIET_MS))
    .extra("max_ms", format!("{cold_max:.1}"))
    .extra("samples", samples)
    .extra("target_source", "proposed")])
}

/// Waits `gap`, appends a line with `writer`, and returns how long until the
/// watch (on another store) woke.
async fn wake_after(
    writer: &Store,
    watch: &mut JobWatch,
    job: JobId,
    gap: Duration,
) -> Result<Duration> {
    watch.mark_seen();
    tokio::time::sleep(gap).await;
    let started = Instant::now();
    writer
        .append_log(job, &["line\n".to_string()], None)
        .await
        .map_err(store_error)?;
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, watch.changed())
        .await
        .map_err(|_| BenchError::timeout("the watch to wake", limit))?;
    Ok(started.elapsed())
}

async fn running_job(store: &Store) -> Result<JobId> {
    let user = store
        .create_user("Watcher", "watcher@example.com")
        .await
        .map_err(store_error)?;
    let archive_digest = store
        .put_archive(b"not a zip: never unpacked")
        .await
        .map_err(store_error)?;
    let id = store
        .create_job(&NewJob::new(user.id, archive_digest))
        .await
        .map_err(store_error)?
        .id;
    store
        .mark_running(id, "none", "none", None)
        .await
        .map_err(store_error)?;
    Ok(id)
}

fn store_error(e: ci_persistence::StoreError) -> BenchError {
    BenchError::Setup(format!("scratch database: {e}"))
}
