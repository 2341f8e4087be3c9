//! Following a job's Server-Sent Events across dropped connections.
//!
//! A server restart or a killed replica must not cost the user a line of
//! output, nor show one twice. Every event the server sends carries its
//! sequence number as the SSE `id:`; the stream remembers the last one and,
//! when the connection breaks before the job's `complete` event, asks any
//! replica for exactly the events after it (`?after=<seq>` and
//! `Last-Event-ID`), backing off while the server is away.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ci_common::api::{StreamEvent, StreamStart};
use ci_common::JobId;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::client::ApiClient;
use crate::error::{root_cause, ClientError};

/// The event types this client knows; others (from a newer server) are skipped.
const KNOWN_EVENT_TYPES: [&str; 4] = ["job_id", "log", "complete", "error"];
/// How much of a malformed event is quoted in the error.
const MAX_QUOTED_EVENT: usize = 200;

/// How a job's event stream retries after its connection drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The wait before the first reconnect attempt of an outage.
    pub initial_backoff: Duration,
    /// The wait doubles per failed attempt up to this.
    pub max_backoff: Duration,
    /// Give up when the server has been unreachable this long in a row.
    pub give_up_after: Duration,
    /// A connection that delivers no byte for this long is taken as dead.
    /// The server sends a keep-alive comment every 15 s, so silence for
    /// several of those periods means a replica vanished without closing
    /// the connection.
    pub idle_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            give_up_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One event of a job, with its sequence number when the server sent one
/// (the `job_id` event and the reference server's events have none).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub seq: Option<i64>,
    pub event: StreamEvent,
}

/// A job's events until its `complete` event, which is always the last item
/// unless the server ends the stream with an `error` event (also the last),
/// or an error of the client's ends it first.
pub struct JobEvents {
    inner: BoxStream<'static, Result<ReceivedEvent, ClientError>>,
}

impl Stream for JobEvents {
    type Item = Result<ReceivedEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobEvents")
    }
}

/// Why the bytes of a stream stopped.
#[derive(Debug)]
pub(crate) enum TransportError {
    Body(String),
    Idle(Duration),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Body(cause) => f.write_str(cause),
            TransportError::Idle(after) => {
                write!(f, "no data for {}s", after.as_secs_f32())
            }
        }
    }
}

type RawEvents =
    BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<TransportError>>>;

/// One open SSE response.
pub(crate) struct Connection {
    events: RawEvents,
    /// Set once any byte arrived, keep-alive comments included: proof that
    /// the server was up, which ends the current outage.
    received_bytes: Arc<AtomicBool>,
}

impl Connection {
    /// Reads `response` as SSE, ending with an error when it stays silent
    /// for `idle_timeout`.
    pub(crate) fn open(response: reqwest::Response, idle_timeout: Duration) -> Connection {
        let received_bytes = Arc::new(AtomicBool::new(false));
        let body = response.bytes_stream().boxed();
        let state = (body, Arc::clone(&received_bytes), false);
        let guarded = futures::stream::unfold(state, move |(mut body, seen, broken)| async move {
            if broken {
                return None;
            }
            match tokio::time::timeout(idle_timeout, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    seen.store(true, Ordering::Relaxed);
                    Some((Ok(chunk), (body, seen, false)))
                }
                Ok(Some(Err(e))) => Some((
                    Err(TransportError::Body(root_cause(&e))),
                    (body, seen, true),
                )),
                Ok(None) => None,
                Err(_) => Some((Err(TransportError::Idle(idle_timeout)), (body, seen, true))),
            }
        });
        Connection {
            events: guarded.eventsource().boxed(),
            received_bytes,
        }
    }

    fn received_bytes(&self) -> bool {
        self.received_bytes.load(Ordering::Relaxed)
    }
}

/// The reconnecting stream of one job, starting on an open connection.
/// `job_id` is `None` for a submit stream until its `job_id` event arrives;
/// until then a drop cannot be resumed.
pub(crate) fn follow(
    api: ApiClient,
    job_id: Option<JobId>,
    resume: StreamStart,
    connection: Connection,
) -> JobEvents {
    let follower = Follower {
        api,
        job_id,
        resume,
        connection: Some(connection),
        outage: None,
        finished: false,
    };
    let inner = futures::stream::unfold(follower, |mut follower| async move {
        let item = follower.next_event().await?;
        Some((item, follower))
    })
    .boxed();
    JobEvents { inner }
}

/// A run of failed connection attempts.
struct Outage {
    started: Instant,
    next_wait: Duration,
}

struct Follower {
    api: ApiClient,
    job_id: Option<JobId>,
    /// What a reopened stream asks for: `Now` while no event with a sequence
    /// number has arrived on a "from now" stream, else `After` the last one.
    resume: StreamStart,
    connection: Option<Connection>,
    outage: Option<Outage>,
    /// The `complete` event was delivered, or an error that ends the stream.
    finished: bool,
}

