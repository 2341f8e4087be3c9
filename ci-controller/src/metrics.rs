//! The controller's Prometheus metrics, served by the status listener's
//! `GET /metrics`.
//!
//! Counters and histograms are kept in this process as things happen (a job
//! starts, ends, prints). The gauges of the whole installation (jobs by
//! status, the oldest queued job's age) are read from the database when
//! Prometheus scrapes, with [`Store::job_census`]: a standby controller then
//! shows them as truly as the leader, and the reconcile pass pays nothing for
//! them. No label holds a job id.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ci_common::{Job, JobStatus};
use ci_persistence::{JobOutcome, Reaped, Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::leadership::Leadership;

/// How a dependency environment's build ended, as
/// `ci_env_cache_builds_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildResult {
    /// pip succeeded and the image was stored.
    Succeeded,
    /// pip failed or ran out of time, or the engine could not create, run
    /// or store the preparation.
    Failed,
}

impl BuildResult {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildResult::Succeeded => "succeeded",
            BuildResult::Failed => "failed",
        }
    }
}

/// Why an environment image was removed, as
/// `ci_env_cache_evictions_total{reason}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionReason {
    /// The least recently used, removed to keep within `CI_ENV_CACHE_BYTES`.
    Size,
    /// Built longer ago than `CI_ENV_MAX_AGE`.
    Age,
    /// An older build of a key that was built again, which only a
    /// `--fresh-env` job does while the older one is still young enough.
    FreshEnv,
}

impl EvictionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Size => "size",
            EvictionReason::Age => "age",
            EvictionReason::FreshEnv => "fresh_env",
        }
    }
}

/// How a job ended, as `ci_jobs_finished_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Its tests ran and passed (exit code 0).
    Passed,
    /// Its tests ran and did not pass (pytest's or pip's non-zero exit).
    Failed,
    /// It could not run or finish: no image, a bad archive, its container
    /// lost, killed for memory or by a signal.
    Error,
    /// Its owner cancelled it.
    Cancelled,
    /// It ran past the job time limit.
    TimedOut,
}

