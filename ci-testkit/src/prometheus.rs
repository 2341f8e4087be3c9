//! A real Prometheus for tests (Debian's `prometheus`, installed by
//! `scripts/test`): started on a free loopback port with a generated config
//! and its own storage in a temporary folder, scraping the given targets
//! every second, killed when dropped. Tests read what it scraped through its
//! HTTP API (`/api/v1/query`), as a dashboard or an alert rule would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::error::KitError;
use crate::wait::POLL;

/// How long Prometheus gets to answer `/-/ready` after its start.
const START: Duration = Duration::from_secs(60);
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing to scrape: the `job` label Prometheus gives it and its
/// `host:port` (the path is `/metrics`).
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub address: String,
    /// `Authorization: Bearer` to send, for a server with `CI_METRICS_TOKEN`.
    pub bearer_token: Option<String>,
}

impl Target {
    pub fn new(job: &str, address: &str) -> Target {
        Target {
            job: job.to_string(),
            address: address.to_string(),
            bearer_token: None,
        }
    }
}

/// One sample of an instant query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(|v| v.as_str())
    }
}

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(targets: &[Target]) -> String {
    let mut yaml =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for t in targets {
        yaml.push_str(&format!(
            "  - job_name: {:?}\n    static_configs:\n      - targets: [{:?}]\n",
            t.job, t.address
        ));
        if let Some(token) = &t.bearer_token {
            yaml.push_str(&format!(
                "    authorization:\n      type: Bearer\n      credentials: {token:?}\n"
            ));
        }
    }
    yaml
}

/// Starts Prometheus scraping `targets` every second and waits until it is
/// ready.
pub fn start(targets: &[Target]) -> Result<Prometheus, KitError> {
    let dir = tempfile::Builder::new()
        .prefix("ci-prometheus-")
        .tempdir()
        .map_err(KitError::io("creating Prometheus's folder"))?;
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config(targets))
        .map_err(KitError::io("writing Prometheus's config"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(KitError::io("finding a free port for Prometheus"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(dir.path().join("prometheus.log"))
        .map_err(KitError::io("creating Prometheus's log"))?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            KitError::Setup(format!(
                "cannot start prometheus ({e}): apt-get install prometheus (scripts/test does)"
            ))
        })?;
    let mut prometheus = Prometheus {
        addr,
        child,
        _dir: dir,
    };
    let deadline = Instant::now() + START;
    loop {
        if matches!(prometheus.get("/-/ready"), Ok((200, _))) {
            return Ok(prometheus);
        }
        if let Ok(Some(status)) = prometheus.child.try_wait() {
            return Err(KitError::Setup(format!(
                "prometheus exited ({status}); its log:\n{}",
                prometheus.log()
            )));
        }
        if Instant::now() >= deadline {
            return Err(KitError::Setup(format!(
                "prometheus was not ready within {START:?}; its log:\n{}",
                prometheus.log()
            )));
        }
        std::thread::sleep(POLL);
    }
}

impl Prometheus {
    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` over HTTP/1.0 (so the body is plain, never chunked):
    /// status and body.
    fn get(&self, path: &str) -> Result<(u16, String), KitError> {
        let what = format!("GET http://{}{path}", self.addr);
        let mut conn = TcpStream::connect_timeout(&self.addr, CALL_TIMEOUT)
            .map_err(KitError::io(what.clone()))?;
        conn.set_read_timeout(Some(CALL_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(CALL_TIMEOUT)))
            .map_err(KitError::io(what.clone()))?;
        write!(conn, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)
            .map_err(KitError::io(what.clone()))?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .map_err(KitError::io(what.clone()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| KitError::Setup(format!("{what}: no HTTP answer: {text:?}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KitError::Setup(format!("{what}: no status in {head:?}")))?;
        Ok((status, body.to_string()))
    }

    /// An instant query (`/api/v1/query`) evaluated now: its samples.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, KitError> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = self.get(&path)?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            KitError::Setup(format!(
                "query {promql:?} answered {status}, not JSON ({e}): {body}"
            ))
        })?;
        if json["status"] != "success" {
            return Err(KitError::Setup(format!("query {promql:?} failed: {json}")));
        }
        let result = json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result
            .into_iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| KitError::Setup(format!("query {promql:?}: sample {s}")))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The value of a query expected to give one sample (`None` for none).
    pub fn value(&self, promql: &str) -> Result<Option<f64>, KitError> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => Err(KitError::Setup(format!(
                "query {promql:?} gave {} samples: {many:?}",
                many.len()
            ))),
        }
    }

    /// Waits until Prometheus has scraped `job` after `after`, and
    /// successfully (`up` is 1), so what it holds includes everything the
    /// target counted until then.
    pub fn wait_for_scrape_after(
        &self,
        job: &str,
        after: SystemTime,
        within: Duration,
    ) -> Result<(), KitError> {
        let after = after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // `timestamp` of a plain selector is the scrape's time; of any
        // other expression (`up == 1`) it would be the evaluation's.
        let stamp = format!("timestamp(up{{job={job:?}}})");
        let up = format!("up{{job={job:?}}}");
        let deadline = Instant::now() + within;
        loop {
            // The stamp first: an `up` read after it is of that scrape or a later one.
            let seen = match (self.value(&stamp), self.value(&up)) {
                (Ok(Some(at)), Ok(Some(up))) if at > after && up == 1.0 => return Ok(()),
                (Ok(at), Ok(up)) => format!("scraped at {at:?}, up {up:?}"),
                (Err(e), _) | (_, Err(e)) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(KitError::Setup(format!(
                    "Prometheus did not scrape {job} after {after} within {within:?}; last seen: {seen}; targets: {}",
                    self.get("/api/v1/targets").map(|(_, b)| b).unwrap_or_default()
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Percent-encodes everything but unreserved characters, for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_and_configs_name_every_target() {
        assert_eq!(
            percent_encode(r#"up{job="a b"}"#),
            "up%7Bjob%3D%22a%20b%22%7D"
        );
        let yaml = config(&[
            Target::new("server", "127.0.0.1:1"),
            Target {
                bearer_token: Some("t".into()),
                ..Target::new("controller", "127.0.0.1:2")
            },
        ]);
        assert!(yaml.contains("job_name: \"server\""), "{yaml}");
        assert!(yaml.contains("targets: [\"127.0.0.1:2\"]"), "{yaml}");
        assert!(yaml.contains("credentials: \"t\""), "{yaml}");
    }
}
