//! The reconciler: compares what the database wants with what Docker has and
//! takes, for each job, the one step that moves it closer.
//!
//! As in kube-runtime, deciding is separate from doing: [`decide`] is a pure
//! function of a job and what was observed about it, and a pass applies its
//! [`Action`]s. Slow steps (starting a container, following its output,
//! stopping it) run as per-job workers, so one pass never waits on Docker for
//! long and a new job starts while others run. Passes are level-triggered and
//! idempotent: a pass after a crash, a lost wake-up or a takeover looks at the
//! same facts and reaches the same decisions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ci_common::{Job, JobId, JobStatus};
use ci_persistence::{Channel, JobOutcome, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{ControllerConfig, JOB_SCRIPT, UNPACK_FROM_STDIN};
use crate::log_pump::{pump_logs, PumpEnd, PumpError};
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, RuntimeError, LABEL_INSTALLATION, LABEL_JOB,
};
use crate::workspace::{stream_tar, ProjectArchive, WorkspaceError};

/// What a job's worker is doing, as seen at the start of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// No worker: nobody in this process is following the job.
    Idle,
    /// Starting the container and/or following its output.
    Following,
    /// The output ended: the container stopped and all of it is stored.
    FollowingEnded,
    /// Following failed (the engine or the database did not answer); what was
    /// not stored is read again from the cursor by the next follower.
    FollowingFailed,
    /// Stopping the container and recording how the job ended.
    Ending,
}

/// The one step a pass takes for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do until something changes.
    Wait,
    /// A queued job that may start when there is capacity.
    Eligible,
    /// Follow an existing container's output (after a restart or takeover).
    Adopt { container_id: String },
    /// The container exited and its output is stored: record the exit code.
    Complete { container_id: String },
    /// Stop the container, if there is one, and end the job this way.
    End {
        container_id: Option<String>,
        outcome: JobOutcome,
    },
}

