//! The API's handlers, one per route of the contract.

mod job_log;
mod rerun;

pub use job_log::job_log;
pub use rerun::rerun_job;
pub mod test_results;

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ci_common::api::{JobSummary, StreamEvent, StreamStart, SubmitResponse};
use ci_common::{Job, JobId, User};
use ci_persistence::{NewJob, OwnedJobSummary};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::app::App;
use crate::auth::{AuthUser, BearerKey};
use crate::error::ApiError;
use crate::sse::{job_events, sse_event, StartAt, StreamHold};
use crate::upload::read_project_zip;
use crate::user_limits::{too_many_queued, UserSlot};

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// How long `/ready` waits for the database before it answers 503: a load
/// balancer's probe gives up after a few seconds, and a database that takes
/// longer than this is no database to send users to.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Readiness for load balancers and tests: 200 `{"status":"ready"}` when the
/// database answers and holds every migration this build embeds, else 503
/// with a `detail` saying which. Needs no key, like `/health`; unlike
/// `/health` it asks the database, so a replica cut off from it, or ahead of
/// its schema, is taken out of rotation instead of answering 503 to users.
pub async fn ready(State(app): State<App>) -> Response {
    let unready = |detail: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail);
    match tokio::time::timeout(READY_TIMEOUT, app.store.schema_is_current()).await {
        Ok(Ok(true)) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Ok(false)) => {
            tracing::warn!("not ready: the database schema lacks migrations of this build");
            unready("The database schema is not current").into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            unready("The job database is unavailable").into_response()
        }
        Err(_) => {
            tracing::warn!(timeout = ?READY_TIMEOUT, "not ready: the database did not answer in time");
            unready("The job database is unavailable").into_response()
        }
    }
}

/// Unknown paths, as the reference (FastAPI) answers them.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found")
}

