//! A job's events as Server-Sent Events, read from the database.
//!
//! The stream sends every stored output chunk after a sequence number, each
//! with its number as the SSE `id:`, and ends with the `complete` event once
//! the job has ended and its last chunk is sent. It waits for more output on the
//! store's change feed, so it costs nothing while a job is quiet.

use std::convert::Infallible;

use axum::response::sse::Event;
use ci_common::api::StreamEvent;
use ci_common::JobId;
use ci_persistence::{Channel, Store};
use futures::Stream;
use tokio_util::sync::CancellationToken;

/// Chunks read per query; a long backlog is sent in pages of this size.
const PAGE: i64 = 500;

/// Where a stream starts. "From now on" is resolved by the handler from the
/// job row it read before answering, so that whatever is stored after the
/// response has begun is sent, whenever the body is first polled.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    /// After this sequence number (0 = from the beginning).
    After(i64),
    /// Only new output was asked for, and the job had already ended with
    /// `last_seq` chunks: it says so and completes.
    Ended { last_seq: i64, success: bool },
}

pub fn sse_event(id: Option<i64>, event: &StreamEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    let e = Event::default().data(data);
    match id {
        Some(id) => e.id(id.to_string()),
        None => e,
    }
}

/// The events of a job from `start` until it ends, or until `shutdown`.
pub fn job_events(
    store: Store,
    job_id: JobId,
    start: StartAt,
    resync: std::time::Duration,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let mut events_changed = store.changes().subscribe(Channel::Events);
        let mut jobs_changed = store.changes().subscribe(Channel::Jobs);
        tracing::info!(%job_id, ?start, "stream: following the job's output");
        let mut after = match start {
            StartAt::After(seq) => seq,
            StartAt::Ended { last_seq, success } => {
                let log = StreamEvent::Log { data: "Job already completed.\n".to_string() };
                yield Ok(sse_event(Some(last_seq), &log));
                yield Ok(sse_event(Some(last_seq), &StreamEvent::Complete { success, status: None }));
                return;
            }
        };
        loop {
            // Mark the feed seen before reading, so a change that lands while we
            // read wakes the next wait instead of being lost.
            events_changed.borrow_and_update();
            jobs_changed.borrow_and_update();

            let chunks = match store.read_log(job_id, after, PAGE).await {
                Ok(chunks) => chunks,
                Err(e) => {
                    tracing::warn!(%job_id, error = %e, "stream: cannot read output; ending so the client reconnects");
                    return;
                }
            };
            let full_page = chunks.len() as i64 == PAGE;
            for chunk in chunks {
                after = chunk.seq;
                yield Ok(sse_event(Some(chunk.seq), &StreamEvent::Log { data: chunk.text }));
            }
            if full_page {
                continue;
            }
            // A job's last chunk is committed with (or before) its end, so once it
            // has ended, whatever is left is already readable.
            match store.get_job(job_id).await {
                Ok(Some(job)) if job.status.is_terminal() => {
                    if job.last_seq > after {
                        continue;
                    }
                    let done = StreamEvent::Complete { success: job.success.unwrap_or(false), status: Some(job.status) };
                    yield Ok(sse_event(Some(after), &done));
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(%job_id, error = %e, "stream: cannot read job; ending so the client reconnects");
                    return;
                }
            }
            tokio::select! {
                _ = events_changed.changed() => {}
                _ = jobs_changed.changed() => {}
                _ = tokio::time::sleep(resync) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
