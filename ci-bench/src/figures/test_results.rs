//! Figure 7: test results. Three numbers about collecting a job's JUnit
//! report (5 000 tests and 200 000 cases in the full run; 500 and 20 000
//! with `--quick`, which only keeps the figure from rotting):
//! - the controller's step itself (`store_report_xml`, what the controller
//!   runs): a 5 000-test report read from the exited container (the engine's
//!   archive API), parsed and stored as parsed, against one
//!   engine round trip (`inspect`) on the same stopped container;
//! - what the end-of-job summary adds to `ci submit test` of that project:
//!   the time from the job's last output on stdout to the exit of `ci`
//!   (the controller's report step and the client's summary both fall in
//!   it; pytest's run does not, which would drown 100 ms), against the same
//!   job on a system whose controller collects nothing
//!   (`CI_TEST_REPORTS=false`), in interleaved pairs (ABBA);
//! - the controller's peak memory above idle while it stores a report of
//!   200 000 cases.

use std::time::{Duration, Instant};

use ci_controller::junit_report::{parse_report, store_report_xml, ReportLimits, REPORT_PATH};
use ci_controller::runtime::{ContainerRuntime, FileRead};
use ci_controller::DockerRuntime;
use ci_persistence::DatabaseLocation;
use ci_persistence::{NewJob, Store};
use uuid::Uuid;

use super::memory::vm_hwm_mb;
use super::{ms, progress, Context};
use crate::docker::{docker, project_tar};
use crate::error::{BenchError, Result};
use crate::fixtures::{huge_report, many_tests, Project};
use crate::report::{Figure, Target};
use crate::stats::median;
use crate::system::{System, SystemOptions};

pub const TARGET_STORE_MS: f64 = 300.0;
pub const TARGET_SUMMARY_ADDED_MS: f64 = 100.0;
pub const TARGET_MEMORY_ABOVE_IDLE_MB: f64 = 60.0;

/// Tests of the generated project that fail, so the summary has lines to print.
const FAILING: usize = 3;

pub async fn measure(options: &SystemOptions, ctx: &Context<'_>) -> Result<Vec<Figure>> {
    let scratch = tempfile::Builder::new()
        .prefix("ci-bench-reports-")
        .tempdir()
        .map_err(BenchError::io("creating a scratch folder"))?;
    let project = many_tests(scratch.path(), ctx.plan.report_tests, FAILING)?;
    let huge = huge_report(scratch.path(), ctx.plan.report_memory_cases)?;

    let collecting = System::start(options).await?;
    let plain = System::start(&SystemOptions {
        test_reports: false,
        ..options.clone()
    })
    .await;
    let plain = match plain {
        Ok(plain) => plain,
        Err(e) => {
            let _ = collecting.shutdown().await;
            return Err(e);
        }
    };
    let result = measure_on(&collecting, &plain, &project, &huge, ctx, scratch.path()).await;
    let stopped = (collecting.shutdown().await, plain.shutdown().await);
    let figures = result?;
    stopped.0?;
    stopped.1?;
    Ok(figures)
}

