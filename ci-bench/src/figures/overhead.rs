//! Figure 1: what the service costs on top of running the job by hand.
//! `ci submit test` on the passing project, against `docker create`, `docker
//! start -a -i` with the project on standard input and `docker rm` of the same
//! container, in interleaved pairs (the order alternates, so neither side
//! always runs second).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{ms, progress, Context};
use ci_controller::container_spec::ContainerSpec;

use crate::docker::{project_tar, ManualJob};
use crate::error::{BenchError, Result};
use crate::report::{Figure, Target};
use crate::stats::median;
use crate::system::System;

pub const TARGET_RATIO: f64 = 1.15;

pub async fn measure(system: &System, key: &str, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let dir = &ctx.fixtures.passing.dir;
    let tar = project_tar(&ctx.fixtures.passing.zip)?;
    let manual = system.manual_job();
    // One untimed pair: both paths warm (client binary, image layers, volume).
    ci_submit(system, key, dir).await?;
    by_hand(&manual, &tar).await?;

    let pairs = ctx.plan.overhead_pairs;
    let (mut ci, mut hand, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (c, h) = if i % 2 == 0 {
            let c = ci_submit(system, key, dir).await?;
            (c, by_hand(&manual, &tar).await?)
        } else {
            let h = by_hand(&manual, &tar).await?;
            (ci_submit(system, key, dir).await?, h)
        };
        progress(format!(
            "overhead pair {}/{pairs}: ci submit {:.0} ms, by hand {:.0} ms",
            i + 1,
            ms(c),
            ms(h)
        ));
        ci.push(ms(c));
        hand.push(ms(h));
        ratios.push(ms(c) / ms(h));
    }
    let ratio = median(&ratios).unwrap_or(f64::NAN);
    Ok(vec![Figure::new(
        "overhead_ratio",
        "1 overhead: ci submit test / by hand (median of pairs)",
        ratio,
        "x",
    )
    .baseline(median(&hand).unwrap_or(f64::NAN), "ms")
    .target(Target::AtMost(TARGET_RATIO))
    .extra("ci_ms", format!("{:.1}", median(&ci).unwrap_or(f64::NAN)))
    .extra("pairs", pairs)])
}

/// Wall time of `ci submit test` in the project, which must pass.
pub async fn ci_submit(system: &System, key: &str, dir: &Path) -> Result<Duration> {
    ci_submit_with(system, key, dir, &[]).await
}

/// Wall time of `ci submit test ARGS` in the project, which must pass.
pub async fn ci_submit_with(
    system: &System,
    key: &str,
    dir: &Path,
    args: &[&str],
) -> Result<Duration> {
    let started = Instant::now();
    let out = system
        .ci(key, dir)
        .args(["submit", "test"])
        .args(args)
        .output()
        .await
        .map_err(BenchError::io("running ci submit test"))?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(" passed") {
        return Err(BenchError::Command {
            command: "ci submit test".into(),
            detail: format!(
                "{}; stdout: {}; stderr: {}",
                out.status,
                last_lines(&stdout),
                last_lines(&String::from_utf8_lossy(&out.stderr))
            ),
        });
    }
    Ok(took)
}

/// Wall time of the same job by hand (`project` is its workspace tar), which
/// must pass too.
pub async fn by_hand(manual: &ManualJob, project: &[u8]) -> Result<Duration> {
    by_hand_as(manual, &manual.spec(), project).await
}

/// [`by_hand`] of another container than the controller's.
pub async fn by_hand_as(
    manual: &ManualJob,
    spec: &ContainerSpec,
    project: &[u8],
) -> Result<Duration> {
    let run = manual.run_spec(spec, project, None).await?;
    let output = String::from_utf8_lossy(&run.output);
    if run.exit_code != Some(0) || !output.contains(" passed") {
        return Err(BenchError::Command {
            command: "docker start -a -i (the job by hand)".into(),
            detail: format!("exit {:?}; output: {}", run.exit_code, last_lines(&output)),
        });
    }
    Ok(run.total())
}

pub(crate) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}
