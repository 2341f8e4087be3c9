//! Accounts and their API keys.

use std::sync::LazyLock;

use chrono::Duration;
use ci_common::api::JobSummary;
use ci_common::time::{now, to_micros};
use ci_common::{ApiKeyId, ApiKeyRecord, GeneratedKey, Job, JobId, User, UserId};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::rows::{self, JOB_COLUMNS, KEY_COLUMNS, SUMMARY_COLUMNS, USER_COLUMNS};
use crate::store::Store;
use crate::test_results::{TESTS_COLUMNS, TESTS_JOIN};

/// `last_used_at` is refreshed at most this often, so that authenticating a
/// request is a read, not a write, in the common case.
const LAST_USED_RESOLUTION: Duration = Duration::seconds(60);

/// The active key's id and last use, and its active owner (columns `u_…`).
static AUTHENTICATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.id AS key_id, k.last_used_at AS key_last_used_at, {} \
         FROM api_keys k JOIN users u ON u.id = k.user_id \
         WHERE k.key_hash = $1 AND k.is_active = 1 AND u.is_active = 1",
        rows::aliased(USER_COLUMNS, "u", "u_")
    )
});

/// As [`AUTHENTICATE_SQL`], with the job `$2` (whoever owns it) beside it:
/// the job's columns are NULL when there is no such job.
static AUTHENTICATE_WITH_JOB_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.id AS key_id, k.last_used_at AS key_last_used_at, {}, {} \
         FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN jobs j ON j.id = $2 \
         WHERE k.key_hash = $1 AND k.is_active = 1 AND u.is_active = 1",
        rows::aliased(USER_COLUMNS, "u", "u_"),
        rows::aliased(JOB_COLUMNS, "j", "")
    )
});

/// As [`AUTHENTICATE_WITH_JOB_SQL`], narrowed to what `GET /jobs/{id}`
/// shows: the owner's id and the job's summary columns.
static AUTHENTICATE_WITH_SUMMARY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.id AS key_id, k.last_used_at AS key_last_used_at, k.user_id AS key_user_id, \
         j.user_id AS job_user_id, {}, {TESTS_COLUMNS} \
         FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN jobs j ON j.id = $2 {TESTS_JOIN} \
         WHERE k.key_hash = $1 AND k.is_active = 1 AND u.is_active = 1",
        rows::aliased(SUMMARY_COLUMNS, "j", "")
    )
});

impl Store {
    /// Creates an active user. A taken e-mail address, in any case, is
    /// [`StoreError::AlreadyExists`].
    pub async fn create_user(&self, name: &str, email: &str) -> Result<User> {
        let user = User {
            id: UserId::random(),
            name: name.to_string(),
            email: email.to_string(),
            created_at: now(),
            is_active: true,
        };
        sqlx::query(
            "INSERT INTO users (id, name, email, created_at, is_active) VALUES ($1, $2, $3, $4, 1)",
        )
        .bind(user.id.to_string())
        .bind(&user.name)
        .bind(&user.email)
        .bind(to_micros(user.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| {
            if StoreError::is_unique_violation(&e) {
                StoreError::AlreadyExists(format!("a user with email {email}"))
            } else {
                e.into()
            }
        })?;
        Ok(user)
    }

    /// All users, oldest first.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await?;
        rows.iter().map(rows::user).collect()
    }

