//! Retention: deleting what has outlived its use, in steps small enough that
//! no other writer waits long for the database.
//!
//! What goes: jobs that ended before a cutoff, with their output and test
//! results; archives no job refers to; sessions whose key was revoked or whose
//! user was deactivated (they can never authenticate again). What never goes:
//! a job that is queued or running, whatever its age, and an archive any job
//! still refers to.
//!
//! Each `reap_*` call is one short transaction that removes at most a
//! [`ReapStep`]'s worth of rows and says what it removed; the caller (the
//! controller's reaper, `ci-admin prune`) repeats it until a call removes
//! nothing. Stopping between two calls leaves nothing half done that the next
//! call does not finish: a job's rows go before the job itself, and a job
//! whose output is partly deleted is still expired, so the next step goes on
//! with it. [`Store::count_reapable`] counts the same rows without deleting
//! them (a dry run).
//!
//! Deleted rows free pages inside a SQLite file; [`Store::give_back_free_pages`]
//! returns them to the file system a few at a time (incremental auto-vacuum).
//! PostgreSQL's autovacuum does the same there by itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ci_common::time::to_micros;
use ci_common::JobStatus;
use sqlx::Row;

use crate::error::Result;
use crate::store::{Backend, Store};

/// How long an archive no job refers to is kept after its last upload. A
/// replica stores the archive and then, in a second write, the job on it: an
/// archive uploaded again a moment ago must not go in between. An hour is
/// far longer than that moment and far shorter than any retention.
pub const ARCHIVE_GRACE: Duration = Duration::from_secs(60 * 60);

/// What one step (or a sum of them) removed, or a dry run would remove.
/// Counts, so that whoever reports or meters retention can add them up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Ended jobs removed.
    pub jobs: u64,
    /// Their stored output chunks (`job_events` rows).
    pub log_chunks: u64,
    /// Their stored test cases.
    pub test_cases: u64,
    /// Archives no job referred to.
    pub archives: u64,
    /// The bytes those archives held.
    pub archive_bytes: u64,
    /// Sessions of revoked keys or deactivated users.
    pub sessions: u64,
}

impl Reaped {
    /// Whether nothing was removed: the work of that kind is done.
    pub fn is_empty(&self) -> bool {
        *self == Reaped::default()
    }
}

impl std::ops::AddAssign for Reaped {
    fn add_assign(&mut self, other: Reaped) {
        self.jobs += other.jobs;
        self.log_chunks += other.log_chunks;
        self.test_cases += other.test_cases;
        self.archives += other.archives;
        self.archive_bytes += other.archive_bytes;
        self.sessions += other.sessions;
    }
}

/// The most one `reap_*` call removes: its transaction stays short (a few
/// milliseconds), so a SQLite writer waiting behind it, or a PostgreSQL
/// lock, waits no longer than that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapStep {
    /// Jobs looked at per step.
    pub jobs: u32,
    /// Output chunks and test cases deleted per step, together.
    pub rows: u32,
    /// Archives deleted per step (each up to the upload limit, in 1 MiB chunks).
    pub archives: u32,
    /// Sessions deleted per step.
    pub sessions: u32,
}

impl Default for ReapStep {
    fn default() -> Self {
        ReapStep {
            jobs: 50,
            rows: 2000,
            archives: 2,
            sessions: 500,
        }
    }
}

/// Where a SQLite file stands with its free pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePages {
    pub page_size: u64,
    /// Pages in the file.
    pub pages: u64,
    /// Pages inside the file that hold nothing (`PRAGMA freelist_count`).
    pub free: u64,
    /// Whether the file can give free pages back a few at a time
    /// (`auto_vacuum = INCREMENTAL`); a file made before this build cannot
    /// until it is rewritten once ([`Store::rewrite_for_incremental_vacuum`]).
    pub incremental: bool,
}

