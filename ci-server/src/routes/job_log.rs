//! `GET /jobs/{id}/log`: a job's whole stored output as plain text, in any
//! state, without following it.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use ci_common::JobId;
use ci_persistence::Store;

use super::owned_job;
use crate::app::App;
use crate::auth::BearerKey;
use crate::error::ApiError;

/// Chunks read per query: the body is sent page by page, so a job's output
/// (up to `CI_MAX_LOG_BYTES`) is never held in memory whole.
const PAGE: i64 = 500;

pub async fn job_log(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let job = owned_job(&app, &key, id).await?;
    let body = Body::from_stream(pages(app.store.clone(), job.id));
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The output's chunks as body frames, one page read at a time. A storage
/// failure midway ends the body with an error, which cuts the response off
/// rather than passing a partial log for a whole one.
fn pages(
    store: Store,
    job_id: JobId,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    async_stream::stream! {
        let mut after = 0;
        loop {
            let chunks = match store.read_log(job_id, after, PAGE).await {
                Ok(chunks) => chunks,
                Err(e) => {
                    tracing::warn!(%job_id, error = %e, "log: cannot read output");
                    yield Err(std::io::Error::other(e.to_string()));
                    return;
                }
            };
            let full_page = chunks.len() as i64 == PAGE;
            let mut text = String::new();
            for chunk in chunks {
                after = chunk.seq;
                text.push_str(&chunk.text);
            }
            if !text.is_empty() {
                yield Ok(Bytes::from(text));
            }
            if !full_page {
                return;
            }
        }
    }
}
