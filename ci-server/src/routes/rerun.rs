//! `POST /jobs/{id}/rerun`: the same archive (the same code) queued again as
//! a new job of the caller's, without an upload.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use ci_common::api::SubmitResponse;
use ci_persistence::NewJob;

use super::owned_job;
use crate::app::App;
use crate::auth::BearerKey;
use crate::error::ApiError;

pub async fn rerun_job(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<SubmitResponse>, ApiError> {
    let original = owned_job(&app, &key, id).await?;
    // The archive is kept while a job refers to it, so the original's
    // digest still names the code; the options are the original's too.
    let job = app
        .store
        .create_job(&NewJob {
            id: ci_common::JobId::random(),
            user_id: original.user_id,
            archive_digest: original.archive_digest.clone(),
            options: original.options.clone(),
            request_id: crate::access_log::request_id(&headers),
        })
        .await?;
    tracing::info!(job_id = %job.id, rerun_of = %original.id, "job queued again");
    Ok(Json(SubmitResponse { job_id: job.id }))
}
