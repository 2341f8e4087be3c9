//! Plain SQL on an installation's database (a SQLite file or a PostgreSQL
//! database), for what a test does behind the services' back: moving a job's
//! times into the past, reading a SQLite pragma.

use ci_persistence::DatabaseLocation;
use sqlx::Connection as _;

use crate::error::KitError;

fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Runs one statement; the rows it changed.
pub async fn execute(location: &DatabaseLocation, sql: &str) -> Result<u64, KitError> {
    let done = match location {
        DatabaseLocation::SqliteFile(path) => {
            let mut conn = sqlx::SqliteConnection::connect(&sqlite_url(path)).await?;
            let done = sqlx::query(sql).execute(&mut conn).await?;
            conn.close().await.ok();
            done.rows_affected()
        }
        DatabaseLocation::Url(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let done = sqlx::query(sql).execute(&mut conn).await?;
            conn.close().await.ok();
            done.rows_affected()
        }
    };
    Ok(done)
}

/// The one integer a query (`SELECT COUNT(*) …`, `PRAGMA freelist_count`)
/// answers.
pub async fn integer(location: &DatabaseLocation, sql: &str) -> Result<i64, KitError> {
    let n = match location {
        DatabaseLocation::SqliteFile(path) => {
            let mut conn = sqlx::SqliteConnection::connect(&sqlite_url(path)).await?;
            let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
            conn.close().await.ok();
            n
        }
        DatabaseLocation::Url(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
            conn.close().await.ok();
            n
        }
    };
    Ok(n)
}

/// `UPDATE`s that move a job's times (submitted, started, ended) `days`
/// into the past; times it has not reached stay empty.
pub fn age_job_sql(job: ci_common::JobId, days: i64) -> String {
    let shift = days * 86_400 * 1_000_000;
    format!(
        "UPDATE jobs SET created_at = created_at - {shift}, started_at = started_at - {shift}, \
         ended_at = ended_at - {shift} WHERE id = '{job}'"
    )
}

/// An `UPDATE` that moves the last upload of every archive `days` into the past.
pub fn age_archives_sql(days: i64) -> String {
    let shift = days * 86_400 * 1_000_000;
    format!("UPDATE archives SET created_at = created_at - {shift}")
}
