//! The workers: the slow steps a pass hands off (starting a container,
//! following its output, recording how it ended, stopping it), each a task of
//! its own, so one pass never waits on Docker for long.
//!
//! Every worker is spawned the same way ([`spawn`]): in the job's span, its
//! error handed to the one [`error_policy`] (what is retried, after how long,
//! what ends the job), and a wake-up for the reconciler when it is done, so
//! the next pass acts on what it left. As in kube-runtime, the happy path
//! (the steps below) does not decide about errors; it returns them typed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ci_common::test_results::JobReport;
use ci_common::{Job, JobId, JobStatus, PythonVersion};
use ci_persistence::{JobOutcome, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::ControllerConfig;
use crate::container_spec::{job_container_spec, JobInstall};
use crate::disk_watch::DiskWatch;
use crate::environment_cache::{self, EnvironmentCache, Prepared};
use crate::junit_report::{store_report_xml, ReportError, ReportLimits, REPORT_PATH};
use crate::log_pump::{pump_logs, PumpEnd, PumpError};
use crate::metrics::{ControllerMetrics, Finished};
use crate::pythons::{PythonOffer, PythonWish};
use crate::runtime::{ContainerRuntime, ContainerState, FileRead, Removal, RuntimeError};
use crate::workspace::{stream_tar, ProjectArchive, WorkspaceError};

/// How long a worker whose step failed for a passing reason (the engine or
/// the database did not answer) waits before the next pass retries: not
/// spinning against a broken engine, and still well within a job's patience.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long an ended job's follower gets to store what the job printed
/// before it was stopped.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(10);

/// Everything a worker needs, shared.
#[derive(Clone)]
pub(crate) struct Context {
    pub store: Store,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub config: Arc<ControllerConfig>,
    /// Wakes the reconciler for another pass.
    pub wake: mpsc::UnboundedSender<JobId>,
    pub metrics: Arc<ControllerMetrics>,
    /// The dependency environments being built and about to be used.
    pub environments: Arc<EnvironmentCache>,
    /// The running jobs' and preparations' disk use, measured beside the
    /// passes.
    pub disk: Arc<DiskWatch>,
}

/// How a worker's step ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The output ended: the container stopped and all of it is stored.
    Drained,
    /// The job ended before its output did: cancelled, or it could not start.
    JobEnded,
    /// The job's end is recorded (and its container removed).
    Recorded,
}

impl From<PumpEnd> for Done {
    fn from(end: PumpEnd) -> Self {
        match end {
            PumpEnd::Drained => Done::Drained,
            PumpEnd::JobEnded => Done::JobEnded,
        }
    }
}

