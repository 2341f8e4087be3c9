//! A job's events as Server-Sent Events, read from the database.
//!
//! The stream sends every stored output chunk after a sequence number, each
//! with its number as the SSE `id:`, and ends with the `complete` event once
//! the job has ended and its last chunk is sent. It waits for more output on the
//! store's change feed, subscribed to its own job only, so it costs nothing
//! while its job is quiet, whatever other jobs print.
//!
//! A backlog is read in pages bounded in bytes, and the next page is read only
//! once the body has taken every event of the one before: the body is polled
//! only as fast as the connection drains, so a client that stops reading holds
//! at most about a page in the server, however long the log.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::response::sse::Event;
use ci_common::api::StreamEvent;
use ci_common::JobId;
use ci_persistence::Store;
use futures::Stream;
use tokio_util::sync::CancellationToken;

use crate::credential_watch::StreamCredential;
use crate::user_limits::UserSlot;

/// At most this many chunks per page.
const PAGE_ROWS: i64 = 500;

/// At most this much output text per page (a single larger chunk is still
/// sent whole): what one stream holds at a time beside the socket's buffers.
pub const PAGE_BYTES: i64 = 1024 * 1024;

/// What this replica's streams have read from the database, for tests and
/// metrics: a stream whose client does not read stops reading pages.
#[derive(Debug, Default)]
pub struct StreamReads {
    pages: AtomicU64,
    bytes: AtomicU64,
}

impl StreamReads {
    /// Pages of output read so far, by all streams.
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Bytes of output text read so far, by all streams.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn count(&self, page: &ci_persistence::LogPage) {
        let bytes: usize = page.chunks.iter().map(|c| c.text.len()).sum();
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Where a stream starts, resolved: the handler turns the
/// [`ci_common::api::StreamStart`] a client asked for into this against the
/// job row it read before answering ("from now on" is that row's last event),
/// so that whatever is stored after the response has begun is sent, whenever
/// the body is first polled.
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

/// What an open stream holds until it ends: the watch on its key and its
/// place among its user's streams.
#[derive(Debug)]
pub struct StreamHold {
    pub credential: StreamCredential,
    #[allow(dead_code)] // held for its Drop
    pub slot: UserSlot,
}

/// The last event of a stream whose key was revoked or whose user was
/// deactivated while it was open: the 401 the same request would now get.
/// Beyond the contract's event types; the reference client skips types it
/// does not know, reconnects, and is then refused with that 401; `ci` stops
/// at once with the reason.
fn credential_ended_event() -> Event {
    let refused = crate::ApiError::invalid_key();
    let event = StreamEvent::Error {
        detail: refused.detail,
        status_code: Some(refused.status.as_u16()),
    };
    sse_event(None, &event)
}

/// The events of a job from `start` until it ends, until `shutdown`, or
/// until the stream's credential is revoked.
pub fn job_events(
    store: Store,
    job_id: JobId,
    start: StartAt,
    resync: std::time::Duration,
    reads: std::sync::Arc<StreamReads>,
    shutdown: CancellationToken,
    hold: StreamHold,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let revoked = hold.credential.revoked.clone();
        // Held for as long as the stream is open.
        let _hold = hold;
        let mut changed = store.changes().subscribe_job(job_id);
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
            if revoked.is_cancelled() {
                tracing::info!(%job_id, "stream: ended, its key no longer authenticates");
                yield Ok(credential_ended_event());
                return;
            }
            // Mark the job's changes seen before reading, so a change that
            // lands while we read wakes the next wait instead of being lost.
            changed.mark_seen();

            let page = match store.read_log_page(job_id, after, PAGE_ROWS, PAGE_BYTES).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%job_id, error = %e, "stream: cannot read output; ending so the client reconnects");
                    return;
                }
            };
            reads.count(&page);
            let more = page.more;
            // Each `yield` waits until the body asks for the next event, so the
            // next page is read only once this one has been handed over.
            for chunk in page.chunks {
                after = chunk.seq;
                yield Ok(sse_event(Some(chunk.seq), &StreamEvent::Log { data: chunk.text }));
            }
            if more {
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
                _ = changed.changed() => {}
                _ = tokio::time::sleep(resync) => {}
                _ = shutdown.cancelled() => return,
                _ = revoked.cancelled() => {}
            }
        }
    }
}