impl Follower {
    async fn next_event(&mut self) -> Option<Result<ReceivedEvent, ClientError>> {
        loop {
            if self.finished {
                return None;
            }
            let Some(connection) = self.connection.as_mut() else {
                if let Err(e) = self.reconnect().await {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            };
            let cause = match connection.events.next().await {
                Some(Ok(raw)) => {
                    self.outage = None;
                    match self.accept(raw) {
                        Ok(Some(event)) => return Some(Ok(event)),
                        Ok(None) => continue,
                        Err(e) => {
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                }
                Some(Err(e)) => e.to_string(),
                None => "the server closed the stream before the job ended".to_string(),
            };
            if connection.received_bytes() {
                // The server was up until just now: a new outage begins.
                self.outage = None;
            }
            self.connection = None;
            let error = ClientError::StreamInterrupted {
                url: self.api.base_url().to_string(),
                cause,
            };
            if let Err(e) = self.record_failure(error) {
                self.finished = true;
                return Some(Err(e));
            }
        }
    }

    /// Waits out the current backoff and reopens the stream where it broke.
    /// Failures that may pass are recorded for the next round of the loop.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let Some(job_id) = self.job_id else {
            return Err(ClientError::StreamLost {
                job_id: None,
                gave_up_after: Duration::ZERO,
                last_error: "the stream broke off".to_string(),
            });
        };
        if let Some(outage) = &self.outage {
            tokio::time::sleep(outage.next_wait).await;
        }
        match self.api.reopen_stream(job_id, self.resume).await {
            Ok(connection) => {
                self.connection = Some(connection);
                Ok(())
            }
            Err(e) => self.record_failure(e),
        }
    }

    /// Counts a failed or broken connection towards the current outage:
    /// `Err` when it cannot be retried or the outage has lasted too long.
    fn record_failure(&mut self, error: ClientError) -> Result<(), ClientError> {
        if !error.is_transient() {
            return Err(error);
        }
        let Some(job_id) = self.job_id else {
            return Err(ClientError::StreamLost {
                job_id: None,
                gave_up_after: Duration::ZERO,
                last_error: error.to_string(),
            });
        };
        let policy = self.api.policy;
        match &mut self.outage {
            None => {
                if let Some(notice) = &self.api.on_reconnect {
                    notice(&error);
                }
                self.outage = Some(Outage {
                    started: Instant::now(),
                    next_wait: policy.initial_backoff,
                });
            }
            Some(outage) => {
                let waited = outage.started.elapsed();
                if waited >= policy.give_up_after {
                    return Err(ClientError::StreamLost {
                        job_id: Some(job_id),
                        gave_up_after: waited,
                        last_error: error.to_string(),
                    });
                }
                outage.next_wait = (outage.next_wait * 2).min(policy.max_backoff);
            }
        }
        Ok(())
    }

    /// Turns a raw SSE event into the caller's event, remembering where to
    /// resume. `Ok(None)` for events to skip: unknown types, and output at or
    /// before the resume point (a replica repeating itself).
    fn accept(
        &mut self,
        raw: eventsource_stream::Event,
    ) -> Result<Option<ReceivedEvent>, ClientError> {
        // The SSE parser carries the last `id:` over to events without one,
        // as the SSE specification says; an empty id means none was ever sent.
        let seq = raw.id.trim().parse::<i64>().ok();
        let Some(event) = parse_event(&raw.data)? else {
            return Ok(None);
        };
        match &event {
            StreamEvent::JobId { job_id } => {
                self.job_id.get_or_insert(*job_id);
            }
            StreamEvent::Log { .. } => {
                if let (Some(seq), StreamStart::After(last)) = (seq, self.resume) {
                    if seq <= last {
                        return Ok(None);
                    }
                }
            }
            // The server ends the stream after either; an error event is not
            // resumed (it says why the server will not go on).
            StreamEvent::Complete { .. } | StreamEvent::Error { .. } => self.finished = true,
        }
        if let Some(seq) = seq {
            self.resume = match self.resume {
                StreamStart::After(last) => StreamStart::After(last.max(seq)),
                StreamStart::Now | StreamStart::Beginning => StreamStart::After(seq),
            };
        }
        Ok(Some(ReceivedEvent { seq, event }))
    }
}

/// Parses one event's JSON; `Ok(None)` for a well-formed event of a type this
/// client does not know.
fn parse_event(data: &str) -> Result<Option<StreamEvent>, ClientError> {
    match serde_json::from_str::<StreamEvent>(data) {
        Ok(event) => Ok(Some(event)),
        Err(error) => {
            let unknown_type = serde_json::from_str::<serde_json::Value>(data)
                .ok()
                .and_then(|v| v.get("type")?.as_str().map(str::to_string))
                .is_some_and(|t| !KNOWN_EVENT_TYPES.contains(&t.as_str()));
            if unknown_type {
                return Ok(None);
            }
            let quoted: String = data.chars().take(MAX_QUOTED_EVENT).collect();
            Err(ClientError::Protocol(format!(
                "malformed event {quoted:?}: {error}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_unknown_types_are_skipped() {
        assert_eq!(
            parse_event(r#"{"type": "log", "data": "a\n"}"#).expect("parses"),
            Some(StreamEvent::Log { data: "a\n".into() })
        );
        assert_eq!(
            parse_event(r#"{"type":"progress","percent":5}"#).expect("skipped"),
            None
        );
        assert_eq!(
            parse_event(
                r#"{"type":"error","detail":"Invalid or revoked API key","status_code":401}"#
            )
            .expect("parses"),
            Some(StreamEvent::Error {
                detail: "Invalid or revoked API key".into(),
                status_code: Some(401)
            })
        );
        assert!(parse_event(r#"{"type":"error"}"#).is_err());
        assert!(parse_event(r#"{"type":"log"}"#).is_err());
        assert!(parse_event("not json").is_err());
    }
}
