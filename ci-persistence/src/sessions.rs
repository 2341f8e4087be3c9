//! Browser sessions: a cookie the page gets in exchange for an API key.
//!
//! A session is only a pointer to the key it was made from. Whoever presents
//! it is then authenticated as that key, with the same checks as a bearer key
//! on every request, so revoking the key or deactivating its owner ends the
//! session at once on every replica; nothing is cached.

use ci_common::time::{now, to_micros};
use sqlx::Row;

use crate::error::Result;
use crate::store::Store;

/// What a presented session id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionLookup {
    /// The session exists and its key and the key's owner are active: the
    /// key's hash, to authenticate the request with.
    Active { key_hash: String },
    /// No such session (never made, signed out, or ended earlier).
    Unknown,
    /// The session existed but its key is revoked or its owner deactivated;
    /// the session has now been deleted, so it stays ended whatever happens
    /// to the key later.
    Ended,
}

impl Store {
    /// Stores a session (by the hash of its id) for the active key with this
    /// hash. `false` when there is no such active key of an active user.
    pub async fn create_session(&self, session_hash: &str, key_hash: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO sessions (id_hash, key_id, created_at) \
             SELECT $1, k.id, $3 FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $2 AND k.is_active = 1 AND u.is_active = 1",
        )
        .bind(session_hash)
        .bind(key_hash)
        .bind(to_micros(now()))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The key behind a session, checked as a bearer key would be; a session
    /// whose key no longer authenticates is deleted.
    pub async fn look_up_session(&self, session_hash: &str) -> Result<SessionLookup> {
        let row = sqlx::query(
            "SELECT k.key_hash AS key_hash, k.is_active AS key_active, u.is_active AS user_active \
             FROM sessions s JOIN api_keys k ON k.id = s.key_id JOIN users u ON u.id = k.user_id \
             WHERE s.id_hash = $1",
        )
        .bind(session_hash)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else {
            return Ok(SessionLookup::Unknown);
        };
        let key_active: i64 = row.try_get("key_active")?;
        let user_active: i64 = row.try_get("user_active")?;
        if key_active == 1 && user_active == 1 {
            return Ok(SessionLookup::Active {
                key_hash: row.try_get("key_hash")?,
            });
        }
        self.delete_session(session_hash).await?;
        Ok(SessionLookup::Ended)
    }

    /// Ends a session (sign-out). `false` when there was none.
    pub async fn delete_session(&self, session_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(session_hash)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