/// A known path with a method it does not take (the `Allow` header is kept).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// Stores the upload and queues its job; the controller is woken by the store.
async fn queue_job(
    app: &App,
    user: &User,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Job, ApiError> {
    let limits = &app.config.user_limits;
    let _uploading = app.user_slots.upload(user.id, limits)?;
    // Before the upload is read: a user at the cap is told without sending it.
    if app.store.count_queued_jobs_for_user(user.id).await? >= limits.max_queued_jobs {
        return Err(too_many_queued(limits));
    }
    let upload = read_project_zip(headers, multipart, app.config.max_upload_bytes).await?;
    app.metrics.uploaded(upload.size);
    let archive_digest = upload.digest.clone();
    app.store
        .put_archive_from(&archive_digest, tokio::io::BufReader::new(upload.file))
        .await?;
    let job = app
        .store
        .create_job(&NewJob {
            id: JobId::random(),
            user_id: user.id,
            archive_digest,
            options: upload.options,
            request_id: crate::access_log::request_id(headers),
        })
        .await?;
    tracing::info!(job_id = %job.id, user = %user.email, bytes = upload.size, "job queued");
    Ok(job)
}

pub async fn submit_async(
    State(app): State<App>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let job = queue_job(&app, &user, &headers, multipart).await?;
    Ok(Json(SubmitResponse { job_id: job.id }))
}

/// Queues a job and streams it, starting with an event naming the job so the
/// client can reconnect to it.
pub async fn submit_stream(
    State(app): State<App>,
    key: BearerKey,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let user = key.user(&app).await?;
    let slot = app.user_slots.stream(user.id, &app.config.user_limits)?;
    let job = queue_job(&app, &user, &headers, multipart).await?;
    let first = futures::stream::once(async move {
        Ok(sse_event(None, &StreamEvent::JobId { job_id: job.id }))
    });
    Ok(sse_response(
        &app,
        first.chain(events(&app, &key, slot, job.id, StartAt::After(0))),
    ))
}

/// As `/submit-stream` without the job id event (the reference's oldest endpoint).
pub async fn submit(
    State(app): State<App>,
    key: BearerKey,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let user = key.user(&app).await?;
    let slot = app.user_slots.stream(user.id, &app.config.user_limits)?;
    let job = queue_job(&app, &user, &headers, multipart).await?;
    Ok(sse_response(
        &app,
        events(&app, &key, slot, job.id, StartAt::After(0)),
    ))
}

pub async fn list_jobs(
    State(app): State<App>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<JobSummary>>, ApiError> {
    Ok(Json(app.store.list_jobs_for_user(user.id).await?))
}

/// The job, if the key is good and the job exists and belongs to the key's
/// owner: key and job are read in one round trip (these are the busiest
/// requests). A path that is not a UUID names no job: 404 for a good key,
/// like any unknown id; so does one that does not even decode to text (`%FF`).
pub(crate) async fn owned_job(
    app: &App,
    key: &BearerKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Job, ApiError> {
    let Some(id) = id.ok().and_then(|Path(id)| id.parse::<JobId>().ok()) else {
        key.user(app).await?;
        return Err(ApiError::job_not_found());
    };
    let found = app.store.authenticate_with_job(&key.hash, id).await?;
    if let Some((user, _)) = &found {
        key.user_slot.note(user.id);
    }
    match found {
        None => Err(ApiError::invalid_key()),
        Some((_, None)) => Err(ApiError::job_not_found()),
        Some((user, Some(job))) if job.user_id != user.id => Err(ApiError::access_denied()),
        Some((_, Some(job))) => Ok(job),
    }
}

/// As [`owned_job`], reading only what the answer shows.
pub async fn get_job(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobSummary>, ApiError> {
    let Some(id) = id.ok().and_then(|Path(id)| id.parse::<JobId>().ok()) else {
        key.user(&app).await?;
        return Err(ApiError::job_not_found());
    };
    let found = app
        .store
        .authenticate_with_job_summary(&key.hash, id)
        .await?;
    if let Some((user, _)) = &found {
        key.user_slot.note(*user);
    }
    match found {
        None => Err(ApiError::invalid_key()),
        Some((_, None)) => Err(ApiError::job_not_found()),
        Some((user, Some(job))) if job.owner != user => Err(ApiError::access_denied()),
        Some((_, Some(OwnedJobSummary { mut summary, .. }))) => {
            if summary.status == ci_common::JobStatus::Queued {
                summary.queue_position = app.store.queue_position(id).await?;
            }
            Ok(Json(summary))
        }
    }
}

pub async fn cancel_job(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobSummary>, ApiError> {
    let job = owned_job(&app, &key, id).await?;
    let job = app.store.request_cancel(job.id).await?;
    tracing::info!(job_id = %job.id, "cancellation requested");
    Ok(Json(JobSummary::from(&job)))
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    from_beginning: Option<String>,
    #[serde(default)]
    after: Option<i64>,
}

/// FastAPI's boolean query parsing, which the reference's clients rely on.
fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
}

pub async fn stream_job(
    State(app): State<App>,
    key: BearerKey,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = owned_job(&app, &key, id).await?;
    // As FastAPI rejects a malformed query parameter: 422, here with a JSON detail.
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let requested = StreamStart::requested(
        query.after,
        last_event_id,
        query.from_beginning.as_deref().is_some_and(truthy),
    );
    let start = match requested {
        StreamStart::After(seq) => StartAt::After(seq),
        StreamStart::Beginning => StartAt::After(0),
        // Only new output: "now" is the job as read above, before answering.
        StreamStart::Now if job.status.is_terminal() => StartAt::Ended {
            last_seq: job.last_seq,
            success: job.success.unwrap_or(false),
        },
        StreamStart::Now => StartAt::After(job.last_seq),
    };
    let slot = app
        .user_slots
        .stream(job.user_id, &app.config.user_limits)?;
    Ok(sse_response(&app, events(&app, &key, slot, job.id, start)))
}

fn events(
    app: &App,
    key: &BearerKey,
    slot: UserSlot,
    job_id: JobId,
    start: StartAt,
) -> impl Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> {
    job_events(
        app.store.clone(),
        job_id,
        start,
        app.config.stream_resync,
        app.stream_reads.clone(),
        app.shutdown.clone(),
        StreamHold {
            credential: app.stream_credentials.hold(&key.hash),
            slot,
        },
    )
}

fn sse_response(
    app: &App,
    stream: impl Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
        + Send
        + 'static,
) -> Response {
    // Counted open until the body is dropped, however the stream ends.
    let open = app.metrics.stream_opened();
    let stream = stream.map(move |event| {
        let _open = &open;
        event
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(app.config.keep_alive))
        .into_response();
    // Tell buffering proxies (nginx) to pass events through as they come.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}
