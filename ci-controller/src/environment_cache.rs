//! The dependency environments: images with a job's requirements installed,
//! built once per key (see [`environment`](crate::environment)) and reused by
//! every later job with the same key.
//!
//! On a miss, a preparation container that gets only the requirements files
//! installs them (its pip output streamed into the job's output as it comes)
//! and, only when pip succeeded, is committed as the environment image,
//! labelled with the installation, the key and when it was built. A job
//! that finds a build of its key in progress waits for it (or for its
//! failure) instead of building again. A preparation that did not finish
//! (the controller was killed, the job cancelled) is never committed: its
//! container carries [`LABEL_PREPARATION`], and the reconciler's sweep
//! removes every one that no build of this controller owns.
//!
//! Eviction keeps the images within `CI_ENV_CACHE_BYTES` (least recently
//! used first) and `CI_ENV_MAX_AGE`, and never removes an image a job is
//! about to start from (leased here) or runs from (the engine refuses).
//! Looking an environment up and evicting one cannot interleave badly: an
//! eviction decides on an image and marks it as being removed under the same
//! lock that leases take, skipping leased images and every image of a key
//! whose lookup or build is in progress (the build ticket is held while the
//! engine is asked); a lease refuses an image being removed, and a job that
//! leased an image checks that the engine still has it, so one removed before
//! the lease is a miss, built again, never a job failing "image not found".
//! "Last used" lives in this controller's memory, seeded from each image's
//! build time: image labels cannot be changed after the build, and a table
//! in the database would be one more schema on both backends for a value
//! that only orders evictions; after a restart or a takeover the order falls
//! back to build time, which is never younger than the real last use, so an
//! image is at worst evicted earlier than strictly needed, never kept past
//! the limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use ci_common::{Job, JobId};
use ci_persistence::{Channel, JobOutcome, StoreError};
use futures::StreamExt;
use tokio::sync::watch;

use crate::config::EnvironmentLimits;
use crate::container_spec::preparation_container_spec;
use crate::environment::{EnvironmentPlan, REQUIREMENTS_FILE};
use crate::log_pump::{pump_logs, PumpEnd, PumpError};
use crate::metrics::{BuildResult, EvictionReason};
use crate::pythons::LABEL_PYTHON;
pub use crate::runtime::LABEL_PREPARATION;
use crate::runtime::{ImageInfo, Removal, RuntimeError, LABEL_INSTALLATION};
use crate::worker::{remove_container, Context, WorkerError};

/// Label carrying an environment image's key.
pub const LABEL_ENVIRONMENT_KEY: &str = "ci.environment.key";
/// Label carrying when an environment image was built (RFC 3339, UTC).
pub const LABEL_BUILT_AT: &str = "ci.environment.built-at";
/// Label carrying the id of the runner image an environment was built on,
/// so its own size can be told from the layers it shares.
pub const LABEL_BASE: &str = "ci.environment.base";
/// The repository environment images are tagged in.
pub const ENVIRONMENT_REPO: &str = "ci-environment";

/// How long the preparation may take: the job's own time limit.
fn preparation_timeout(ctx: &Context) -> Duration {
    ctx.config.job_timeout
}

/// An environment image on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentImage {
    pub id: String,
    pub key: String,
    pub built_at: DateTime<Utc>,
    /// The runner image it was built on.
    pub base: Option<String>,
    /// Bytes with the base image's.
    pub size: u64,
}

