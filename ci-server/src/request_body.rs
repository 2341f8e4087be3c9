//! Every request body, as the handlers read it: paced, and drained when a
//! handler answers before reading it all.
//!
//! Paced: a body must keep arriving at a minimum rate once a grace period
//! has passed, so the time an upload may take scales with its size (and at
//! most with the size limit) instead of being one fixed deadline, and a
//! client that trickles a byte now and then is cut with
//! [`RequestBodyError::TooSlow`] instead of holding a connection forever.
//!
//! Drained: a handler that refuses a request early (a 413 for an announced
//! size, a 403 before the upload is read) drops the body unread. hyper would
//! then close the connection while the client is still sending, the kernel
//! answers the unread bytes with a reset, and the client loses the answer
//! (`Broken pipe` instead of the 413). Dropping a body before its end
//! therefore hands it to a task that reads and discards the rest, up to a
//! bound, while hyper writes the answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(
        "the upload arrived too slowly: {received} bytes in {seconds} s, \
         below the minimum of {min_rate} bytes per second"
    )]
    TooSlow {
        received: u64,
        seconds: u64,
        min_rate: u64,
    },
    #[error("reading the request body failed: {0}")]
    Read(#[from] hyper::Error),
}

/// How request bodies are paced and drained.
#[derive(Debug, Clone, Copy)]
pub struct BodyPacing {
    /// Bytes per second a body must keep up after the grace period; 0 turns
    /// pacing off.
    pub min_rate: u64,
    /// How long a body may take before the rate counts.
    pub grace: Duration,
    /// The most an early-answered body is read and discarded for: past it
    /// the connection is closed (the client has had the answer for as long
    /// as it took to send this much).
    pub drain_limit: u64,
}

/// A request body read under [`BodyPacing`].
pub struct PacedBody {
    inner: Option<Incoming>,
    pacing: BodyPacing,
    started: Instant,
    received: u64,
    /// When the body fails the rate, given what has arrived so far.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The client waits for `100 Continue` before it sends the body; a body
    /// never asked for is not drained (hyper then sends no `100 Continue`,
    /// and the client no body).
    expects_continue: bool,
    polled: bool,
    /// Cut for slowness: not drained.
    too_slow: bool,
}

impl PacedBody {
    pub fn new(inner: Incoming, pacing: BodyPacing, expects_continue: bool) -> Self {
        let started = Instant::now();
        let mut body = PacedBody {
            inner: Some(inner),
            pacing,
            started,
            received: 0,
            deadline: None,
            expects_continue,
            polled: false,
            too_slow: false,
        };
        body.deadline = body.due().map(|at| Box::pin(tokio::time::sleep_until(at)));
        body
    }

    /// When the bytes received so far stop being enough: the grace period,
    /// plus the time `received` bytes may take at the minimum rate.
    fn due(&self) -> Option<Instant> {
        due(&self.pacing, self.started, self.received)
    }
}

fn due(pacing: &BodyPacing, started: Instant, received: u64) -> Option<Instant> {
    if pacing.min_rate == 0 {
        return None;
    }
    let allowed = pacing.grace + Duration::from_secs_f64(received as f64 / pacing.min_rate as f64);
    Some(started + allowed)
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if let (Some(at), Some(sleep)) = (this.due(), this.deadline.as_mut()) {
                        sleep.as_mut().reset(at);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let late = this
                    .deadline
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if !late {
                    return Poll::Pending;
                }
                this.too_slow = true;
                this.inner = None;
                tracing::info!(
                    received = this.received,
                    min_rate = this.pacing.min_rate,
                    "request body cut: it arrived too slowly"
                );
                Poll::Ready(Some(Err(RequestBodyError::TooSlow {
                    received: this.received,
                    seconds: this.started.elapsed().as_secs(),
                    min_rate: this.pacing.min_rate,
                })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for PacedBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if inner.is_end_stream() || self.too_slow || (self.expects_continue && !self.polled) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pacing, started, received) = (self.pacing, self.started, self.received);
        runtime.spawn(drain(inner, pacing, started, received));
    }
}

/// Reads and discards what is left of a body the handler answered without,
/// so the connection can close without a reset; stops at the end, at
/// [`BodyPacing::drain_limit`], or when the client falls below the rate.
async fn drain(mut body: Incoming, pacing: BodyPacing, started: Instant, mut received: u64) {
    let mut drained: u64 = 0;
    loop {
        let next = http_body_util::BodyExt::frame(&mut body);
        let frame = match due(&pacing, started, received) {
            Some(at) => match tokio::time::timeout_at(at, next).await {
                Ok(frame) => frame,
                Err(_) => break,
            },
            None => next.await,
        };
        match frame {
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                received += n;
                drained += n;
                if drained > pacing.drain_limit {
                    break;
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    tracing::debug!(drained, "drained the rest of an answered request body");
}
