//! Figure 7: memory under big inputs. Peak resident memory of `ci-controller`
//! while it runs a job whose small zip unpacks to a lot of zeros, and of
//! `ci-server` while it takes several near-limit uploads at once and while it
//! serves streams from the beginning of a big job output to clients that do
//! not read. The baseline is the same process idle in the same run; the peak
//! is reset (`/proc/PID/clear_refs`) before each load, so each figure is that
//! load's own. Target: no process grows by more than 100 MB.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::future::try_join_all;

use super::memory::vm_hwm_mb;
use super::{progress, Context};
use crate::error::{BenchError, Result};
use crate::http::EventStream;
use crate::report::{Figure, Target};
use crate::system::{System, SystemOptions};

/// How much a process may grow under one load, in MB.
pub const TARGET_GROWTH_MB: f64 = 100.0;

const MIB: usize = 1024 * 1024;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let plan = ctx.plan;
    let mut options = options.clone();
    // The loads are over the default limits on purpose: the bomb must be
    // unpacked whole, and the whole output kept for the streams to replay.
    options.controller_env = vec![
        (
            "CI_MAX_UNPACKED_BYTES".into(),
            (2 * plan.bomb_mib * MIB).to_string(),
        ),
        (
            "CI_MAX_LOG_BYTES".into(),
            (2 * plan.idle_stream_log_mib * MIB).to_string(),
        ),
    ];
    progress(format!(
        "memory under big inputs: generating a zip of {} MiB of zeros and {} uploads of {} MiB",
        plan.bomb_mib, plan.uploads, plan.upload_mib
    ));
    let bomb = tokio::task::spawn_blocking({
        let mib = plan.bomb_mib;
        move || zeros_zip(mib)
    });
    let uploads = tokio::task::spawn_blocking({
        let (count, mib) = (plan.uploads, plan.upload_mib);
        move || (0..count).map(|seed| noise_zip(mib, seed as u64)).collect()
    });
    let bomb = bomb
        .await
        .map_err(|e| BenchError::Setup(format!("generating the zip bomb: {e}")))??;
    let uploads: Result<Vec<Vec<u8>>> = uploads
        .await
        .map_err(|e| BenchError::Setup(format!("generating the uploads: {e}")))?;
    let uploads = uploads?;

    System::run(&options, async |system| {
        measure_on(system, ctx, &bomb, &uploads).await
    })
    .await
}

async fn measure_on(
    system: &System,
    ctx: &Context<'_>,
    bomb: &[u8],
    uploads: &[Vec<u8>],
) -> Result<Vec<Figure>> {
    let plan = ctx.plan;
    let server = system
        .server_pid()
        .ok_or_else(|| BenchError::Setup("ci-server has exited".into()))?;
    let controller = system
        .controller_pid()
        .ok_or_else(|| BenchError::Setup("ci-controller has exited".into()))?;
    let key = system.user_with_key("big-inputs").await?;
    let api = system.api(&key)?;
    // Idle: started, migrated, leader taken, a user made; nothing else.
    let server_idle = vm_hwm_mb(server)?;
    let controller_idle = vm_hwm_mb(controller)?;
    progress(format!(
        "memory under big inputs: idle ci-server {server_idle:.1} MB, idle ci-controller {controller_idle:.1} MB"
    ));

    // 1. The zip bomb, unpacked whole into a job that then passes.
    reset_peak(controller)?;
    let job = api.submit_async(bomb).await?;
    let ended = api
        .wait_ended(&[job], Duration::from_millis(200), Duration::from_secs(600))
        .await?;
    if ended.iter().any(|j| j.success != Some(true)) {
        return Err(BenchError::protocol(
            format!("job {job}"),
            "the zip bomb's job did not pass (is the unpack limit high enough?)",
        ));
    }
    let controller_bomb = vm_hwm_mb(controller)?;
    progress(format!(
        "memory under big inputs: ci-controller unpacking {} MiB {controller_bomb:.1} MB",
        plan.bomb_mib
    ));

    // 2. Uploads near the limit, all at once; their jobs are not run.
    reset_peak(server)?;
    let jobs = try_join_all(uploads.iter().map(|zip| api.submit_async(zip))).await?;
    let server_uploads = vm_hwm_mb(server)?;
    progress(format!(
        "memory under big inputs: ci-server taking {} uploads of {} MiB {server_uploads:.1} MB",
        plan.uploads, plan.upload_mib
    ));
    try_join_all(jobs.iter().map(|id| api.cancel(*id))).await?;
    api.wait_ended(&jobs, Duration::from_millis(200), Duration::from_secs(300))
        .await?;

    // 3. Streams from the beginning of a big output, never read.
    let job = api
        .submit_async(&big_output_zip(plan.idle_stream_log_mib)?)
        .await?;
    api.wait_ended(&[job], Duration::from_millis(200), Duration::from_secs(600))
        .await?;
    reset_peak(server)?;
    let streams =
        try_join_all((0..plan.idle_streams).map(|_| EventStream::open(system.addr, &key, job)))
            .await?;
    let settled = settle(server).await?;
    let server_streams = vm_hwm_mb(server)?;
    drop(streams);
    progress(format!(
        "memory under big inputs: ci-server with {} unread streams on {} MiB of output {server_streams:.1} MB",
        plan.idle_streams, plan.idle_stream_log_mib
    ));

    let figure = |name: &str, title: String, value: f64, idle: f64| {
        Figure::new(name, &title, value, "MB")
            .baseline(idle, "MB")
            .target(Target::AtMost(idle + TARGET_GROWTH_MB))
            .extra("growth_mb", format!("{:.1}", value - idle))
            .extra("db", ctx.database)
    };
    Ok(vec![
        figure(
            "mem_controller_zip_bomb_mb",
            format!(
                "9 ci-controller running a {:.1} MB zip of {} MiB of zeros, peak RSS",
                bomb.len() as f64 / 1e6,
                plan.bomb_mib
            ),
            controller_bomb,
            controller_idle,
        )
        .extra("zip_bytes", bomb.len()),
        figure(
            "mem_server_uploads_mb",
            format!(
                "9 ci-server taking {} uploads of {} MiB at once, peak RSS",
                plan.uploads, plan.upload_mib
            ),
            server_uploads,
            server_idle,
        )
        .extra("uploads", plan.uploads),
        figure(
            "mem_server_unread_streams_mb",
            format!(
                "9 ci-server, {} unread streams from the start of {} MiB of output, peak RSS",
                plan.idle_streams, plan.idle_stream_log_mib
            ),
            server_streams,
            server_idle,
        )
        .extra("streams", plan.idle_streams)
        .extra("settled_after_ms", settled.as_millis()),
    ])
}