impl EnvironmentImage {
    /// The environment `info` is, when it is one of `installation`'s.
    pub fn of(info: &ImageInfo, installation: &str) -> Option<Self> {
        if info.labels.get(LABEL_INSTALLATION).map(String::as_str) != Some(installation) {
            return None;
        }
        let key = info.labels.get(LABEL_ENVIRONMENT_KEY)?.clone();
        let built_at = info
            .labels
            .get(LABEL_BUILT_AT)
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| DateTime::from_timestamp(info.created, 0))?;
        Some(EnvironmentImage {
            id: info.id.clone(),
            key,
            built_at,
            base: info.labels.get(LABEL_BASE).cloned(),
            size: info.size,
        })
    }

    /// The key as the job's output names it.
    fn short_key(&self) -> &str {
        short(&self.key)
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Whether an image is a dependency environment (which inherits its runner
/// image's labels, so it must not be taken for a runner image).
pub fn is_environment(info: &ImageInfo) -> bool {
    info.labels.contains_key(LABEL_ENVIRONMENT_KEY)
}

/// The tag of `key`'s environment in `installation`: a tag is at most 128
/// of `[A-Za-z0-9_.-]`, starting with none of `.-`.
pub fn environment_tag(installation: &str, key: &str) -> String {
    let installation: String = installation
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut tag = format!("{}-{installation}", &key[..key.len().min(32)]);
    tag.truncate(128);
    format!("{ENVIRONMENT_REPO}:{tag}")
}

/// How a build ended, as the jobs waiting for it learn.
#[derive(Debug, Clone)]
enum BuildEnd {
    Built(EnvironmentImage),
    /// pip failed: the job that built it ended with `reason`.
    Failed {
        job: JobId,
        reason: String,
    },
    /// The build stopped before pip did (its job was cancelled, the engine
    /// or the database failed): a waiting job builds it instead.
    Abandoned,
}

#[derive(Default)]
struct CacheState {
    /// Builds in progress, by key: who builds, and where the end is told.
    building: HashMap<String, (JobId, watch::Receiver<Option<BuildEnd>>)>,
    /// Images jobs are about to start from, by id, with how many.
    in_use: HashMap<String, usize>,
    /// Images an eviction has chosen and is removing: no longer leased.
    removing: HashSet<String>,
    /// Committed preparation containers left for their job's end to remove.
    tidying: HashSet<String>,
    /// When each image was last chosen for a job.
    last_used: HashMap<String, DateTime<Utc>>,
}

/// This controller's builds in progress, leases and use times. One per
/// reconciler: a new leader starts without any, so whatever preparation
/// it finds on the engine is left from before, and removed.
#[derive(Default)]
pub struct EnvironmentCache {
    state: Mutex<CacheState>,
    evicting: AtomicBool,
}

/// A claim on building `key`: whoever holds it builds, everybody else with
/// the same key waits for its end. Dropped without an end (the worker was
/// aborted, say), it tells the waiters the build was abandoned.
struct BuildTicket {
    cache: Arc<EnvironmentCache>,
    key: String,
    end: watch::Sender<Option<BuildEnd>>,
}

impl BuildTicket {
    fn finish(self, end: BuildEnd) {
        self.end.send_replace(Some(end));
    }

    /// Ends a build that stored nothing: the jobs waiting for it learn that
    /// `job`'s build failed, and `job` itself fails with `reason` (and pip's
    /// `exit_code`, when pip ended it).
    fn fail(self, job: JobId, reason: String, exit_code: Option<i64>) -> WorkerError {
        self.finish(BuildEnd::Failed {
            job,
            reason: reason.clone(),
        });
        let mut outcome = JobOutcome::failed(reason);
        outcome.exit_code = exit_code;
        WorkerError::InstallFailed(outcome)
    }
}

impl Drop for BuildTicket {
    fn drop(&mut self) {
        if self.end.borrow().is_none() {
            self.end.send_replace(Some(BuildEnd::Abandoned));
        }
        self.cache.lock().building.remove(&self.key);
    }
}

/// A job is about to start from an image: eviction leaves it alone until
/// the job's container has started (from its creation on the engine refuses
/// to remove it).
pub struct EnvironmentLease {
    cache: Arc<EnvironmentCache>,
    image: String,
    /// What a build leaves to do once its job has started.
    after: Option<Box<Housekeeping>>,
}

/// What a build leaves until its job has ended, so that the engine's work
/// on it (removing a container's layer, deleting images) competes with
/// neither the job's start nor its tests, which the user waits for.
struct Housekeeping {
    ctx: Context,
    /// The committed preparation container, which the orphan sweep leaves
    /// alone until then (see [`EnvironmentCache::owns_preparation`]).
    preparation: String,
    job: JobId,
}

impl Housekeeping {
    async fn run(self) {
        let Housekeeping {
            ctx,
            preparation,
            job,
        } = self;
        // A job ends within its time limit; past it, the reconciler is about
        // to end it, and tidying need not wait any longer.
        let limit = ctx.config.job_timeout + Duration::from_secs(60);
        let _ = tokio::time::timeout(limit, job_ended(&ctx, job)).await;
        remove_container(&ctx, &preparation).await;
        ctx.environments.lock().tidying.remove(&preparation);
        // The new image may take the cache past its limits, and older builds
        // of the same key are superseded.
        evict(&ctx).await;
    }
}

impl Drop for EnvironmentLease {
    fn drop(&mut self) {
        {
            let mut state = self.cache.lock();
            if let Some(count) = state.in_use.get_mut(&self.image) {
                *count -= 1;
                if *count == 0 {
                    state.in_use.remove(&self.image);
                }
            }
        }
        if let Some(after) = self.after.take() {
            // Without a runtime (a test's last drop) the orphan sweep and the
            // next eviction do the same.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(after.run());
            }
        }
    }
}

enum Claim {
    Build(BuildTicket),
    Wait(JobId, watch::Receiver<Option<BuildEnd>>),
}

impl EnvironmentCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims the build of `key` for `job`, or says who builds it already.
    fn claim(self: &Arc<Self>, key: &str, job: JobId) -> Claim {
        let mut state = self.lock();
        if let Some((builder, end)) = state.building.get(key) {
            return Claim::Wait(*builder, end.clone());
        }
        let (end, seen) = watch::channel(None);
        state.building.insert(key.to_string(), (job, seen));
        Claim::Build(BuildTicket {
            cache: self.clone(),
            key: key.to_string(),
            end,
        })
    }

    /// Whether the preparation container `container` (of `key`) is this
    /// controller's: its build (or a lookup of the key) is in progress, or it
    /// was committed and waits for its job's end to be removed.
    pub fn owns_preparation(&self, key: &str, container: &str) -> bool {
        let state = self.lock();
        state.building.contains_key(key) || state.tidying.contains(container)
    }

    /// Leases `image` for a job that starts from it, and records the use;
    /// `None` when an eviction is removing it.
    fn lease(self: &Arc<Self>, image: &str, now: DateTime<Utc>) -> Option<EnvironmentLease> {
        let mut state = self.lock();
        if state.removing.contains(image) {
            return None;
        }
        *state.in_use.entry(image.to_string()).or_default() += 1;
        state.last_used.insert(image.to_string(), now);
        Some(EnvironmentLease {
            cache: self.clone(),
            image: image.to_string(),
            after: None,
        })
    }

    /// Whether eviction must leave `image` (of `key`) alone: a job is about
    /// to start from it, or `key` is being looked up or built.
    fn is_protected(state: &CacheState, image: &str, key: &str) -> bool {
        state.in_use.contains_key(image) || state.building.contains_key(key)
    }
}

