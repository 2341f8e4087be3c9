//! The reconciler: compares what the database wants with what Docker has and
//! takes, for each job, the one step that moves it closer.
//!
//! A pass gathers the facts (the unfinished jobs, this installation's
//! containers, what each worker is doing), asks [`decide`] for each job's
//! step, lets the [`scheduler`](crate::scheduler) pick which queued jobs start
//! within capacity, hands the slow steps to [`worker`](crate::worker)s, and
//! sweeps orphaned containers. Passes are level-triggered and idempotent: a
//! pass after a crash, a lost wake-up or a takeover looks at the same facts
//! and reaches the same decisions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ci_common::{Job, JobId, JobStatus, UserId};
use ci_persistence::{Channel, JobOutcome, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::decision::{decide, Action, EndReason, Observed, WorkerState};
use crate::disk_watch;
use crate::environment_cache;
use crate::metrics::{ControllerMetrics, Finished};
use crate::pythons::{PythonOffer, LABEL_PYTHON};
use crate::runtime::{ContainerInfo, ContainerRuntime, RuntimeError};
use crate::scheduler::{self, Candidate, Turns};
use crate::worker::{self, Context, Worker, WorkerKind};

pub struct Reconciler {
    ctx: Context,
    workers: HashMap<JobId, Worker>,
    wake_rx: mpsc::UnboundedReceiver<JobId>,
    /// Who was served when, so that capacity is shared in turns.
    turns: Turns,
    /// When the environments were last swept for eviction (besides after
    /// every build): environments past their age go within this period.
    last_eviction: Option<tokio::time::Instant>,
}

/// How often a pass sweeps the environments for eviction.
const EVICTION_PERIOD: Duration = Duration::from_secs(60);

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
                metrics: Arc::default(),
                environments: Arc::default(),
                disk: Arc::default(),
            },
            workers: HashMap::new(),
            wake_rx,
            turns: Turns::default(),
            last_eviction: None,
        }
    }

    /// Counts into `metrics` (shared by every term of leadership) instead
    /// of metrics of its own.
    pub fn with_metrics(mut self, metrics: Arc<ControllerMetrics>) -> Self {
        self.ctx.metrics = metrics;
        self
    }

    /// Runs passes until `shutdown`: on every new or cancelled job, whenever a
    /// worker finishes, and on the resync timer as the safety net. Containers
    /// are left running on shutdown; the next controller adopts them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::spawn(disk_watch::run(
            self.ctx.disk.clone(),
            self.ctx.runtime.clone(),
            self.ctx.config.disk,
            self.ctx.config.environments.max_bytes,
            self.ctx.wake.clone(),
            shutdown.child_token(),
        ));
        let mut jobs_changed = self.ctx.store.changes().subscribe(Channel::Jobs);
        let mut tick = tokio::time::interval(self.ctx.config.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            jobs_changed.borrow_and_update();
            match self.pass().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    // A pass that fails changes nothing: log, back off a
                    // little, and let the next pass retry from the facts.
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
            worker.handle.abort();
        }
    }

    /// One comparison of the database with Docker, and the steps it calls for.
    pub async fn pass(&mut self) -> Result<(), PassError> {
        let began = std::time::Instant::now();
        let jobs = self.ctx.store.list_unfinished_jobs().await?;
        let containers = self
            .ctx
            .runtime
            .list(&self.ctx.config.installation())
            .await?;
        let now = Utc::now();
        let states = self.collect_workers().await;
        let by_job: HashMap<JobId, &ContainerInfo> = containers
            .iter()
            .filter_map(|c| c.job_id.map(|j| (j, c)))
            .collect();
        self.ctx.disk.watch(
            jobs.iter()
                .filter(|j| j.status == JobStatus::Running)
                .filter_map(|j| {
                    by_job
                        .get(&j.id)
                        .filter(|c| c.running)
                        .map(|c| (c.id.clone(), j.id))
                })
                .collect(),
        );

        let mut eligible = Vec::new();
        let mut busy = 0usize;
        let mut running_per_user: HashMap<UserId, usize> = HashMap::new();
        for job in &jobs {
            let worker = states.get(&job.id).copied().unwrap_or(WorkerState::Idle);
            if job.status == JobStatus::Running || worker == WorkerState::Following {
                busy += 1;
                *running_per_user.entry(job.user_id).or_default() += 1;
            }
            let container = by_job.get(&job.id).copied();
            let over_disk_limit = container.is_some_and(|c| self.ctx.disk.is_over(&c.id));
            let observed = Observed::of(
                job,
                container,
                worker,
                now,
                self.ctx.config.job_timeout,
                over_disk_limit,
            );
            let container_id = container.map(|c| c.id.clone());
            match decide(&observed) {
                Action::Wait => {}
                Action::Start => eligible.push(Candidate::from(job)),
                Action::Adopt => {
                    if let Some(id) = container_id {
                        self.adopt(job, id);
                    }
                }
                Action::Complete => {
                    if let Some(id) = container_id {
                        self.complete(job, id);
                    }
                }
                Action::End(reason) => {
                    let limit = self.ctx.config.disk.max_bytes;
                    let outcome = reason.outcome(self.ctx.config.job_timeout, limit);
                    let how = Finished::of(&outcome, reason == EndReason::TimedOut);
                    // A pip cache that took the job over its limit would take
                    // its user's next job over before it started.
                    let cache = container_id
                        .as_deref()
                        .filter(|_| reason == EndReason::OverDiskLimit)
                        .and_then(|id| self.ctx.disk.verdict(id))
                        .filter(|used| used.caches_to_blame(limit))
                        .and_then(|_| self.ctx.config.pip_cache_volume_for(job.user_id));
                    self.end(job, container_id, outcome, how, cache);
                }
            }
        }

        let free = self.ctx.config.max_concurrent_jobs.saturating_sub(busy);
        let starts = scheduler::pick(&eligible, &running_per_user, &mut self.turns, free);
        let in_use = busy + starts.len();
        if !starts.is_empty() {
            // The runner images are looked up afresh whenever jobs start, so
            // an image built meanwhile is on offer without a restart.
            let mut images = self.ctx.runtime.list_images(LABEL_PYTHON).await?;
            // Environments inherit their runner image's labels; they are no
            // Python of their own.
            images.retain(|image| !environment_cache::is_environment(image));
            let pythons = Arc::new(PythonOffer::new(
                &images,
                &self.ctx.config.image,
                self.ctx.config.python_default,
            ));
            let by_id: HashMap<JobId, &Job> = jobs.iter().map(|j| (j.id, j)).collect();
            for id in starts {
                if let Some(job) = by_id.get(&id) {
                    self.start(job, by_job.get(&id).map(|c| c.id.clone()), pythons.clone());
                }
            }
        }

        self.sweep_orphans(&jobs, &containers).await;
        self.ctx
            .metrics
            .pass_took(began.elapsed(), in_use, self.ctx.config.max_concurrent_jobs);
        if self
            .last_eviction
            .is_none_or(|at| at.elapsed() >= EVICTION_PERIOD)
        {
            self.last_eviction = Some(tokio::time::Instant::now());
            let ctx = self.ctx.clone();
            tokio::spawn(async move { environment_cache::evict(&ctx).await });
        }
        Ok(())
    }

    /// What each worker is doing; finished workers are collected, and a
    /// follower that failed is reported as such.
    async fn collect_workers(&mut self) -> HashMap<JobId, WorkerState> {
        let mut states = HashMap::new();
        let finished: Vec<JobId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.handle.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for (id, worker) in &self.workers {
            let state = match worker.kind {
                WorkerKind::Following => WorkerState::Following,
                WorkerKind::Ending => WorkerState::Ending,
            };
            states.insert(*id, state);
        }
        for id in finished {
            let Some(worker) = self.workers.remove(&id) else {
                continue;
            };
            let state = match (worker.kind, worker.handle.await) {
                (WorkerKind::Ending, _) => WorkerState::Idle,
                (WorkerKind::Following, Ok(Ok(_))) => WorkerState::FollowingEnded,
                (WorkerKind::Following, Ok(Err(e))) => {
                    tracing::warn!(job_id = %id, error = %e, "following the job's output failed; it will be resumed");
                    WorkerState::FollowingFailed
                }
                (WorkerKind::Following, Err(e)) => {
                    tracing::warn!(job_id = %id, error = %e, "following the job's output failed; it will be resumed");
                    WorkerState::FollowingFailed
                }
            };
            states.insert(id, state);
        }
        states
    }

    /// Removes containers of this installation whose job is not unfinished
    /// here, and preparation containers no build of this controller owns
    /// (left by a controller that died while preparing: never committed).
    async fn sweep_orphans(&self, jobs: &[Job], containers: &[ContainerInfo]) {
        let live: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        for container in containers {
            let owned = match (container.job_id, &container.preparation) {
                (Some(j), _) => live.contains(&j) || self.workers.contains_key(&j),
                (None, Some(key)) => self.ctx.environments.owns_preparation(key, &container.id),
                (None, None) => false,
            };
            if !owned {
                tracing::info!(container = %container.id, job_id = ?container.job_id, "removing orphaned container");
                if let Err(e) = self.ctx.runtime.remove(&container.id).await {
                    tracing::warn!(container = %container.id, error = %e, "cannot remove orphaned container");
                }
            }
        }
    }

    fn start(&mut self, job: &Job, stale_container: Option<String>, pythons: Arc<PythonOffer>) {
        let step =
            worker::start_and_follow(self.ctx.clone(), job.clone(), stale_container, pythons);
        let w = worker::spawn(&self.ctx, job, WorkerKind::Following, step);
        self.workers.insert(job.id, w);
    }

    fn adopt(&mut self, job: &Job, container_id: String) {
        let step = worker::follow(self.ctx.clone(), job.id, container_id);
        let w = worker::spawn(&self.ctx, job, WorkerKind::Following, step);
        self.workers.insert(job.id, w);
    }

    fn complete(&mut self, job: &Job, container_id: String) {
        let step = worker::complete(self.ctx.clone(), job.id, container_id);
        let w = worker::spawn(&self.ctx, job, WorkerKind::Ending, step);
        self.workers.insert(job.id, w);
    }

    fn end(
        &mut self,
        job: &Job,
        container_id: Option<String>,
        outcome: JobOutcome,
        how: Finished,
        cache_to_empty: Option<String>,
    ) {
        let job_id = job.id;
        let following = match self.workers.remove(&job_id) {
            Some(w) if w.kind == WorkerKind::Ending => {
                // Already being ended; once is enough.
                self.workers.insert(job_id, w);
                return;
            }
            Some(w) => Some(w.handle),
            None => None,
        };
        let step = worker::end(
            self.ctx.clone(),
            job_id,
            container_id,
            outcome,
            how,
            following,
            cache_to_empty,
        );
        let w = worker::spawn(&self.ctx, job, WorkerKind::Ending, step);
        self.workers.insert(job_id, w);
    }
}

