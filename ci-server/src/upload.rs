//! Reading a project upload: the multipart field `file`, size-limited, and
//! checked to be a readable zip before any job exists.
//!
//! The upload is never whole in memory: its chunks go into a scratch file as
//! they arrive (counted against the limit and hashed on the way), the zip
//! check reads the file's central directory, and the store reads the file in
//! chunks.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::ApiError;

/// An uploaded project zip, spooled to a scratch file (deleted when dropped).
#[derive(Debug)]
pub struct ProjectUpload {
    /// At its start, ready to be read.
    pub file: tokio::fs::File,
    /// SHA-256 of the bytes, hex encoded: the archive's key in the store.
    pub digest: String,
    pub size: u64,
}

/// The field the reference client uploads the project zip in.
const FILE_FIELD: &str = "file";

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Upload too large: the limit is {limit} bytes"),
    )
}

/// Takes the project zip out of a multipart upload.
pub async fn read_project_zip(
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    limit: u64,
) -> Result<ProjectUpload, ApiError> {
    // Refuse an announced oversize body before reading any of it.
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit.saturating_add(64 * 1024)) {
        return Err(too_large(limit));
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "Expected a multipart/form-data upload with a '{FILE_FIELD}' field: {e}"
        ))
    })?;

    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(e, limit))?;
        let Some(mut field) = field else {
            return Err(ApiError::bad_request(format!(
                "Missing '{FILE_FIELD}' field: upload the project zip as the multipart field '{FILE_FIELD}'"
            )));
        };
        if field.name() != Some(FILE_FIELD) {
            continue;
        }
        let (mut file, size, digest) = spool(&mut field, limit).await?;
        let std_file = file
            .try_clone()
            .await
            .map_err(scratch_error)?
            .into_std()
            .await;
        tokio::task::spawn_blocking(move || check_zip(std_file))
            .await
            .map_err(|e| scratch_error(std::io::Error::other(e)))??;
        file.rewind().await.map_err(scratch_error)?;
        return Ok(ProjectUpload { file, digest, size });
    }
}

/// Writes the field into a scratch file as it arrives, refusing it once it
/// passes `limit`; the file, its size and its SHA-256.
async fn spool(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: u64,
) -> Result<(tokio::fs::File, u64, String), ApiError> {
    let file = tempfile::tempfile().map_err(scratch_error)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(scratch_error)?;
    }
    file.flush().await.map_err(scratch_error)?;
    Ok((file, size, hex::encode(hasher.finalize())))
}

/// The replica could not use its scratch space (a full disk, say): not the
/// client's fault, and worth retrying elsewhere.
fn scratch_error(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "cannot spool an upload to a scratch file");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server cannot take the upload right now; try again",
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::bad_request(format!("Malformed multipart upload: {}", e.body_text()))
    }
}

/// A zip whose central directory cannot be read is refused here; what is inside
/// is checked by the controller when it unpacks the workspace.
fn check_zip(file: std::fs::File) -> Result<(), ApiError> {
    zip::ZipArchive::new(std::io::BufReader::new(file))
        .map(|_| ())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "The uploaded file is not a readable zip archive: {e}"
            ))
        })
}
