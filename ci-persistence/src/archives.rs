//! Uploaded projects, stored by content so that the API and the controller
//! share no filesystem and identical uploads are kept once.

use ci_common::time::{now, to_micros};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::store::Store;

/// SHA-256 of an archive, hex encoded: its key in the store.
pub fn archive_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Store {
    /// Stores an archive (once per content) and returns its digest.
    pub async fn put_archive(&self, bytes: &[u8]) -> Result<String> {
        let digest = archive_digest(bytes);
        sqlx::query(
            "INSERT INTO archives (digest, data, size, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(bytes.to_vec())
        .bind(bytes.len() as i64)
        .bind(to_micros(now()))
        .execute(&self.writer)
        .await?;
        Ok(digest)
    }

    pub async fn get_archive(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT data FROM archives WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?,
        )
    }
}