/// Starts a new peak (VmHWM) at the current resident size.
fn reset_peak(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").map_err(BenchError::io(format!("writing {path}")))
}

/// Resident size, in MiB, from `/proc/PID/status`.
fn vm_rss_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(BenchError::io(format!("reading {path}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or_else(|| BenchError::Setup(format!("no VmRSS line in {path}")))
}

/// Waits until the process's resident size has stopped growing (by less than
/// 1 MB over 2 s), at most 60 s: the unread streams have filled whatever
/// they are going to fill.
async fn settle(pid: u32) -> Result<Duration> {
    let started = Instant::now();
    let window = Duration::from_secs(2);
    let mut since = Instant::now();
    let mut level = vm_rss_mb(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = vm_rss_mb(pid)?;
        if now > level + 1.0 {
            level = now;
            since = Instant::now();
        } else if since.elapsed() >= window {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Ok(started.elapsed());
        }
    }
}

/// One passing test and `mib` MiB of zeros, deflated: about 1 MB per GB.
fn zeros_zip(mib: usize) -> Result<Vec<u8>> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(mib >= 4096);
    out.start_file("test_bomb.py", deflated)
        .map_err(zip_error)?;
    out.write_all(b"def test_unpacked():\n    assert True\n")
        .map_err(BenchError::io("writing a zip entry"))?;
    out.start_file("zeros.bin", deflated).map_err(zip_error)?;
    let block = vec![0u8; MIB];
    for _ in 0..mib {
        out.write_all(&block)
            .map_err(BenchError::io("writing a zip entry"))?;
    }
    Ok(out.finish().map_err(zip_error)?.into_inner())
}

/// A passing project whose bulk is `mib` MiB of incompressible bytes
/// (stored), different per `seed`, so identical uploads are not folded into one.
fn noise_zip(mib: usize, seed: u64) -> Result<Vec<u8>> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(mib * MIB + 4096)));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    out.start_file("test_upload.py", stored)
        .map_err(zip_error)?;
    out.write_all(b"def test_uploaded():\n    assert True\n")
        .map_err(BenchError::io("writing a zip entry"))?;
    out.start_file("noise.bin", stored).map_err(zip_error)?;
    // Leave room under the upload limit for the zip's own records.
    let bytes = mib * MIB - 4096;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; MIB];
    let mut written = 0;
    while written < bytes {
        for word in block.chunks_exact_mut(8) {
            // xorshift64: cheap bytes a compressor cannot shrink.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = block.len().min(bytes - written);
        out.write_all(&block[..n])
            .map_err(BenchError::io("writing a zip entry"))?;
        written += n;
    }
    Ok(out.finish().map_err(zip_error)?.into_inner())
}

/// A passing test that prints `mib` MiB of 1 KiB lines past pytest's capture.
fn big_output_zip(mib: usize) -> Result<Vec<u8>> {
    let test = format!(
        "import sys\n\n\
         def test_prints(capsys):\n\
         \x20   line = 'o' * 1023 + '\\n'\n\
         \x20   with capsys.disabled():\n\
         \x20       for _ in range({lines}):\n\
         \x20           sys.stdout.write(line)\n",
        lines = mib * 1024
    );
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    out.start_file("test_prints.py", zip::write::SimpleFileOptions::default())
        .map_err(zip_error)?;
    out.write_all(test.as_bytes())
        .map_err(BenchError::io("writing a zip entry"))?;
    Ok(out.finish().map_err(zip_error)?.into_inner())
}

fn zip_error(e: zip::result::ZipError) -> BenchError {
    BenchError::Setup(format!("building a zip: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_projects_are_what_they_say() {
        let bomb = zeros_zip(8).unwrap();
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let archive = zip::ZipArchive::new(std::io::Cursor::new(&bomb)).unwrap();
        assert_eq!(archive.decompressed_size(), Some(8 * MIB as u128 + 37));

        let a = noise_zip(2, 0).unwrap();
        let b = noise_zip(2, 1).unwrap();
        assert!(a.len() <= 2 * MIB, "{} bytes", a.len());
        assert!(a.len() > 2 * MIB - 8192, "stored, not compressed");
        assert_ne!(a, b);

        let log = big_output_zip(1).unwrap();
        assert!(zip::ZipArchive::new(std::io::Cursor::new(log)).is_ok());
    }

    #[test]
    fn resident_size_is_read_from_proc_status() {
        assert!(vm_rss_mb(std::process::id()).unwrap() > 0.0);
    }
}
