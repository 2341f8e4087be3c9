//! The log pump: follows one container's output and appends it to the job's
//! events in batches, with the runtime's timestamp of the last line stored, so
//! that a restarted controller resumes exactly after it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use ci_common::JobId;
use ci_persistence::{Store, StoreError};
use futures::StreamExt;
use tokio::time::Instant;

use crate::runtime::{ContainerRuntime, LogLine, RuntimeError};

/// How output is batched and bounded.
#[derive(Debug, Clone, Copy)]
pub struct PumpConfig {
    /// A batch is written once it holds this much text…
    pub flush_bytes: usize,
    /// …or once its first byte has waited this long, so a quiet job's lines
    /// still arrive promptly.
    pub flush_interval: Duration,
    /// Output kept per job; the rest is cut with a marker line.
    pub max_log_bytes: u64,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            flush_bytes: 64 * 1024,
            flush_interval: Duration::from_millis(20),
            max_log_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("reading the container's output failed: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("storing the job's output failed: {0}")]
    Store(#[from] StoreError),
}

/// How a pump ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The output ended: the container stopped and everything is stored.
    Drained,
    /// The job ended (cancelled) while output was still coming.
    JobEnded,
}

/// Docker log timestamps in order, parsed once.
fn parse_ts(ts: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(ts).ok()
}

struct Batch {
    text: String,
    /// Bytes of a UTF-8 character split across two log frames.
    carry: Vec<u8>,
    cursor: Option<String>,
    started: Option<Instant>,
    stored_bytes: u64,
    truncated: bool,
}

impl Batch {
    fn push(&mut self, line: &LogLine, max: u64) {
        if !line.timestamp.is_empty() {
            self.cursor = Some(line.timestamp.clone());
        }
        if self.truncated {
            return;
        }
        self.carry.extend_from_slice(&line.bytes);
        let valid = match std::str::from_utf8(&self.carry) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let rest = self.carry.split_off(valid);
        let decoded = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;

        let room = max.saturating_sub(self.stored_bytes + self.text.len() as u64) as usize;
        if decoded.len() <= room {
            self.text.push_str(&decoded);
        } else {
            let mut cut = room;
            while !decoded.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&decoded[..cut]);
            if !self.text.is_empty() && !self.text.ends_with('\n') {
                self.text.push('\n');
            }
            self.text.push_str(&format!(
                "[ci] Output truncated: the job printed more than {max} bytes; the rest is not kept.\n"
            ));
            self.truncated = true;
        }
        if self.started.is_none() && !self.text.is_empty() {
            self.started = Some(Instant::now());
        }
    }
}

/// Follows a container's output into the job's events until it ends.
/// `resume_after` is the timestamp of the last line already stored, if any.
pub async fn pump_logs(
    store: Store,
    runtime: Arc<dyn ContainerRuntime>,
    job_id: JobId,
    container_id: String,
    resume_after: Option<String>,
    config: PumpConfig,
) -> Result<PumpEnd, PumpError> {
    let resume_ts = resume_after.as_deref().and_then(parse_ts);
    let since = resume_ts.map(|t| t.timestamp());
    let mut lines = runtime.logs(&container_id, since);
    let mut batch = Batch {
        text: String::new(),
        carry: Vec::new(),
        cursor: resume_after,
        started: None,
        stored_bytes: 0,
        truncated: false,
    };
    loop {
        let deadline = batch.started.map(|s| s + config.flush_interval);
        let next = tokio::select! {
            next = lines.next() => next,
            _ = sleep_until_opt(deadline) => {
                if flush(&store, job_id, &mut batch).await? == PumpEnd::JobEnded {
                    return Ok(PumpEnd::JobEnded);
                }
                continue;
            }
        };
        match next {
            Some(Ok(line)) => {
                // On resume, Docker starts at a whole second; skip what is stored.
                if let (Some(resume), Some(ts)) = (resume_ts, parse_ts(&line.timestamp)) {
                    if ts <= resume {
                        continue;
                    }
                }
                batch.push(&line, config.max_log_bytes);
                if batch.text.len() >= config.flush_bytes
                    && flush(&store, job_id, &mut batch).await? == PumpEnd::JobEnded
                {
                    return Ok(PumpEnd::JobEnded);
                }
            }
            Some(Err(e)) => {
                flush(&store, job_id, &mut batch).await?;
                return Err(e.into());
            }
            None => {
                if !batch.carry.is_empty() {
                    let rest =
                        String::from_utf8_lossy(&std::mem::take(&mut batch.carry)).into_owned();
                    batch.text.push_str(&rest);
                }
                return flush(&store, job_id, &mut batch).await;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes the batch as one chunk, retrying briefly when the database is busy.
async fn flush(store: &Store, job_id: JobId, batch: &mut Batch) -> Result<PumpEnd, PumpError> {
    if batch.text.is_empty() {
        return Ok(PumpEnd::Drained);
    }
    let text = std::mem::take(&mut batch.text);
    batch.started = None;
    let mut attempt = 0u32;
    loop {
        match store
            .append_log(job_id, std::slice::from_ref(&text), batch.cursor.as_deref())
            .await
        {
            Ok(_) => {
                batch.stored_bytes += text.len() as u64;
                return Ok(PumpEnd::Drained);
            }
            Err(StoreError::IllegalTransition(_)) => return Ok(PumpEnd::JobEnded),
            Err(e) if attempt < 8 => {
                attempt += 1;
                tracing::warn!(%job_id, error = %e, attempt, "storing output failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