impl Finished {
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Passed => "passed",
            Finished::Failed => "failed",
            Finished::Error => "error",
            Finished::Cancelled => "cancelled",
            Finished::TimedOut => "timed_out",
        }
    }

    /// The label of a job that ended with `outcome`; a time-out is known to
    /// the caller, not to the outcome (it is a failure with a reason).
    pub fn of(outcome: &JobOutcome, timed_out: bool) -> Finished {
        if timed_out {
            return Finished::TimedOut;
        }
        match (outcome.status, outcome.exit_code, &outcome.reason) {
            (JobStatus::Cancelled, _, _) => Finished::Cancelled,
            (_, _, Some(_)) => Finished::Error,
            (_, Some(0), None) => Finished::Passed,
            (_, Some(_), None) => Finished::Failed,
            (_, None, None) => Finished::Error,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// Queue-wait buckets: 10 ms (an idle controller starts a job at once) to
/// 30 min (a queue behind a full machine), about ×2.5 apart.
pub const QUEUE_WAIT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0,
];

/// Job run-time buckets: 1 s to the default one-hour-ish time limits.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Reconcile-pass buckets: 1 ms to 5 s.
const PASS_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Reaper-round buckets, 10 ms to an hour: a round rests four times as long
/// as it works, so a big backlog takes minutes.
const REAP_ROUND_BUCKETS: [f64; 11] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The controller's metrics, shared by every term of leadership.
pub struct ControllerMetrics {
    registry: Registry,
    jobs: Family<StatusLabels, Gauge>,
    oldest_queued_age: Gauge<f64, AtomicU64>,
    finished: Family<OutcomeLabels, Counter>,
    queue_wait: Histogram,
    duration: Histogram,
    reconcile_duration: Histogram,
    capacity_in_use: Gauge,
    capacity: Gauge,
    leader: Gauge,
    lease_renewals_failed: Counter,
    output_bytes: Counter,
    output_lines_dropped: Counter,
    env_cache_hits: Counter,
    env_cache_misses: Counter,
    env_cache_builds: Family<ResultLabels, Counter>,
    env_cache_evictions: Family<ReasonLabels, Counter>,
    env_cache_bytes: Gauge,
    env_cache_entries: Gauge,
    reaper_removed: Family<KindLabels, Counter>,
    reaper_removed_archive_bytes: Counter,
    reaper_pages_given_back: Counter,
    reaper_round_duration: Histogram,
}

impl std::fmt::Debug for ControllerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerMetrics").finish_non_exhaustive()
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = ControllerMetrics {
            jobs: Family::default(),
            oldest_queued_age: Gauge::default(),
            finished: Family::default(),
            queue_wait: Histogram::new(QUEUE_WAIT_BUCKETS),
            duration: Histogram::new(DURATION_BUCKETS),
            reconcile_duration: Histogram::new(PASS_BUCKETS),
            capacity_in_use: Gauge::default(),
            capacity: Gauge::default(),
            leader: Gauge::default(),
            lease_renewals_failed: Counter::default(),
            output_bytes: Counter::default(),
            output_lines_dropped: Counter::default(),
            env_cache_hits: Counter::default(),
            env_cache_misses: Counter::default(),
            env_cache_builds: Family::default(),
            env_cache_evictions: Family::default(),
            env_cache_bytes: Gauge::default(),
            env_cache_entries: Gauge::default(),
            reaper_removed: Family::default(),
            reaper_removed_archive_bytes: Counter::default(),
            reaper_pages_given_back: Counter::default(),
            reaper_round_duration: Histogram::new(REAP_ROUND_BUCKETS),
            registry: Registry::default(),
        };
        registry.register("ci_jobs", "Jobs in the database, by status", m.jobs.clone());
        registry.register(
            "ci_jobs_oldest_queued_age_seconds",
            "How long the oldest queued job has waited (0 when none waits)",
            m.oldest_queued_age.clone(),
        );
        registry.register(
            "ci_jobs_finished",
            "Jobs this controller ended, by outcome (passed, failed, error, cancelled, timed_out)",
            m.finished.clone(),
        );
        registry.register(
            "ci_jobs_queue_wait_seconds",
            "Time from a job's submission to its container's start",
            m.queue_wait.clone(),
        );
        registry.register(
            "ci_jobs_duration_seconds",
            "Time from a job's container start to its end",
            m.duration.clone(),
        );
        registry.register(
            "ci_controller_reconcile_duration_seconds",
            "Time one reconcile pass takes",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "ci_controller_capacity_in_use_jobs",
            "Jobs running or being started, as of the last reconcile pass",
            m.capacity_in_use.clone(),
        );
        registry.register(
            "ci_controller_capacity_jobs",
            "Jobs this controller runs at once at most",
            m.capacity.clone(),
        );
        registry.register(
            "ci_controller_leader",
            "1 while this controller holds the lease and acts, else 0",
            m.leader.clone(),
        );
        registry.register(
            "ci_controller_lease_renewals_failed",
            "Lease renewals that failed (the database did not answer)",
            m.lease_renewals_failed.clone(),
        );
        registry.register(
            "ci_jobs_output_stored_bytes",
            "Bytes of job output stored",
            m.output_bytes.clone(),
        );
        registry.register(
            "ci_jobs_output_dropped_lines",
            "Output lines not kept because their job had printed past the output limit",
            m.output_lines_dropped.clone(),
        );
        registry.register(
            "ci_env_cache_hits",
            "Jobs with requirements that started from an environment already built (or built meanwhile by another job)",
            m.env_cache_hits.clone(),
        );
        registry.register(
            "ci_env_cache_misses",
            "Jobs with requirements that found no environment to reuse and built one (--fresh-env included)",
            m.env_cache_misses.clone(),
        );
        registry.register(
            "ci_env_cache_builds",
            "Environment builds that ended, by result (succeeded, failed); a build its job's cancel stopped is not counted",
            m.env_cache_builds.clone(),
        );
        registry.register(
            "ci_env_cache_evictions",
            "Environment images removed, by reason (size, age, fresh_env)",
            m.env_cache_evictions.clone(),
        );
        registry.register(
            "ci_env_cache_size_bytes",
            "Bytes of this installation's environment images beyond their runner images, as of the last eviction sweep",
            m.env_cache_bytes.clone(),
        );
        registry.register(
            "ci_env_cache_entries",
            "This installation's environment images, as of the last eviction sweep",
            m.env_cache_entries.clone(),
        );
        registry.register(
            "ci_reaper_removed",
            "Rows the retention reaper removed, by kind (jobs, log_chunks, test_cases, archives, sessions)",
            m.reaper_removed.clone(),
        );
        registry.register(
            "ci_reaper_removed_archive_bytes",
            "Bytes of the archives the retention reaper removed",
            m.reaper_removed_archive_bytes.clone(),
        );
        registry.register(
            "ci_reaper_sqlite_pages_given_back",
            "Free SQLite pages the reaper gave back to the file system",
            m.reaper_pages_given_back.clone(),
        );
        registry.register(
            "ci_reaper_round_duration_seconds",
            "Time one reaper round takes, its rests between steps included",
            m.reaper_round_duration.clone(),
        );
        ControllerMetrics { registry, ..m }
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().unwrap_or(Duration::ZERO).as_secs_f64()
}