/// Leases `image` for `job`, and checks that the engine still has it: an
/// eviction may have removed it after it was listed and before the lease,
/// which from then on keeps it. `None` when it is gone or going: a miss.
async fn lease_existing(
    ctx: &Context,
    image: &EnvironmentImage,
) -> Result<Option<EnvironmentLease>, WorkerError> {
    let Some(lease) = ctx.environments.lease(&image.id, Utc::now()) else {
        tracing::info!(image = %image.id, "environment being evicted; taken as a miss");
        return Ok(None);
    };
    match ctx.runtime.image_id(&image.id).await {
        Ok(Some(_)) => Ok(Some(lease)),
        Ok(None) => {
            tracing::info!(image = %image.id, "environment evicted since it was listed; taken as a miss");
            Ok(None)
        }
        Err(e) => Err(WorkerError::Inspect(e)),
    }
}

/// Where a job's environment stands once [`prepare`] returns.
pub(crate) enum Prepared {
    /// The job starts from `image`, leased until its container has started.
    Ready {
        image: EnvironmentImage,
        lease: EnvironmentLease,
    },
    /// The job ended (or was cancelled) meanwhile: nothing to start.
    JobEnded,
}

/// Appends one line of the controller's own to the job's output; `false`
/// when the job has ended.
async fn say(ctx: &Context, job: JobId, line: String) -> Result<bool, WorkerError> {
    match ctx.store.append_log(job, &[line], None).await {
        Ok(_) => Ok(true),
        Err(StoreError::IllegalTransition(_)) => Ok(false),
        Err(e) => Err(WorkerError::Follow(PumpError::Store(e))),
    }
}

/// The environment `job` runs from, for its `plan` on the runner image
/// `runner` (whose id is `runner_id`): found, waited for, or built.
pub(crate) async fn prepare(
    ctx: &Context,
    job: &Job,
    plan: &EnvironmentPlan,
    runner: &str,
    runner_id: &str,
) -> Result<Prepared, WorkerError> {
    let key = plan.key(runner_id, job.user_id);
    let mut told_waiting = false;
    loop {
        match ctx.environments.claim(&key, job.id) {
            Claim::Wait(builder, mut end) => {
                if !told_waiting {
                    told_waiting = true;
                    let line = format!(
                        "[ci] Waiting for environment {}, which job {builder} is preparing\n",
                        short(&key)
                    );
                    if !say(ctx, job.id, line).await? {
                        return Ok(Prepared::JobEnded);
                    }
                }
                let end = loop {
                    if let Some(end) = end.borrow_and_update().clone() {
                        break end;
                    }
                    if end.changed().await.is_err() {
                        break end.borrow().clone().unwrap_or(BuildEnd::Abandoned);
                    }
                };
                match end {
                    BuildEnd::Built(image) => {
                        // Evicted before this job leased it: built again.
                        let Some(lease) = lease_existing(ctx, &image).await? else {
                            continue;
                        };
                        ctx.metrics.env_cache_hit();
                        let line = format!(
                            "[ci] Using environment {} (built {} by job {builder}); the requirements are installed already\n",
                            image.short_key(),
                            image.built_at.format("%Y-%m-%d %H:%M:%S UTC")
                        );
                        if !say(ctx, job.id, line).await? {
                            return Ok(Prepared::JobEnded);
                        }
                        return Ok(Prepared::Ready { image, lease });
                    }
                    BuildEnd::Failed {
                        job: builder,
                        reason,
                    } => {
                        return Err(WorkerError::InstallFailed(JobOutcome::failed(format!(
                            "Installing the requirements failed in job {builder}, which prepared this environment: {reason}"
                        ))));
                    }
                    // Built by nobody: this job builds it.
                    BuildEnd::Abandoned => continue,
                }
            }
            Claim::Build(ticket) => {
                // The ticket is held while the engine is asked: eviction
                // leaves this key's images alone meanwhile.
                let found = if job.options.fresh_env {
                    None
                } else {
                    find_fresh(ctx, &key).await?
                };
                if let Some(image) = found {
                    if let Some(lease) = lease_existing(ctx, &image).await? {
                        ctx.metrics.env_cache_hit();
                        ticket.finish(BuildEnd::Built(image.clone()));
                        let line = format!(
                            "[ci] Using environment {} (built {}); the requirements are installed already\n",
                            image.short_key(),
                            image.built_at.format("%Y-%m-%d %H:%M:%S UTC")
                        );
                        if !say(ctx, job.id, line).await? {
                            return Ok(Prepared::JobEnded);
                        }
                        return Ok(Prepared::Ready { image, lease });
                    }
                }
                ctx.metrics.env_cache_miss();
                let built = build(ctx, job, plan, &key, runner, runner_id, ticket).await;
                match &built {
                    Ok(Prepared::Ready { .. }) => {
                        ctx.metrics.env_cache_built(BuildResult::Succeeded)
                    }
                    // Stopped by the job's end or cancel: neither result.
                    Ok(Prepared::JobEnded) => {}
                    Err(_) => ctx.metrics.env_cache_built(BuildResult::Failed),
                }
                return built;
            }
        }
    }
}

