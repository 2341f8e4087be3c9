//! Uploaded projects, stored by content so that the API and the controller
//! share no filesystem and identical uploads are kept once.
//!
//! An archive is stored in chunks of at most [`ARCHIVE_CHUNK_BYTES`]
//! (`archive_chunks`), written from a reader and read back into a writer, so
//! that neither side holds a 100 MiB upload in memory as one bound parameter.
//! Archives stored before chunking (`chunks = 0`) keep their bytes whole in
//! `archives.data` and are read from there.

use ci_common::time::{now, to_micros};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Result, StoreError};
use crate::store::Store;

/// The most bytes one stored chunk of an archive holds.
pub const ARCHIVE_CHUNK_BYTES: usize = 1024 * 1024;

/// SHA-256 of an archive, hex encoded: its key in the store.
pub fn archive_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Store {
    /// Stores an archive held in memory (once per content) and returns its digest.
    pub async fn put_archive(&self, bytes: &[u8]) -> Result<String> {
        let digest = archive_digest(bytes);
        self.put_archive_from(&digest, bytes).await?;
        Ok(digest)
    }

    /// Stores the archive `reader` yields, whose SHA-256 the caller computed
    /// as `digest` (while receiving it), a chunk at a time; once per content:
    /// when that digest is stored already, the reader is not read. The
    /// digest is checked again on the way, and a mismatch stores nothing.
    pub async fn put_archive_from<R>(&self, digest: &str, mut reader: R) -> Result<()>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut tx = self.begin_write().await?;
        // An archive stored already has its upload time renewed in the same
        // statement that finds it, so the reaper, which spares archives
        // uploaded within `ARCHIVE_GRACE` (and those a job refers to), cannot
        // delete it between this upload and the job the replica creates on
        // it next. A row just inserted has neither size nor chunks yet.
        let row = sqlx::query(
            "INSERT INTO archives (digest, data, size, created_at, chunks) VALUES ($1, $2, 0, $3, 0) \
             ON CONFLICT (digest) DO UPDATE SET created_at = excluded.created_at \
             RETURNING size, chunks",
        )
        .bind(digest)
        .bind(Vec::<u8>::new())
        .bind(to_micros(now()))
        .fetch_one(&mut *tx)
        .await?;
        let (size, chunks): (i64, i64) = (row.try_get("size")?, row.try_get("chunks")?);
        if size != 0 || chunks != 0 {
            tx.commit().await?;
            return Ok(());
        }
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut seq: i64 = 0;
        loop {
            let chunk = read_chunk(&mut reader).await?;
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sqlx::query("INSERT INTO archive_chunks (digest, seq, data) VALUES ($1, $2, $3)")
                .bind(digest)
                .bind(seq)
                .bind(chunk)
                .execute(&mut *tx)
                .await?;
            seq += 1;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            tx.rollback().await?;
            return Err(StoreError::Corrupt(format!(
                "an archive given as {digest} has the digest {actual}"
            )));
        }
        sqlx::query("UPDATE archives SET size = $1, chunks = $2 WHERE digest = $3")
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(seq)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the archive into `out`, a chunk at a time, and returns its size;
    /// `None` when no archive has that digest.
    pub async fn copy_archive_to<W>(&self, digest: &str, out: &mut W) -> Result<Option<u64>>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let Some(row) = sqlx::query("SELECT chunks FROM archives WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        let chunks: i64 = row.try_get("chunks")?;
        let mut size = 0u64;
        if chunks == 0 {
            let data: Vec<u8> = sqlx::query_scalar("SELECT data FROM archives WHERE digest = $1")
                .bind(digest)
                .fetch_one(&self.reader)
                .await?;
            out.write_all(&data).await?;
            size += data.len() as u64;
        }
        for seq in 0..chunks {
            let data: Vec<u8> = sqlx::query_scalar(
                "SELECT data FROM archive_chunks WHERE digest = $1 AND seq = $2",
            )
            .bind(digest)
            .bind(seq)
            .fetch_optional(&self.reader)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("archive {digest} lacks chunk {seq}")))?;
            out.write_all(&data).await?;
            size += data.len() as u64;
        }
        out.flush().await?;
        Ok(Some(size))
    }

    /// The whole archive in memory; for small ones and tests. Jobs copy
    /// theirs out with [`Store::copy_archive_to`].
    pub async fn get_archive(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let mut bytes = Vec::new();
        Ok(self
            .copy_archive_to(digest, &mut bytes)
            .await?
            .map(|_| bytes))
    }
}

/// Up to [`ARCHIVE_CHUNK_BYTES`] from `reader`; short only at its end.
async fn read_chunk<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(ARCHIVE_CHUNK_BYTES);
    while chunk.len() < ARCHIVE_CHUNK_BYTES {
        let want = ARCHIVE_CHUNK_BYTES - chunk.len();
        if (&mut *reader)
            .take(want as u64)
            .read_buf(&mut chunk)
            .await?
            == 0
        {
            break;
        }
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::StoreOptions;

    /// Archives stored before chunking keep their bytes in `archives.data`.
    #[tokio::test]
    async fn archives_stored_whole_before_chunking_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let store = Store::open_url(&url, StoreOptions::default())
            .await
            .unwrap();
        let bytes = b"an archive from before".to_vec();
        let digest = archive_digest(&bytes);
        sqlx::query("INSERT INTO archives (digest, data, size, created_at) VALUES ($1, $2, $3, 0)")
            .bind(&digest)
            .bind(bytes.clone())
            .bind(bytes.len() as i64)
            .execute(&store.writer)
            .await
            .unwrap();
        assert_eq!(store.get_archive(&digest).await.unwrap().unwrap(), bytes);
        // Storing it again finds it there.
        assert_eq!(store.put_archive(&bytes).await.unwrap(), digest);
        assert_eq!(store.get_archive(&digest).await.unwrap().unwrap(), bytes);
    }
}
