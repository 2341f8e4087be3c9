//! Job output, stored in chunks numbered per job.

use ci_common::{CursorMove, JobId, LogChunk, LogCursor};
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::store::Store;

/// Rows per INSERT statement, well under both databases' parameter limits.
const ROWS_PER_INSERT: usize = 500;

/// One page of a job's output, read by [`Store::read_log_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    pub chunks: Vec<LogChunk>,
    /// More output was stored after the page when it was read: a bound cut
    /// it short.
    pub more: bool,
}

impl Store {
    /// Appends output chunks to a job that has not ended, numbering them after
    /// the last one. Output read from the job's container comes with the
    /// follower's [`CursorMove`]: the new cursor is recorded in the same
    /// transaction, and the write is refused with [`StoreError::CursorMoved`]
    /// when the stored cursor is no longer the one the follower last saw, so
    /// two followers of one job never both store the same lines. Output of
    /// the controller's own (`None`) leaves the cursor alone. Returns the
    /// sequence number of the last chunk.
    ///
    /// The first statement is the write to the job's row: it takes the write
    /// lock at once and serialises appenders of one job on both databases.
    pub async fn append_log(
        &self,
        job_id: JobId,
        chunks: &[String],
        cursor: Option<&CursorMove>,
    ) -> Result<i64> {
        let count = chunks.len() as i64;
        let mut tx = self.begin_write().await?;
        let last: Option<i64> = match cursor {
            None => {
                sqlx::query_scalar(
                    "UPDATE jobs SET last_seq = last_seq + $1 \
                     WHERE id = $2 AND status IN ('queued', 'running') RETURNING last_seq",
                )
                .bind(count)
                .bind(job_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
            }
            Some(moved) => {
                sqlx::query_scalar(
                    "UPDATE jobs SET last_seq = last_seq + $1, log_cursor = $2 \
                     WHERE id = $3 AND status IN ('queued', 'running') \
                     AND log_cursor IS NOT DISTINCT FROM $4 RETURNING last_seq",
                )
                .bind(count)
                .bind(moved.to.as_str())
                .bind(job_id.to_string())
                .bind(moved.from.as_ref().map(LogCursor::as_str))
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(last) = last else {
            tx.rollback().await?;
            return Err(match self.get_job(job_id).await? {
                Some(job) if job.status.is_terminal() => {
                    StoreError::IllegalTransition(ci_common::TransitionError {
                        from: job.status,
                        to: job.status,
                    })
                }
                Some(job) => StoreError::CursorMoved {
                    job: job_id,
                    stored: job.log_cursor,
                },
                None => StoreError::NotFound(format!("job {job_id}")),
            });
        };
        if chunks.is_empty() {
            tx.commit().await?;
            return Ok(last);
        }
        let first = last - count + 1;
        let id = job_id.to_string();
        for (batch_index, batch) in chunks.chunks(ROWS_PER_INSERT).enumerate() {
            let offset = first + (batch_index * ROWS_PER_INSERT) as i64;
            // Numbered placeholders, which both databases read (sqlx's query
            // builder writes `?` for the Any driver, which PostgreSQL does not).
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("(${}, ${}, 'log', ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO job_events (job_id, seq, kind, text) VALUES {}",
                values.join(", ")
            );
            let mut insert = sqlx::query(&sql);
            for (i, text) in batch.iter().enumerate() {
                insert = insert
                    .bind(id.clone())
                    .bind(offset + i as i64)
                    .bind(text.clone());
            }
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.feed.notify_job(job_id);
        Ok(last)
    }

    /// Bytes (UTF-8) of output stored for a job so far: what a log pump that
    /// takes the job over has already spent of its output budget.
    pub async fn stored_log_bytes(&self, job_id: JobId) -> Result<u64> {
        let length = match self.backend {
            crate::Backend::Sqlite => "length(CAST(text AS BLOB))",
            crate::Backend::Postgres => "octet_length(text)",
        };
        let sql = format!(
            "SELECT CAST(COALESCE(SUM({length}), 0) AS BIGINT) FROM job_events \
             WHERE job_id = $1 AND kind = 'log'"
        );
        let bytes: i64 = sqlx::query_scalar(&sql)
            .bind(job_id.to_string())
            .fetch_one(&self.reader)
            .await?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    /// Up to `limit` chunks of a job's output after sequence number `after`, in order.
    pub async fn read_log(&self, job_id: JobId, after: i64, limit: i64) -> Result<Vec<LogChunk>> {
        let rows = sqlx::query(
            "SELECT seq, text FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job_id.to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogChunk {
                    seq: r.try_get("seq")?,
                    text: r.try_get("text")?,
                })
            })
            .collect()
    }

    /// A job's output after sequence number `after`, in order: at most
    /// `max_rows` chunks, and only as many as fit in `max_bytes` of text
    /// (always at least one, however large), so a reader holds a bounded amount of memory
    /// however large the chunks are. The sizes are summed by the database
    /// from the stored lengths (`octet_length` reads no text on either), and
    /// only the text that fits is read.
    pub async fn read_log_page(
        &self,
        job_id: JobId,
        after: i64,
        max_rows: i64,
        max_bytes: i64,
    ) -> Result<LogPage> {
        let rows = sqlx::query(
            "SELECT e.seq, e.text, p.window_rows FROM ( \
                 SELECT seq, SUM(len) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto, \
                        ROW_NUMBER() OVER (ORDER BY seq) AS n, COUNT(*) OVER () AS window_rows \
                 FROM (SELECT seq, octet_length(text) AS len FROM job_events \
                       WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS sizes \
             ) AS p JOIN job_events e ON e.job_id = $1 AND e.seq = p.seq \
             WHERE p.n = 1 OR p.upto <= $4 ORDER BY e.seq",
        )
        .bind(job_id.to_string())
        .bind(after)
        .bind(max_rows.max(1))
        .bind(max_bytes.max(1))
        .fetch_all(&self.reader)
        .await?;
        let mut window_rows = 0;
        let mut chunks = Vec::with_capacity(rows.len());
        for r in &rows {
            window_rows = r.try_get::<i64, _>("window_rows")?;
            chunks.push(LogChunk {
                seq: r.try_get("seq")?,
                text: r.try_get("text")?,
            });
        }
        let more = (chunks.len() as i64) < window_rows || window_rows >= max_rows.max(1);
        Ok(LogPage { chunks, more })
    }
}