async fn measure_on(
    collecting: &System,
    plain: &System,
    project: &Project,
    huge: &Project,
    ctx: &Context<'_>,
    scratch: &std::path::Path,
) -> Result<Vec<Figure>> {
    let controller = collecting
        .controller_pid()
        .ok_or_else(|| BenchError::Setup("ci-controller has exited".into()))?;
    let key = collecting.user_with_key("reports").await?;
    let plain_key = plain.user_with_key("reports").await?;
    let api = collecting.api(&key)?;
    // Idle: started, migrated, leading, one small job run (its code paths
    // loaded), nothing big asked of it yet.
    collecting.warm_up(&api, &ctx.fixtures.passing.zip).await?;
    plain
        .warm_up(&plain.api(&plain_key)?, &ctx.fixtures.passing.zip)
        .await?;
    let idle = vm_hwm_mb(controller)?;

    let cases = ctx.plan.report_memory_cases;
    let job = api.submit_async(&huge.zip).await?;
    let ended = api
        .wait_ended(&[job], Duration::from_millis(200), Duration::from_secs(600))
        .await?;
    let stored = ended.first().and_then(|j| j.tests).map(|t| t.passed);
    if stored != Some(cases as i64) {
        return Err(BenchError::protocol(
            format!("job {job}"),
            format!("{cases} cases were to be stored, the summary says {stored:?}"),
        ));
    }
    let peak = vm_hwm_mb(controller)?;
    progress(format!(
        "test results: ci-controller idle {idle:.1} MB, after storing {cases} cases {peak:.1} MB"
    ));

    let step = controller_step(collecting, project, ctx, scratch).await?;

    // One untimed pair, then ABBA.
    ci_submit(collecting, &key, project, true).await?;
    ci_submit(plain, &plain_key, project, false).await?;
    let pairs = ctx.plan.report_pairs;
    let (mut with, mut without, mut with_total, mut without_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let (w, wo) = if i % 2 == 0 {
            let w = ci_submit(collecting, &key, project, true).await?;
            (w, ci_submit(plain, &plain_key, project, false).await?)
        } else {
            let wo = ci_submit(plain, &plain_key, project, false).await?;
            (ci_submit(collecting, &key, project, true).await?, wo)
        };
        progress(format!(
            "test results pair {}/{pairs}: after the last output {:.0} ms collected, {:.0} ms not (whole submit {:.0} / {:.0} ms)",
            i + 1,
            ms(w.after_output),
            ms(wo.after_output),
            ms(w.total),
            ms(wo.total)
        ));
        with.push(ms(w.after_output));
        without.push(ms(wo.after_output));
        with_total.push(ms(w.total));
        without_total.push(ms(wo.total));
    }
    let with_ms = median(&with).unwrap_or(f64::NAN);
    let without_ms = median(&without).unwrap_or(f64::NAN);
    let tests = ctx.plan.report_tests;
    Ok(vec![
        Figure::new(
            "report_store_ms",
            &format!("11 {tests}-test report read, parsed, stored after the container exited"),
            step.total_ms,
            "ms",
        )
        .baseline(step.inspect_ms, "ms")
        .target(Target::AtMost(TARGET_STORE_MS))
        .extra("read_ms", format!("{:.1}", step.read_ms))
        .extra("parse_alone_ms", format!("{:.1}", step.parse_ms))
        .extra("db", ctx.database)
        .extra("tests", tests),
        Figure::new(
            "report_summary_added_ms",
            &format!("11 ci submit test of {tests} tests: last output to exit, added by collection and summary"),
            with_ms - without_ms,
            "ms",
        )
        .baseline(without_ms, "ms")
        .target(Target::AtMost(TARGET_SUMMARY_ADDED_MS))
        .extra("with_ms", format!("{with_ms:.1}"))
        .extra(
            "submit_ms",
            format!("{:.0}", median(&with_total).unwrap_or(f64::NAN)),
        )
        .extra(
            "submit_without_ms",
            format!("{:.0}", median(&without_total).unwrap_or(f64::NAN)),
        )
        .extra("pairs", pairs),
        Figure::new(
            "report_memory_above_idle_mb",
            &format!("11 ci-controller storing a {cases}-case report, peak RSS above idle"),
            peak - idle,
            "MB",
        )
        .baseline(idle, "MB")
        .target(Target::AtMost(TARGET_MEMORY_ABOVE_IDLE_MB))
        .extra("cases", cases),
    ])
}

/// The controller's report step, timed: medians of the plan's pairs.
struct ReportStep {
    /// Read, parsed and stored: what the controller does.
    total_ms: f64,
    /// Of which the read through the engine's archive API.
    read_ms: f64,
    /// The parse alone, timed apart (the step parses while it stores): how
    /// much of the rest is the store's.
    parse_ms: f64,
    /// One `inspect` of the same stopped container: the baseline.
    inspect_ms: f64,
}