/// The newest environment of `key` in this installation that is not older
/// than the age limit and not being evicted.
async fn find_fresh(ctx: &Context, key: &str) -> Result<Option<EnvironmentImage>, WorkerError> {
    let installation = ctx.config.installation();
    let images = ctx
        .runtime
        .list_images(LABEL_ENVIRONMENT_KEY)
        .await
        .map_err(WorkerError::Inspect)?;
    let now = Utc::now();
    let max_age = ctx.config.environments.max_age;
    let state = ctx.environments.lock();
    Ok(images
        .iter()
        .filter_map(|info| EnvironmentImage::of(info, &installation))
        .filter(|image| image.key == key)
        .filter(|image| age(image.built_at, now) <= max_age)
        .filter(|image| !state.removing.contains(&image.id))
        .max_by_key(|image| image.built_at))
}

fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    now.signed_duration_since(at).to_std().unwrap_or_default()
}

/// The requirements files the preparation container gets, as a tar: the
/// planned requirements as `requirements.txt` and the constraint files at
/// their paths, which the planned lines name.
fn requirements_tar(plan: &EnvironmentPlan) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut requirements = plan.requirements.join("\n");
    requirements.push('\n');
    let files = std::iter::once((REQUIREMENTS_FILE, requirements.as_str()))
        .chain(plan.files.iter().map(|(p, t)| (p.as_str(), t.as_str())));
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(text.len() as u64);
        header.set_mtime(crate::workspace::ZIP_EPOCH);
        tar.append_data(&mut header, path, text.as_bytes())?;
    }
    tar.into_inner()
}