/// The reconciler's rules pass by pass, against the in-memory engine and a
/// real SQLite file: no Docker engine needed.
#[cfg(test)]
mod tests {
    use std::io::Write;

    use ci_common::JobOptions;
    use ci_persistence::DatabaseLocation;
    use ci_persistence::NewJob;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::container_spec::ContainerSpec;
    use crate::fake_runtime::{FakeRuntime, PATIENCE};
    use crate::runtime::{ImageInfo, Removal, LABEL_INSTALLATION, LABEL_JOB, LABEL_PREPARATION};
    use crate::workspace::tests::tar_has_file;

    const IMAGE: &str = "runner:fake";

    struct Harness {
        store: Store,
        engine: FakeRuntime,
        config: ControllerConfig,
        user: UserId,
        controller: Option<(CancellationToken, JoinHandle<()>)>,
        metrics: Arc<ControllerMetrics>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn start(tune: impl FnOnce(&mut ControllerConfig)) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&DatabaseLocation::SqliteFile(dir.path().join("jobs.db")))
                .await
                .unwrap();
            let mut config = ControllerConfig {
                image: IMAGE.into(),
                container_prefix: "fake-".into(),
                network_mode: "none".into(),
                reconcile_interval: Duration::from_millis(50),
                max_concurrent_jobs: 4,
                ..ControllerConfig::default()
            };
            tune(&mut config);
            let user = store.create_user("T", "t@example.com").await.unwrap().id;
            let mut h = Harness {
                store,
                engine: FakeRuntime::with_image(IMAGE),
                config,
                user,
                controller: None,
                metrics: Arc::default(),
                _dir: dir,
            };
            h.start_controller();
            h
        }

        fn start_controller(&mut self) {
            let token = CancellationToken::new();
            let reconciler = Reconciler::new(
                self.store.clone(),
                Arc::new(self.engine.clone()),
                self.config.clone(),
            )
            .with_metrics(self.metrics.clone());
            let run = tokio::spawn(reconciler.run(token.clone()));
            self.controller = Some((token, run));
        }

        /// Stops the controller as a killed one would stop: mid-work,
        /// leaving its containers running.
        async fn stop_controller(&mut self) {
            if let Some((token, run)) = self.controller.take() {
                token.cancel();
                run.await.unwrap();
            }
        }

        async fn submit_as(&self, user: UserId, files: &[(&str, &str)]) -> JobId {
            self.submit_with(user, files, JobOptions::default()).await
        }

        async fn submit_with(
            &self,
            user: UserId,
            files: &[(&str, &str)],
            options: JobOptions,
        ) -> JobId {
            let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            for (name, text) in files {
                zip.start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                zip.write_all(text.as_bytes()).unwrap();
            }
            let zip = zip.finish().unwrap().into_inner();
            let digest = self.store.put_archive(&zip).await.unwrap();
            self.store
                .create_job(&NewJob {
                    options,
                    ..NewJob::new(user, digest)
                })
                .await
                .unwrap()
                .id
        }

        async fn submit(&self) -> JobId {
            self.submit_as(self.user, &[("test_ok.py", "def test_ok():\n    pass\n")])
                .await
        }

        /// Waits for the job to satisfy `cond`, woken by the store's changes.
        async fn job_until(&self, id: JobId, what: &str, cond: impl Fn(&Job) -> bool) -> Job {
            let mut changes = self.store.changes().subscribe(Channel::Jobs);
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                changes.borrow_and_update();
                let job = self.store.get_job(id).await.unwrap().unwrap();
                if cond(&job) {
                    return job;
                }
                if tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
                {
                    panic!("timed out waiting for {what}: {job:?}");
                }
            }
        }

        async fn ended(&self, id: JobId) -> Job {
            self.job_until(id, "the job to end", |j| j.status.is_terminal())
                .await
        }

        async fn output(&self, id: JobId) -> String {
            self.store
                .read_log(id, 0, 1_000_000)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.text)
                .collect()
        }

        async fn output_until(&self, id: JobId, text: &str) {
            let mut changes = self.store.changes().subscribe_job(id);
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                changes.mark_seen();
                if self.output(id).await.contains(text) {
                    return;
                }
                if tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
                {
                    panic!("timed out waiting for {text:?} in the output");
                }
            }
        }

        /// The container of `job` once it runs with its project in.
        async fn running_container(&self, job: JobId) -> String {
            self.engine
                .until("the job's container to run", |e| {
                    e.container_of(job)
                        .filter(|c| c.running && c.input.is_some())
                        .map(|c| c.id)
                })
                .await
        }

        /// The job's container, once it runs with its input and the job is
        /// stored as running.
        async fn running(&self, job: JobId) -> String {
            let id = self.running_container(job).await;
            self.job_until(job, "the job to run", |j| j.status == JobStatus::Running)
                .await;
            id
        }

        /// The controller's metrics as Prometheus would scrape them.
        async fn metric(&self, series: &str) -> f64 {
            let text = self
                .metrics
                .encode(&self.store, crate::leadership::Leadership::Leader)
                .await
                .unwrap();
            crate::metrics::sample(&text, series)
        }

        /// Waits until `series` reads `value`: what a spawned eviction counts
        /// lands a moment after the engine shows its effect, with nothing to
        /// wait on but the metric itself.
        async fn metric_reaches(&self, series: &str, value: f64) {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                let text = self
                    .metrics
                    .encode(&self.store, crate::leadership::Leadership::Leader)
                    .await
                    .unwrap();
                let now = text
                    .lines()
                    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                    .and_then(|v| v.parse::<f64>().ok());
                if now == Some(value) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for {series} {value}; last {now:?} in:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        async fn container_gone(&self, id: &str) {
            self.engine
                .until("the container to be removed", |e| {
                    e.container(id).is_none().then_some(())
                })
                .await;
        }

        /// The preparation container running with its input, once there is one.
        async fn preparation(&self) -> crate::fake_runtime::FakeContainer {
            self.engine
                .until("a preparation container to run", |e| {
                    e.containers_labelled(LABEL_PREPARATION)
                        .into_iter()
                        .find(|c| c.running && c.input.is_some())
                })
                .await
        }

        /// After a failed build of `first`'s environment: the job that
        /// waited for it fails too, naming `first`, the preparation is gone,
        /// nothing was stored and nothing was built again.
        async fn build_failed_for_both(&self, first: JobId, waiting: JobId, preparation: &str) {
            let waited = self.ended(waiting).await;
            assert_eq!(waited.success, Some(false));
            assert!(
                waited
                    .failure_reason
                    .unwrap_or_default()
                    .contains(&first.to_string()),
                "names the job whose install failed"
            );
            self.container_gone(preparation).await;
            assert_eq!(self.engine.commits(), 0);
            assert!(self.environments().is_empty());
            assert_eq!(
                self.engine.created(),
                1,
                "not built again for the waiting job"
            );
        }

        /// The volume removals asked of the engine, once there are `n`.
        async fn volume_removals(&self, n: usize) -> Vec<(String, Removal)> {
            self.engine
                .until("the pip cache's removal to be asked for", |e| {
                    let removals = e.volume_removals();
                    (removals.len() >= n).then_some(removals)
                })
                .await
        }

        /// The environment images the engine lists.
        fn environments(&self) -> Vec<ImageInfo> {
            self.engine
                .images_labelled(crate::environment_cache::LABEL_ENVIRONMENT_KEY)
        }
    }

    const TEST_OK: (&str, &str) = ("test_ok.py", "def test_ok():\n    pass\n");
    const NEEDS_ATTRS: (&str, &str) = ("requirements.txt", "attrs\n");

    /// The files of a tar, by path.
    fn tar_files(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        let mut paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        paths.sort();
        paths
    }

    fn tar_text(tar: &[u8], path: &str) -> String {
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().display().to_string() == path {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
                return text;
            }
        }
        panic!("no {path} in the tar")
    }

    fn spec_of(installation: &str, job: JobId) -> ContainerSpec {
        ContainerSpec {
            image: IMAGE.into(),
            labels: [
                (LABEL_JOB.to_string(), job.to_string()),
                (LABEL_INSTALLATION.to_string(), installation.to_string()),
            ]
            .into(),
            ..ContainerSpec::default()
        }
    }

    #[tokio::test]
    async fn a_job_gets_its_project_on_stdin_and_ends_with_its_exit_code() {
        let h = Harness::start(|_| {}).await;
        let (passing, failing) = (h.submit().await, h.submit().await);
        for (job, code) in [(passing, 0), (failing, 1)] {
            let id = h.running(job).await;
            let input = h.engine.container(&id).and_then(|c| c.input).unwrap();
            assert!(
                tar_has_file(&input, "test_ok.py"),
                "the project is the input"
            );
            h.engine.print(&id, "collected 1 item\n");
            h.engine.exit(&id, code);
            let ended = h.ended(job).await;
            assert_eq!(ended.status, JobStatus::Completed);
            assert_eq!(ended.exit_code, Some(code));
            assert_eq!(ended.success, Some(code == 0));
            assert_eq!(h.output(job).await, "collected 1 item\n");
            h.container_gone(&id).await;
        }
    }

    #[tokio::test]
    async fn jobs_run_on_the_python_they_ask_for() {
        let h = Harness::start(|_| {}).await;
        for python in ["3.11", "3.13"] {
            h.engine.add_image(ImageInfo {
                id: format!("sha256:{python}"),
                tags: vec![format!("runner:{python}")],
                labels: HashMap::from([(LABEL_PYTHON.to_string(), python.to_string())]),
                created: 0,
                size: 0,
            });
        }
        let test = ("test_ok.py", "def test_ok():\n    pass\n");
        let by_spec = h
            .submit_as(
                h.user,
                &[
                    test,
                    ("pyproject.toml", "[project]\nrequires-python = '>=3.12'\n"),
                ],
            )
            .await;
        let by_flag = h
            .submit_with(
                h.user,
                &[test],
                JobOptions {
                    python: Some("3.11".parse().unwrap()),
                    ..JobOptions::default()
                },
            )
            .await;
        let unasked = h.submit().await;
        let unsatisfiable = h
            .submit_as(
                h.user,
                &[test, ("setup.cfg", "[options]\npython_requires = >=3.14\n")],
            )
            .await;

        for (job, image, python) in [
            (by_spec, "runner:3.13", Some("3.13")),
            (by_flag, "runner:3.11", Some("3.11")),
            // The base image is unlabelled here: its Python is unknown.
            (unasked, IMAGE, None),
        ] {
            let container = h.running_container(job).await;
            assert_eq!(h.engine.container(&container).unwrap().spec.image, image);
            let running = h
                .job_until(job, "running", |j| j.status == JobStatus::Running)
                .await;
            assert_eq!(running.image.as_deref(), Some(image));
            assert_eq!(running.python.map(|p| p.to_string()).as_deref(), python);
        }
        let ended = h.ended(unsatisfiable).await;
        assert_eq!(ended.success, Some(false));
        assert!(h.engine.container_of(unsatisfiable).is_none());
        let reason = ended.failure_reason.unwrap_or_default();
        assert!(
            reason.contains("requires-python \">=3.14\"")
                && reason.contains("it offers: 3.11, 3.13"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_job_that_cannot_run_ends_with_the_reason() {
        let h = Harness::start(|c| c.image = "missing:latest".into()).await;
        let job = h.submit().await;
        let ended = h.ended(job).await;
        assert_eq!(ended.success, Some(false));
        let reason = ended.failure_reason.unwrap_or_default();
        assert!(
            reason.contains("image missing:latest not found"),
            "{reason}"
        );
        assert!(
            h.output(job).await.contains(&reason),
            "the reason is the last line"
        );
        assert_eq!(h.engine.created(), 0);
    }

    #[tokio::test]
    async fn a_job_ends_with_its_test_report_stored_and_a_bad_report_changes_nothing() {
        use ci_common::test_results::{JobReport, TestOutcome};
        let h = Harness::start(|_| {}).await;
        let good = br#"<testsuites><testsuite><testcase classname="t" name="test_a" file="t.py" time="0.5"/><testcase classname="t" name="test_b" file="t.py" time="0.25"><failure message="boom">trace</failure></testcase></testsuite></testsuites>"#;
        let cases: [(Option<&[u8]>, i64); 3] = [
            (Some(good), 1),
            (Some(b"<!DOCTYPE x [<!ENTITY a 'a'>]><testsuites/>"), 0),
            (None, 0),
        ];
        let mut jobs = Vec::new();
        for (report, code) in cases {
            let job = h.submit().await;
            let id = h.running(job).await;
            if let Some(report) = report {
                h.engine
                    .write_file(&id, crate::junit_report::REPORT_PATH, report);
            }
            h.engine.exit(&id, code);
            let ended = h.ended(job).await;
            assert_eq!(ended.exit_code, Some(code), "the exit code decides");
            jobs.push(job);
        }
        let Some(JobReport::Cases(cases)) = h.store.job_report(jobs[0], &[]).await.unwrap() else {
            panic!("the cases are stored before the job ends");
        };
        let outcomes: Vec<_> = cases.iter().map(|c| (c.id.as_str(), c.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("t.py::test_a", TestOutcome::Passed),
                ("t.py::test_b", TestOutcome::Failed)
            ]
        );
        for (job, why) in [(jobs[1], "DTD"), (jobs[2], "no test report")] {
            match h.store.job_report(job, &[]).await.unwrap() {
                Some(JobReport::Missing { reason }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_job_that_never_ran_says_why_it_has_no_test_results() {
        use ci_common::test_results::JobReport;
        let h = Harness::start(|c| c.image = "missing:latest".into()).await;
        let job = h.submit().await;
        h.ended(job).await;
        match h.store.job_report(job, &[]).await.unwrap() {
            Some(JobReport::Missing { reason }) => {
                assert!(reason.starts_with("No test results: "), "{reason}");
                assert!(
                    reason.contains("image missing:latest not found"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_new_controller_adopts_a_running_container_and_resumes_after_the_stored_output() {
        let mut h = Harness::start(|_| {}).await;
        let job = h.submit().await;
        let id = h.running_container(job).await;
        h.engine.print(&id, "one\n");
        h.output_until(job, "one\n").await;
        h.stop_controller().await;
        assert!(
            h.engine.container(&id).is_some_and(|c| c.running),
            "left running"
        );

        h.engine.print(&id, "two\n");
        h.start_controller();
        h.output_until(job, "two\n").await;
        h.engine.exit(&id, 0);
        let ended = h.ended(job).await;
        assert_eq!(ended.success, Some(true));
        assert_eq!(
            h.output(job).await,
            "one\ntwo\n",
            "nothing lost, nothing twice"
        );
        assert_eq!(h.engine.created(), 1, "adopted, not started again");
    }

    #[tokio::test]
    async fn an_exited_container_found_on_start_up_is_drained_then_completed() {
        let mut h = Harness::start(|_| {}).await;
        let job = h.submit().await;
        let id = h.running(job).await;
        h.stop_controller().await;
        h.engine.print(&id, "printed while no controller ran\n");
        h.engine.exit(&id, 1);
        h.start_controller();
        let ended = h.ended(job).await;
        assert_eq!(ended.exit_code, Some(1));
        assert_eq!(h.output(job).await, "printed while no controller ran\n");
    }

    #[tokio::test]
    async fn orphans_are_removed_and_other_installations_left_alone() {
        let h = Harness::start(|_| {}).await;
        let theirs = h.engine.plant(spec_of("other-", JobId::random()), true);
        let orphan = h.engine.plant(spec_of("fake-", JobId::random()), false);
        h.container_gone(&orphan).await;
        // The pass that removed the orphan saw the other one too.
        assert!(h.engine.container(&theirs).is_some_and(|c| c.running));
    }

    #[tokio::test]
    async fn cancellation_stops_the_container_and_keeps_its_output() {
        let h = Harness::start(|_| {}).await;
        let job = h.submit().await;
        let id = h.running_container(job).await;
        h.engine.print(&id, "before the cancel\n");
        h.output_until(job, "before the cancel").await;
        h.store.request_cancel(job).await.unwrap();
        let ended = h.ended(job).await;
        assert_eq!(ended.status, JobStatus::Cancelled);
        assert_eq!(h.output(job).await, "before the cancel\n");
        h.container_gone(&id).await;
    }

    /// A job's end is counted before its container is removed, so once the
    /// container is gone its count is there to read.
    #[tokio::test]
    async fn ended_jobs_are_counted_by_outcome_and_started_ones_timed() {
        let h = Harness::start(|_| {}).await;
        let jobs = [h.submit().await, h.submit().await, h.submit().await];
        for (n, job) in jobs.into_iter().enumerate() {
            let id = h.running(job).await;
            h.engine.print(&id, "0123456789\n");
            h.output_until(job, "0123456789").await;
            match n {
                0 => h.engine.exit(&id, 0),
                1 => h.engine.exit(&id, 1),
                _ => {
                    h.store.request_cancel(job).await.unwrap();
                }
            }
            h.ended(job).await;
            h.container_gone(&id).await;
        }
        assert_eq!(
            h.metric(r#"ci_jobs_finished_total{outcome="passed"}"#)
                .await,
            1.0
        );
        assert_eq!(
            h.metric(r#"ci_jobs_finished_total{outcome="failed"}"#)
                .await,
            1.0
        );
        assert_eq!(
            h.metric(r#"ci_jobs_finished_total{outcome="cancelled"}"#)
                .await,
            1.0
        );
        assert_eq!(h.metric("ci_jobs_queue_wait_seconds_count").await, 3.0);
        assert_eq!(h.metric("ci_jobs_duration_seconds_count").await, 3.0);
        assert_eq!(h.metric("ci_jobs_output_stored_bytes_total").await, 33.0);
        assert_eq!(h.metric(r#"ci_jobs{status="completed"}"#).await, 2.0);
        assert_eq!(h.metric(r#"ci_jobs{status="cancelled"}"#).await, 1.0);
        assert_eq!(h.metric(r#"ci_jobs{status="queued"}"#).await, 0.0);
        assert_eq!(h.metric("ci_controller_capacity_jobs").await, 4.0);
        assert!(
            h.metric("ci_controller_reconcile_duration_seconds_count")
                .await
                >= 3.0
        );
    }

    #[tokio::test]
    async fn a_queued_job_cancelled_never_starts() {
        let h = Harness::start(|c| c.max_concurrent_jobs = 1).await;
        let first = h.submit().await;
        let first_container = h.running_container(first).await;
        let second = h.submit().await;
        h.store.request_cancel(second).await.unwrap();
        assert_eq!(h.ended(second).await.status, JobStatus::Cancelled);
        h.engine.exit(&first_container, 0);
        h.ended(first).await;
        assert_eq!(h.engine.created(), 1);
    }

    #[tokio::test]
    async fn a_job_over_its_time_limit_is_stopped_and_fails() {
        let h = Harness::start(|c| c.job_timeout = Duration::ZERO).await;
        let job = h.submit().await;
        // With no time at all the container may be stopped before a test
        // could see it run: wait for the end, then look at what was made.
        let ended = h.ended(job).await;
        assert_eq!(ended.status, JobStatus::Completed);
        assert_eq!(ended.success, Some(false));
        assert_eq!(
            ended.failure_reason.as_deref(),
            Some("Job timed out after 0 seconds")
        );
        assert_eq!(h.engine.created(), 1, "the job's container was made");
        h.engine
            .until("the job's container to be removed", |e| {
                e.container_of(job).is_none().then_some(())
            })
            .await;
        assert_eq!(
            h.metric(r#"ci_jobs_finished_total{outcome="timed_out"}"#)
                .await,
            1.0
        );
    }

    /// The disk limit of the fake-runtime tests, measured often.
    fn small_disk(c: &mut ControllerConfig) {
        c.disk.max_bytes = 1024;
        c.disk.every = Duration::from_millis(20);
    }

    #[tokio::test]
    async fn a_job_measured_over_its_disk_limit_is_stopped_and_fails_with_the_reason() {
        use crate::runtime::DiskUse;
        let h = Harness::start(small_disk).await;
        let job = h.submit().await;
        let id = h.running(job).await;
        h.engine.print(&id, "writing\n");
        h.output_until(job, "writing").await;
        // Neither alone is over the limit: together they are.
        h.engine.set_disk_use(
            &id,
            DiskUse {
                writable_layer: 600,
                own_volumes: 600,
                caches: 0,
            },
        );
        let ended = h.ended(job).await;
        let reason = "Job used more than 1.0 KiB of disk (limit CI_JOB_DISK_LIMIT)";
        assert_eq!(ended.status, JobStatus::Completed);
        assert_eq!(ended.success, Some(false));
        assert_eq!(ended.failure_reason.as_deref(), Some(reason));
        let output = h.output(job).await;
        assert!(output.starts_with("writing\n"), "{output}");
        assert!(output.contains(reason), "the reason is shown: {output}");
        h.container_gone(&id).await;
        assert_eq!(h.engine.created(), 1);
        assert_eq!(
            h.metric(r#"ci_jobs_finished_total{outcome="error"}"#).await,
            1.0
        );
    }

    /// A job of `h.user` with requirements, running from its environment
    /// (built first if need be), with its user's pip cache mounted.
    async fn running_with_requirements(h: &Harness) -> (JobId, String) {
        let job = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        if h.environments().is_empty() {
            let preparation = h.preparation().await;
            h.engine.exit(&preparation.id, 0);
        }
        let id = h.running(job).await;
        let cache = h.config.pip_cache_volume_for(h.user);
        let spec = h.engine.container(&id).unwrap().spec;
        assert!(
            spec.volumes.iter().any(|v| v.name == cache),
            "the job mounts its user's pip cache: {spec:?}"
        );
        (job, id)
    }

    /// What the engine measures of a job whose writes are `own` bytes and
    /// whose user's pip cache holds `cache`.
    fn disk_use(own: u64, cache: u64) -> crate::runtime::DiskUse {
        crate::runtime::DiskUse {
            writable_layer: 0,
            own_volumes: own,
            caches: cache,
        }
    }

    #[tokio::test]
    async fn a_pip_cache_that_takes_its_job_over_the_disk_limit_is_emptied_after_the_job() {
        let h = Harness::start(small_disk).await;
        let (job, id) = running_with_requirements(&h).await;
        // The job alone is within the limit; with its cache it is not.
        h.engine.set_disk_use(&id, disk_use(100, 1000));
        let ended = h.ended(job).await;
        assert_eq!(
            ended.failure_reason.as_deref(),
            Some("Job used more than 1.0 KiB of disk (limit CI_JOB_DISK_LIMIT)")
        );
        let cache = h.config.pip_cache_volume_for(h.user).unwrap();
        // Removed, not refused: the job's container had gone first.
        let removals = h.volume_removals(1).await;
        assert_eq!(removals, [(cache, Removal::Removed)]);
    }

    #[tokio::test]
    async fn a_small_pip_cache_beside_a_job_over_on_its_own_writes_is_kept() {
        let h = Harness::start(small_disk).await;
        let (first, id) = running_with_requirements(&h).await;
        h.engine.set_disk_use(&id, disk_use(2000, 10));
        assert_eq!(h.ended(first).await.success, Some(false));
        h.container_gone(&id).await;
        // The user's next job finds the cache grown past the limit on its
        // own: that one is emptied, once.
        let (second, id) = running_with_requirements(&h).await;
        h.engine.set_disk_use(&id, disk_use(0, 2000));
        assert_eq!(h.ended(second).await.success, Some(false));
        let removals = h.volume_removals(1).await;
        let cache = h.config.pip_cache_volume_for(h.user).unwrap();
        assert_eq!(removals, [(cache, Removal::Removed)], "not after the first");
    }

    #[tokio::test]
    async fn a_pip_cache_another_job_mounts_is_kept_until_that_job_is_over_too() {
        let h = Harness::start(small_disk).await;
        let (first, first_id) = running_with_requirements(&h).await;
        let (second, second_id) = running_with_requirements(&h).await;
        h.engine.set_disk_use(&first_id, disk_use(0, 2000));
        assert_eq!(h.ended(first).await.success, Some(false));
        let cache = h.config.pip_cache_volume_for(h.user).unwrap();
        let refused = h.volume_removals(1).await;
        assert_eq!(refused, [(cache.clone(), Removal::InUse)]);
        assert!(h.engine.container(&second_id).is_some_and(|c| c.running));
        // Measured with the same cache, the second is over too, and its end
        // empties it.
        h.engine.set_disk_use(&second_id, disk_use(0, 2000));
        assert_eq!(h.ended(second).await.success, Some(false));
        let removals = h.volume_removals(2).await;
        assert_eq!(removals[1], (cache, Removal::Removed));
    }

    #[tokio::test]
    async fn a_failed_disk_measurement_leaves_the_job_running() {
        use crate::runtime::DiskUse;
        let h = Harness::start(small_disk).await;
        let job = h.submit().await;
        let id = h.running(job).await;
        h.engine.fail_disk_use(true);
        // What the engine would report, if it answered.
        h.engine.set_disk_use(
            &id,
            DiskUse {
                writable_layer: 1 << 30,
                own_volumes: 0,
                caches: 0,
            },
        );
        let before = h.engine.disk_measurements();
        h.engine
            .until("three failed measurements", |e| {
                (e.disk_measurements() >= before + 3).then_some(())
            })
            .await;
        assert!(h.engine.container(&id).is_some_and(|c| c.running));
        // A verdict would outlive the engine's recovery (it is kept per
        // container): measured under the limit now, the job passes.
        h.engine.set_disk_use(&id, DiskUse::default());
        h.engine.fail_disk_use(false);
        let before = h.engine.disk_measurements();
        h.engine
            .until("two more measurements", |e| {
                (e.disk_measurements() >= before + 2).then_some(())
            })
            .await;
        h.engine.exit(&id, 0);
        let ended = h.ended(job).await;
        assert_eq!(ended.success, Some(true), "{ended:?}");
        assert_eq!(ended.failure_reason, None);
    }

    #[tokio::test]
    async fn a_job_whose_container_vanishes_fails_with_the_reason() {
        let h = Harness::start(|_| {}).await;
        let job = h.submit().await;
        let id = h.running(job).await;
        h.engine.print(&id, "started\n");
        h.output_until(job, "started").await;
        h.engine.vanish(&id);
        let ended = h.ended(job).await;
        assert_eq!(ended.success, Some(false));
        let reason = ended.failure_reason.unwrap_or_default();
        assert!(reason.contains("disappeared"), "{reason}");
    }

    #[tokio::test]
    async fn jobs_beyond_capacity_wait_queued_and_users_take_turns() {
        let h = Harness::start(|c| c.max_concurrent_jobs = 1).await;
        let other = h.store.create_user("U", "u@example.com").await.unwrap().id;
        let files = [("test_ok.py", "def test_ok():\n    pass\n")];
        let mine = [h.submit().await, h.submit().await];
        let theirs = h.submit_as(other, &files).await;
        // My first job runs; the other user's goes before my second.
        for job in [mine[0], theirs, mine[1]] {
            let id = h.running_container(job).await;
            for waiting in mine.iter().chain([&theirs]).filter(|j| **j != job) {
                let state = h.store.get_job(*waiting).await.unwrap().unwrap().status;
                assert_ne!(state, JobStatus::Running, "one job at a time");
            }
            h.engine.exit(&id, 0);
            h.ended(job).await;
        }
        assert_eq!(h.engine.max_running(), 1);
    }

    #[tokio::test]
    async fn a_miss_prepares_the_environment_from_the_requirements_alone_then_jobs_start_from_it() {
        let h = Harness::start(|_| {}).await;
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        let input = preparation.input.clone().unwrap();
        assert_eq!(tar_files(&input), ["requirements.txt"], "never the project");
        assert_eq!(tar_text(&input, "requirements.txt"), "attrs\n");
        assert_eq!(preparation.spec.image, IMAGE);
        // What the environment inherits: no Python of its own to offer.
        assert_eq!(preparation.spec.labels[LABEL_PYTHON], "");
        assert!(preparation.spec.cmd[2].contains("pip install"));
        // A shared environment's downloads come from no user's cache.
        assert_eq!(
            preparation.spec.volumes[0].name.as_deref(),
            h.config.shared_pip_cache_volume().as_deref()
        );
        // pip's output is the job's, live: while it is still queued.
        h.engine.print(&preparation.id, "Collecting attrs\n");
        h.output_until(first, "Collecting attrs").await;
        assert_eq!(
            h.store.get_job(first).await.unwrap().unwrap().status,
            JobStatus::Queued
        );
        assert!(
            h.environments().is_empty(),
            "nothing stored before pip ends"
        );
        h.engine.exit(&preparation.id, 0);

        let container = h.running_container(first).await;
        let spec = h.engine.container(&container).unwrap().spec;
        let images = h.environments();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(spec.image, image.id, "the job starts from its environment");
        assert!(spec.read_only_rootfs, "nothing left to install");
        assert!(!spec.cmd[2].contains("pip install"));
        for label in [
            crate::environment_cache::LABEL_ENVIRONMENT_KEY,
            crate::environment_cache::LABEL_BUILT_AT,
            LABEL_INSTALLATION,
        ] {
            assert!(image.labels.contains_key(label), "{label}: {image:?}");
        }
        assert!(
            h.engine.container(&preparation.id).is_some(),
            "removed once the job has ended, not while it runs"
        );
        h.engine.exit(&container, 0);
        assert_eq!(h.ended(first).await.success, Some(true));
        h.container_gone(&preparation.id).await;

        let second = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let container = h.running_container(second).await;
        assert_eq!(h.engine.container(&container).unwrap().spec.image, image.id);
        let output = h.output(second).await;
        assert_eq!(output.lines().count(), 1, "one line says so: {output}");
        assert!(output.contains("built "), "{output}");
        h.engine.exit(&container, 0);
        assert_eq!(h.ended(second).await.success, Some(true));
        assert_eq!(h.engine.commits(), 1, "built once");
        assert_eq!(h.engine.created(), 3, "one preparation, two jobs");
        assert_eq!(h.metric("ci_env_cache_misses_total").await, 1.0);
        assert_eq!(h.metric("ci_env_cache_hits_total").await, 1.0);
        assert_eq!(
            h.metric(r#"ci_env_cache_builds_total{result="succeeded"}"#)
                .await,
            1.0
        );
    }

    #[tokio::test]
    async fn two_jobs_with_one_new_key_build_it_once() {
        let h = Harness::start(|_| {}).await;
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        let second = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        h.output_until(second, &first.to_string()).await;
        assert_eq!(h.engine.containers_labelled(LABEL_PREPARATION).len(), 1);
        h.engine.exit(&preparation.id, 0);
        let image = h
            .engine
            .until("the environment", |e| {
                e.images_labelled(crate::environment_cache::LABEL_ENVIRONMENT_KEY)
                    .first()
                    .map(|i| i.id.clone())
            })
            .await;
        for job in [first, second] {
            let container = h.running_container(job).await;
            assert_eq!(h.engine.container(&container).unwrap().spec.image, image);
            h.engine.exit(&container, 0);
            assert_eq!(h.ended(job).await.success, Some(true));
        }
        assert_eq!(h.engine.commits(), 1);
        assert_eq!(h.engine.created(), 3, "one preparation, two jobs");
        // The one that waited for the build reused it.
        assert_eq!(h.metric("ci_env_cache_misses_total").await, 1.0);
        assert_eq!(h.metric("ci_env_cache_hits_total").await, 1.0);
    }

    #[tokio::test]
    async fn a_failed_install_ends_its_jobs_and_stores_nothing() {
        let h = Harness::start(|_| {}).await;
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        let waiting = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        h.output_until(waiting, &first.to_string()).await;
        h.engine
            .print(&preparation.id, "ERROR: No matching distribution found\n");
        h.engine.exit(&preparation.id, 1);
        let ended = h.ended(first).await;
        assert_eq!((ended.success, ended.exit_code), (Some(false), Some(1)));
        assert!(h.output(first).await.contains("No matching distribution"));
        let reason = ended.failure_reason.unwrap_or_default();
        assert!(reason.contains("no environment was stored"), "{reason}");
        h.build_failed_for_both(first, waiting, &preparation.id)
            .await;
        assert_eq!(
            h.metric(r#"ci_env_cache_builds_total{result="failed"}"#)
                .await,
            1.0
        );
        assert_eq!(h.metric("ci_env_cache_hits_total").await, 0.0);
    }

    #[tokio::test]
    async fn a_preparation_growing_past_the_environment_cache_is_stopped_and_stores_nothing() {
        let h = Harness::start(|c| {
            small_disk(c);
            c.environments.max_bytes = 4096;
        })
        .await;
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        let waiting = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        h.output_until(waiting, &first.to_string()).await;
        h.engine.print(&preparation.id, "Collecting attrs\n");
        // A job's limit (1 KiB here) is not a preparation's: under the
        // cache's size it goes on.
        h.engine.set_disk_use(
            &preparation.id,
            crate::runtime::DiskUse {
                writable_layer: 4000,
                own_volumes: 0,
                caches: 1 << 20,
            },
        );
        let before = h.engine.disk_measurements();
        h.engine
            .until("two measurements", |e| {
                (e.disk_measurements() >= before + 2).then_some(())
            })
            .await;
        assert!(h
            .engine
            .container(&preparation.id)
            .is_some_and(|c| c.running));
        h.engine.set_disk_use(
            &preparation.id,
            crate::runtime::DiskUse {
                writable_layer: 5000,
                own_volumes: 0,
                caches: 0,
            },
        );
        let ended = h.ended(first).await;
        assert_eq!(ended.success, Some(false));
        assert_eq!(
            ended.failure_reason.as_deref(),
            Some(
                "The environment grew past 4.0 KiB, the size of the whole environment cache \
                 (limit CI_ENV_CACHE_BYTES); no environment was stored"
            )
        );
        assert!(h.output(first).await.contains("Collecting attrs"));
        h.build_failed_for_both(first, waiting, &preparation.id)
            .await;
    }

    #[tokio::test]
    async fn the_shared_pip_cache_is_emptied_once_it_outgrows_the_environment_cache() {
        let h = Harness::start(|c| c.environments.max_bytes = 1 << 20).await;
        let shared = h.config.shared_pip_cache_volume().unwrap();
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        // What this build downloaded took the cache past the limit.
        h.engine.set_volume_size(&shared, 2 << 20);
        h.engine.exit(&preparation.id, 0);
        let container = h.running_container(first).await;
        h.engine.exit(&container, 0);
        assert_eq!(h.ended(first).await.success, Some(true));
        // The build's tidying, once the job has ended: the preparation
        // container goes first, so the engine no longer keeps the volume.
        assert_eq!(h.volume_removals(1).await, [(shared, Removal::Removed)]);
        assert_eq!(h.environments().len(), 1, "the environment stays");
    }

    #[tokio::test]
    async fn fresh_env_builds_again_and_the_older_build_goes() {
        let h = Harness::start(|_| {}).await;
        for fresh_env in [false, true] {
            let options = JobOptions {
                fresh_env,
                ..JobOptions::default()
            };
            let job = h
                .submit_with(h.user, &[TEST_OK, NEEDS_ATTRS], options)
                .await;
            let preparation = h.preparation().await;
            h.engine.exit(&preparation.id, 0);
            let container = h.running_container(job).await;
            h.engine.exit(&container, 0);
            assert_eq!(h.ended(job).await.success, Some(true));
            // Until its container is gone, the engine keeps the image.
            h.container_gone(&container).await;
            h.container_gone(&preparation.id).await;
        }
        assert_eq!(h.engine.commits(), 2);
        h.engine
            .until("the older build to be removed", |e| {
                let images = e.images_labelled(crate::environment_cache::LABEL_ENVIRONMENT_KEY);
                (images.len() == 1 && images[0].id.ends_with("-2")).then_some(())
            })
            .await;
        h.metric_reaches(r#"ci_env_cache_evictions_total{reason="fresh_env"}"#, 1.0)
            .await;
        assert_eq!(h.metric("ci_env_cache_misses_total").await, 2.0);
        assert_eq!(
            h.metric(r#"ci_env_cache_builds_total{result="succeeded"}"#)
                .await,
            2.0
        );
    }

    #[tokio::test]
    async fn a_preparation_left_by_a_stopped_controller_is_removed_and_built_again() {
        let mut h = Harness::start(|_| {}).await;
        let job = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let left = h.preparation().await;
        h.stop_controller().await;
        assert!(h.engine.container(&left.id).is_some_and(|c| c.running));
        h.start_controller();
        h.container_gone(&left.id).await;
        let again = h.preparation().await;
        assert_ne!(again.id, left.id);
        h.engine.exit(&again.id, 0);
        let container = h.running_container(job).await;
        h.engine.exit(&container, 0);
        assert_eq!(h.ended(job).await.success, Some(true));
        assert_eq!(h.engine.commits(), 1, "the half one was never stored");
    }

    #[tokio::test]
    async fn a_job_cancelled_while_its_environment_is_prepared_stops_the_preparation() {
        let h = Harness::start(|_| {}).await;
        let job = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        h.store.request_cancel(job).await.unwrap();
        assert_eq!(h.ended(job).await.status, JobStatus::Cancelled);
        h.container_gone(&preparation.id).await;
        assert_eq!(h.engine.commits(), 0);
    }

    #[tokio::test]
    async fn local_entries_are_installed_in_the_job_and_their_metadata_in_the_environment() {
        let h = Harness::start(|_| {}).await;
        let pyproject = "[build-system]\nrequires = ['hatchling']\n[project]\nname = 'app'\ndependencies = ['attrs']\n";
        let job = h
            .submit_as(
                h.user,
                &[
                    TEST_OK,
                    ("requirements.txt", "-e .\n"),
                    ("pyproject.toml", pyproject),
                ],
            )
            .await;
        let preparation = h.preparation().await;
        let input = preparation.input.clone().unwrap();
        assert_eq!(tar_files(&input), ["requirements.txt"]);
        assert_eq!(tar_text(&input, "requirements.txt"), "hatchling\nattrs\n");
        // A local path makes the environment its user's.
        assert_eq!(
            preparation.spec.volumes[0].name,
            h.config.pip_cache_volume_for(h.user)
        );
        h.engine.exit(&preparation.id, 0);
        let container = h.running_container(job).await;
        let spec = h.engine.container(&container).unwrap().spec;
        assert!(!spec.read_only_rootfs, "the job installs its project");
        assert!(
            spec.cmd[2].contains("--no-build-isolation --no-deps -e '.'"),
            "{}",
            spec.cmd[2]
        );
        h.engine.exit(&container, 0);
        h.ended(job).await;
    }

    #[tokio::test]
    async fn the_least_recently_used_environment_goes_when_the_cache_is_full() {
        let h = Harness::start(|c| c.environments.max_bytes = 150).await;
        h.engine.set_commit_size(100);
        let mut built = Vec::new();
        for requirements in ["attrs\n", "six\n"] {
            let job = h
                .submit_as(h.user, &[TEST_OK, ("requirements.txt", requirements)])
                .await;
            let preparation = h.preparation().await;
            h.engine.exit(&preparation.id, 0);
            let container = h.running_container(job).await;
            built.push(h.engine.container(&container).unwrap().spec.image);
            h.engine.exit(&container, 0);
            h.ended(job).await;
            h.container_gone(&container).await;
            h.container_gone(&preparation.id).await;
        }
        h.engine
            .until("the older environment to be evicted", |e| {
                let ids: Vec<String> = e
                    .images_labelled(crate::environment_cache::LABEL_ENVIRONMENT_KEY)
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                (ids == [built[1].clone()]).then_some(())
            })
            .await;
        h.metric_reaches(r#"ci_env_cache_evictions_total{reason="size"}"#, 1.0)
            .await;
        h.metric_reaches("ci_env_cache_entries", 1.0).await;
    }

    #[tokio::test]
    async fn an_environment_past_its_age_is_built_again_and_never_removed_while_used() {
        let h = Harness::start(|c| c.environments.max_age = Duration::ZERO).await;
        let first = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let preparation = h.preparation().await;
        h.engine.exit(&preparation.id, 0);
        let running = h.running_container(first).await;
        let old = h.engine.container(&running).unwrap().spec.image;
        // Expired at once, but its job runs from it.
        let second = h.submit_as(h.user, &[TEST_OK, NEEDS_ATTRS]).await;
        let rebuild = h.preparation().await;
        h.engine.exit(&rebuild.id, 0);
        let container = h.running_container(second).await;
        let new = h.engine.container(&container).unwrap().spec.image;
        assert_ne!(new, old);
        assert_eq!(h.engine.commits(), 2);
        assert!(
            h.environments().iter().any(|i| i.id == old),
            "kept while a job runs from it"
        );
        for (job, id) in [(first, running), (second, container)] {
            h.engine.exit(&id, 0);
            assert_eq!(h.ended(job).await.success, Some(true));
        }
    }
}
