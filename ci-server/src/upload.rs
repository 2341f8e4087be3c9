//! Reading a project upload: the multipart field `file`, size-limited, and
//! checked to be a readable zip before any job exists.

use std::io::Cursor;

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use bytes::{Bytes, BytesMut};

use crate::error::ApiError;

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
) -> Result<Bytes, ApiError> {
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
        let mut data = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            data.extend_from_slice(&chunk);
        }
        let data = data.freeze();
        check_zip(&data)?;
        return Ok(data);
    }
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
fn check_zip(data: &[u8]) -> Result<(), ApiError> {
    zip::ZipArchive::new(Cursor::new(data))
        .map(|_| ())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "The uploaded file is not a readable zip archive: {e}"
            ))
        })
}
