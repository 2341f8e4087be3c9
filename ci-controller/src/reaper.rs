//! The reaper: deletes what has outlived the retention period, beside the
//! reconcile loop, in the manner of a Kubernetes garbage collector.
//!
//! It runs only while this controller leads (the leadership term starts and
//! stops it with the reconciler), as its own task: a reconcile pass never
//! waits for it. A round, every [`ReaperConfig::every`] and once when a term
//! begins, removes the jobs that ended more than [`ReaperConfig::retention`]
//! ago with their output and test results, then the archives no job refers
//! to any more, then the sessions that can never authenticate again, and on
//! SQLite gives the freed pages back to the file system. Everything goes in
//! the store's small steps ([`ReapStep`]), each a transaction of a few
//! milliseconds, with a rest between two (four times as long as the step
//! took, at least 20 ms), so the one SQLite writer connection this process
//! shares with the log pump and the lease is never held for long, and the
//! reaper takes a small share of the machine; PostgreSQL's autovacuum
//! reclaims its space by itself.
//! Queued and running jobs are never touched, whatever their age (the
//! store's queries exclude them).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ci_persistence::{ReapStep, Reaped, Store, StoreError, ARCHIVE_GRACE};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::ControllerMetrics;

/// How the reaper paces itself.
#[derive(Debug, Clone)]
pub struct ReaperConfig {
    /// Ended jobs older than this go (`CI_RETENTION`).
    pub retention: Duration,
    /// Time between two rounds (`CI_REAP_INTERVAL`).
    pub every: Duration,
    /// The most one step removes.
    pub step: ReapStep,
    /// Free SQLite pages given back per step.
    pub pages_per_step: u32,
    /// The shortest pause after each step: other writers take their turn.
    pub pause: Duration,
    /// How much longer than a step took the reaper rests after it (at least
    /// `pause`): with 4 it works at most a fifth of the time, so its share of
    /// the writer and of the machine's CPU stays small however much there is
    /// to do, and it slows down by itself on a busy machine, where a step
    /// takes longer.
    pub rest_per_work: u32,
}

/// The default retention: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default time between two rounds.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(10 * 60);

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            retention: DEFAULT_RETENTION,
            every: DEFAULT_REAP_INTERVAL,
            step: ReapStep::default(),
            pages_per_step: 256,
            pause: Duration::from_millis(20),
            rest_per_work: 4,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub reaped: Reaped,
    /// SQLite pages given back to the file system.
    pub pages_given_back: u64,
    /// The round was stopped (shutdown, lost leadership) before it finished.
    pub stopped: bool,
}

pub struct Reaper {
    store: Store,
    config: ReaperConfig,
    /// Counts what each step removes and how long each round takes.
    metrics: Arc<ControllerMetrics>,
    /// Whether the operator was told that this SQLite file cannot give space
    /// back; said once per term.
    told_of_old_file: bool,
}

impl Reaper {
    pub fn new(store: Store, config: ReaperConfig) -> Self {
        Reaper {
            store,
            config,
            metrics: Arc::default(),
            told_of_old_file: false,
        }
    }

