//! The bound on a job's disk use, in the manner of kubelet's
//! ephemeral-storage eviction: the engine here (overlay2 on extfs) has no
//! quota for a container's writable layer, and local volumes have no size,
//! so the controller measures what each running job has written (its
//! writable layer, its own volumes and its user's pip cache, through the
//! engine) every
//! [`DiskLimits::every`](crate::config::DiskLimits), and a job over the limit
//! is ended by the next pass, through the decision table, with that reason.
//!
//! The measuring runs as a task of its own beside the reconcile loop, one
//! engine call at a time: a pass only reads the last verdicts, and never
//! waits for the engine's walk of its disks. A measurement that fails or
//! takes too long changes no verdict, so an engine error never ends a job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ci_common::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::DiskLimits;
use crate::runtime::{ContainerRuntime, DiskUse};

/// A measurement taking longer than this is given up (and tried again next
/// round): an engine that slow is busy enough without another walk queued.
const MEASURE_PATIENCE: Duration = Duration::from_secs(60);

/// What the pass and the measuring task share: the running jobs' containers
/// to measure, and those found over the limit.
#[derive(Debug, Default)]
pub struct DiskWatch {
    board: Mutex<Board>,
}

#[derive(Debug, Default)]
struct Board {
    /// Running jobs' containers, by container id.
    running: HashMap<String, JobId>,
    /// Containers last measured over the limit, with that measurement. By
    /// container, not by job: a job started again in a new container starts
    /// from nothing.
    over: HashMap<String, DiskUse>,
}

impl DiskWatch {
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The running jobs' containers as this pass saw them; verdicts on
    /// containers no longer among them are forgotten.
    pub fn watch(&self, running: HashMap<String, JobId>) {
        let mut board = self.board();
        board.over.retain(|id, _| running.contains_key(id));
        board.running = running;
    }

    /// Whether the container was last measured over the limit.
    pub fn is_over(&self, container_id: &str) -> bool {
        self.board().over.contains_key(container_id)
    }

    /// The measurement that found the container over the limit.
    pub fn verdict(&self, container_id: &str) -> Option<DiskUse> {
        self.board().over.get(container_id).copied()
    }

    fn running(&self) -> HashMap<String, JobId> {
        self.board().running.clone()
    }

    /// Records a verdict; `true` when it is new.
    fn mark_over(&self, container_id: &str, used: DiskUse) -> bool {
        let mut board = self.board();
        if !board.running.contains_key(container_id) || board.over.contains_key(container_id) {
            return false;
        }
        board.over.insert(container_id.to_string(), used);
        true
    }
}

/// Measures the watched containers every `limits.every` until `shutdown`,
/// waking the reconciler (`wake`) for each job newly over `limits.max_bytes`.
pub async fn run(
    watch: Arc<DiskWatch>,
    runtime: Arc<dyn ContainerRuntime>,
    limits: DiskLimits,
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
        let running = watch.running();
        if running.is_empty() {
            continue;
        }
        let ids: Vec<String> = running.keys().cloned().collect();
        let measured = tokio::select! {
            measured = tokio::time::timeout(MEASURE_PATIENCE, runtime.disk_use(&ids)) => measured,
            _ = shutdown.cancelled() => return,
        };
        let measured = match measured {
            Ok(Ok(measured)) => measured,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, jobs = ids.len(), "cannot measure the jobs' disk use; no job is ended for it");
                continue;
            }
            Err(_) => {
                tracing::warn!(patience = ?MEASURE_PATIENCE, jobs = ids.len(), "measuring the jobs' disk use took too long; no job is ended for it");
                continue;
            }
        };
        for (container, used) in measured {
            let Some(&job_id) = running.get(&container) else {
                continue;
            };
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
        }
    }
}