/// Waits until `job` has ended (or is gone).
async fn job_ended(ctx: &Context, job: JobId) {
    let mut jobs_changed = ctx.store.changes().subscribe(Channel::Jobs);
    loop {
        jobs_changed.borrow_and_update();
        match ctx.store.get_job(job).await {
            Ok(Some(j)) if !j.status.is_terminal() => {}
            Ok(_) => return,
            // Tidying is best-effort; the next change asks again.
            Err(_) => {}
        }
        if jobs_changed.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until `job`'s cancellation is asked for. A cancel changes the
/// jobs (the reconciler's wake-up), not the job's own watch, which follows
/// its output and status.
async fn cancel_requested(ctx: &Context, job: JobId) {
    let mut jobs_changed = ctx.store.changes().subscribe(Channel::Jobs);
    loop {
        jobs_changed.borrow_and_update();
        match ctx.store.get_job(job).await {
            Ok(Some(j)) if !j.cancel_requested => {}
            Ok(_) => return,
            // The pump meets the same database; it reports.
            Err(_) => {}
        }
        if jobs_changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Builds `key`'s environment in a preparation container, streaming pip's
/// output into `job`'s, and commits it when pip succeeded.
async fn build(
    ctx: &Context,
    job: &Job,
    plan: &EnvironmentPlan,
    key: &str,
    runner: &str,
    runner_id: &str,
    ticket: BuildTicket,
) -> Result<Prepared, WorkerError> {
    let config = &ctx.config;
    let line = format!(
        "[ci] Preparing environment {}: installing the requirements once, for this job and later ones\n",
        short(key)
    );
    if !say(ctx, job.id, line).await? {
        return Ok(Prepared::JobEnded);
    }
    // A private environment's downloads stay the user's; a shared one's
    // come from a cache no job can write.
    let pip_cache = if plan.private {
        config.pip_cache_volume_for(job.user_id)
    } else {
        config.shared_pip_cache_volume()
    };
    let spec = preparation_container_spec(config, key, pip_cache, runner);
    let input = requirements_tar(plan).map_err(|e| {
        WorkerError::CannotRun(format!(
            "Cannot write the requirements for the preparation: {e}"
        ))
    })?;
    let id = ctx.runtime.create(&spec).await.map_err(|e| {
        WorkerError::CannotRun(format!("Cannot create the preparation container: {e}"))
    })?;
    tracing::info!(container = %id, key, "preparing environment");
    let input = futures::stream::once(async move { Ok(Bytes::from(input)) }).boxed();
    if let Err(e) = ctx.runtime.start_with_input(&id, input).await {
        remove_container(ctx, &id).await;
        return Err(WorkerError::CannotRun(format!(
            "Cannot start the preparation container: {e}"
        )));
    }
    // Measured until this build returns, against the whole cache's size.
    let _measured = ctx.disk.watch_preparation(&id, job.id);
    // The job's stored output may end in an earlier preparation's container
    // (one that a killed controller left): this one's lines all come later.
    let pump = pump_logs(
        ctx.store.clone(),
        ctx.runtime.clone(),
        job.id,
        id.clone(),
        job.log_cursor.clone(),
        config.pump,
        &ctx.metrics,
    );
    let pumped = tokio::select! {
        pumped = tokio::time::timeout(preparation_timeout(ctx), pump) => pumped,
        () = cancel_requested(ctx, job.id) => {
            tracing::info!(container = %id, "job cancelled during its preparation");
            stop_and_remove(ctx, &id).await;
            return Ok(Prepared::JobEnded);
        }
        () = ctx.disk.preparation_over(&id) => {
            stop_and_remove(ctx, &id).await;
            let reason = format!(
                "The environment grew past {}, the size of the whole environment cache (limit CI_ENV_CACHE_BYTES); no environment was stored",
                ci_config::format_size(config.environments.max_bytes)
            );
            return Err(ticket.fail(job.id, reason, None));
        }
    };
    let exit_code = match pumped {
        Err(_) => {
            stop_and_remove(ctx, &id).await;
            let reason = format!(
                "Installing the requirements took longer than the job time limit of {} seconds; no environment was stored",
                preparation_timeout(ctx).as_secs()
            );
            return Err(ticket.fail(job.id, reason, None));
        }
        Ok(Err(e)) => {
            stop_and_remove(ctx, &id).await;
            return Err(WorkerError::Follow(e));
        }
        Ok(Ok(PumpEnd::JobEnded)) => {
            stop_and_remove(ctx, &id).await;
            return Ok(Prepared::JobEnded);
        }
        Ok(Ok(PumpEnd::Drained)) => match ctx.runtime.inspect(&id).await {
            Ok(Some(state)) if !state.running => state.exit_code.unwrap_or(-1),
            Ok(_) => {
                stop_and_remove(ctx, &id).await;
                return Err(WorkerError::CannotRun(
                    "The preparation container disappeared before pip finished".into(),
                ));
            }
            Err(e) => {
                stop_and_remove(ctx, &id).await;
                return Err(WorkerError::Inspect(e));
            }
        },
    };
    if exit_code != 0 {
        remove_container(ctx, &id).await;
        let reason = format!(
            "Installing the requirements failed (pip exited with {exit_code}); no environment was stored"
        );
        return Err(ticket.fail(job.id, reason, Some(exit_code)));
    }
    let built_at = Utc::now();
    let labels = BTreeMap::from([
        (LABEL_INSTALLATION.to_string(), config.installation()),
        (LABEL_ENVIRONMENT_KEY.to_string(), key.to_string()),
        (
            LABEL_BUILT_AT.to_string(),
            built_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        (LABEL_BASE.to_string(), runner_id.to_string()),
    ]);
    let reference = environment_tag(&config.installation(), key);
    let image_id = match ctx.runtime.commit(&id, &reference, &labels).await {
        Ok(image_id) => image_id,
        Err(e) => {
            remove_container(ctx, &id).await;
            return Err(WorkerError::CannotRun(format!(
                "Cannot store the prepared environment: {e}"
            )));
        }
    };
    tracing::info!(image = %image_id, key, "environment built");
    let image = EnvironmentImage {
        id: image_id,
        key: key.to_string(),
        built_at: DateTime::parse_from_rfc3339(&labels[LABEL_BUILT_AT])
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or(built_at),
        base: Some(runner_id.to_string()),
        size: 0,
    };
    // Eviction leaves the images of a key being built alone, and the ticket
    // is still held: nothing can be removing the new image.
    let Some(mut lease) = ctx.environments.lease(&image.id, built_at) else {
        remove_container(ctx, &id).await;
        return Err(WorkerError::CannotRun(
            "The new environment was evicted before its job started".into(),
        ));
    };
    // The preparation container's removal and the eviction wait until the
    // job has ended; they are set off when the lease is released, once its
    // container has started.
    ctx.environments.lock().tidying.insert(id.clone());
    lease.after = Some(Box::new(Housekeeping {
        ctx: ctx.clone(),
        preparation: id,
        job: job.id,
    }));
    ticket.finish(BuildEnd::Built(image.clone()));
    Ok(Prepared::Ready { image, lease })
}

async fn stop_and_remove(ctx: &Context, id: &str) {
    if let Err(e) = ctx.runtime.stop(id, ctx.config.stop_grace).await {
        tracing::warn!(container = id, error = %e, "cannot stop the preparation container");
    }
    remove_container(ctx, id).await;
}

/// One cached environment, as eviction weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub key: String,
    pub built_at: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    /// Its own bytes, without the runner image's.
    pub bytes: u64,
    /// A job is about to start from it.
    pub leased: bool,
}

/// Which environments to remove, and why: those past the age limit, older
/// builds of a key that has a newer one, then the least recently used until
/// the rest fits the size limit. Leased ones are never chosen (they still
/// count towards the size).
pub fn evictions(
    images: &[Cached],
    limits: EnvironmentLimits,
    now: DateTime<Utc>,
) -> Vec<(String, EvictionReason)> {
    let newest: HashMap<&str, DateTime<Utc>> =
        images.iter().fold(HashMap::new(), |mut newest, image| {
            let at = newest.entry(image.key.as_str()).or_insert(image.built_at);
            *at = (*at).max(image.built_at);
            newest
        });
    let mut evicted = Vec::new();
    let mut kept: Vec<&Cached> = Vec::new();
    for image in images {
        let superseded = image.built_at < newest[image.key.as_str()];
        let expired = age(image.built_at, now) > limits.max_age;
        let reason = if expired {
            Some(EvictionReason::Age)
        } else if superseded {
            Some(EvictionReason::FreshEnv)
        } else {
            None
        };
        match reason {
            Some(reason) if !image.leased => evicted.push((image.id.clone(), reason)),
            _ => kept.push(image),
        }
    }
    kept.sort_by_key(|image| (image.last_used, image.built_at));
    let mut total: u64 = kept.iter().map(|image| image.bytes).sum();
    for image in kept {
        if total <= limits.max_bytes {
            break;
        }
        if !image.leased {
            total -= image.bytes;
            evicted.push((image.id.clone(), EvictionReason::Size));
        }
    }
    evicted
}

/// Removes the environments [`evictions`] chooses; one eviction at a time.
pub(crate) async fn evict(ctx: &Context) {
    if ctx.environments.evicting.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Err(e) = evict_once(ctx).await {
        tracing::warn!(error = %e, "cannot evict environments; the next sweep tries again");
    }
    ctx.environments.evicting.store(false, Ordering::Release);
}

async fn evict_once(ctx: &Context) -> Result<(), RuntimeError> {
    let installation = ctx.config.installation();
    let images = ctx.runtime.list_images(LABEL_ENVIRONMENT_KEY).await?;
    let runners = ctx.runtime.list_images(LABEL_PYTHON).await?;
    let sizes: HashMap<&str, u64> = runners
        .iter()
        .chain(&images)
        .map(|i| (i.id.as_str(), i.size))
        .collect();
    let cached: Vec<Cached> = {
        let state = ctx.environments.lock();
        images
            .iter()
            .filter_map(|info| EnvironmentImage::of(info, &installation))
            .map(|image| {
                let base = image
                    .base
                    .as_deref()
                    .and_then(|b| sizes.get(b))
                    .copied()
                    .unwrap_or(0);
                Cached {
                    last_used: state
                        .last_used
                        .get(&image.id)
                        .copied()
                        .unwrap_or(image.built_at),
                    leased: EnvironmentCache::is_protected(&state, &image.id, &image.key),
                    bytes: image.size.saturating_sub(base),
                    id: image.id,
                    key: image.key,
                    built_at: image.built_at,
                }
            })
            .collect()
    };
    let keys: HashMap<&str, &str> = cached
        .iter()
        .map(|image| (image.id.as_str(), image.key.as_str()))
        .collect();
    let mut held: HashMap<&str, u64> = cached.iter().map(|c| (c.id.as_str(), c.bytes)).collect();
    for (id, reason) in evictions(&cached, ctx.config.environments, Utc::now()) {
        // Looked at again, and marked in the same step: a job may have
        // leased it since the listing, and none may lease it from now on.
        {
            let mut state = ctx.environments.lock();
            let key = keys.get(id.as_str()).copied().unwrap_or_default();
            if EnvironmentCache::is_protected(&state, &id, key) {
                continue;
            }
            state.removing.insert(id.clone());
        }
        let removed = ctx.runtime.remove_image(&id).await;
        let mut state = ctx.environments.lock();
        state.removing.remove(&id);
        match removed? {
            removal @ (Removal::Removed | Removal::Missing) => {
                tracing::info!(image = %id, reason = reason.as_str(), "environment evicted");
                state.last_used.remove(&id);
                held.remove(id.as_str());
                // Missing: someone else removed it, and counted it.
                if removal == Removal::Removed {
                    ctx.metrics.env_cache_evicted(reason);
                }
            }
            Removal::InUse => {
                tracing::debug!(image = %id, "environment in use; kept");
            }
        }
    }
    ctx.metrics.env_cache_holds(held.len(), held.values().sum());
    trim_shared_pip_cache(ctx).await
}

/// Empties the shared environments' pip cache once it holds more than the
/// environments may take (`CI_ENV_CACHE_BYTES`): every release a build ever
/// downloaded stays in it otherwise. Users' own caches are bounded by their
/// jobs' disk limit (see `worker::end`). The engine keeps it while a
/// preparation mounts it; a later round tries again.
async fn trim_shared_pip_cache(ctx: &Context) -> Result<(), RuntimeError> {
    let Some(volume) = ctx.config.shared_pip_cache_volume() else {
        return Ok(());
    };
    let limit = ctx.config.environments.max_bytes;
    let Some(bytes) = ctx.runtime.volume_size(&volume).await? else {
        return Ok(());
    };
    if bytes <= limit {
        return Ok(());
    }
    match ctx.runtime.remove_volume(&volume).await? {
        Removal::Removed => {
            tracing::info!(
                volume,
                bytes,
                limit,
                "shared pip cache over the environment cache's size emptied"
            );
        }
        Removal::InUse => {
            tracing::debug!(volume, "shared pip cache over its size in use; kept");
        }
        Removal::Missing => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    /// A hit racing an eviction, against the in-memory engine: gates on the
    /// engine's calls put the eviction exactly between the hit's steps.
    mod races {
        use std::collections::HashMap;

        use ci_persistence::{DatabaseLocation, NewJob, Store};
        use tokio::task::JoinHandle;

        use super::super::*;
        use crate::config::ControllerConfig;
        use crate::container_spec::ContainerSpec;
        use crate::fake_runtime::FakeRuntime;
        use crate::runtime::ContainerRuntime;

        const RUNNER: &str = "runner:fake";

        struct Fixture {
            ctx: Context,
            engine: FakeRuntime,
            job: Job,
            plan: EnvironmentPlan,
            _dir: tempfile::TempDir,
        }

        impl Fixture {
            /// A queued job whose requirements (`attrs`) make a shared
            /// environment, on an engine whose cache holds 50 bytes.
            async fn new() -> Fixture {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(&DatabaseLocation::SqliteFile(dir.path().join("jobs.db")))
                    .await
                    .unwrap();
                let user = store.create_user("T", "t@example.com").await.unwrap().id;
                let digest = store.put_archive(b"the project").await.unwrap();
                let id = store
                    .create_job(&NewJob::new(user, digest))
                    .await
                    .unwrap()
                    .id;
                let job = store.get_job(id).await.unwrap().unwrap();
                let engine = FakeRuntime::with_image(RUNNER);
                let config = ControllerConfig {
                    image: RUNNER.into(),
                    container_prefix: "fake-".into(),
                    network_mode: "none".into(),
                    environments: EnvironmentLimits {
                        max_bytes: 50,
                        max_age: Duration::from_secs(3600),
                    },
                    ..ControllerConfig::default()
                };
                let (wake, _) = tokio::sync::mpsc::unbounded_channel();
                let ctx = Context {
                    store,
                    runtime: Arc::new(engine.clone()),
                    config: Arc::new(config),
                    wake,
                    metrics: Arc::default(),
                    environments: Arc::default(),
                    disk: Arc::default(),
                };
                let plan = EnvironmentPlan {
                    requirements: vec!["attrs".into()],
                    ..EnvironmentPlan::default()
                };
                Fixture {
                    ctx,
                    engine,
                    job,
                    plan,
                    _dir: dir,
                }
            }

            /// The job's environment, built earlier and idle: 100 bytes, so
            /// an eviction removes it unless something keeps it.
            fn plant_environment(&self) -> String {
                let installation = self.ctx.config.installation();
                let key = self.plan.key(RUNNER, self.job.user_id);
                let id = "sha256:planted".to_string();
                self.engine.add_image(ImageInfo {
                    id: id.clone(),
                    tags: vec![environment_tag(&installation, &key)],
                    labels: HashMap::from([
                        (LABEL_INSTALLATION.to_string(), installation),
                        (LABEL_ENVIRONMENT_KEY.to_string(), key),
                        (
                            LABEL_BUILT_AT.to_string(),
                            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                        ),
                    ]),
                    created: Utc::now().timestamp(),
                    size: 100,
                });
                id
            }

            /// The job's environment being prepared; what it is handed.
            fn prepare(&self) -> JoinHandle<(String, EnvironmentLease)> {
                let (ctx, job, plan) = (self.ctx.clone(), self.job.clone(), self.plan.clone());
                tokio::spawn(async move {
                    match prepare(&ctx, &job, &plan, RUNNER, RUNNER).await {
                        Ok(Prepared::Ready { image, lease }) => (image.id, lease),
                        Ok(Prepared::JobEnded) => panic!("the job has not ended"),
                        Err(e) => panic!("preparing failed: {e}"),
                    }
                })
            }

            fn evict(&self) -> JoinHandle<()> {
                let ctx = self.ctx.clone();
                tokio::spawn(async move { evict(&ctx).await })
            }

            /// The preparation container, once it runs with its input.
            async fn preparation(&self) -> String {
                self.engine
                    .until("a preparation container to run", |e| {
                        e.containers_labelled(LABEL_PREPARATION)
                            .into_iter()
                            .find(|c| c.running && c.input.is_some())
                            .map(|c| c.id)
                    })
                    .await
            }

            /// Whether the job's container can be made from `image`, as the
            /// worker makes it while it holds the lease.
            async fn job_can_start_from(&self, image: &str) -> bool {
                let spec = ContainerSpec {
                    image: image.to_string(),
                    ..ContainerSpec::default()
                };
                self.engine.create(&spec).await.is_ok()
            }
        }

        #[tokio::test]
        async fn an_eviction_while_a_hit_is_looked_up_leaves_its_environment() {
            let t = Fixture::new().await;
            let planted = t.plant_environment();
            let mut listing = t.engine.hold_next_image_listing(LABEL_ENVIRONMENT_KEY);
            let preparing = t.prepare();
            // The hit has listed its environment and not yet leased it.
            listing.reached().await;
            // Over the cache's limit and unleased: only the lookup in
            // progress keeps it.
            t.evict().await.unwrap();
            listing.release();
            let (image, _lease) = preparing.await.unwrap();
            assert_eq!(image, planted, "a hit");
            assert!(t.job_can_start_from(&image).await, "image not found");
            assert_eq!(t.engine.commits(), 0, "nothing built");
        }

        #[tokio::test]
        async fn an_environment_being_evicted_is_a_miss_and_built_again() {
            let t = Fixture::new().await;
            let planted = t.plant_environment();
            let mut removal = t.engine.hold_next_image_removal();
            let evicting = t.evict();
            // Chosen for eviction, not yet removed: still listed.
            removal.reached().await;
            let preparing = t.prepare();
            let preparation = t.preparation().await;
            removal.release();
            evicting.await.unwrap();
            t.engine.exit(&preparation, 0);
            let (image, _lease) = preparing.await.unwrap();
            assert_ne!(image, planted);
            assert!(t.job_can_start_from(&image).await, "image not found");
            assert!(!t.job_can_start_from(&planted).await, "evicted");
        }

        #[tokio::test]
        async fn an_environment_evicted_after_it_was_listed_is_a_miss_and_built_again() {
            let t = Fixture::new().await;
            let planted = t.plant_environment();
            let mut removal = t.engine.hold_next_image_removal();
            let evicting = t.evict();
            removal.reached().await;
            let mut listing = t.engine.hold_next_image_listing(LABEL_ENVIRONMENT_KEY);
            let preparing = t.prepare();
            // The hit has listed it; then the removal ends before its lease.
            listing.reached().await;
            removal.release();
            evicting.await.unwrap();
            listing.release();
            let preparation = t.preparation().await;
            t.engine.exit(&preparation, 0);
            let (image, _lease) = preparing.await.unwrap();
            assert_ne!(image, planted);
            assert!(t.job_can_start_from(&image).await, "image not found");
        }
    }

    fn at(minutes_ago: i64) -> DateTime<Utc> {
        now() - chrono::Duration::minutes(minutes_ago)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn image(id: &str, key: &str, built: i64, used: i64, bytes: u64, leased: bool) -> Cached {
        Cached {
            id: id.into(),
            key: key.into(),
            built_at: at(built),
            last_used: at(used),
            bytes,
            leased,
        }
    }

    /// The ids [`evictions`] chooses, in its order, without the reasons.
    fn chosen(images: &[Cached], limits: EnvironmentLimits) -> Vec<String> {
        evictions(images, limits, now())
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn limits(max_bytes: u64, max_age_minutes: u64) -> EnvironmentLimits {
        EnvironmentLimits {
            max_bytes,
            max_age: Duration::from_secs(max_age_minutes * 60),
        }
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_rest_fits() {
        let images = [
            image("a", "ka", 50, 5, 4 * GIB, false),
            image("b", "kb", 40, 30, 4 * GIB, false),
            image("c", "kc", 30, 20, 4 * GIB, false),
        ];
        // 12 GiB in 10: the one used longest ago goes, however new it is.
        assert_eq!(chosen(&images, limits(10 * GIB, 600)), ["b"]);
        assert_eq!(chosen(&images, limits(4 * GIB, 600)), ["b", "c"]);
        assert!(chosen(&images, limits(12 * GIB, 600)).is_empty());
        assert!(evictions(&images, limits(4 * GIB, 600), now())
            .iter()
            .all(|(_, reason)| *reason == EvictionReason::Size));
    }

    #[test]
    fn leased_images_are_never_chosen_but_count() {
        let images = [
            image("a", "ka", 50, 5, 4 * GIB, false),
            image("b", "kb", 40, 30, 4 * GIB, true),
            image("old", "kc", 900, 900, GIB, true),
        ];
        assert_eq!(chosen(&images, limits(6 * GIB, 600)), ["a"]);
    }

    #[test]
    fn environments_past_the_age_limit_and_older_builds_of_a_key_go() {
        let images = [
            image("old", "k", 120, 1, GIB, false),
            image("new", "k", 10, 10, GIB, false),
            image("expired", "other", 61, 0, GIB, false),
            image("fresh", "third", 59, 59, GIB, false),
            // Young enough, but rebuilt since (a --fresh-env job).
            image("rebuilt", "fourth", 30, 30, GIB, false),
            image("rebuild", "fourth", 5, 5, GIB, false),
        ];
        let mut chosen = evictions(&images, limits(100 * GIB, 60), now());
        chosen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            chosen,
            [
                ("expired".to_string(), EvictionReason::Age),
                ("old".to_string(), EvictionReason::Age),
                ("rebuilt".to_string(), EvictionReason::FreshEnv),
            ]
        );
    }

    #[test]
    fn tags_are_valid_whatever_the_installation() {
        let key = "ab".repeat(32);
        let tag = environment_tag("citest-12 3/x:", &key);
        let (repo, tag) = tag.split_once(':').unwrap_or_default();
        assert_eq!(repo, ENVIRONMENT_REPO);
        assert!(tag.len() <= 128);
        assert!(tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        assert!(tag.starts_with(&key[..32]));
    }

    #[test]
    fn the_preparation_gets_the_requirements_and_their_constraints_only() {
        let plan = EnvironmentPlan {
            requirements: vec!["attrs".into(), "-c c/constraints.txt".into()],
            files: BTreeMap::from([("c/constraints.txt".to_string(), "attrs<30\n".to_string())]),
            local: vec![],
            private: false,
        };
        let tar = requirements_tar(&plan).unwrap_or_default();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = BTreeMap::new();
        for entry in archive.entries().into_iter().flatten().flatten() {
            let mut entry = entry;
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap_or_default();
            files.insert(path, text);
        }
        assert_eq!(
            files,
            BTreeMap::from([
                (
                    "requirements.txt".to_string(),
                    "attrs\n-c c/constraints.txt\n".to_string()
                ),
                ("c/constraints.txt".to_string(), "attrs<30\n".to_string()),
            ])
        );
    }
}
