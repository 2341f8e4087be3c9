//! Jobs: the desired state the API writes and the observed state the
//! controller writes back.

use ci_common::api::JobSummary;
use ci_common::time::{now, to_micros};
use ci_common::{Job, JobId, JobOptions, JobStatus, PythonVersion, TransitionError, UserId};

use crate::change_feed::Channel;
use crate::error::{Result, StoreError};
use crate::rows::{self, JOB_COLUMNS, SUMMARY_COLUMNS};
use crate::store::Store;
use crate::test_results::{TESTS_COLUMNS, TESTS_JOIN};

/// What the API knows when it queues a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub user_id: UserId,
    pub archive_digest: String,
    pub options: JobOptions,
    /// The submission's request id (see [`Job::request_id`]).
    pub request_id: Option<String>,
}

impl NewJob {
    /// A job of `user_id` for the stored archive `archive_digest`, with a
    /// fresh id, the default options and no request id: what a submission
    /// without options queues.
    pub fn new(user_id: UserId, archive_digest: impl Into<String>) -> NewJob {
        NewJob {
            id: JobId::random(),
            user_id,
            archive_digest: archive_digest.into(),
            options: JobOptions::default(),
            request_id: None,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// `Completed` or `Cancelled`.
    pub status: JobStatus,
    pub success: Option<bool>,
    pub exit_code: Option<i64>,
    /// Why the job could not run or was stopped; also appended as its last output.
    pub reason: Option<String>,
}

impl JobOutcome {
    /// The tests ran; the exit code decides success.
    pub fn exited(exit_code: i64) -> Self {
        JobOutcome {
            status: JobStatus::Completed,
            success: Some(exit_code == 0),
            exit_code: Some(exit_code),
            reason: None,
        }
    }

    /// The job could not run, or was stopped, for `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        JobOutcome {
            status: JobStatus::Completed,
            success: Some(false),
            exit_code: None,
            reason: Some(reason.into()),
        }
    }

    pub fn cancelled() -> Self {
        JobOutcome {
            status: JobStatus::Cancelled,
            success: None,
            exit_code: None,
            reason: None,
        }
    }
}

/// How many jobs there are in each status, and since when the oldest queued
/// one waits: what the controller's gauges show, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCensus {
    /// Every status, in [`JobStatus::ALL`]'s order, with its count (0 too).
    pub by_status: Vec<(JobStatus, i64)>,
    /// When the oldest job still queued was submitted.
    pub oldest_queued_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `'a', 'b'`: the statuses from which `to` may be reached, for a guarded UPDATE.
