//! Figure 3: many jobs at once. N passing jobs submitted together with the
//! controller's default capacity (the CPU count); the time until the last one
//! ended, against the same N containers run by hand, CPU-count at a time.
//! Ratio of the sums over the rounds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use tokio::sync::Semaphore;

use super::overhead::by_hand;
use super::{ms, progress, Context};
use crate::docker::project_tar;
use crate::error::{BenchError, Result};
use crate::report::{Figure, Target};
use crate::system::System;

/// Proposed here (the issue names none): the same budget as figure 1.
pub const TARGET_RATIO: f64 = 1.15;

pub async fn measure(system: &System, key: &str, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let n = ctx.plan.throughput_jobs;
    let rounds = ctx.plan.throughput_rounds;
    // Rounds in ABBA order (system, by hand, by hand, system, …): the phases
    // are long, so a neighbour's burst must not land on one side only.
    let (mut system_ms, mut hand_ms) = (0.0, 0.0);
    for round in 0..rounds {
        if round % 2 == 0 {
            system_ms += through_system(system, key, ctx).await?;
            hand_ms += by_hand_at_once(system, ctx).await?;
        } else {
            hand_ms += by_hand_at_once(system, ctx).await?;
            system_ms += through_system(system, key, ctx).await?;
        }
    }
    let rounds_f = rounds.max(1) as f64;
    Ok(vec![Figure::new(
        "throughput_ratio",
        &format!("3 throughput: {n} jobs at once, system / by hand"),
        system_ms / hand_ms,
        "x",
    )
    .baseline(hand_ms / rounds_f, "ms")
    .target(Target::AtMost(TARGET_RATIO))
    .extra("system_ms", format!("{:.0}", system_ms / rounds_f))
    .extra("jobs", n)
    .extra("rounds", rounds)
    .extra("concurrency", ctx.cpus)
    .extra("target_source", "proposed")])
}

/// Submits the jobs at once; ms from the first submit to the last job's end.
async fn through_system(system: &System, key: &str, ctx: &Context<'_>) -> Result<f64> {
    let api = system.api(key)?;
    let n = ctx.plan.throughput_jobs;
    let zip = &ctx.fixtures.passing.zip;
    let submitted_wall: DateTime<Utc> = SystemTime::now().into();
    let ids = try_join_all((0..n).map(|_| api.submit_async(zip))).await?;
    let ended = api
        .wait_ended(&ids, Duration::from_millis(100), Duration::from_secs(1800))
        .await?;
    if let Some(bad) = ended.iter().find(|j| j.success != Some(true)) {
        return Err(BenchError::protocol(
            format!("job {}", bad.job_id),
            "a passing job did not pass",
        ));
    }
    let last_end = ended
        .iter()
        .filter_map(|j| j.end_time)
        .max()
        .ok_or_else(|| BenchError::protocol("GET /jobs", "ended jobs without an end time"))?;
    let took = (last_end - submitted_wall)
        .to_std()
        .map(ms)
        .unwrap_or(f64::NAN);
    progress(format!(
        "throughput: {n} jobs through the system in {took:.0} ms"
    ));
    Ok(took)
}

/// The same containers by hand, CPU-count at a time; ms until all are done.
async fn by_hand_at_once(system: &System, ctx: &Context<'_>) -> Result<f64> {
    let n = ctx.plan.throughput_jobs;
    let manual = Arc::new(system.manual_job());
    let tar = Arc::new(project_tar(&ctx.fixtures.passing.zip)?);
    let slots = Arc::new(Semaphore::new(ctx.cpus.max(1)));
    let started = Instant::now();
    let runs = (0..n).map(|_| {
        let (manual, tar, slots) = (manual.clone(), tar.clone(), slots.clone());
        async move {
            let _slot = slots
                .acquire_owned()
                .await
                .map_err(|_| BenchError::Setup("semaphore closed".into()))?;
            by_hand(&manual, &tar).await
        }
    });
    try_join_all(runs).await?;
    let took = ms(started.elapsed());
    progress(format!(
        "throughput: the same {n} by hand, {} at a time, in {took:.0} ms",
        ctx.cpus
    ));
    Ok(took)
}
