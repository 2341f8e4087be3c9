//! The front door: accepting connections, admitting them under a cap, and
//! closing the ones that hold a file descriptor without using it.
//!
//! - A request head must arrive within [`FrontDoor::header_read_timeout`]
//!   (hyper's own timer; it counts from the moment the connection waits for
//!   a head, so a half-sent request line is closed on time).
//! - A kept-alive connection with no request in flight is closed after
//!   [`FrontDoor::keep_alive_timeout`]. A request in flight is never cut by
//!   either: a quiet event stream (a silent job) stays open as long as its
//!   job runs.
//! - At most [`FrontDoor::max_connections`] connections are open. A new one
//!   past the cap first closes the connection that has waited longest for a
//!   request head (a half-sent request is the cheapest thing to give up, and
//!   nothing in flight is lost); when every connection has a request in
//!   flight it is admitted to a small reserve that answers only `/health`
//!   and `/ready` (503 for the rest), so probes still see the replica; past
//!   the reserve it is closed at once. The process never reaches its
//!   file-descriptor limit, so `accept` keeps working.
//! - A closing connection is closed gently: the server's side is shut, and
//!   what the client still sends is read and dropped for a moment, so an
//!   answer written before the close is not destroyed by a reset.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::request_body::{BodyPacing, PacedBody};

/// The connection settings of one replica.
#[derive(Debug, Clone, Copy)]
pub struct FrontDoor {
    /// A request head (request line and headers) must arrive within this,
    /// counted from when the connection starts waiting for it.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after
    /// this (at most the header-read timeout, which hyper also counts from
    /// the end of the previous response).
    pub keep_alive_timeout: Duration,
    /// Open connections, besides [`RESERVED_CONNECTIONS`].
    pub max_connections: usize,
    /// Bytes per second a request body must keep up once
    /// `header_read_timeout` has passed; 0 turns it off.
    pub upload_min_rate: u64,
}

impl Default for FrontDoor {
    fn default() -> Self {
        FrontDoor {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 4096,
            upload_min_rate: 64 * 1024,
        }
    }
}

/// Connections admitted past the cap when every admitted one is busy; they
/// answer `/health` and `/ready` only, one request each.
pub const RESERVED_CONNECTIONS: usize = 32;

/// How long a closing connection reads and drops what the client still
/// sends, and the most it reads, before the socket is closed.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish (the caller ends the event streams through the
/// same token) and returns once every connection is closed.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    door: FrontDoor,
    pacing: BodyPacing,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // taken: neither ends the server; back off a moment so
                    // a full descriptor table is not spun on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admission) = registry.admit(door.max_connections) else {
            tracing::debug!("connection refused: the reserve is full too");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(serve_one(stream, admission, router, door, pacing, shutdown));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One connection, from admission to close.
async fn serve_one(
    stream: TcpStream,
    admission: Admission,
    router: Router,
    door: FrontDoor,
    pacing: BodyPacing,
    shutdown: CancellationToken,
) {
    let state = admission.state().clone();
    let reserved = matches!(admission, Admission::Reserved(_));
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let guard = InFlight::begin(service_state.clone());
        async move {
            let expects_continue = request
                .headers()
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let request =
                request.map(|body| Body::new(PacedBody::new(body, pacing, expects_continue)));
            let response = if reserved && !is_probe(request.uri().path()) {
                busy_response()
            } else {
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            };
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Body::new(Tracked { body, guard })),
            )
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(door.header_read_timeout)
        .keep_alive(!reserved);
    let connection = http.serve_connection(TokioIo::new(LingeringClose::new(stream)), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let idle_deadline = state.idle_deadline(door.keep_alive_timeout);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = state.evicted.cancelled() => {
                tracing::debug!("connection closed to admit a newer one past the cap");
                break;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                if state.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                connection.as_mut().graceful_shutdown();
            }
            _ = state.changed.notified() => {}
            _ = sleep_until_some(idle_deadline) => {
                if state.idle_deadline(door.keep_alive_timeout).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!("kept-alive connection closed: idle");
                    break;
                }
            }
        }
    }
    drop(admission);
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready")
}

/// What a connection admitted to the reserve answers for anything but the
/// probes.
fn busy_response() -> Response<Body> {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server has too many open connections; try again shortly",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// What the accept loop and the connections share about each connection.
#[derive(Debug)]
struct ConnectionState {
    /// Requests whose response is not yet written.
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened), and whether
    /// any request has been served (only then does the keep-alive timeout
    /// apply; before, the header-read timeout does).
    idle: Mutex<Idle>,
    /// Wakes the connection's task when `in_flight` changes.
    changed: Notify,
    /// Cancelled when a newer connection takes this one's place.
    evicted: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    since: Instant,
    served: bool,
}

impl ConnectionState {
    fn new() -> Self {
        ConnectionState {
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(Idle {
                since: Instant::now(),
                served: false,
            }),
            changed: Notify::new(),
            evicted: CancellationToken::new(),
        }
    }