/// Why a worker's step failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job cannot run (its archive, its image, its container); the
    /// message is the reason shown to the user.
    #[error("{0}")]
    CannotRun(String),
    #[error("cannot mark the job running: {0}")]
    MarkRunning(#[source] StoreError),
    #[error("cannot read the job: {0}")]
    ReadJob(#[source] StoreError),
    #[error("following the job's output failed: {0}")]
    Follow(#[from] PumpError),
    #[error("cannot inspect the container: {0}")]
    Inspect(#[source] RuntimeError),
    #[error("cannot record the job's end: {0}")]
    Finish(#[source] StoreError),
    #[error("cannot store the job's test report: {0}")]
    StoreReport(#[source] StoreError),
    /// Installing the job's requirements failed (here or in the job that
    /// prepared its environment): the job ends this way.
    #[error("{}", .0.reason.as_deref().unwrap_or("installing the requirements failed"))]
    InstallFailed(JobOutcome),
}

/// What is done about a failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Leave the job as it is; a pass after `after` looks at the facts again
    /// and takes the step anew (resuming output from the stored cursor).
    Retry { after: Duration },
    /// The job ends this way (its reason becomes its last output line).
    EndJob(JobOutcome),
}

/// The one error policy of every job.
pub fn error_policy(error: &WorkerError) -> Policy {
    match error {
        // Nothing the job's owner can get from trying again.
        WorkerError::CannotRun(reason) => Policy::EndJob(JobOutcome::failed(reason.clone())),
        WorkerError::InstallFailed(outcome) => Policy::EndJob(outcome.clone()),
        // Cancelled (and maybe ended) while it was starting: the job changed,
        // not the world broke; the next pass acts on the change at once.
        WorkerError::MarkRunning(StoreError::IllegalTransition(_)) => Policy::Retry {
            after: Duration::ZERO,
        },
        WorkerError::MarkRunning(_)
        | WorkerError::ReadJob(_)
        | WorkerError::Follow(_)
        | WorkerError::Inspect(_)
        | WorkerError::Finish(_)
        | WorkerError::StoreReport(_) => Policy::Retry { after: RETRY_AFTER },
    }
}

/// What a worker does, as the reconciler sees it at the start of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerKind {
    /// Starting the container and/or following its output.
    Following,
    /// Stopping the container and recording how the job ended.
    Ending,
}

pub(crate) type WorkerResult = Result<Done, WorkerError>;

/// A running (or finished, not yet collected) worker.
pub(crate) struct Worker {
    pub kind: WorkerKind,
    pub handle: JoinHandle<WorkerResult>,
}

/// Runs `step` for `job` as a worker: in the job's span (its id, and the
/// request id of its submission, which the server's access line carries
/// too), under the error policy, waking the reconciler when done.
pub(crate) fn spawn<F>(ctx: &Context, job: &Job, kind: WorkerKind, step: F) -> Worker
where
    F: Future<Output = WorkerResult> + Send + 'static,
{
    let ctx = ctx.clone();
    let job_id = job.id;
    let span = tracing::info_span!("job", %job_id, request_id = tracing::field::Empty);
    if let Some(request_id) = &job.request_id {
        span.record("request_id", request_id.as_str());
    }
    let handle = tokio::spawn(
        async move {
            let result = match step.await {
                Ok(done) => Ok(done),
                Err(error) => apply_policy(&ctx, job_id, error).await,
            };
            let _ = ctx.wake.send(job_id);
            result
        }
        .instrument(span),
    );
    Worker { kind, handle }
}

async fn apply_policy(ctx: &Context, job_id: JobId, error: WorkerError) -> WorkerResult {
    match error_policy(&error) {
        Policy::EndJob(outcome) => {
            tracing::warn!(reason = %error, "job cannot run");
            finish(ctx, job_id, &outcome, Finished::of(&outcome, false)).await?;
            Ok(Done::JobEnded)
        }
        Policy::Retry { after } => {
            tracing::warn!(%error, retry_after = ?after, "job step failed; will retry");
            tokio::time::sleep(after).await;
            Err(error)
        }
    }
}

/// Creates, fills and starts a queued job's container, marks the job running,
/// then follows its output.
pub(crate) async fn start_and_follow(
    ctx: Context,
    job: Job,
    stale_container: Option<String>,
    pythons: Arc<PythonOffer>,
) -> WorkerResult {
    // A container left by a controller that died while starting this job.
    if let Some(stale) = stale_container {
        remove_container(&ctx, &stale).await;
    }
    let Some(launched) = launch(&ctx, &job, &pythons).await? else {
        return Ok(Done::JobEnded);
    };
    let running = ctx
        .store
        .mark_running(
            job.id,
            &launched.container_id,
            &launched.image,
            launched.python,
        )
        .await
        .map_err(WorkerError::MarkRunning)?;
    ctx.metrics.job_started(&running);
    tracing::info!(container = %launched.container_id, image = %launched.image, "job running");
    // After a preparation the stored output ends at the preparation
    // container's last line, which came before any of this container's.
    Ok(pump_logs(
        ctx.store.clone(),
        ctx.runtime.clone(),
        job.id,
        launched.container_id,
        running.log_cursor.clone(),
        ctx.config.pump,
        &ctx.metrics,
    )
    .await?
    .into())
}

/// Follows an existing container's output from the job's stored cursor.
pub(crate) async fn follow(ctx: Context, job_id: JobId, container_id: String) -> WorkerResult {
    tracing::info!(container = %container_id, "following the job's container");
    // The cursor is read now, not from the pass's snapshot: a follower that
    // just failed may have stored more since.
    let Some(job) = ctx
        .store
        .get_job(job_id)
        .await
        .map_err(WorkerError::ReadJob)?
    else {
        return Ok(Done::JobEnded);
    };
    Ok(pump_logs(
        ctx.store.clone(),
        ctx.runtime.clone(),
        job_id,
        container_id,
        job.log_cursor,
        ctx.config.pump,
        &ctx.metrics,
    )
    .await?
    .into())
}

/// Records how an exited container's job ended, then removes the container.
pub(crate) async fn complete(ctx: Context, job_id: JobId, container_id: String) -> WorkerResult {
    let outcome = match ctx
        .runtime
        .inspect(&container_id)
        .await
        .map_err(WorkerError::Inspect)?
    {
        Some(state) => exit_outcome(&state, &ctx.config),
        None => JobOutcome::failed("The job's container disappeared before its exit code was read"),
    };
    // Before the job ends, so whoever sees it ended sees its results too.
    if let Some(limits) = ctx.config.test_report {
        store_report(&ctx, job_id, &container_id, limits).await?;
    }
    finish(&ctx, job_id, &outcome, Finished::of(&outcome, false)).await?;
    remove_container(&ctx, &container_id).await;
    Ok(Done::Recorded)
}

/// Stops the job's container, if there is one, keeps what it printed until
/// then, and ends the job with `outcome`, having emptied `cache_to_empty`
/// (the job's user's pip cache, when it took the job over its disk limit).
pub(crate) async fn end(
    ctx: Context,
    job_id: JobId,
    container_id: Option<String>,
    outcome: JobOutcome,
    how: Finished,
    following: Option<JoinHandle<WorkerResult>>,
    cache_to_empty: Option<String>,
) -> WorkerResult {
    tracing::info!(status = %outcome.status, reason = ?outcome.reason, "ending job");
    if let Some(id) = &container_id {
        if let Err(e) = ctx.runtime.stop(id, ctx.config.stop_grace).await {
            tracing::warn!(error = %e, "cannot stop the container");
        }
    }
    if let Some(mut pump) = following {
        if tokio::time::timeout(DRAIN_AFTER_STOP, &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
    }
    // A cache is emptied before the job ends, so that a user who sees the
    // job fail and submits again finds it empty (the container goes first:
    // the engine keeps a mounted volume). A controller killed in between
    // leaves a running job without a container, which the next one ends.
    if let Some(cache) = &cache_to_empty {
        if let Some(id) = &container_id {
            remove_container(&ctx, id).await;
        }
        empty_cache(&ctx, cache).await;
    }
    finish(&ctx, job_id, &outcome, how).await?;
    if let (None, Some(id)) = (&cache_to_empty, &container_id) {
        remove_container(&ctx, id).await;
    }
    Ok(Done::Recorded)
}

/// Removes a pip cache volume, which the engine makes again, empty, for the
/// next job that mounts it. While another job of the same user mounts it,
/// the engine keeps it: that job is measured over the limit too (the cache
/// counts in its use), and its end empties the cache.
async fn empty_cache(ctx: &Context, volume: &str) {
    match ctx.runtime.remove_volume(volume).await {
        Ok(Removal::Removed) => {
            tracing::warn!(volume, "pip cache over the disk limit emptied");
        }
        Ok(Removal::Missing) => {}
        Ok(Removal::InUse) => {
            tracing::info!(
                volume,
                "pip cache over the disk limit kept: another job mounts it"
            );
        }
        Err(e) => tracing::warn!(volume, error = %e, "cannot empty the pip cache"),
    }
}

/// How an exited container's state translates into a job outcome. A job
/// killed from outside (by the kernel for memory, or by a signal, as when the
/// Docker engine shuts down) gets a reason, so the user knows why.
fn exit_outcome(state: &ContainerState, config: &ControllerConfig) -> JobOutcome {
    let code = state.exit_code.unwrap_or(-1);
    let mut outcome = JobOutcome::exited(code);
    if state.oom_killed {
        outcome.reason = Some(format!(
            "The job was killed: it used more than its memory limit of {} MiB",
            config.memory_bytes / (1024 * 1024)
        ));
    } else if code == 137 || code == 143 {
        outcome.reason = Some(format!(
            "The job's container was stopped from outside (signal {}), for example by a restart of the Docker engine; the tests did not finish",
            code - 128
        ));
    }
    outcome
}

/// How long reading a report may take: the engine streams at most the
/// report's size limit, so this is only reached by an engine that hangs.
const READ_REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the job's test report from its exited container, parses it and
/// stores its cases as they are parsed (never all at once in memory), or
/// stores why there are none. A bad report is no error: it leaves the job's
/// result alone; only the database failing is.
async fn store_report(
    ctx: &Context,
    job_id: JobId,
    container_id: &str,
    limits: ReportLimits,
) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(
        READ_REPORT_TIMEOUT,
        ctx.runtime
            .read_file(container_id, REPORT_PATH, limits.max_bytes),
    )
    .await;
    let unreadable = match read {
        Err(_) => Err(ReportError::Unreadable(format!(
            "the Docker engine did not send it within {READ_REPORT_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(ReportError::Unreadable(e.to_string())),
        Ok(Ok(FileRead::Missing)) => Err(ReportError::Missing),
        Ok(Ok(FileRead::NotAFile)) => Err(ReportError::NotAFile),
        Ok(Ok(FileRead::TooLarge { bytes })) => Err(ReportError::TooLarge {
            bytes,
            limit: limits.max_bytes,
        }),
        Ok(Ok(FileRead::Contents(xml))) => Ok(xml),
    };
    let xml = match unreadable {
        Ok(xml) => xml,
        Err(e) => {
            tracing::info!(reason = %e, "no test results");
            let missing = JobReport::Missing {
                reason: e.to_string(),
            };
            return ctx
                .store
                .put_job_report(job_id, &missing)
                .await
                .map_err(WorkerError::StoreReport);
        }
    };
    let cases = store_report_xml(&ctx.store, job_id, xml, limits)
        .await
        .map_err(WorkerError::StoreReport)?;
    match cases {
        Ok(cases) => tracing::info!(cases, elapsed = ?started.elapsed(), "test report stored"),
        Err(e) => tracing::info!(reason = %e, "no test results"),
    }
    Ok(())
}

/// Why a job that ended this way has no test results, when no report was
/// stored for it: it was cancelled, stopped or never ran.
fn no_report_reason(outcome: &JobOutcome) -> String {
    match (&outcome.status, &outcome.reason) {
        (JobStatus::Cancelled, _) => "The job was cancelled before its tests finished".into(),
        (_, Some(reason)) => format!("No test results: {}", reason.trim_end()),
        (_, None) => "No test results: the job ended before pytest wrote its report".into(),
    }
}

/// Records the job's end; a job that had already ended is fine. A job that
/// ends without a stored report (it never ran, was stopped or cancelled)
/// gets the reason it has no test results. Counted as `how` when this call
/// ended it.
async fn finish(
    ctx: &Context,
    job_id: JobId,
    outcome: &JobOutcome,
    how: Finished,
) -> Result<(), WorkerError> {
    if ctx.config.test_report.is_some() {
        let missing = JobReport::Missing {
            reason: no_report_reason(outcome),
        };
        // Keeps a report stored before (see `put_job_report`).
        ctx.store
            .put_job_report(job_id, &missing)
            .await
            .map_err(WorkerError::StoreReport)?;
    }
    match ctx.store.finish_job(job_id, outcome).await {
        Ok(job) => {
            ctx.metrics.job_finished(&job, how);
            tracing::info!(status = %job.status, success = ?job.success, exit_code = ?job.exit_code, "job ended");
            Ok(())
        }
        Err(StoreError::IllegalTransition(t)) => {
            tracing::debug!(%t, "job had already ended");
            Ok(())
        }
        Err(e) => Err(WorkerError::Finish(e)),
    }
}

/// Removes a container, best-effort: what is left, the orphan sweep removes.
pub(crate) async fn remove_container(ctx: &Context, id: &str) {
    if let Err(e) = ctx.runtime.remove(id).await {
        tracing::warn!(container = id, error = %e, "cannot remove container; the orphan sweep will");
    }
}

/// A started container with the whole project in it.
struct Launched {
    container_id: String,
    image: String,
    python: Option<PythonVersion>,
}

/// Everything up to a started container with the whole project in it: the
/// Python the job asked for (by flag or its project's `requires-python`)
/// decides the runner image, and the job's requirements the environment
/// built on it, which the job starts from. `None` when the job ended while
/// its environment was prepared.
async fn launch(
    ctx: &Context,
    job: &Job,
    pythons: &PythonOffer,
) -> Result<Option<Launched>, WorkerError> {
    let config = &ctx.config;
    let cannot_run =
        |what: &str, e: &dyn std::fmt::Display| WorkerError::CannotRun(format!("{what}: {e}"));
    // The zip is read with random access (its central directory), so it is
    // spooled to a scratch file; the unpacked project is never whole anywhere.
    let mut spool = tempfile::tempfile()
        .map(tokio::fs::File::from_std)
        .map_err(|e| cannot_run("Cannot make room for the project archive", &e))?;
    ctx.store
        .copy_archive_to(&job.archive_digest, &mut spool)
        .await
        .map_err(|e| cannot_run("Cannot read the project archive", &e))?
        .ok_or_else(|| {
            WorkerError::CannotRun("The project archive is missing from the database".into())
        })?;
    let spool = spool.into_std().await;
    let unpack = config.unpack;
    let (archive, facts, plan) = tokio::task::spawn_blocking(move || {
        ProjectArchive::open(spool, unpack).map(|mut archive| {
            let facts = archive.facts();
            let plan = archive.environment_plan();
            (archive, facts, plan)
        })
    })
    .await
    .map_err(|e| cannot_run("Unpacking the project failed", &e))?
    .map_err(|e| cannot_run("Cannot run the job", &e))?;
    let plan = plan.map_err(|e| cannot_run("Cannot read the project's requirements", &e))?;

    let wish = PythonWish {
        requested: job.options.python,
        requires_python: facts.requires_python.clone(),
    };
    let (image, python) = pythons
        .resolve(&wish)
        .map_err(|e| cannot_run("Cannot run the job", &e))?;
    let image_missing = |image: &str| {
        WorkerError::CannotRun(format!(
            "Cannot run the job: image {image} not found on the Docker engine (build it with scripts/runner-image.sh)"
        ))
    };
    let install = JobInstall {
        local: plan.as_ref().map(|p| p.local.clone()).unwrap_or_default(),
        pip_cache: facts.has_requirements,
    };
    // Held until the job's container has started: from its creation on the
    // engine keeps the environment image for it, and what a build leaves to
    // tidy (see `EnvironmentLease`) waits until the start is done.
    let mut _lease = None;
    let mut from = image.clone();
    if let Some(plan) = plan.filter(|p| !p.is_empty()) {
        let runner_id = ctx
            .runtime
            .image_id(&image)
            .await
            .map_err(WorkerError::Inspect)?
            .ok_or_else(|| image_missing(&image))?;
        match environment_cache::prepare(ctx, job, &plan, &image, &runner_id).await? {
            Prepared::JobEnded => return Ok(None),
            Prepared::Ready { image, lease } => {
                from = image.id;
                _lease = Some(lease);
            }
        }
    }
    let spec = job_container_spec(job, config, &install, &from);
    let id = ctx.runtime.create(&spec).await.map_err(|e| match e {
        RuntimeError::ImageMissing(image) => image_missing(&image),
        e => WorkerError::CannotRun(format!("Cannot create the job's container: {e}")),
    })?;
    // The job is marked running only once the whole project is in: a
    // controller that dies before leaves a queued job, which is started anew.
    // The one place the project is handed to the runtime.
    let (tar, unpacking) = stream_tar(archive);
    let started = ctx
        .runtime
        .start_with_input(&id, tar)
        .await
        .map_err(|e| cannot_run("Cannot start the job's container", &e));
    // The unpacker's reason (a lying archive, the limit) wins over the
    // broken input it caused.
    let started = match unpacking.await {
        Ok(Err(e)) if !matches!(e, WorkspaceError::Output(_)) => {
            Err(cannot_run("Cannot run the job", &e))
        }
        Err(e) => Err(cannot_run("Unpacking the project failed", &e)),
        Ok(_) => started,
    };
    drop(_lease);
    if let Err(e) = started {
        remove_container(ctx, &id).await;
        return Err(e);
    }
    Ok(Some(Launched {
        container_id: id,
        image,
        python,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ci_common::TransitionError;

    #[test]
    fn what_cannot_run_ends_the_job_and_the_rest_is_retried() {
        let unreachable = || StoreError::NotFound("the database".into());
        let cases = [
            (
                WorkerError::CannotRun("image x not found".into()),
                Policy::EndJob(JobOutcome::failed("image x not found")),
            ),
            (
                WorkerError::MarkRunning(StoreError::IllegalTransition(TransitionError {
                    from: JobStatus::Cancelled,
                    to: JobStatus::Running,
                })),
                Policy::Retry {
                    after: Duration::ZERO,
                },
            ),
            (
                WorkerError::MarkRunning(unreachable()),
                Policy::Retry { after: RETRY_AFTER },
            ),
            (
                WorkerError::ReadJob(unreachable()),
                Policy::Retry { after: RETRY_AFTER },
            ),
            (
                WorkerError::Follow(PumpError::Store(unreachable())),
                Policy::Retry { after: RETRY_AFTER },
            ),
            (
                WorkerError::Inspect(RuntimeError::NotFound("c".into())),
                Policy::Retry { after: RETRY_AFTER },
            ),
            (
                WorkerError::Finish(unreachable()),
                Policy::Retry { after: RETRY_AFTER },
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error_policy(&error), expected, "{error}");
        }
    }

    #[test]
    fn containers_killed_from_outside_say_why() {
        let config = ControllerConfig::default();
        let state = |exit_code, oom_killed| ContainerState {
            running: false,
            exit_code: Some(exit_code),
            oom_killed,
        };
        let passed = exit_outcome(&state(0, false), &config);
        assert_eq!((passed.success, passed.reason), (Some(true), None));
        let failed = exit_outcome(&state(1, false), &config);
        assert_eq!((failed.exit_code, failed.reason), (Some(1), None));
        let oom = exit_outcome(&state(137, true), &config);
        assert!(oom
            .reason
            .is_some_and(|r| r.contains("memory limit of 2048 MiB")));
        let killed = exit_outcome(&state(143, false), &config);
        assert!(killed.reason.is_some_and(|r| r.contains("signal 15")));
    }
}