/// Decides the next step for an unfinished job. Pure, so every rule can be
/// tested without Docker or a database.
pub fn decide(
    job: &Job,
    container: Option<&ContainerInfo>,
    worker: &WorkerState,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Action {
    let container_id = container.map(|c| c.id.clone());
    match job.status {
        JobStatus::Queued => match worker {
            WorkerState::Following | WorkerState::Ending => Action::Wait,
            _ if job.cancel_requested => Action::End {
                container_id,
                outcome: JobOutcome::cancelled(),
            },
            _ => Action::Eligible,
        },
        JobStatus::Running => {
            if *worker == WorkerState::Ending {
                return Action::Wait;
            }
            if job.cancel_requested {
                return Action::End {
                    container_id,
                    outcome: JobOutcome::cancelled(),
                };
            }
            let started = job.started_at.unwrap_or(job.created_at);
            if now
                .signed_duration_since(started)
                .to_std()
                .unwrap_or_default()
                > timeout
            {
                return Action::End {
                    container_id,
                    outcome: JobOutcome::failed(format!(
                        "Job timed out after {} seconds",
                        timeout.as_secs()
                    )),
                };
            }
            let Some(container) = container else {
                // A worker may still be between creating the container and
                // Docker listing it; only an idle job has truly lost it.
                if *worker == WorkerState::Following {
                    return Action::Wait;
                }
                return Action::End {
                    container_id: None,
                    outcome: JobOutcome::failed(
                        "The job's container disappeared (removed, or the Docker engine restarted); the job cannot finish",
                    ),
                };
            };
            match worker {
                WorkerState::Following => Action::Wait,
                WorkerState::FollowingEnded if !container.running => Action::Complete {
                    container_id: container.id.clone(),
                },
                _ => Action::Adopt {
                    container_id: container.id.clone(),
                },
            }
        }
        JobStatus::Completed | JobStatus::Cancelled => Action::Wait,
    }
}

enum Worker {
    Following(JoinHandle<Result<PumpEnd, PumpError>>),
    Ending(JoinHandle<()>),
}

/// Everything a worker needs, shared.
#[derive(Clone)]
struct Context {
    store: Store,
    runtime: Arc<dyn ContainerRuntime>,
    config: Arc<ControllerConfig>,
    wake: mpsc::UnboundedSender<JobId>,
}

pub struct Reconciler {
    ctx: Context,
    workers: HashMap<JobId, Worker>,
    wake_rx: mpsc::UnboundedReceiver<JobId>,
    /// When each user last had a job started: between users with equally few
    /// jobs running, the one served longest ago goes first (round robin).
    last_started: HashMap<Uuid, tokio::time::Instant>,
}

/// Why a pass could not finish; the next pass tries again.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl Reconciler {
    pub fn new(store: Store, runtime: Arc<dyn ContainerRuntime>, config: ControllerConfig) -> Self {
        let (wake, wake_rx) = mpsc::unbounded_channel();
        Reconciler {
            ctx: Context {
                store,
                runtime,
                config: Arc::new(config),
                wake,
            },
            workers: HashMap::new(),
            wake_rx,
            last_started: HashMap::new(),
        }
    }

    /// Runs passes until `shutdown`: on every new or cancelled job, whenever a
    /// worker finishes, and on the resync timer as the safety net. Containers
    /// are left running on shutdown; the next controller adopts them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut jobs_changed = self.ctx.store.changes().subscribe(Channel::Jobs);
        let mut tick = tokio::time::interval(self.ctx.config.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            jobs_changed.borrow_and_update();
            match self.pass().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Error policy: log, back off a little, and let the next pass
                    // (a level-triggered one) retry from the facts.
                    failures += 1;
                    tracing::warn!(error = %e, failures, "reconcile pass failed");
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            tokio::select! {
                _ = jobs_changed.changed() => {}
                _ = self.wake_rx.recv() => {}
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            // Take every wake-up that is already waiting in this one pass.
            while self.wake_rx.try_recv().is_ok() {}
        }
        for (_, worker) in self.workers.drain() {
            match worker {
                Worker::Following(h) => h.abort(),
                Worker::Ending(h) => h.abort(),
            }
        }
    }

    /// One comparison of the database with Docker, and the steps it calls for.
    pub async fn pass(&mut self) -> Result<(), PassError> {
        let jobs = self.ctx.store.list_unfinished_jobs().await?;
        let containers = self
            .ctx
            .runtime
            .list(&self.ctx.config.installation())
            .await?;
        let now = Utc::now();

        // Workers that have finished since the last pass.
        let mut states: HashMap<JobId, WorkerState> = HashMap::new();
        let mut finished = Vec::new();
        for (id, worker) in &self.workers {
            let state = match worker {
                Worker::Following(h) if h.is_finished() => WorkerState::FollowingEnded,
                Worker::Following(_) => WorkerState::Following,
                Worker::Ending(h) if h.is_finished() => {
                    finished.push(*id);
                    WorkerState::Idle
                }
                Worker::Ending(_) => WorkerState::Ending,
            };
            states.insert(*id, state);
        }
        for id in finished {
            self.workers.remove(&id);
        }
        for (id, state) in states.iter_mut() {
            if *state != WorkerState::FollowingEnded {
                continue;
            }
            if let Some(Worker::Following(h)) = self.workers.remove(id) {
                let failure = match h.await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = failure {
                    tracing::warn!(job_id = %id, error = %e, "following the job's output failed; it will be resumed");
                    *state = WorkerState::FollowingFailed;
                }
            }
        }

        let by_job: HashMap<JobId, &ContainerInfo> = containers
            .iter()
            .filter_map(|c| c.job_id.map(|j| (j, c)))
            .collect();

        let mut eligible = Vec::new();
        let mut busy = 0usize;
        let mut per_user: HashMap<Uuid, usize> = HashMap::new();
        for job in &jobs {
            let worker = states.get(&job.id).cloned().unwrap_or(WorkerState::Idle);
            if job.status == JobStatus::Running || worker == WorkerState::Following {
                busy += 1;
                *per_user.entry(job.user_id).or_default() += 1;
            }
            let action = decide(
                job,
                by_job.get(&job.id).copied(),
                &worker,
                now,
                self.ctx.config.job_timeout,
            );
            match action {
                Action::Wait => {}
                Action::Eligible => eligible.push(job),
                Action::Adopt { container_id } => self.adopt(job, container_id),
                Action::Complete { container_id } => self.complete(job, container_id),
                Action::End {
                    container_id,
                    outcome,
                } => self.end(job, container_id, outcome),
            }
        }

        // Start queued jobs while there is capacity, fairly: each slot goes to
        // the oldest job of the user with the fewest jobs running, and between
        // such users, to the one whose last job started longest ago.
        let mut free = self.ctx.config.max_concurrent_jobs.saturating_sub(busy);
        while free > 0 && !eligible.is_empty() {
            let (index, _) = eligible
                .iter()
                .enumerate()
                .min_by_key(|(_, j)| {
                    (
                        per_user.get(&j.user_id).copied().unwrap_or(0),
                        self.last_started.get(&j.user_id).copied(),
                        j.created_at,
                    )
                })
                .expect("eligible is not empty");
            let job = eligible.remove(index);
            *per_user.entry(job.user_id).or_default() += 1;
            self.last_started
                .insert(job.user_id, tokio::time::Instant::now());
            free -= 1;
            self.start(job, by_job.get(&job.id).map(|c| c.id.clone()));
        }

        // Containers of this installation whose job is not unfinished here.
        let live: std::collections::HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        for container in &containers {
            let owned = container
                .job_id
                .is_some_and(|j| live.contains(&j) || self.workers.contains_key(&j));
            if !owned {
                tracing::info!(container = %container.id, job_id = ?container.job_id, "removing orphaned container");
                if let Err(e) = self.ctx.runtime.remove(&container.id).await {
                    tracing::warn!(container = %container.id, error = %e, "cannot remove orphaned container");
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, job: &Job, stale_container: Option<String>) {
        let ctx = self.ctx.clone();
        let job = job.clone();
        let job_id = job.id;
        let span = tracing::info_span!("job", %job_id);
        let handle = tokio::spawn(
            async move {
                let id = job.id;
                let result = start_and_follow(&ctx, &job, stale_container).await;
                let _ = ctx.wake.send(id);
                result
            }
            .instrument(span),
        );
        self.workers.insert(job_id, Worker::Following(handle));
    }

    fn adopt(&mut self, job: &Job, container_id: String) {
        tracing::info!(job_id = %job.id, container = %container_id, "following the job's container");
        let ctx = self.ctx.clone();
        let job_id = job.id;
        let span = tracing::info_span!("job", %job_id);
        let handle = tokio::spawn(
            async move {
                // The cursor is read now, not from the pass's snapshot: a
                // follower that just failed may have stored more since.
                let result = match ctx.store.get_job(job_id).await {
                    Ok(Some(job)) => {
                        pump_logs(
                            ctx.store.clone(),
                            ctx.runtime.clone(),
                            job_id,
                            container_id,
                            job.log_cursor,
                            ctx.config.pump,
                        )
                        .await
                    }
                    Ok(None) => Ok(PumpEnd::JobEnded),
                    Err(e) => Err(PumpError::Store(e)),
                };
                if result.is_err() {
                    // Do not spin against a broken engine; the next pass retries.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let _ = ctx.wake.send(job_id);
                result
            }
            .instrument(span),
        );
        self.workers.insert(job_id, Worker::Following(handle));
    }

    fn complete(&mut self, job: &Job, container_id: String) {
        let ctx = self.ctx.clone();
        let job_id = job.id;
        let span = tracing::info_span!("job", %job_id);
        let handle = tokio::spawn(
            async move {
                let outcome = match ctx.runtime.inspect(&container_id).await {
                    Ok(Some(state)) => exit_outcome(&state, &ctx.config),
                    Ok(None) => JobOutcome::failed(
                        "The job's container disappeared before its exit code was read",
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot inspect the container; will retry");
                        let _ = ctx.wake.send(job_id);
                        return;
                    }
                };
                finish(&ctx, job_id, &outcome).await;
                remove_container(&ctx, &container_id).await;
                let _ = ctx.wake.send(job_id);
            }
            .instrument(span),
        );
        self.workers.insert(job_id, Worker::Ending(handle));
    }

    fn end(&mut self, job: &Job, container_id: Option<String>, outcome: JobOutcome) {
        let ctx = self.ctx.clone();
        let job_id = job.id;
        let following = match self.workers.remove(&job_id) {
            Some(Worker::Following(h)) => Some(h),
            Some(Worker::Ending(h)) => {
                self.workers.insert(job_id, Worker::Ending(h));
                return;
            }
            None => None,
        };
        let span = tracing::info_span!("job", %job_id);
        let handle = tokio::spawn(
            async move {
                tracing::info!(status = %outcome.status, reason = ?outcome.reason, "ending job");
                if let Some(id) = &container_id {
                    if let Err(e) = ctx.runtime.stop(id, ctx.config.stop_grace).await {
                        tracing::warn!(error = %e, "cannot stop the container");
                    }
                }
                // Keep what the job printed before it was stopped.
                if let Some(mut pump) = following {
                    if tokio::time::timeout(Duration::from_secs(10), &mut pump)
                        .await
                        .is_err()
                    {
                        pump.abort();
                    }
                }
                finish(&ctx, job_id, &outcome).await;
                if let Some(id) = &container_id {
                    remove_container(&ctx, id).await;
                }
                let _ = ctx.wake.send(job_id);
            }
            .instrument(span),
        );
        self.workers.insert(job_id, Worker::Ending(handle));
    }
}

/// How an exited container's state translates into a job outcome. A job
/// killed from outside (by the kernel for memory, or by a signal, as when the
/// Docker engine shuts down) gets a reason, so the user knows why.
fn exit_outcome(state: &crate::runtime::ContainerState, config: &ControllerConfig) -> JobOutcome {
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

async fn finish(ctx: &Context, job_id: JobId, outcome: &JobOutcome) {
    match ctx.store.finish_job(job_id, outcome).await {
        Ok(job) => {
            tracing::info!(status = %job.status, success = ?job.success, exit_code = ?job.exit_code, "job ended")
        }
        Err(StoreError::IllegalTransition(t)) => tracing::debug!(%t, "job had already ended"),
        Err(e) => tracing::warn!(error = %e, "cannot record the job's end; will retry"),
    }
}

async fn remove_container(ctx: &Context, id: &str) {
    if let Err(e) = ctx.runtime.remove(id).await {
        tracing::warn!(container = id, error = %e, "cannot remove container; the orphan sweep will");
    }
}

/// Creates, fills and starts a queued job's container, marks the job running,
/// then follows its output. A job that cannot start ends here, failed, with the
/// reason as its last output.
async fn start_and_follow(
    ctx: &Context,
    job: &Job,
    stale_container: Option<String>,
) -> Result<PumpEnd, PumpError> {
    // A container left by a controller that died while starting this job.
    if let Some(stale) = stale_container {
        remove_container(ctx, &stale).await;
    }
    let container_id = match create_container(ctx, job).await {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(%reason, "job cannot run");
            finish(ctx, job.id, &JobOutcome::failed(reason)).await;
            return Ok(PumpEnd::JobEnded);
        }
    };
    let image = ctx.config.image.clone();
    match ctx.store.mark_running(job.id, &container_id, &image).await {
        Ok(_) => tracing::info!(container = %container_id, "job running"),
        Err(e) => {
            // Cancelled and ended while we were starting it, or the database is
            // unreachable: the next pass sorts it out from the facts.
            tracing::warn!(error = %e, "cannot mark the job running");
            return Ok(PumpEnd::JobEnded);
        }
    }
    pump_logs(
        ctx.store.clone(),
        ctx.runtime.clone(),
        job.id,
        container_id,
        None,
        ctx.config.pump,
    )
    .await
}

/// The runner image's unprivileged user, who owns the workspace.
const JOB_UID: u64 = crate::workspace::WORKSPACE_UID;
/// That user's home folder in the runner image.
const JOB_HOME: &str = "/home/runner";

/// Everything up to a started container; the error is the reason shown to the user.
async fn create_container(ctx: &Context, job: &Job) -> Result<String, String> {
    let config = &ctx.config;
    // The zip is read with random access (its central directory), so it is
    // spooled to a scratch file; the unpacked project never is whole anywhere.
    let mut spool = tempfile::tempfile()
        .map(tokio::fs::File::from_std)
        .map_err(|e| format!("Cannot make room for the project archive: {e}"))?;
    ctx.store
        .copy_archive_to(&job.archive_digest, &mut spool)
        .await
        .map_err(|e| format!("Cannot read the project archive: {e}"))?
        .ok_or_else(|| "The project archive is missing from the database".to_string())?;
    let spool = spool.into_std().await;
    let unpack = config.unpack;
    let archive = tokio::task::spawn_blocking(move || ProjectArchive::open(spool, unpack))
        .await
        .map_err(|e| format!("Unpacking the project failed: {e}"))?
        .map_err(|e| format!("Cannot run the job: {e}"))?;

    // `pip install` writes into the image's venv; a job that installs
    // nothing runs on a read-only root.
    let read_only_rootfs = config.read_only_rootfs && !archive.has_file("requirements.txt");
    let mut labels = HashMap::new();
    labels.insert(LABEL_JOB.to_string(), job.id.to_string());
    labels.insert(LABEL_INSTALLATION.to_string(), config.installation());
    let spec = ContainerSpec {
        name: format!("{}ci-job-{}", config.container_prefix, job.id),
        image: config.image.clone(),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            format!("{UNPACK_FROM_STDIN}{JOB_SCRIPT}"),
        ],
        labels,
        user: format!("{JOB_UID}:{JOB_UID}"),
        working_dir: "/workspace".into(),
        network_mode: config.network_mode.clone(),
        memory_bytes: Some(config.memory_bytes),
        pids_limit: Some(config.pids_limit),
        cpu_shares: Some(config.cpu_shares),
        cache_volume: config
            .pip_cache_volume_for(job.user_id)
            .filter(|_| !read_only_rootfs)
            .map(|v| (v, format!("{JOB_HOME}/.cache/pip"))),
        read_only_rootfs,
        tmpfs: if read_only_rootfs {
            vec![
                ("/tmp".to_string(), "mode=1777".to_string()),
                (
                    JOB_HOME.to_string(),
                    format!("uid={JOB_UID},gid={JOB_UID},mode=0755"),
                ),
            ]
        } else {
            Vec::new()
        },
    };
    let id = ctx.runtime.create(&spec).await.map_err(|e| match e {
        RuntimeError::ImageMissing(image) => format!(
            "Cannot run the job: image {image} not found on the Docker engine (build it with scripts/runner-image.sh)"
        ),
        e => format!("Cannot create the job's container: {e}"),
    })?;
    // The job is marked running only once the whole project is in: a
    // controller that dies before leaves a queued job, which is started anew.
    let (tar, unpacking) = stream_tar(archive);
    let result = ctx
        .runtime
        .start_with_input(&id, tar)
        .await
        .map_err(|e| format!("Cannot start the job's container: {e}"));
    // The unpacker's reason (a lying archive, the limit) wins over the
    // broken input it caused.
    let result = match unpacking.await {
        Ok(Err(e)) if !matches!(e, WorkspaceError::Output(_)) => {
            Err(format!("Cannot run the job: {e}"))
        }
        Err(e) => Err(format!("Unpacking the project failed: {e}")),
        Ok(_) => result,
    };
    if let Err(reason) = result {
        remove_container(ctx, &id).await;
        return Err(reason);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as ChronoDuration;

    fn job(status: JobStatus) -> Job {
        let now = Utc::now();
        Job {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            status,
            success: None,
            exit_code: None,
            created_at: now,
            started_at: (status == JobStatus::Running).then_some(now),
            ended_at: None,
            container_id: None,
            archive_digest: "d".into(),
            image: None,
            cancel_requested: false,
            failure_reason: None,
            log_cursor: None,
            last_seq: 0,
        }
    }

    fn container(running: bool) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            job_id: None,
            running,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[test]
    fn queued_jobs_wait_for_capacity_or_end_when_cancelled() {
        let mut j = job(JobStatus::Queued);
        assert_eq!(
            decide(&j, None, &WorkerState::Idle, Utc::now(), TIMEOUT),
            Action::Eligible
        );
        assert_eq!(
            decide(&j, None, &WorkerState::Following, Utc::now(), TIMEOUT),
            Action::Wait
        );
        j.cancel_requested = true;
        assert_eq!(
            decide(
                &j,
                Some(&container(false)),
                &WorkerState::Idle,
                Utc::now(),
                TIMEOUT
            ),
            Action::End {
                container_id: Some("c1".into()),
                outcome: JobOutcome::cancelled()
            }
        );
        // A start in flight finishes first; the next pass stops it.
        assert_eq!(
            decide(&j, None, &WorkerState::Following, Utc::now(), TIMEOUT),
            Action::Wait
        );
    }

    #[test]
    fn running_jobs_are_adopted_followed_and_completed() {
        let j = job(JobStatus::Running);
        let now = Utc::now();
        assert_eq!(
            decide(&j, Some(&container(true)), &WorkerState::Idle, now, TIMEOUT),
            Action::Adopt {
                container_id: "c1".into()
            }
        );
        assert_eq!(
            decide(
                &j,
                Some(&container(true)),
                &WorkerState::Following,
                now,
                TIMEOUT
            ),
            Action::Wait
        );
        assert_eq!(
            decide(
                &j,
                Some(&container(false)),
                &WorkerState::FollowingEnded,
                now,
                TIMEOUT
            ),
            Action::Complete {
                container_id: "c1".into()
            }
        );
        // The output stream broke but the container runs on: follow it again.
        assert_eq!(
            decide(
                &j,
                Some(&container(true)),
                &WorkerState::FollowingEnded,
                now,
                TIMEOUT
            ),
            Action::Adopt {
                container_id: "c1".into()
            }
        );
        // A follower that failed is replaced; the job does not complete on
        // output that may be missing.
        assert_eq!(
            decide(
                &j,
                Some(&container(false)),
                &WorkerState::FollowingFailed,
                now,
                TIMEOUT
            ),
            Action::Adopt {
                container_id: "c1".into()
            }
        );
        // An exited container nobody followed yet is adopted first, so its
        // remaining output is stored before the job completes.
        assert_eq!(
            decide(
                &j,
                Some(&container(false)),
                &WorkerState::Idle,
                now,
                TIMEOUT
            ),
            Action::Adopt {
                container_id: "c1".into()
            }
        );
    }

    #[test]
    fn running_jobs_without_a_container_fail() {
        let j = job(JobStatus::Running);
        match decide(&j, None, &WorkerState::Idle, Utc::now(), TIMEOUT) {
            Action::End {
                container_id: None,
                outcome,
            } => {
                assert_eq!(outcome.success, Some(false));
                assert!(outcome.reason.unwrap().contains("disappeared"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancellation_and_timeout_end_running_jobs() {
        let mut j = job(JobStatus::Running);
        j.started_at = Some(Utc::now() - ChronoDuration::seconds(61));
        match decide(
            &j,
            Some(&container(true)),
            &WorkerState::Following,
            Utc::now(),
            TIMEOUT,
        ) {
            Action::End {
                container_id: Some(_),
                outcome,
            } => {
                assert_eq!(
                    outcome.reason.as_deref(),
                    Some("Job timed out after 60 seconds")
                );
            }
            other => panic!("{other:?}"),
        }
        j.cancel_requested = true;
        assert_eq!(
            decide(
                &j,
                Some(&container(true)),
                &WorkerState::Following,
                Utc::now(),
                TIMEOUT
            ),
            Action::End {
                container_id: Some("c1".into()),
                outcome: JobOutcome::cancelled()
            }
        );
        assert_eq!(
            decide(
                &j,
                Some(&container(true)),
                &WorkerState::Ending,
                Utc::now(),
                TIMEOUT
            ),
            Action::Wait
        );
    }
}