/// `'queued', 'running'`: the statuses of jobs that have not ended.
fn unfinished_statuses() -> String {
    JobStatus::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition on a job aliased `alias` that it ended before `$1`. A job
/// that is queued or running never matches, whatever its age: it has no end
/// time, and its status is excluded besides. Written as `NOT IN` the
/// unfinished statuses (from [`JobStatus::ALL`], so a status added later is
/// spared until it is declared terminal) rather than `IN` the ended ones, so
/// that SQLite finds the oldest ended jobs by the `jobs_ended` index instead
/// of sorting every ended job by its status index on each step.
fn expired(alias: &str) -> String {
    format!(
        "{alias}.status NOT IN ({}) AND {alias}.ended_at IS NOT NULL AND {alias}.ended_at < $1",
        unfinished_statuses()
    )
}

/// Sessions that can never authenticate again: their key is revoked (or
/// gone) or its owner deactivated.
const DEAD_SESSION: &str = "NOT EXISTS (SELECT 1 FROM api_keys k JOIN users u ON u.id = k.user_id \
     WHERE k.id = s.key_id AND k.is_active = 1 AND u.is_active = 1)";

impl Store {
    /// One step of removing the jobs that ended before `ended_before`,
    /// oldest first: up to `step.rows` of their output chunks and test cases,
    /// then those of the step's jobs that have nothing left, in one
    /// transaction.
    pub async fn reap_ended_jobs(
        &self,
        ended_before: DateTime<Utc>,
        step: &ReapStep,
    ) -> Result<Reaped> {
        let cutoff = to_micros(ended_before);
        let batch = format!(
            "SELECT j.id FROM jobs j WHERE {} ORDER BY j.ended_at, j.id LIMIT $2",
            expired("j")
        );
        let mut reaped = Reaped::default();
        let mut tx = self.begin_write().await?;
        for table in ["job_events", "job_test_cases"] {
            let budget = u64::from(step.rows).saturating_sub(reaped.log_chunks + reaped.test_cases);
            if budget == 0 {
                break;
            }
            let order = if table == "job_events" {
                "seq"
            } else {
                "ordinal"
            };
            let sql = format!(
                "DELETE FROM {table} WHERE (job_id, {order}) IN (SELECT job_id, {order} FROM {table} \
                 WHERE job_id IN ({batch}) LIMIT $3)"
            );
            let deleted = sqlx::query(&sql)
                .bind(cutoff)
                .bind(i64::from(step.jobs))
                .bind(i64::try_from(budget).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if table == "job_events" {
                reaped.log_chunks = deleted;
            } else {
                reaped.test_cases = deleted;
            }
        }
        // The job row last, once nothing of it is left (its report row, one
        // per job, goes with it by the foreign key's cascade).
        let sql = format!(
            "DELETE FROM jobs WHERE id IN ({batch}) \
             AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.id) \
             AND NOT EXISTS (SELECT 1 FROM job_test_cases c WHERE c.job_id = jobs.id)"
        );
        reaped.jobs = sqlx::query(&sql)
            .bind(cutoff)
            .bind(i64::from(step.jobs))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(reaped)
    }

    /// One step of removing archives that no job refers to and that were
    /// last uploaded before `uploaded_before` (see [`ARCHIVE_GRACE`]), with
    /// their chunks.
    pub async fn reap_unreferenced_archives(
        &self,
        uploaded_before: DateTime<Utc>,
        step: &ReapStep,
    ) -> Result<Reaped> {
        let rows = sqlx::query(
            "DELETE FROM archives WHERE digest IN (SELECT a.digest FROM archives a \
             WHERE a.created_at < $1 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.archive_digest = a.digest) \
             ORDER BY a.created_at LIMIT $2) RETURNING size",
        )
        .bind(to_micros(uploaded_before))
        .bind(i64::from(step.archives))
        .fetch_all(&self.writer)
        .await?;
        let mut reaped = Reaped::default();
        for row in rows {
            reaped.archives += 1;
            reaped.archive_bytes += u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0);
        }
        Ok(reaped)
    }

    /// One step of removing sessions whose key was revoked or whose user was
    /// deactivated: they would be refused (and deleted) on their next use
    /// anyway, but a browser that never comes back would leave them forever.
    pub async fn reap_ended_sessions(&self, step: &ReapStep) -> Result<Reaped> {
        let sql = format!(
            "DELETE FROM sessions WHERE id_hash IN (SELECT s.id_hash FROM sessions s WHERE {DEAD_SESSION} LIMIT $1)"
        );
        let deleted = sqlx::query(&sql)
            .bind(i64::from(step.sessions))
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(Reaped {
            sessions: deleted,
            ..Reaped::default()
        })
    }

    /// What reaping everything with these cutoffs would remove, deleting
    /// nothing: the jobs that ended before `ended_before` with their rows,
    /// the archives uploaded before `uploaded_before` that no job outside
    /// those would still refer to, and the dead sessions.
    pub async fn count_reapable(
        &self,
        ended_before: DateTime<Utc>,
        uploaded_before: DateTime<Utc>,
    ) -> Result<Reaped> {
        let cutoffs = [to_micros(ended_before), to_micros(uploaded_before)];
        // Binds the first `binds` cutoffs: `$1` ended, `$2` uploaded.
        let scalar = |sql: String, binds: usize| async move {
            let mut query = sqlx::query_scalar::<_, i64>(&sql);
            for cutoff in &cutoffs[..binds] {
                query = query.bind(*cutoff);
            }
            let n = query.fetch_one(&self.reader).await?;
            Ok::<u64, crate::StoreError>(u64::try_from(n).unwrap_or(0))
        };
        let jobs = scalar(
            format!("SELECT COUNT(*) FROM jobs j WHERE {}", expired("j")),
            1,
        )
        .await?;
        let log_chunks = scalar(
            format!(
                "SELECT COUNT(*) FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE {}",
                expired("j")
            ),
            1,
        )
        .await?;
        let test_cases = scalar(
            format!(
                "SELECT COUNT(*) FROM job_test_cases c JOIN jobs j ON j.id = c.job_id WHERE {}",
                expired("j")
            ),
            1,
        )
        .await?;
        let orphaned = format!(
            "FROM archives a WHERE a.created_at < $2 AND NOT EXISTS (SELECT 1 FROM jobs j \
             WHERE j.archive_digest = a.digest AND NOT ({}))",
            expired("j")
        );
        let archives = scalar(format!("SELECT COUNT(*) {orphaned}"), 2).await?;
        let archive_bytes = scalar(
            format!("SELECT CAST(COALESCE(SUM(a.size), 0) AS BIGINT) {orphaned}"),
            2,
        )
        .await?;
        let sessions = scalar(
            format!("SELECT COUNT(*) FROM sessions s WHERE {DEAD_SESSION}"),
            0,
        )
        .await?;
        Ok(Reaped {
            jobs,
            log_chunks,
            test_cases,
            archives,
            archive_bytes,
            sessions,
        })
    }

    /// The SQLite file's pages; `None` on PostgreSQL.
    pub async fn file_pages(&self) -> Result<Option<FilePages>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let mut conn = self.writer.acquire().await?;
        let mut pragma = async |name: &str| -> Result<u64> {
            let n: i64 = sqlx::query_scalar(&format!("PRAGMA {name}"))
                .fetch_one(&mut *conn)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(Some(FilePages {
            page_size: pragma("page_size").await?,
            pages: pragma("page_count").await?,
            free: pragma("freelist_count").await?,
            incremental: pragma("auto_vacuum").await? == 2,
        }))
    }

    /// Gives up to `max_pages` free pages of a SQLite file back to the file
    /// system (`PRAGMA incremental_vacuum`), one short write; returns how
    /// many went. 0 on PostgreSQL (autovacuum's work) and on a file that is
    /// not incremental.
    pub async fn give_back_free_pages(&self, max_pages: u32) -> Result<u64> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let mut conn = self.writer.acquire().await?;
        let free = async |conn: &mut sqlx::AnyConnection| -> Result<i64> {
            Ok(sqlx::query_scalar("PRAGMA freelist_count")
                .fetch_one(conn)
                .await?)
        };
        let before = free(&mut conn).await?;
        if before == 0 {
            return Ok(0);
        }
        sqlx::query(&format!("PRAGMA incremental_vacuum({max_pages})"))
            .execute(&mut *conn)
            .await?;
        let after = free(&mut conn).await?;
        Ok(u64::try_from(before - after).unwrap_or(0))
    }

    /// Rewrites a SQLite file made before incremental auto-vacuum (`VACUUM`)
    /// so that it has it from now on; `false` when it had it already (and on
    /// PostgreSQL). The whole file is copied: it needs free space of its
    /// size and holds the write lock throughout, so every other writer waits
    /// (or gives up after its busy timeout). Operators run it through
    /// `ci-admin prune`, at a quiet moment; the services never do. A rewrite
    /// that fails (no space) leaves the file as it was.
    pub async fn rewrite_for_incremental_vacuum(&self) -> Result<bool> {
        if self.backend != Backend::Sqlite {
            return Ok(false);
        }
        let mut conn = self.writer.acquire().await?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await?;
        if mode == 2 {
            return Ok(false);
        }
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(&mut *conn)
            .await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sqlx::{Connection, Executor};

    use crate::{Store, StoreOptions};

    /// A file made before incremental auto-vacuum (a table already in it
    /// before this build first opened it) stays as it is until it is
    /// rewritten once, and then gives pages back.
    #[tokio::test]
    async fn an_older_file_gives_space_back_once_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut old = sqlx::SqliteConnection::connect(&url).await.unwrap();
        old.execute("CREATE TABLE from_before (x BLOB)")
            .await
            .unwrap();
        old.close().await.unwrap();

        let store = Store::open_url(&url, StoreOptions::default())
            .await
            .unwrap();
        let before = store.file_pages().await.unwrap().unwrap();
        assert!(!before.incremental, "{before:?}");
        assert_eq!(store.give_back_free_pages(100).await.unwrap(), 0);
        assert!(store.rewrite_for_incremental_vacuum().await.unwrap());
        assert!(store.file_pages().await.unwrap().unwrap().incremental);
        assert!(!store.rewrite_for_incremental_vacuum().await.unwrap());
        // Migrated data survives the rewrite.
        let user = store.create_user("Ada", "ada@example.com").await.unwrap();
        assert_eq!(store.get_user(user.id).await.unwrap().unwrap(), user);
    }
}
