//! Talking to the API: a reqwest client for the ordinary calls, and raw hyper
//! HTTP/1.1 connections for event streams and the load client, where the
//! client's own cost must stay small next to the server's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ci_common::api::{JobSummary, StreamEvent, SubmitResponse};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::error::{BenchError, Result};

/// One user's view of the API.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Result<Api> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(BenchError::http("building a client"))?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        })
    }

    /// `POST /submit-async`; returns when the API has committed the queued job.
    pub async fn submit_async(&self, zip: &[u8]) -> Result<Uuid> {
        let part = reqwest::multipart::Part::bytes(zip.to_vec())
            .file_name("project.zip")
            .mime_str("application/zip")
            .map_err(BenchError::http("building an upload"))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = self
            .client
            .post(format!("{}/submit-async", self.base))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .map_err(BenchError::http("POST /submit-async"))?;
        let body: SubmitResponse = json(response, "POST /submit-async").await?;
        Ok(body.job_id)
    }

    pub async fn list_jobs(&self) -> Result<Vec<JobSummary>> {
        let response = self
            .client
            .get(format!("{}/jobs", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(BenchError::http("GET /jobs"))?;
        json(response, "GET /jobs").await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<JobSummary> {
        let what = format!("GET /jobs/{id}");
        let response = self
            .client
            .get(format!("{}/jobs/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(BenchError::http(what.clone()))?;
        json(response, &what).await
    }

    pub async fn cancel(&self, id: Uuid) -> Result<()> {
        let what = format!("POST /jobs/{id}/cancel");
        let response = self
            .client
            .post(format!("{}/jobs/{id}/cancel", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(BenchError::http(what.clone()))?;
        let _: JobSummary = json(response, &what).await?;
        Ok(())
    }

    /// Polls `GET /jobs` every `every` until all of `ids` have ended; their summaries.
    pub async fn wait_ended(
        &self,
        ids: &[Uuid],
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

async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> Result<T> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(BenchError::http(what.to_string()))?;
    if !status.is_success() {
        return Err(BenchError::protocol(
            what,
            format!("{status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| BenchError::protocol(what, format!("bad JSON: {e}")))
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
    buf: Vec<u8>,
    /// Kept so the connection stays the stream's own.
    _conn: Connection,
}

impl EventStream {
    /// Opens `GET /jobs/{id}/stream?from_beginning=true`.
    pub async fn open(addr: SocketAddr, key: &str, job: Uuid) -> Result<EventStream> {
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
            buf: Vec::new(),
            _conn: conn,
        })
    }

    /// The next event with data; `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                if let Some(event) = parse_event(&block[..end.0]) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(BenchError::protocol("event stream", e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// `(end of the event's text, end of its blank line)` of the first complete event.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The event in one block of SSE lines; comments and unknown payloads are `None`.
fn parse_event(block: &[u8]) -> Option<StreamEvent> {
    let text = std::str::from_utf8(block).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_and_comments_skipped() {
        let stream = b": keep-alive\n\nid: 1\ndata: {\"type\":\"log\",\"data\":\"hi\\n\"}\n\ndata: {\"type\":\"complete\",\"success\":true}\r\n\r\n";
        let mut buf = stream.to_vec();
        let mut events = Vec::new();
        while let Some((end, next)) = find_blank_line(&buf) {
            let block: Vec<u8> = buf.drain(..next).collect();
            if let Some(e) = parse_event(&block[..end]) {
                events.push(e);
            }
        }
        assert_eq!(
            events,
            vec![
                StreamEvent::Log {
                    data: "hi\n".into()
                },
                StreamEvent::Complete {
                    success: true,
                    status: None
                }
            ]
        );
        assert!(buf.is_empty());
    }
}