impl ControllerMetrics {
    /// A job's container started: its wait in the queue ends.
    pub fn job_started(&self, job: &Job) {
        if let Some(started) = job.started_at {
            self.queue_wait
                .observe(seconds_between(job.created_at, started));
        }
    }

    /// A job ended as `how`; one that ran has its run time observed.
    pub fn job_finished(&self, job: &Job, how: Finished) {
        self.finished
            .get_or_create(&OutcomeLabels {
                outcome: how.as_str(),
            })
            .inc();
        if let (Some(started), Some(ended)) = (job.started_at, job.ended_at) {
            self.duration.observe(seconds_between(started, ended));
        }
    }

    pub fn pass_took(&self, took: Duration, in_use: usize, capacity: usize) {
        self.reconcile_duration.observe(took.as_secs_f64());
        self.capacity_in_use
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        self.capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    pub fn lease_renewal_failed(&self) {
        self.lease_renewals_failed.inc();
    }

    pub fn output_stored(&self, bytes: u64) {
        self.output_bytes.inc_by(bytes);
    }

    pub fn output_lines_dropped(&self, lines: u64) {
        self.output_lines_dropped.inc_by(lines);
    }

    /// A job starts from an environment it did not build.
    pub fn env_cache_hit(&self) {
        self.env_cache_hits.inc();
    }

    /// A job builds its environment.
    pub fn env_cache_miss(&self) {
        self.env_cache_misses.inc();
    }

    pub fn env_cache_built(&self, result: BuildResult) {
        self.env_cache_builds
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn env_cache_evicted(&self, reason: EvictionReason) {
        self.env_cache_evictions
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// What the cache holds after an eviction sweep.
    pub fn env_cache_holds(&self, entries: usize, bytes: u64) {
        self.env_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.env_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// One reaper step removed `reaped`: counted as it goes, so a long round
    /// shows its progress.
    pub fn reaped(&self, reaped: &Reaped) {
        for (kind, count) in [
            ("jobs", reaped.jobs),
            ("log_chunks", reaped.log_chunks),
            ("test_cases", reaped.test_cases),
            ("archives", reaped.archives),
            ("sessions", reaped.sessions),
        ] {
            if count > 0 {
                self.reaper_removed
                    .get_or_create(&KindLabels { kind })
                    .inc_by(count);
            }
        }
        self.reaper_removed_archive_bytes
            .inc_by(reaped.archive_bytes);
    }

    pub fn reaper_gave_back_pages(&self, pages: u64) {
        self.reaper_pages_given_back.inc_by(pages);
    }

    pub fn reaper_round_took(&self, took: Duration) {
        self.reaper_round_duration.observe(took.as_secs_f64());
    }

    /// Every metric as text, the installation's gauges read afresh from
    /// `store`, and `leadership` as it is now.
    pub async fn encode(
        &self,
        store: &Store,
        leadership: Leadership,
    ) -> Result<String, StoreError> {
        let census = store.job_census().await?;
        for (status, count) in &census.by_status {
            self.jobs
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(*count);
        }
        self.oldest_queued_age.set(
            census
                .oldest_queued_at
                .map_or(0.0, |at| seconds_between(at, Utc::now())),
        );
        self.leader.set(i64::from(leadership == Leadership::Leader));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        Ok(text)
    }
}

/// The value of the one sample of `series` (name and labels as written) in
/// an exposition, for tests.
#[cfg(test)]
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_told_apart() {
        assert_eq!(
            Finished::of(&JobOutcome::exited(0), false),
            Finished::Passed
        );
        assert_eq!(
            Finished::of(&JobOutcome::exited(1), false),
            Finished::Failed
        );
        assert_eq!(
            Finished::of(&JobOutcome::exited(2), false),
            Finished::Failed
        );
        assert_eq!(
            Finished::of(&JobOutcome::failed("no image"), false),
            Finished::Error
        );
        assert_eq!(
            Finished::of(&JobOutcome::failed("Job timed out"), true),
            Finished::TimedOut
        );
        assert_eq!(
            Finished::of(&JobOutcome::cancelled(), false),
            Finished::Cancelled
        );
        let mut oom = JobOutcome::exited(137);
        oom.reason = Some("killed for memory".into());
        assert_eq!(Finished::of(&oom, false), Finished::Error);
    }
}
