//! Talking to the API: `ci`'s own client for the ordinary calls, and raw hyper
//! HTTP/1.1 connections for event streams and the load client, where the
//! client's own cost must stay small next to the server's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ci_client::ApiClient;
use ci_common::api::{JobSummary, StreamEvent};
use ci_common::JobId;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use ci_testkit::sse::{SseBlock, SseBuffer};

use crate::error::{BenchError, Result};

/// One user's view of the API, through the product's own typed client
/// (`ci_client`), so the benchmark measures the calls `ci` makes.
#[derive(Clone)]
pub struct Api {
    client: ApiClient,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Result<Api> {
        let client = ApiClient::new(base, Some(key.to_string()))
            .map_err(BenchError::api("building a client"))?;
        Ok(Api { client })
    }

    /// `POST /submit-async`; returns when the API has committed the queued job.
    pub async fn submit_async(&self, zip: &[u8]) -> Result<JobId> {
        self.client
            .submit_async(zip.to_vec(), &ci_common::JobOptions::default())
            .await
            .map_err(BenchError::api("POST /submit-async"))
    }

    pub async fn list_jobs(&self) -> Result<Vec<JobSummary>> {
        self.client
            .list_jobs()
            .await
            .map_err(BenchError::api("GET /jobs"))
    }

    pub async fn get_job(&self, id: JobId) -> Result<JobSummary> {
        self.client
            .get_job(id)
            .await
            .map_err(BenchError::api(format!("GET /jobs/{id}")))
    }

    pub async fn cancel(&self, id: JobId) -> Result<()> {
        self.client
            .cancel_job(id)
            .await
            .map_err(BenchError::api(format!("POST /jobs/{id}/cancel")))?;
        Ok(())
    }

    /// Polls `GET /jobs` every `every` until all of `ids` have ended; their summaries.
    pub async fn wait_ended(
        &self,
        ids: &[JobId],
        every: Duration,
        limit: Duration,
    ) -> Result<Vec<JobSummary>> {
        let deadline = Instant::now() + limit;
        loop {
            let jobs = self.list_jobs().await?;
            let ended: Vec<JobSummary> = jobs
                .into_iter()
                .filter(|j| ids.contains(&j.job_id) && j.status.is_terminal())
                .collect();
            if ended.len() == ids.len() {
                return Ok(ended);
            }
            if Instant::now() > deadline {
                return Err(BenchError::timeout(
                    format!("{} of {} jobs to end", ids.len() - ended.len(), ids.len()),
                    limit,
                ));
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// An open HTTP/1.1 connection for GET requests.
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    host: String,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Connection> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(BenchError::io(format!("connecting to {addr}")))?;
        tcp.set_nodelay(true)
            .map_err(BenchError::io("setting TCP_NODELAY"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| BenchError::protocol("handshake", e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            addr,
            host: addr.to_string(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `GET path` and returns the response head and its body, unread.
    pub async fn get(
        &mut self,
        path: &str,
        key: Option<&str>,
        accept: Option<&str>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut request = Request::get(path).header(HOST, &self.host);
        if let Some(key) = key {
            request = request.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| BenchError::protocol(path, e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| BenchError::protocol(path, e.to_string()))?;
        self.sender
            .send_request(request)
            .await
            .map_err(|e| BenchError::protocol(path, e.to_string()))
    }
}

/// A job's Server-Sent Events, read off a raw connection.
pub struct EventStream {
    body: Incoming,
    buf: SseBuffer,
    /// Kept so the connection stays the stream's own.
    _conn: Connection,
}

impl EventStream {
    /// Opens `GET /jobs/{id}/stream?from_beginning=true`.
    pub async fn open(addr: SocketAddr, key: &str, job: JobId) -> Result<EventStream> {
        let path = format!("/jobs/{job}/stream?from_beginning=true");
        let mut conn = Connection::open(addr).await?;
        let response = conn
            .get(&path, Some(key), Some("text/event-stream"))
            .await?;
        if !response.status().is_success() {
            return Err(BenchError::protocol(
                format!("GET {path}"),
                response.status().to_string(),
            ));
        }
        Ok(EventStream {
            body: response.into_body(),
            buf: SseBuffer::new(),
            _conn: conn,
        })
    }

    /// The next event with data; `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            if let Some(block) = self.buf.next_block() {
                if let Some(event) = block.ok().as_ref().and_then(api_event) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(BenchError::protocol("event stream", e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push(&data);
                    }
                }
            }
        }
    }
}

/// The API event a block carries; comments and unknown payloads are `None`.
fn api_event(block: &SseBlock) -> Option<StreamEvent> {
    serde_json::from_str(block.data.as_deref()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_give_their_api_event_and_others_none() {
        let mut sse = SseBuffer::new();
        sse.push(b": keep-alive\n\nid: 1\ndata: {\"type\":\"log\",\"data\":\"hi\\n\"}\n\ndata: {\"type\":\"complete\",\"success\":true}\r\n\r\ndata: {\"type\":\"new\"}\n\n");
        let mut events = Vec::new();
        while let Some(block) = sse.next_block() {
            events.push(api_event(&block.expect("UTF-8")));
        }
        assert_eq!(
            events,
            vec![
                None,
                Some(StreamEvent::Log {
                    data: "hi\n".into()
                }),
                Some(StreamEvent::Complete {
                    success: true,
                    status: None
                }),
                None,
            ]
        );
    }
}
