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

use ci_common::python::InvalidPythonVersion;
use ci_common::JobOptions;

use crate::error::ApiError;
use crate::request_body::RequestBodyError;

/// An uploaded project zip, spooled to a scratch file (deleted when dropped),
/// and how the job is asked to run.
#[derive(Debug)]
pub struct ProjectUpload {
    /// At its start, ready to be read.
    pub file: tokio::fs::File,
    /// SHA-256 of the bytes, hex encoded: the archive's key in the store.
    pub digest: String,
    pub size: u64,
    /// From the optional fields beside `file` (the reference client sends none).
    pub options: JobOptions,
}

/// The most a text field (`python`, `project`, `fresh_env`, `pytest_args`)
/// may hold.
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// The most arguments `pytest_args` may hold, and the longest one.
const MAX_PYTEST_ARGS: usize = 256;
const MAX_PYTEST_ARG_BYTES: usize = 4096;
/// The longest project name.
const MAX_PROJECT_CHARS: usize = 200;

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

    let mut project = None;
    let mut options = JobOptions::default();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            FILE_FIELD if project.is_none() => {
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
                project = Some((file, size, digest));
            }
            "python" | "project" | "fresh_env" | "pytest_args" => {
                let text = text_field(&mut field, &name, limit).await?;
                read_option(&mut options, &name, &text)?;
            }
            // Unknown fields are skipped, as a form handler would.
            _ => {}
        }
    }
    let Some((file, size, digest)) = project else {
        return Err(ApiError::bad_request(format!(
            "Missing '{FILE_FIELD}' field: upload the project zip as the multipart field '{FILE_FIELD}'"
        )));
    };
    Ok(ProjectUpload {
        file,
        digest,
        size,
        options,
    })
}

/// A small text field, whole.
async fn text_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &str,
    limit: u64,
) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if bytes.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "The '{name}' field is longer than {MAX_FIELD_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("The '{name}' field is not UTF-8 text")))
}

/// Sets the option `name` from its field's text; a value that cannot be
/// meant gets 400 before any job exists.
fn read_option(options: &mut JobOptions, name: &str, text: &str) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("Invalid '{name}' field: {why}"));
    match name {
        "python" => {
            options.python = Some(
                text.parse()
                    .map_err(|e: InvalidPythonVersion| bad(e.to_string()))?,
            );
        }
        "project" => {
            let project = text.trim();
            if project.is_empty()
                || project.chars().count() > MAX_PROJECT_CHARS
                || project.chars().any(char::is_control)
            {
                return Err(bad(format!(
                    "a project name is 1 to {MAX_PROJECT_CHARS} characters, without control characters"
                )));
            }
            options.project = Some(project.to_string());
        }
        "fresh_env" => {
            options.fresh_env = match text.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => return Err(bad(format!("expected true or false, not {other:?}"))),
            };
        }
        "pytest_args" => {
            let args: Vec<String> = serde_json::from_str(text)
                .map_err(|e| bad(format!("expected a JSON array of strings: {e}")))?;
            if args.len() > MAX_PYTEST_ARGS
                || args
                    .iter()
                    .any(|a| a.len() > MAX_PYTEST_ARG_BYTES || a.contains('\0'))
            {
                return Err(bad(format!(
                    "at most {MAX_PYTEST_ARGS} arguments of at most {MAX_PYTEST_ARG_BYTES} bytes each, without NUL"
                )));
            }
            options.pytest_args = args;
        }
        _ => {}
    }
    Ok(())
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
    if let Some(too_slow) = body_too_slow(&e) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("Upload cut: {too_slow}"),
        );
    }
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::bad_request(format!("Malformed multipart upload: {}", e.body_text()))
    }
}

/// The pacing error under a multipart error, when the body was cut for
/// arriving too slowly (see [`crate::request_body`]).
fn body_too_slow<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a RequestBodyError> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(paced @ RequestBodyError::TooSlow { .. }) = e.downcast_ref() {
            return Some(paced);
        }
        cause = e.source();
    }
    None
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
