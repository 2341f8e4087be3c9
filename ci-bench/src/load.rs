//! A small closed-loop HTTP load client: N keep-alive connections, each sending
//! the next request as soon as the previous answer is read, for a fixed time.
//! Latencies are kept as integer microseconds so that recording one costs
//! next to nothing beside the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::error::{BenchError, Result};
use crate::http::Connection;
use crate::stats::percentile_us_as_ms;

/// What one load run measured (only requests that completed inside the
/// measured window, after the warm-up, count).
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub window: Duration,
    /// Sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(f64::EPSILON)
    }

    pub fn p50_ms(&self) -> f64 {
        percentile_us_as_ms(&self.latencies_us, 50.0).unwrap_or(f64::NAN)
    }

    pub fn p99_ms(&self) -> f64 {
        percentile_us_as_ms(&self.latencies_us, 99.0).unwrap_or(f64::NAN)
    }
}

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Sends `GET path` (with the key, when given) over `shape.connections`
/// connections for `shape.warmup + shape.duration`.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    shape: LoadShape,
) -> Result<LoadResult> {
    let mut connections = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        connections.push(Connection::open(addr).await?);
    }
    let barrier = Arc::new(Barrier::new(shape.connections + 1));
    let path: Arc<str> = Arc::from(path);
    let key: Option<Arc<str>> = key.map(Arc::from);
    let mut tasks = Vec::with_capacity(shape.connections);
    for conn in connections {
        let barrier = barrier.clone();
        let path = path.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            hammer(
                conn,
                &path,
                key.as_deref(),
                start + shape.warmup,
                start + shape.warmup + shape.duration,
            )
            .await
        }));
    }
    barrier.wait().await;
    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        window: shape.duration,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task
            .await
            .map_err(|e| BenchError::Setup(format!("a load connection panicked: {e}")))?;
        result.ok += latencies.len() as u64;
        result.errors += errors;
        result.latencies_us.extend(latencies);
    }
    result.latencies_us.sort_unstable();
    if result.ok == 0 {
        return Err(BenchError::protocol(
            format!("GET {path} under load"),
            format!("no request succeeded ({} errors)", result.errors),
        ));
    }
    Ok(result)
}

/// One connection's loop: latencies of the requests that ended inside
/// `[measure_from, until]`, and the count of failed ones. A broken connection
/// is reopened, so one error does not silence a connection for the rest.
async fn hammer(
    mut conn: Connection,
    path: &str,
    key: Option<&str>,
    measure_from: Instant,
    until: Instant,
) -> (Vec<u32>, u64) {
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut errors = 0u64;
    let addr_host = conn.addr();
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let ok = match conn.get(path, key, None).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await;
                status.is_success() && body.is_ok()
            }
            Err(_) => {
                match Connection::open(addr_host).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                false
            }
        };
        let done = Instant::now();
        if done < measure_from || done > until {
            continue;
        }
        if ok {
            let us = (done - sent).as_micros().min(u128::from(u32::MAX)) as u32;
            latencies.push(us);
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}