    /// Counts into `metrics` (the controller's, which its listener serves)
    /// instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Arc<ControllerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs a round now and then one every [`ReaperConfig::every`] until
    /// `shutdown`. A round that fails is logged; the next one starts over
    /// from what the database holds.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.round(&shutdown).await {
                Ok(round) if round.reaped.is_empty() && round.pages_given_back == 0 => {}
                Ok(round) => tracing::info!(
                    jobs = round.reaped.jobs,
                    log_chunks = round.reaped.log_chunks,
                    test_cases = round.reaped.test_cases,
                    archives = round.reaped.archives,
                    archive_bytes = round.reaped.archive_bytes,
                    sessions = round.reaped.sessions,
                    pages_given_back = round.pages_given_back,
                    stopped = round.stopped,
                    "reaped what outlived the retention"
                ),
                Err(e) => tracing::warn!(error = %e, "reaping failed; trying again next round"),
            }
        }
    }

    /// One round, to its end or until `shutdown`: what it removed.
    pub async fn round(&mut self, shutdown: &CancellationToken) -> Result<Round, StoreError> {
        let started = Instant::now();
        let round = self.round_untimed(shutdown).await;
        // A failed or stopped round is timed too: it held the writer as long.
        self.metrics.reaper_round_took(started.elapsed());
        round
    }

    async fn round_untimed(&mut self, shutdown: &CancellationToken) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let retention =
            chrono::Duration::from_std(self.config.retention).unwrap_or(chrono::Duration::MAX);
        let ended_before = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let uploaded_before = Utc::now()
            - chrono::Duration::from_std(ARCHIVE_GRACE).unwrap_or(chrono::Duration::zero());
        let step = self.config.step;
        let store = self.store.clone();

        // Jobs first: their archives are unreferenced only once they are gone.
        while self
            .reap_step(
                shutdown,
                &mut round,
                store.reap_ended_jobs(ended_before, &step),
            )
            .await?
        {}
        while self
            .reap_step(
                shutdown,
                &mut round,
                store.reap_unreferenced_archives(uploaded_before, &step),
            )
            .await?
        {}
        while self
            .reap_step(shutdown, &mut round, store.reap_ended_sessions(&step))
            .await?
        {}
        if round.stopped {
            return Ok(round);
        }
        self.give_back_space(shutdown, &mut round).await?;
        Ok(round)
    }

    /// Runs one store step and adds what it removed; `true` while there is
    /// more of that kind to do and no reason to stop.
    async fn reap_step(
        &self,
        shutdown: &CancellationToken,
        round: &mut Round,
        step: impl std::future::Future<Output = Result<Reaped, StoreError>>,
    ) -> Result<bool, StoreError> {
        if round.stopped || shutdown.is_cancelled() {
            round.stopped = true;
            return Ok(false);
        }
        let started = Instant::now();
        let reaped = step.await?;
        self.metrics.reaped(&reaped);
        round.reaped += reaped;
        if reaped.is_empty() {
            return Ok(false);
        }
        Ok(self.pause(started.elapsed(), shutdown, round).await)
    }

    /// Rests after a step that took `worked` (see
    /// [`ReaperConfig::rest_per_work`]); `false` (and the round marked
    /// stopped) when `shutdown` comes first.
    async fn pause(
        &self,
        worked: Duration,
        shutdown: &CancellationToken,
        round: &mut Round,
    ) -> bool {
        let rest = self.config.pause.max(worked * self.config.rest_per_work);
        tokio::select! {
            _ = tokio::time::sleep(rest) => true,
            _ = shutdown.cancelled() => {
                round.stopped = true;
                false
            }
        }
    }

    /// Gives the SQLite file's free pages back, a few per step.
    async fn give_back_space(
        &mut self,
        shutdown: &CancellationToken,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        let Some(pages) = self.store.file_pages().await? else {
            return Ok(());
        };
        if !pages.incremental {
            if !self.told_of_old_file {
                self.told_of_old_file = true;
                tracing::warn!(
                    free_pages = pages.free,
                    "this SQLite file predates incremental auto-vacuum: space freed by the \
                     reaper is reused but not given back to the file system until \
                     `ci-admin prune` rewrites the file once (see the README)"
                );
            }
            return Ok(());
        }
        loop {
            let started = Instant::now();
            let given = self
                .store
                .give_back_free_pages(self.config.pages_per_step)
                .await?;
            round.pages_given_back += given;
            self.metrics.reaper_gave_back_pages(given);
            if given == 0 || !self.pause(started.elapsed(), shutdown, round).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ci_common::time::{now, to_micros};
    use ci_common::{JobId, UserId};
    use ci_persistence::{DatabaseLocation, JobOutcome, NewJob};

    use super::*;
    use crate::leadership::Leadership;
    use crate::metrics::sample;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseLocation::SqliteFile(dir.path().join("jobs.db")))
            .await
            .unwrap();
        (dir, store)
    }

    /// Moves a job's times to `at` (microseconds), as only a test does, on a
    /// connection of its own to the file.
    async fn age(dir: &tempfile::TempDir, id: JobId, at: i64) {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE jobs SET created_at = $1, ended_at = CASE WHEN ended_at IS NULL THEN NULL ELSE $1 END \
             WHERE id = $2",
        )
        .bind(at)
        .bind(id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }

    /// A job of `owner` with output, ended `days` ago (or not ended).
    async fn job(
        dir: &tempfile::TempDir,
        store: &Store,
        owner: UserId,
        ended_days_ago: Option<i64>,
    ) -> JobId {
        let digest = store
            .put_archive(uuid::Uuid::new_v4().as_bytes())
            .await
            .unwrap();
        let id = store
            .create_job(&NewJob::new(owner, digest))
            .await
            .unwrap()
            .id;
        store
            .append_log(id, &vec!["output\n".to_string(); 30], None)
            .await
            .unwrap();
        if let Some(days) = ended_days_ago {
            store
                .finish_job(id, &JobOutcome::cancelled())
                .await
                .unwrap();
            age(dir, id, to_micros(now() - chrono::Duration::days(days))).await;
        }
        id
    }

    #[tokio::test]
    async fn a_round_removes_what_outlived_the_retention_and_nothing_else() {
        let (dir, store) = store().await;
        let owner = store
            .create_user("Ada", "ada@example.com")
            .await
            .unwrap()
            .id;
        let mut old = Vec::new();
        for _ in 0..7 {
            old.push(job(&dir, &store, owner, Some(31)).await);
        }
        let recent = job(&dir, &store, owner, Some(29)).await;
        // Submitted in 1970 and still queued.
        let queued = job(&dir, &store, owner, None).await;
        age(&dir, queued, 0).await;

        let config = ReaperConfig {
            step: ReapStep {
                jobs: 2,
                rows: 25,
                archives: 1,
                sessions: 1,
            },
            pause: Duration::ZERO,
            rest_per_work: 0,
            ..ReaperConfig::default()
        };
        let metrics = Arc::new(ControllerMetrics::default());
        let mut reaper = Reaper::new(store.clone(), config).with_metrics(metrics.clone());
        let round = reaper.round(&CancellationToken::new()).await.unwrap();
        assert_eq!(round.reaped.jobs, 7, "{round:?}");
        let text = metrics.encode(&store, Leadership::Leader).await.unwrap();
        assert_eq!(
            sample(&text, r#"ci_reaper_removed_total{kind="jobs"}"#),
            7.0
        );
        assert_eq!(
            sample(&text, r#"ci_reaper_removed_total{kind="log_chunks"}"#),
            (7 * 30) as f64
        );
        assert_eq!(
            sample(&text, "ci_reaper_sqlite_pages_given_back_total"),
            round.pages_given_back as f64
        );
        assert_eq!(sample(&text, "ci_reaper_round_duration_seconds_count"), 1.0);
        // 30 lines each; the archives are an hour short of unreferenced long enough.
        assert_eq!(round.reaped.log_chunks, 7 * 30, "{round:?}");
        assert!(!round.stopped);
        for id in old {
            assert!(store.get_job(id).await.unwrap().is_none());
        }
        assert!(store.get_job(recent).await.unwrap().is_some());
        assert_eq!(store.read_log(queued, 0, 100).await.unwrap().len(), 30);
        assert!(round.pages_given_back > 0, "{round:?}");
        assert_eq!(store.file_pages().await.unwrap().unwrap().free, 0);

        // Nothing left for the next round.
        let again = reaper.round(&CancellationToken::new()).await.unwrap();
        assert!(again.reaped.is_empty(), "{again:?}");
    }

    #[tokio::test]
    async fn a_round_stops_at_shutdown_between_two_steps() {
        let (dir, store) = store().await;
        let owner = store
            .create_user("Ada", "ada@example.com")
            .await
            .unwrap()
            .id;
        for _ in 0..3 {
            job(&dir, &store, owner, Some(40)).await;
        }
        let config = ReaperConfig {
            step: ReapStep {
                jobs: 1,
                rows: 1000,
                archives: 1,
                sessions: 1,
            },
            ..ReaperConfig::default()
        };
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let round = Reaper::new(store.clone(), config)
            .round(&shutdown)
            .await
            .unwrap();
        assert!(round.stopped);
        assert_eq!(round.reaped.jobs, 0, "{round:?}");
    }
}
