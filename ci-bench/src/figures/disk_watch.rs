//! Figure 15: what the disk watch costs the engine (issue 16). The watch
//! measures every running job in one call of the engine's disk usage
//! (`DockerRuntime::disk_use`), which on this engine (API 1.41, no type
//! filter) walks every container's writable layer and every volume, the
//! users' pip caches among them. Timed here for one running job-like
//! container with a workspace volume, with a 1 GiB pip-cache-like volume
//! present (8 192 files of 128 KiB in 64 folders; `--quick`: 128 MiB, 8
//! folders) and, as the baseline in the same run, without it.

use std::time::Instant;

use ci_controller::runtime::{ContainerRuntime, LABEL_INSTALLATION};
use ci_controller::DockerRuntime;

use super::{ms, progress};
use crate::docker::{docker, LABEL_BENCH};
use crate::error::{BenchError, Result};
use crate::report::Figure;
use crate::stats::median;

/// Measurements per side.
const SAMPLES: usize = 15;

pub async fn measure(image: &str, quick: bool) -> Result<Vec<Figure>> {
    let runtime = DockerRuntime::connect()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot reach the Docker engine: {e}")))?;
    let name = format!("ci-bench-disk-{}", std::process::id());
    let cache = format!("{name}-pip-cache");
    let folders = if quick { 8 } else { 64 };
    let result = measure_with(&runtime, image, &name, &cache, folders).await;
    let _ = docker(&["rm", "-f", "-v", &name]).await;
    let _ = docker(&["volume", "rm", "-f", &cache]).await;
    result
}

async fn measure_with(
    runtime: &DockerRuntime,
    image: &str,
    name: &str,
    cache: &str,
    folders: u32,
) -> Result<Vec<Figure>> {
    progress("figure 15: a running job with 10 MiB in its workspace volume");
    let bench_label = format!("{LABEL_BENCH}={name}");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        &bench_label,
        "--mount",
        "type=volume,dst=/workspace",
        image,
        "sh",
        "-c",
        "head -c 10485760 /dev/zero > /workspace/filler && exec sleep 600",
    ])
    .await?
    .trim()
    .to_string();
    let ids = [id.clone()];
    // The job's 10 MiB must be in before anything is timed.
    let mut ready = false;
    for _ in 0..600 {
        let used = runtime.disk_use(&ids).await.map_err(measure_error)?;
        if used.get(&id).is_some_and(|u| u.own_volumes >= 10 << 20) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !ready {
        return Err(BenchError::Setup(
            "the job-like container never wrote its 10 MiB".into(),
        ));
    }

    progress(format!(
        "figure 15: filling a {} MiB pip-cache-like volume",
        folders * 16
    ));
    let label = format!("{LABEL_INSTALLATION}={name}");
    docker(&["volume", "create", "--label", &label, cache]).await?;
    let fill = format!(
        "for d in $(seq 1 {folders}); do mkdir -p /cache/$d; \
for f in $(seq 1 128); do head -c 131072 /dev/zero > /cache/$d/$f; done; done"
    );
    docker(&[
        "run",
        "--rm",
        // The new volume is root's.
        "--user",
        "0",
        "--mount",
        &format!("type=volume,src={cache},dst=/cache"),
        image,
        "sh",
        "-c",
        &fill,
    ])
    .await?;

    let with_cache = time_measurements(runtime, &ids).await?;
    docker(&["volume", "rm", cache]).await?;
    let without = time_measurements(runtime, &ids).await?;
    let (Some(with_ms), Some(without_ms)) = (median(&with_cache), median(&without)) else {
        return Err(BenchError::Setup(
            "no disk-use measurement was timed".into(),
        ));
    };
    Ok(vec![
        Figure::new(
            "disk_watch_measurement_ms",
            &format!(
                "15. one disk-use measurement, {} MiB pip cache present (p50)",
                folders * 16
            ),
            with_ms,
            "ms",
        )
        .baseline(without_ms, "ms")
        .extra("samples", SAMPLES),
        Figure::new(
            "disk_watch_cache_ratio",
            "15. the same ÷ without the pip cache",
            with_ms / without_ms.max(0.001),
            "x",
        )
        .baseline(without_ms, "ms"),
    ])
}

async fn time_measurements(runtime: &DockerRuntime, ids: &[String]) -> Result<Vec<f64>> {
    let mut took = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let began = Instant::now();
        runtime.disk_use(ids).await.map_err(measure_error)?;
        took.push(ms(began.elapsed()));
    }
    Ok(took)
}

fn measure_error(e: ci_controller::runtime::RuntimeError) -> BenchError {
    BenchError::Setup(format!("the engine's disk usage: {e}"))
}
