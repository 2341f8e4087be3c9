//! A TCP relay between a client under test and a server, which keeps what
//! the server sent back, so that a test can tell a response has begun (an
//! event stream's headers went out) from the wire instead of from the
//! server's log. Killing the server behind it breaks the client's
//! connection as killing the server in front of it would; connections made
//! while the server is away are closed at once, as a refused connection is
//! felt.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::KitError;

/// A running relay; stops accepting when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    answered: Arc<Mutex<Vec<u8>>>,
    stopped: Arc<AtomicBool>,
}

impl Relay {
    /// Relays connections to a free local port on to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Relay, KitError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(KitError::io("binding a relay"))?;
        let addr = listener
            .local_addr()
            .map_err(KitError::io("the relay's address"))?;
        let answered = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (sink, stop) = (Arc::clone(&answered), Arc::clone(&stopped));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(client) = client {
                    relay_connection(client, upstream, Arc::clone(&sink));
                }
            }
        });
        Ok(Relay {
            addr,
            answered,
            stopped,
        })
    }

    /// `http://127.0.0.1:<port>`, for the client's server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the server has sent `needle` (ASCII, case-insensitive) on any
    /// connection so far: `content-type: text/event-stream` once an event
    /// stream's response has begun.
    pub fn server_sent(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        let answered = match self.answered.lock() {
            Ok(bytes) => bytes.to_ascii_lowercase(),
            Err(poisoned) => poisoned.into_inner().to_ascii_lowercase(),
        };
        String::from_utf8_lossy(&answered).contains(&needle)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Pipes one client connection to `upstream` and back, in two threads;
/// closes both ends when either ends. A refused upstream closes the client.
fn relay_connection(client: TcpStream, upstream: SocketAddr, answered: Arc<Mutex<Vec<u8>>>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client_reader), Ok(server_writer)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pipe(client_reader, server_writer, None));
    std::thread::spawn(move || pipe(server, client, Some(answered)));
}

/// Copies `from` to `to` until either ends, keeping a copy in `record`;
/// then shuts both down, so the opposite pipe ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(record) = &record {
            if let Ok(mut kept) = record.lock() {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pass_both_ways_and_the_answers_are_kept() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream = server.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = server.accept().expect("accept");
            let mut asked = [0u8; 5];
            conn.read_exact(&mut asked).expect("read");
            conn.write_all(b"Content-Type: Text/Event-Stream")
                .expect("write");
            asked
        });
        let relay = Relay::start(upstream).expect("relay");
        let mut client = TcpStream::connect(relay.addr).expect("connect");
        client.write_all(b"hello").expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).expect("read");
        assert_eq!(answer, "Content-Type: Text/Event-Stream");
        assert_eq!(&echo.join().expect("joined"), b"hello");
        assert!(relay.server_sent("content-type: text/event-stream"));
        assert!(!relay.server_sent("something else"));
    }

    #[test]
    fn a_client_of_a_server_that_is_gone_is_closed() {
        let gone = TcpListener::bind("127.0.0.1:0").expect("bind");
        let upstream = gone.local_addr().expect("addr");
        drop(gone);
        let relay = Relay::start(upstream).expect("relay");
        let mut client = TcpStream::connect(relay.addr).expect("connect");
        let mut rest = Vec::new();
        // EOF or a reset, never a hang.
        let _ = client.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