    pub async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::user).transpose()
    }

    pub async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        // Addresses are unique without regard to case (see the migrations).
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE LOWER(email) = LOWER($1)");
        let row = sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::user).transpose()
    }

    /// Activates or deactivates a user; a deactivated user's keys stop working.
    pub async fn set_user_active(&self, id: UserId, active: bool) -> Result<User> {
        let sql = format!("UPDATE users SET is_active = $1 WHERE id = $2 RETURNING {USER_COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(i64::from(active))
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await?;
        match row {
            Some(row) => rows::user(&row),
            None => Err(StoreError::NotFound(format!("user {id}"))),
        }
    }

    /// Stores a generated key for a user: its hash and display prefix, never the key.
    pub async fn create_api_key(
        &self,
        user_id: UserId,
        name: &str,
        key: &GeneratedKey,
    ) -> Result<ApiKeyRecord> {
        if self.get_user(user_id).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {user_id}")));
        }
        let record = ApiKeyRecord {
            id: ApiKeyId::random(),
            user_id,
            name: name.to_string(),
            key_prefix: key.display_prefix.clone(),
            created_at: now(),
            last_used_at: None,
            is_active: true,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, key_hash, key_prefix, created_at, is_active) \
             VALUES ($1, $2, $3, $4, $5, $6, 1)",
        )
        .bind(record.id.to_string())
        .bind(user_id.to_string())
        .bind(name)
        .bind(&key.hash)
        .bind(&record.key_prefix)
        .bind(to_micros(record.created_at))
        .execute(&self.writer)
        .await?;
        Ok(record)
    }

    /// Keys, oldest first: one user's, or everybody's.
    pub async fn list_api_keys(&self, user_id: Option<UserId>) -> Result<Vec<ApiKeyRecord>> {
        let rows = match user_id {
            Some(id) => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id"
                );
                sqlx::query(&sql)
                    .bind(id.to_string())
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id");
                sqlx::query(&sql).fetch_all(&self.reader).await?
            }
        };
        rows.iter().map(rows::api_key).collect()
    }

    pub async fn get_api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    /// Revokes a key; it stops working on the next request, on every replica.
    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<ApiKeyRecord> {
        let sql =
            format!("UPDATE api_keys SET is_active = 0 WHERE id = $1 RETURNING {KEY_COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await?;
        match row {
            Some(row) => rows::api_key(&row),
            None => Err(StoreError::NotFound(format!("API key {id}"))),
        }
    }

    /// The active user that owns the active key with this hash, if any.
    pub async fn authenticate(&self, key_hash: &str) -> Result<Option<User>> {
        let Some(row) = self
            .authenticated_row(&AUTHENTICATE_SQL, key_hash, None)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(rows::user_prefixed(&row, "u_")?))
    }

    /// [`Store::authenticate`] and [`Store::get_job`] in one round trip, for
    /// the requests that name a job: `None` when the key is refused, else its
    /// user and the job if it exists (the caller checks whose it is).
    pub async fn authenticate_with_job(
        &self,
        key_hash: &str,
        job_id: JobId,
    ) -> Result<Option<(User, Option<Job>)>> {
        let Some(row) = self
            .authenticated_row(&AUTHENTICATE_WITH_JOB_SQL, key_hash, Some(job_id))
            .await?
        else {
            return Ok(None);
        };
        let user = rows::user_prefixed(&row, "u_")?;
        let job_found = row.try_get::<Option<String>, _>("id")?.is_some();
        let job = if job_found {
            Some(rows::job(&row)?)
        } else {
            None
        };
        Ok(Some((user, job)))
    }

    /// As [`Store::authenticate_with_job`] for the busiest request, which
    /// shows only a job's summary: `None` when the key is refused, else the
    /// key owner's id and, if the job exists, its owner and summary.
    pub async fn authenticate_with_job_summary(
        &self,
        key_hash: &str,
        job_id: JobId,
    ) -> Result<Option<(UserId, Option<OwnedJobSummary>)>> {
        let Some(row) = self
            .authenticated_row(&AUTHENTICATE_WITH_SUMMARY_SQL, key_hash, Some(job_id))
            .await?
        else {
            return Ok(None);
        };
        let user_id = rows::id(&row, "key_user_id")?;
        let job = match row.try_get::<Option<String>, _>("id")? {
            Some(_) => Some(OwnedJobSummary {
                owner: rows::id(&row, "job_user_id")?,
                summary: rows::job_summary(&row)?,
            }),
            None => None,
        };
        Ok(Some((user_id, job)))
    }

    /// Runs one of the authentication queries (`$1` the key hash, `$2` the
    /// job id for those that read a job too): the row of an accepted key, whose
    /// use is recorded, or `None` when the key is refused.
    async fn authenticated_row(
        &self,
        sql: &str,
        key_hash: &str,
        job_id: Option<JobId>,
    ) -> Result<Option<AnyRow>> {
        let mut query = sqlx::query(sql).bind(key_hash);
        if let Some(job_id) = job_id {
            query = query.bind(job_id.to_string());
        }
        let row = query.fetch_optional(&self.reader).await?;
        if let Some(row) = &row {
            self.key_used(row).await?;
        }
        Ok(row)
    }

    /// Records that the key of an authentication row was used, at most once
    /// per [`LAST_USED_RESOLUTION`].
    async fn key_used(&self, row: &AnyRow) -> Result<()> {
        let now = now();
        let last_used: Option<i64> = row.try_get("key_last_used_at")?;
        if last_used.is_none_or(|t| t < to_micros(now - LAST_USED_RESOLUTION)) {
            let key_id: String = row.try_get("key_id")?;
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(to_micros(now))
                .bind(key_id)
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }
}

/// A job's summary with its owner, for the caller to check whose it is.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedJobSummary {
    pub owner: UserId,
    pub summary: JobSummary,
}