/// The controller's step on a real exited container of the project (the
/// container the controller would create), timed alone: read the report,
/// parse it, store it (in a database of its own, SQLite). The baseline is one
/// `inspect` of the same stopped container.
async fn controller_step(
    system: &System,
    project: &Project,
    ctx: &Context<'_>,
    scratch: &std::path::Path,
) -> Result<ReportStep> {
    let runtime = DockerRuntime::connect()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot reach the Docker engine: {e}")))?;
    let tar = project_tar(&project.zip)?;
    let spec = system.manual_job().spec();
    let id = runtime
        .create(&spec)
        .await
        .map_err(|e| BenchError::Setup(format!("creating the job's container: {e}")))?;
    let result = async {
        runtime
            .start_with_input(
                &id,
                Box::pin(futures::stream::once(std::future::ready(Ok(
                    bytes::Bytes::from(tar.clone()),
                )))),
            )
            .await
            .map_err(|e| BenchError::Setup(format!("starting the job's container: {e}")))?;
        // Blocks until the container has exited.
        docker(&["wait", &id]).await?;
        let store = Store::open(&DatabaseLocation::SqliteFile(scratch.join("reports.db")))
            .await
            .map_err(|e| BenchError::Setup(format!("opening a database: {e}")))?;
        let user = store
            .create_user(
                "bench",
                &format!("{}@bench.invalid", Uuid::new_v4().simple()),
            )
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let digest = store
            .put_archive(&project.zip)
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let limits = ReportLimits::default();
        let (mut steps, mut inspects, mut reads, mut parses) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ctx.plan.report_pairs.max(1) {
            let started = Instant::now();
            runtime
                .inspect(&id)
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            inspects.push(ms(started.elapsed()));

            let job = store
                .create_job(&NewJob::new(user.id, digest.clone()))
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?
                .id;
            let started = Instant::now();
            let xml = match runtime.read_file(&id, REPORT_PATH, limits.max_bytes).await {
                Ok(FileRead::Contents(xml)) => xml,
                other => {
                    return Err(BenchError::Setup(format!(
                        "no report in the container: {other:?}"
                    )))
                }
            };
            let read = started.elapsed();
            let parse_started = Instant::now();
            parse_report(&xml, &limits).map_err(|e| BenchError::Setup(e.to_string()))?;
            parses.push(ms(parse_started.elapsed()));
            let store_started = Instant::now();
            let count = store_report_xml(&store, job, xml, limits)
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            reads.push(ms(read));
            steps.push(ms(read + store_started.elapsed()));
            if count != ctx.plan.report_tests {
                return Err(BenchError::Setup(format!(
                    "the report has {count} cases, not {}",
                    ctx.plan.report_tests
                )));
            }
        }
        store.close().await;
        let median_of = |samples: &[f64]| median(samples).unwrap_or(f64::NAN);
        Ok(ReportStep {
            total_ms: median_of(&steps),
            read_ms: median_of(&reads),
            parse_ms: median_of(&parses),
            inspect_ms: median_of(&inspects),
        })
    }
    .await;
    let _ = runtime.remove(&id).await;
    let step = result?;
    progress(format!(
        "test results: report step {:.1} ms (read {:.1} ms; the parse alone {:.1} ms), inspect {:.1} ms",
        step.total_ms, step.read_ms, step.parse_ms, step.inspect_ms
    ));
    Ok(step)
}

/// One `ci submit test` of the generated project, timed.
struct SubmitTimes {
    /// From the start to the process's exit.
    total: Duration,
    /// From the last piece of the job's output (stdout) to the process's
    /// exit: what the job's end costs after its last line, the report step
    /// in the controller and the client's summary included.
    after_output: Duration,
}

/// `ci submit test` on the generated project, whose few failing tests make
/// it exit 1; with `summary`, its stderr must carry the summary.
async fn ci_submit(
    system: &System,
    key: &str,
    project: &Project,
    summary: bool,
) -> Result<SubmitTimes> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut child = system
        .ci(key, &project.dir)
        .args(["submit", "test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(BenchError::io("running ci submit test"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("no stdout pipe".into()))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| BenchError::Setup("no stderr pipe".into()))?;
    let read_stdout = async {
        let mut last_output = started;
        let mut buf = vec![0; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return last_output,
                Ok(_) => last_output = Instant::now(),
            }
        }
    };
    let read_stderr = async {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        text
    };
    let (last_output, stderr) = tokio::join!(read_stdout, read_stderr);
    let status = child
        .wait()
        .await
        .map_err(BenchError::io("waiting for ci submit test"))?;
    let exited = Instant::now();
    let stderr = String::from_utf8_lossy(&stderr);
    let summary_line = stderr.lines().find(|l| l.starts_with("Tests: "));
    let expected = if summary {
        summary_line.is_some_and(|l| l.contains(&format!("{FAILING} failed")))
    } else {
        summary_line.is_none_or(|l| l.starts_with("Tests: no results"))
    };
    if status.code() != Some(1) || !expected {
        return Err(BenchError::Command {
            command: "ci submit test (test results figure)".into(),
            detail: format!("{status}; stderr: {}", super::overhead::last_lines(&stderr)),
        });
    }
    Ok(SubmitTimes {
        total: exited - started,
        after_output: exited - last_output,
    })
}