fn statuses_leading_to(to: JobStatus) -> String {
    JobStatus::ALL
        .into_iter()
        .filter(|from| from.can_become(to))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Queues a job for an archive already stored.
    pub async fn create_job(&self, new: &NewJob) -> Result<Job> {
        let now = now();
        let sql = format!(
            "INSERT INTO jobs (id, user_id, status, created_at, archive_digest, \
             python_requested, project, fresh_env, pytest_args, request_id) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9) RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(new.id.to_string())
            .bind(new.user_id.to_string())
            .bind(to_micros(now))
            .bind(&new.archive_digest)
            .bind(new.options.python.map(|p| p.to_string()))
            .bind(new.options.project.as_deref())
            .bind(i64::from(new.options.fresh_env))
            .bind(
                serde_json::to_string(&new.options.pytest_args)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )
            .bind(new.request_id.as_deref())
            .fetch_one(&self.writer)
            .await?;
        self.feed.notify(Channel::Jobs);
        rows::job(&row)
    }

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::job).transpose()
    }

    /// A user's jobs, newest first, as `GET /jobs` shows them: only the
    /// summary's columns are read, in the order of an index.
    pub async fn list_jobs_for_user(&self, user_id: UserId) -> Result<Vec<JobSummary>> {
        let sql = format!(
            "SELECT {}, {TESTS_COLUMNS} FROM jobs j {TESTS_JOIN} WHERE j.user_id = $1 \
             ORDER BY j.created_at DESC, j.id DESC",
            rows::aliased(SUMMARY_COLUMNS, "j", "")
        );
        let rows = sqlx::query(&sql)
            .bind(user_id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::job_summary).collect()
    }

    /// A queued job's place in the whole queue: 1 + the queued jobs of any
    /// user submitted before it (by submit time, then id); `None` once it is
    /// not queued. The plain submit order, not the scheduler's: the
    /// controller's fairness rule (fewest running jobs first, then round
    /// robin) depends on turns it keeps in its own memory, so no replica can
    /// replay it; between users with nothing running, it is this order.
    pub async fn queue_position(&self, id: JobId) -> Result<Option<i64>> {
        let ahead: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.status = 'queued' \
               AND (q.created_at < j.created_at OR (q.created_at = j.created_at AND q.id < j.id))) \
             FROM jobs j WHERE j.id = $1 AND j.status = 'queued'",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        Ok(ahead.map(|n| n + 1))
    }

    /// Jobs that have not ended, oldest first: the controller's work list.
    pub async fn list_unfinished_jobs(&self) -> Result<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await?;
        rows.iter().map(rows::job).collect()
    }

    /// The [`JobCensus`], in two statements that the `jobs_status` index
    /// answers (the count without reading a row; the oldest queued job from
    /// the queued rows only).
    pub async fn job_census(&self) -> Result<JobCensus> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        let mut counts = std::collections::HashMap::new();
        for row in &rows {
            let status: String = sqlx::Row::try_get(row, 0)?;
            let count: i64 = sqlx::Row::try_get(row, 1)?;
            let status: JobStatus = status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("job status {status:?}")))?;
            counts.insert(status, count);
        }
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(created_at) FROM jobs WHERE status = 'queued'")
                .fetch_one(&self.reader)
                .await?;
        Ok(JobCensus {
            by_status: JobStatus::ALL
                .into_iter()
                .map(|s| (s, counts.get(&s).copied().unwrap_or(0)))
                .collect(),
            oldest_queued_at: oldest.map(ci_common::time::from_micros),
        })
    }

    /// Asks for a job to be cancelled. An ended job is returned unchanged.
    pub async fn request_cancel(&self, id: JobId) -> Result<Job> {
        let sql = format!(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND status IN ('queued', 'running') \
             AND cancel_requested = 0 RETURNING {JOB_COLUMNS}"
        );
        let changed = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await?;
        if let Some(row) = changed {
            self.feed.notify(Channel::Jobs);
            return rows::job(&row);
        }
        // Ended, or asked already: as it is.
        self.get_job(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// How many of `user_id`'s jobs wait to start (for the per-user cap).
    pub async fn count_queued_jobs_for_user(&self, user_id: UserId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND status = 'queued'",
        )
        .bind(user_id.to_string())
        .fetch_one(&self.reader)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Asks for every queued or running job of `user_id` to be cancelled
    /// (their owner was deactivated), `reason` becoming each one's reason
    /// once it has ended cancelled; the jobs asked for now.
    pub async fn request_cancel_for_user(&self, user_id: UserId, reason: &str) -> Result<Vec<Job>> {
        let sql = format!(
            "UPDATE jobs SET cancel_requested = 1, cancel_reason = $2 WHERE user_id = $1 \
             AND status IN ('queued', 'running') AND cancel_requested = 0 RETURNING {JOB_COLUMNS}"
        );
        let changed = sqlx::query(&sql)
            .bind(user_id.to_string())
            .bind(reason)
            .fetch_all(&self.writer)
            .await?;
        if !changed.is_empty() {
            self.feed.notify(Channel::Jobs);
        }
        changed.iter().map(rows::job).collect()
    }

    /// Records that the job's container started, in `image`, with `python`.
    pub async fn mark_running(
        &self,
        id: JobId,
        container_id: &str,
        image: &str,
        python: Option<PythonVersion>,
    ) -> Result<Job> {
        let sql = format!(
            "UPDATE jobs SET status = 'running', started_at = $1, container_id = $2, image = $3, \
             python = $4 WHERE id = $5 AND status IN ({}) RETURNING {JOB_COLUMNS}",
            statuses_leading_to(JobStatus::Running)
        );
        let changed = sqlx::query(&sql)
            .bind(to_micros(now()))
            .bind(container_id)
            .bind(image)
            .bind(python.map(|p| p.to_string()))
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await?;
        let Some(row) = changed else {
            return Err(self.refused_transition(id, JobStatus::Running).await);
        };
        self.feed.notify(Channel::Jobs);
        rows::job(&row)
    }

    /// Ends a job. A reason, when there is one, becomes the job's last output in
    /// the same transaction, so a stream never ends without it.
    pub async fn finish_job(&self, id: JobId, outcome: &JobOutcome) -> Result<Job> {
        if !outcome.status.is_terminal() {
            return Err(TransitionError {
                from: JobStatus::Running,
                to: outcome.status,
            }
            .into());
        }
        let mut tx = self.begin_write().await?;
        let mut reason = outcome.reason.clone();
        if reason.is_none() && outcome.status == JobStatus::Cancelled {
            // Cancelled for someone else's reason (the owner was deactivated).
            reason = sqlx::query_scalar("SELECT cancel_reason FROM jobs WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        }
        let reason_line = reason.as_ref().map(|r| {
            let mut line = r.clone();
            if !line.ends_with('\n') {
                line.push('\n');
            }
            line
        });
        let sql = format!(
            "UPDATE jobs SET status = $1, success = $2, exit_code = $3, ended_at = $4, failure_reason = $5, \
             last_seq = last_seq + $6 WHERE id = $7 AND status IN ({}) RETURNING {JOB_COLUMNS}",
            statuses_leading_to(outcome.status)
        );
        let ended = sqlx::query(&sql)
            .bind(outcome.status.as_str())
            .bind(outcome.success.map(i64::from))
            .bind(outcome.exit_code)
            .bind(to_micros(now()))
            .bind(reason)
            .bind(i64::from(reason_line.is_some()))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(ended) = ended else {
            tx.rollback().await?;
            return Err(self.refused_transition(id, outcome.status).await);
        };
        let ended = rows::job(&ended)?;
        let last_seq = ended.last_seq;
        if let Some(mut line) = reason_line {
            // Output cut mid-line (a killed test's progress dots) would
            // otherwise run into the reason: it gets a line of its own.
            let previous: Option<String> =
                sqlx::query_scalar("SELECT text FROM job_events WHERE job_id = $1 AND seq = $2")
                    .bind(id.to_string())
                    .bind(last_seq - 1)
                    .fetch_optional(&mut *tx)
                    .await?;
            if previous.is_some_and(|text| !text.is_empty() && !text.ends_with('\n')) {
                line.insert(0, '\n');
            }
            sqlx::query(
                "INSERT INTO job_events (job_id, seq, kind, text) VALUES ($1, $2, 'log', $3)",
            )
            .bind(id.to_string())
            .bind(last_seq)
            .bind(line)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.feed.notify(Channel::Jobs);
        self.feed.notify_job(id);
        Ok(ended)
    }

    /// The error for a guarded update that matched no row.
    async fn refused_transition(&self, id: JobId, to: JobStatus) -> StoreError {
        match self.get_job(id).await {
            Ok(Some(job)) => TransitionError {
                from: job.status,
                to,
            }
            .into(),
            Ok(None) => StoreError::NotFound(format!("job {id}")),
            Err(e) => e,
        }
    }
}
