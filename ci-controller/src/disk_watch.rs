//! The bound on a job's disk use, in the manner of kubelet's
//! ephemeral-storage eviction: the engine here (overlay2 on extfs) has no
//! quota for a container's writable layer, and local volumes have no size,
//! so the controller measures what each running job has written (its
//! writable layer, its own volumes and its user's pip cache, through the
//! engine) every
//! [`DiskLimits::every`](crate::config::DiskLimits), and a job over the limit
//! is ended by the next pass, through the decision table, with that reason.
//! Preparation containers are measured too, while their builds watch them:
//! the environment one makes may grow no larger than the whole environment
//! cache (`CI_ENV_CACHE_BYTES`), which could not keep it anyway.
//!
//! The measuring runs as a task of its own beside the reconcile loop, one
//! engine call at a time: a pass only reads the last verdicts, and never
//! waits for the engine's walk of its disks. A measurement that fails or
//! takes too long changes no verdict, so an engine error never ends a job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ci_common::JobId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::DiskLimits;
use crate::runtime::{ContainerRuntime, DiskUse};

/// A measurement taking longer than this is given up (and tried again next
/// round): an engine that slow is busy enough without another walk queued.
const MEASURE_PATIENCE: Duration = Duration::from_secs(60);

/// What the pass, the builds and the measuring task share: the containers
/// to measure, and those found over their limit.
#[derive(Debug)]
pub struct DiskWatch {
    board: Mutex<Board>,
    /// Counts the verdicts, so that a build can wait for one on its
    /// preparation (see [`DiskWatch::preparation_over`]).
    verdicts: watch::Sender<u64>,
}

impl Default for DiskWatch {
    fn default() -> Self {
        DiskWatch {
            board: Mutex::default(),
            verdicts: watch::Sender::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Board {
    /// Running jobs' containers, by container id, as the last pass saw them.
    jobs: HashMap<String, JobId>,
    /// Running preparation containers, by container id, as their builds
    /// registered them (see [`DiskWatch::watch_preparation`]).
    preparations: HashMap<String, JobId>,
    /// Containers last measured over their limit, with that measurement. By
    /// container, not by job: a job started again in a new container starts
    /// from nothing.
    over: HashMap<String, DiskUse>,
}

impl Board {
    fn watched(&self, container_id: &str) -> bool {
        self.jobs.contains_key(container_id) || self.preparations.contains_key(container_id)
    }
}

/// Keeps a preparation container measured until dropped.
pub struct PreparationWatch {
    watch: Arc<DiskWatch>,
    container_id: String,
}

impl Drop for PreparationWatch {
    fn drop(&mut self) {
        let mut board = self.watch.board();
        board.preparations.remove(&self.container_id);
        board.over.remove(&self.container_id);
    }
}

impl DiskWatch {
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The running jobs' containers as this pass saw them; verdicts on
    /// containers no longer among them (nor preparations) are forgotten.
    pub fn watch(&self, running: HashMap<String, JobId>) {
        let mut board = self.board();
        board.jobs = running;
        let Board {
            jobs,
            preparations,
            over,
        } = &mut *board;
        over.retain(|id, _| jobs.contains_key(id) || preparations.contains_key(id));
    }

    /// Measures `job`'s preparation container from now on, against the
    /// environment cache's size, until the returned guard is dropped.
    pub fn watch_preparation(self: &Arc<Self>, container_id: &str, job: JobId) -> PreparationWatch {
        self.board()
            .preparations
            .insert(container_id.to_string(), job);
        PreparationWatch {
            watch: self.clone(),
            container_id: container_id.to_string(),
        }
    }

    /// Whether the container was last measured over its limit.
    pub fn is_over(&self, container_id: &str) -> bool {
        self.board().over.contains_key(container_id)
    }

    /// The measurement that found the container over its limit.
    pub fn verdict(&self, container_id: &str) -> Option<DiskUse> {
        self.board().over.get(container_id).copied()
    }

    /// Returns once the preparation container is measured over its limit.
    pub async fn preparation_over(&self, container_id: &str) {
        // Subscribed before the look, so a verdict in between is not missed.
        let mut verdicts = self.verdicts.subscribe();
        while !self.is_over(container_id) {
            if verdicts.changed().await.is_err() {
                // Cannot happen while `self` holds the sender.
                return std::future::pending().await;
            }
        }
    }

    /// The containers to measure: jobs' and preparations'.
    fn watched(&self) -> (HashMap<String, JobId>, HashMap<String, JobId>) {
        let board = self.board();
        (board.jobs.clone(), board.preparations.clone())
    }

    /// Records a verdict; `true` when it is new.
    fn mark_over(&self, container_id: &str, used: DiskUse) -> bool {
        let mut board = self.board();
        if !board.watched(container_id) || board.over.contains_key(container_id) {
            return false;
        }
        board.over.insert(container_id.to_string(), used);
        drop(board);
        self.verdicts.send_modify(|n| *n += 1);
        true
    }
}

/// Measures the watched containers every `limits.every` until `shutdown`:
/// a job over `limits.max_bytes` (everything it can fill, its user's pip
/// cache included) wakes the reconciler (`wake`), which ends it; a
/// preparation whose writable layer (the environment it is making) is over
/// `preparation_max_bytes` (the size of the whole environment cache, which
/// could not keep it) wakes its build, which stops it.
pub async fn run(
    watch: Arc<DiskWatch>,
    runtime: Arc<dyn ContainerRuntime>,
    limits: DiskLimits,
    preparation_max_bytes: u64,
    wake: mpsc::UnboundedSender<JobId>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(limits.every);
    // One measurement at a time: a slow one delays the next, never doubles it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let (jobs, preparations) = watch.watched();
        if jobs.is_empty() && preparations.is_empty() {
            continue;
        }
        let ids: Vec<String> = jobs.keys().chain(preparations.keys()).cloned().collect();
        let measured = tokio::select! {
            measured = tokio::time::timeout(MEASURE_PATIENCE, runtime.disk_use(&ids)) => measured,
            _ = shutdown.cancelled() => return,
        };
        let measured = match measured {
            Ok(Ok(measured)) => measured,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, containers = ids.len(), "cannot measure the jobs' disk use; no job is ended for it");
                continue;
            }
            Err(_) => {
                tracing::warn!(patience = ?MEASURE_PATIENCE, containers = ids.len(), "measuring the jobs' disk use took too long; no job is ended for it");
                continue;
            }
        };
        for (container, used) in measured {
            if let Some(&job_id) = jobs.get(&container) {
                if used.total() > limits.max_bytes && watch.mark_over(&container, used) {
                    let span = tracing::info_span!("job", job_id = %job_id);
                    span.in_scope(|| {
                        tracing::warn!(
                            container = %container,
                            writable_layer = used.writable_layer,
                            own_volumes = used.own_volumes,
                            pip_cache = used.caches,
                            limit = limits.max_bytes,
                            "job over its disk limit; ending it"
                        );
                    });
                    // A closed channel: the reconciler is gone, and so is the need.
                    let _ = wake.send(job_id);
                }
            } else if let Some(&job_id) = preparations.get(&container) {
                if used.writable_layer > preparation_max_bytes && watch.mark_over(&container, used)
                {
                    let span = tracing::info_span!("job", job_id = %job_id);
                    span.in_scope(|| {
                        tracing::warn!(
                            container = %container,
                            writable_layer = used.writable_layer,
                            limit = preparation_max_bytes,
                            "environment larger than the environment cache; stopping its preparation"
                        );
                    });
                }
            }
        }
    }
}