    fn idle(&self) -> Idle {
        *self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When a kept-alive connection with nothing in flight is closed.
    fn idle_deadline(&self, keep_alive: Duration) -> Option<Instant> {
        let idle = self.idle();
        (idle.served && self.in_flight.load(Ordering::SeqCst) == 0).then(|| idle.since + keep_alive)
    }
}

/// A request in flight on a connection, from its head until its response's
/// body is dropped by hyper (written, or abandoned).
struct InFlight(Arc<ConnectionState>);

impl InFlight {
    fn begin(state: Arc<ConnectionState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.changed.notify_one();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle.lock().unwrap_or_else(|e| e.into_inner()) = Idle {
            since: Instant::now(),
            served: true,
        };
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// A response body that ends its request's [`InFlight`] when dropped.
struct Tracked {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Registry {
    inner: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    admitted: HashMap<u64, Arc<ConnectionState>>,
    reserved: usize,
}

/// A connection's place in the [`Registry`], given back when dropped.
enum Admission {
    Admitted {
        registry: Arc<Registry>,
        id: u64,
        state: Arc<ConnectionState>,
    },
    Reserved(ReservedSlot),
}

struct ReservedSlot {
    registry: Arc<Registry>,
    state: Arc<ConnectionState>,
}

impl Admission {
    fn state(&self) -> &Arc<ConnectionState> {
        match self {
            Admission::Admitted { state, .. } => state,
            Admission::Reserved(slot) => &slot.state,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        match self {
            Admission::Admitted { registry, id, .. } => {
                registry.slots().admitted.remove(id);
            }
            Admission::Reserved(slot) => {
                let mut slots = slot.registry.slots();
                slots.reserved = slots.reserved.saturating_sub(1);
            }
        }
    }
}

impl Registry {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection (see the module's description), or
    /// `None`: close it.
    fn admit(self: &Arc<Self>, max_connections: usize) -> Option<Admission> {
        let mut slots = self.slots();
        if slots.admitted.len() >= max_connections {
            // The connection that has waited longest for a request head.
            let oldest_idle = slots
                .admitted
                .iter()
                .filter(|(_, s)| s.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, s)| s.idle().since)
                .map(|(id, _)| *id);
            match oldest_idle {
                Some(id) => {
                    if let Some(evicted) = slots.admitted.remove(&id) {
                        evicted.evicted.cancel();
                    }
                }
                None if slots.reserved < RESERVED_CONNECTIONS => {
                    slots.reserved += 1;
                    return Some(Admission::Reserved(ReservedSlot {
                        registry: self.clone(),
                        state: Arc::new(ConnectionState::new()),
                    }));
                }
                None => return None,
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let state = Arc::new(ConnectionState::new());
        slots.admitted.insert(id, state.clone());
        Some(Admission::Admitted {
            registry: self.clone(),
            id,
            state,
        })
    }
}

/// A TCP stream whose shutdown is a lingering close: the write side is shut
/// (the client sees the end of the answer), then what the client still
/// sends is read and dropped until it closes too, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing a socket with unread bytes
/// makes the kernel send a reset, which can destroy an answer the client has
/// not read yet.
struct LingeringClose {
    stream: TcpStream,
    linger: Option<Linger>,
}

struct Linger {
    until: Pin<Box<Sleep>>,
    discarded: usize,
}

impl LingeringClose {
    fn new(stream: TcpStream) -> Self {
        LingeringClose {
            stream,
            linger: None,
        }
    }
}

impl AsyncRead for LingeringClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.linger = Some(Linger {
                until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                discarded: 0,
            });
        }
        let Some(linger) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    linger.discarded += buf.filled().len();
                    if linger.discarded > LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client closed (or reset): nothing left to lose.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match linger.until.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(registry: &Arc<Registry>, max: usize) -> Admission {
        let admission = registry.admit(max).expect("admitted");
        admission.state().in_flight.fetch_add(1, Ordering::SeqCst);
        admission
    }

    #[tokio::test]
    async fn past_the_cap_the_longest_idle_connection_makes_room() {
        let registry = Arc::new(Registry::default());
        let oldest = registry.admit(2).expect("admitted");
        let _busy = busy(&registry, 2);
        let newer = registry.admit(2).expect("admitted past the cap");
        assert!(oldest.state().evicted.is_cancelled());
        assert!(!newer.state().evicted.is_cancelled());
        assert!(matches!(newer, Admission::Admitted { .. }));
        assert_eq!(registry.slots().admitted.len(), 2);
    }

    #[tokio::test]
    async fn with_every_connection_busy_the_reserve_takes_new_ones_then_refuses() {
        let registry = Arc::new(Registry::default());
        let _busy = busy(&registry, 1);
        let reserved: Vec<Admission> = (0..RESERVED_CONNECTIONS)
            .map(|_| registry.admit(1).expect("reserved"))
            .collect();
        assert!(reserved.iter().all(|a| matches!(a, Admission::Reserved(_))));
        assert!(registry.admit(1).is_none(), "past the reserve: refused");
        drop(reserved);
        assert_eq!(registry.slots().reserved, 0);
        assert!(registry.admit(1).is_some());
    }
}
