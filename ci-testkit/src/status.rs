//! Readiness as the services answer it: `GET /ready` on `ci-server`
//! (`{"status":"ready"}`) and on the controller's status listener
//! (`{"status":"leader"}` / `{"status":"standby"}`). Tests wait on these
//! answers, never on what a service logs.
//!
//! A plain blocking HTTP/1.1 exchange over a fresh connection, so that it
//! works the same from synchronous tests and from inside an async test's
//! runtime, and reuses no connection a killed service left behind.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::KitError;
use crate::wait::wait_for_seen;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The controller leads.
pub const LEADER: &str = "leader";
/// The controller stands by.
pub const STANDBY: &str = "standby";
/// A server is ready.
pub const READY: &str = "ready";

/// `GET {base}{path}`: the status code and the JSON body.
pub fn get_json(base: &str, path: &str) -> Result<(u16, serde_json::Value), KitError> {
    let url = format!("{base}{path}");
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| KitError::Setup(format!("{base} is not an http:// URL")))?
        .trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()
        .map_err(KitError::io(format!("resolving {authority}")))?
        .next()
        .ok_or_else(|| KitError::Setup(format!("{authority} resolves to nothing")))?;
    let mut conn = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(KitError::io(format!("GET {url}")))?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(KitError::io(format!("GET {url}")))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(KitError::io(format!("GET {url}")))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(KitError::io(format!("GET {url}")))?;
    parse_response(&raw).ok_or_else(|| KitError::NotJson {
        url,
        raw: String::from_utf8_lossy(&raw).into_owned(),
    })
}

/// The status and JSON body of a whole `Connection: close` response (no
/// chunked bodies: axum sends a JSON answer with a length).
fn parse_response(raw: &[u8]) -> Option<(u16, serde_json::Value)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let json = serde_json::from_str(body).ok()?;
    Some((status, json))
}

/// The `status` `/ready` names at `base`, whatever the HTTP status.
pub fn ready_status(base: &str) -> Result<String, KitError> {
    let (code, body) = get_json(base, "/ready")?;
    body.get("status")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| KitError::Setup(format!("GET {base}/ready answered {code} with {body}")))
}

/// Waits until `/ready` at `base` names `wanted` and `alive` still holds
/// (the process has not exited); fails the test with the last answer.
pub fn wait_for_ready_status(
    what: &str,
    base: &str,
    wanted: &str,
    within: Duration,
    mut alive: impl FnMut() -> bool,
) {
    wait_for_seen(what, within, || {
        if !alive() {
            panic!("the process exited while waiting for {what}");
        }
        ready_status(base).map(|status| {
            if status == wanted {
                Ok(())
            } else {
                Err(format!("status {status:?}"))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_give_their_status_and_json() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{\"detail\":\"x\"}";
        assert_eq!(
            parse_response(raw),
            Some((503, serde_json::json!({"detail": "x"})))
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json"), None);
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn a_service_that_is_not_there_is_an_error_not_a_status() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        assert!(ready_status(&format!("http://{addr}")).is_err());
    }
}
