//! The log pump: follows one container's output and appends it to the job's
//! events in batches, with the runtime's timestamp of the last line stored, so
//! that a restarted controller resumes exactly after it.
//!
//! The engine sometimes breaks off a log read and says so inside the stream
//! (`Error grabbing logs: …`); that text is never stored as output. The pump
//! reads again from its cursor, and when the engine keeps failing at the same
//! place it skips ahead and says in the output that some of it is missing.
//! The output budget counts what is stored already, so a pump that takes a
//! job over (after a restart) does not start the budget again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use ci_common::{CursorMove, JobId, LogCursor};
use ci_persistence::{Store, StoreError};
use futures::StreamExt;
use tokio::time::Instant;

use crate::metrics::ControllerMetrics;
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
    /// Reads the engine may break off in a row, without a line of progress
    /// between, before the pump gives up on that stretch of output.
    pub max_broken_reads: u32,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            flush_bytes: 64 * 1024,
            flush_interval: Duration::from_millis(20),
            max_log_bytes: 64 * 1024 * 1024,
            max_broken_reads: 3,
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

/// The line that tells the user a stretch of output is missing.
fn missing_output_marker(reason: &str) -> String {
    format!(
        "[ci] Output could not be read whole: the Docker engine failed to read it back ({reason}); what the job printed around here is missing.\n"
    )
}

struct Batch {
    text: String,
    /// Bytes of a UTF-8 character split across two log frames.
    carry: Vec<u8>,
    cursor: Option<LogCursor>,
    /// The cursor of the last write this pump stored (or resumed from): the
    /// store refuses a write when its cursor is no longer this one.
    stored_cursor: Option<LogCursor>,
    started: Option<Instant>,
    stored_bytes: u64,
    truncated: bool,
    /// Lines left out past the budget since the metrics last took them.
    dropped_lines: u64,
    /// The missing-output notice was written and no line came since: one
    /// notice per stretch, however often the engine fails on it.
    noticed: bool,
}

impl Batch {
    fn new(cursor: Option<LogCursor>, stored_bytes: u64, max: u64) -> Self {
        Batch {
            text: String::new(),
            carry: Vec::new(),
            stored_cursor: cursor.clone(),
            cursor,
            started: None,
            stored_bytes,
            // A marker already stored took the budget past its end.
            truncated: stored_bytes > max,
            dropped_lines: 0,
            noticed: false,
        }
    }

    /// A line of the pump's own, outside the budget (it is short, and it
    /// says what the user must know).
    fn push_notice(&mut self, notice: &str) {
        if std::mem::replace(&mut self.noticed, true) {
            return;
        }
        if !self.carry.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned();
            self.text.push_str(&rest);
        }
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
        self.text.push_str(notice);
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }

    fn push(&mut self, line: &LogLine, max: u64) {
        self.noticed = false;
        if !line.timestamp.is_empty() {
            self.cursor = Some(LogCursor::new(line.timestamp.clone()));
        }
        if self.truncated {
            self.dropped_lines += 1;
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
///
/// When the store says another follower of the job stored output meanwhile
/// (a controller thought gone had a write in flight), the pump drops what it
/// has not stored and follows on from where the stored output ends now, so
/// no line is stored twice.
pub async fn pump_logs(
    store: Store,
    runtime: Arc<dyn ContainerRuntime>,
    job_id: JobId,
    container_id: String,
    resume_after: Option<LogCursor>,
    config: PumpConfig,
    metrics: &ControllerMetrics,
) -> Result<PumpEnd, PumpError> {
    let mut resume_after = resume_after;
    loop {
        match follow_from(
            &store,
            &*runtime,
            job_id,
            &container_id,
            resume_after,
            config,
            metrics,
        )
        .await
        {
            Ok(end) => return Ok(end),
            Err(Stop::JobEnded) => return Ok(PumpEnd::JobEnded),
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::Overtaken(stored)) => {
                tracing::warn!(%job_id, ?stored, "another follower stored this job's output; following on after it");
                resume_after = stored;
            }
        }
    }
}

/// Why [`follow_from`] stopped before the output ended.
enum Stop {
    JobEnded,
    /// Another follower stored output; it ends at this cursor now.
    Overtaken(Option<LogCursor>),
    Failed(PumpError),
}

impl<E: Into<PumpError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

async fn follow_from(
    store: &Store,
    runtime: &dyn ContainerRuntime,
    job_id: JobId,
    container_id: &str,
    resume_after: Option<LogCursor>,
    config: PumpConfig,
    metrics: &ControllerMetrics,
) -> Result<PumpEnd, Stop> {
    // After an adoption the budget goes on from what is stored already.
    let stored_bytes = store
        .stored_log_bytes(job_id)
        .await
        .map_err(PumpError::from)?;
    let mut batch = Batch::new(resume_after, stored_bytes, config.max_log_bytes);
    // Lines at or before this are stored already (Docker resumes at a whole
    // second, so some come again).
    let mut skip_until = batch
        .cursor
        .as_ref()
        .map(LogCursor::as_str)
        .and_then(parse_ts);
    let mut lines = runtime.logs(container_id, skip_until.map(|t| t.timestamp()));
    let mut broken_reads = 0u32;
    loop {
        let deadline = batch.started.map(|s| s + config.flush_interval);
        let next = tokio::select! {
            next = lines.next() => next,
            _ = sleep_until_opt(deadline) => {
                flush(store, job_id, &mut batch, metrics).await?;
                continue;
            }
        };
        match next {
            Some(Ok(line)) => {
                if let (Some(skip), Some(ts)) = (skip_until, parse_ts(&line.timestamp)) {
                    if ts <= skip {
                        continue;
                    }
                }
                broken_reads = 0;
                batch.push(&line, config.max_log_bytes);
                if batch.dropped_lines > 0 {
                    metrics.output_lines_dropped(std::mem::take(&mut batch.dropped_lines));
                }
                if batch.text.len() >= config.flush_bytes {
                    flush(store, job_id, &mut batch, metrics).await?;
                }
            }
            Some(Err(RuntimeError::LogReadBroken(reason))) => {
                broken_reads += 1;
                tracing::warn!(%job_id, %reason, broken_reads, "the engine broke off reading the output");
                let resume = match resume_after_broken_read(
                    broken_reads,
                    config.max_broken_reads,
                    batch.cursor.as_ref().map(LogCursor::as_str),
                    chrono::Utc::now(),
                ) {
                    Resume::FromCursor(at) => at,
                    Resume::SkipTo(now) => {
                        // The same stretch keeps failing: give it up, say so,
                        // and follow what comes after it.
                        batch.push_notice(&missing_output_marker(&reason));
                        batch.cursor = Some(LogCursor::new(
                            now.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                        ));
                        broken_reads = 0;
                        Some(now.fixed_offset())
                    }
                };
                flush(store, job_id, &mut batch, metrics).await?;
                if broken_reads > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << broken_reads.min(4))).await;
                }
                skip_until = resume;
                lines = runtime.logs(container_id, skip_until.map(|t| t.timestamp()));
            }
            Some(Err(e)) => {
                flush(store, job_id, &mut batch, metrics).await?;
                return Err(Stop::Failed(e.into()));
            }
            None => {
                if !batch.carry.is_empty() {
                    let rest =
                        String::from_utf8_lossy(&std::mem::take(&mut batch.carry)).into_owned();
                    batch.text.push_str(&rest);
                }
                flush(store, job_id, &mut batch, metrics).await?;
                return Ok(PumpEnd::Drained);
            }
        }
    }
}

/// Where to read again after the engine broke off a read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// After the last line taken (the beginning when there is none).
    FromCursor(Option<DateTime<FixedOffset>>),
    /// After `now`: the reads keep failing at the same place.
    SkipTo(DateTime<chrono::Utc>),
}

fn resume_after_broken_read(
    broken_in_a_row: u32,
    max_broken_reads: u32,
    cursor: Option<&str>,
    now: DateTime<chrono::Utc>,
) -> Resume {
    if broken_in_a_row > max_broken_reads {
        Resume::SkipTo(now)
    } else {
        Resume::FromCursor(cursor.and_then(parse_ts))
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes the batch as one chunk, retrying briefly when the database is busy.
async fn flush(
    store: &Store,
    job_id: JobId,
    batch: &mut Batch,
    metrics: &ControllerMetrics,
) -> Result<(), Stop> {
    if batch.text.is_empty() {
        return Ok(());
    }
    let text = std::mem::take(&mut batch.text);
    batch.started = None;
    // Lines without the engine's timestamps give no cursor to guard.
    let moved = batch.cursor.clone().map(|to| CursorMove {
        from: batch.stored_cursor.clone(),
        to,
    });
    let mut attempt = 0u32;
    loop {
        match store
            .append_log(job_id, std::slice::from_ref(&text), moved.as_ref())
            .await
        {
            Ok(_) => {
                batch.stored_bytes += text.len() as u64;
                batch.stored_cursor = batch.cursor.clone();
                metrics.output_stored(text.len() as u64);
                return Ok(());
            }
            Err(StoreError::IllegalTransition(_)) => return Err(Stop::JobEnded),
            Err(StoreError::CursorMoved { stored, .. }) => return Err(Stop::Overtaken(stored)),
            Err(e) if attempt < 8 => {
                attempt += 1;
                tracing::warn!(%job_id, error = %e, attempt, "storing output failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            Err(e) => return Err(Stop::Failed(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::{ContainerInfo, ContainerSpec, ContainerState, InputStream};
    use async_trait::async_trait;
    use bytes::Bytes;
    use ci_persistence::{NewJob, StoreOptions};
    use futures::stream::BoxStream;
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    /// A runtime whose log reads are scripted, one script per call; it
    /// records the `since` each read asked for.
    #[derive(Default)]
    struct ScriptedLogs {
        reads: Mutex<VecDeque<Vec<crate::runtime::Result<LogLine>>>>,
        since: Mutex<Vec<Option<i64>>>,
    }

    #[async_trait]
    impl ContainerRuntime for ScriptedLogs {
        async fn image_exists(&self, _: &str) -> crate::runtime::Result<bool> {
            Ok(true)
        }
        async fn create(&self, _: &ContainerSpec) -> crate::runtime::Result<String> {
            Ok("c".into())
        }
        async fn start(&self, _: &str) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn start_with_input(&self, _: &str, _: InputStream) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn list_images(
            &self,
            _: &str,
        ) -> crate::runtime::Result<Vec<crate::runtime::ImageInfo>> {
            Ok(Vec::new())
        }
        async fn read_file(
            &self,
            _: &str,
            _: &str,
            _: u64,
        ) -> crate::runtime::Result<crate::runtime::FileRead> {
            Ok(crate::runtime::FileRead::Missing)
        }
        async fn inspect(&self, _: &str) -> crate::runtime::Result<Option<ContainerState>> {
            Ok(None)
        }
        async fn image_id(&self, _: &str) -> crate::runtime::Result<Option<String>> {
            Ok(None)
        }
        async fn commit(
            &self,
            _: &str,
            _: &str,
            _: &std::collections::BTreeMap<String, String>,
        ) -> crate::runtime::Result<String> {
            Ok("image".into())
        }
        async fn remove_image(&self, _: &str) -> crate::runtime::Result<crate::runtime::Removal> {
            Ok(crate::runtime::Removal::Missing)
        }
        async fn remove_volume(&self, _: &str) -> crate::runtime::Result<crate::runtime::Removal> {
            Ok(crate::runtime::Removal::Missing)
        }
        async fn volume_size(&self, _: &str) -> crate::runtime::Result<Option<u64>> {
            Ok(None)
        }
        fn logs(
            &self,
            _: &str,
            since: Option<i64>,
        ) -> BoxStream<'static, crate::runtime::Result<LogLine>> {
            self.since.lock().unwrap().push(since);
            let read = self.reads.lock().unwrap().pop_front().unwrap_or_default();
            futures::stream::iter(read).boxed()
        }
        async fn disk_use(
            &self,
            _: &[String],
        ) -> crate::runtime::Result<HashMap<String, crate::runtime::DiskUse>> {
            Ok(HashMap::new())
        }
        async fn stop(&self, _: &str, _: Duration) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn list(&self, _: &str) -> crate::runtime::Result<Vec<ContainerInfo>> {
            Ok(Vec::new())
        }
    }

    fn line(second: u32, text: &str) -> crate::runtime::Result<LogLine> {
        Ok(LogLine {
            timestamp: format!("2026-11-22T19:00:{second:02}.000000001Z"),
            bytes: Bytes::from(text.to_string()),
        })
    }

    fn broken() -> crate::runtime::Result<LogLine> {
        Err(RuntimeError::LogReadBroken(
            "Error grabbing logs: error unmarshalling log entry".into(),
        ))
    }

    async fn store_with_job() -> (Store, JobId, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let store = Store::open_url(&url, StoreOptions::default())
            .await
            .unwrap();
        let user = store.create_user("Pump", "pump@example.com").await.unwrap();
        let digest = store.put_archive(b"zip").await.unwrap();
        let id = store
            .create_job(&NewJob::new(user.id, digest))
            .await
            .unwrap()
            .id;
        (store, id, dir)
    }

    async fn output(store: &Store, job: JobId) -> String {
        let chunks = store.read_log(job, 0, 10_000).await.unwrap();
        chunks.into_iter().map(|c| c.text).collect()
    }

    fn config() -> PumpConfig {
        PumpConfig {
            flush_interval: Duration::from_millis(1),
            ..PumpConfig::default()
        }
    }

    async fn pump(store: &Store, runtime: &Arc<ScriptedLogs>, job: JobId, config: PumpConfig) {
        let end = pump_logs(
            store.clone(),
            runtime.clone(),
            job,
            "c".into(),
            None,
            config,
            &ControllerMetrics::default(),
        )
        .await
        .unwrap();
        assert_eq!(end, PumpEnd::Drained);
    }

    #[tokio::test]
    async fn a_pump_overtaken_by_another_follower_stores_each_line_once() {
        let (store, job, _dir) = store_with_job().await;
        // The pump read the cursor (none yet); then a follower thought gone
        // committed the first two lines.
        store
            .append_log(
                job,
                &["one\ntwo\n".into()],
                Some(&CursorMove {
                    from: None,
                    to: LogCursor::new("2026-11-22T19:00:02.000000001Z"),
                }),
            )
            .await
            .unwrap();
        let runtime = Arc::new(ScriptedLogs::default());
        runtime.reads.lock().unwrap().extend([
            vec![line(1, "one\n"), line(2, "two\n")],
            // Read again from where the stored output ends.
            vec![line(2, "two\n"), line(3, "three\n")],
        ]);
        let config = PumpConfig {
            flush_bytes: 1,
            ..config()
        };
        pump(&store, &runtime, job, config).await;
        assert_eq!(output(&store, job).await, "one\ntwo\nthree\n");
        let since = runtime.since.lock().unwrap().clone();
        assert_eq!(
            since,
            [
                None,
                Some(parse_ts("2026-11-22T19:00:02Z").unwrap().timestamp())
            ]
        );
    }

    #[tokio::test]
    async fn a_broken_read_is_resumed_from_the_cursor_and_never_stored() {
        let (store, job, _dir) = store_with_job().await;
        let runtime = Arc::new(ScriptedLogs::default());
        runtime.reads.lock().unwrap().extend([
            vec![
                line(1, "one\n"),
                line(2, "two\n"),
                broken(),
                line(9, "garbage\n"),
            ],
            // Docker resumes at a whole second: "two" comes again.
            vec![line(2, "two\n"), line(3, "three\n")],
        ]);
        pump(&store, &runtime, job, config()).await;
        assert_eq!(output(&store, job).await, "one\ntwo\nthree\n");
        // The second read started at the cursor's second.
        let since = runtime.since.lock().unwrap().clone();
        assert_eq!(since.len(), 2);
        assert_eq!(since[0], None);
        assert_eq!(
            since[1],
            Some(parse_ts("2026-11-22T19:00:02Z").unwrap().timestamp())
        );
    }

    #[tokio::test]
    async fn output_the_engine_cannot_read_says_so() {
        let (store, job, _dir) = store_with_job().await;
        let runtime = Arc::new(ScriptedLogs::default());
        let config = PumpConfig {
            max_broken_reads: 2,
            ..config()
        };
        // The same place fails every time: after two retries it is given up,
        // noticed once, and what follows is read.
        runtime.reads.lock().unwrap().extend([
            vec![line(1, "before\n"), broken()],
            vec![broken()],
            vec![broken()],
            vec![broken()],
            vec![broken()],
            vec![broken()],
            vec![broken()],
        ]);
        pump(&store, &runtime, job, config).await;
        let out = output(&store, job).await;
        assert!(
            out.starts_with("before\n[ci] Output could not be read whole"),
            "{out}"
        );
        assert_eq!(
            out.matches("[ci] Output could not be read whole").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("Error grabbing logs: error unmarshalling log entry\n"));
        assert!(out.ends_with("is missing.\n"), "{out}");
        let cursor = store
            .get_job(job)
            .await
            .unwrap()
            .unwrap()
            .log_cursor
            .unwrap();
        assert!(
            parse_ts(cursor.as_str()).unwrap() > parse_ts("2026-11-22T19:00:01Z").unwrap(),
            "the cursor moved past the stretch given up: {cursor:?}"
        );
    }

    #[tokio::test]
    async fn the_output_budget_counts_what_is_stored_already() {
        let (store, job, _dir) = store_with_job().await;
        // A previous controller stored 80 of the 100 bytes allowed.
        store
            .append_log(
                job,
                &["x".repeat(80)],
                Some(&CursorMove {
                    from: None,
                    to: LogCursor::new("2026-11-22T19:00:01.000000001Z"),
                }),
            )
            .await
            .unwrap();
        let runtime = Arc::new(ScriptedLogs::default());
        runtime
            .reads
            .lock()
            .unwrap()
            .push_back(vec![line(1, "stored before\n"), line(2, &"y".repeat(50))]);
        let config = PumpConfig {
            max_log_bytes: 100,
            ..config()
        };
        let metrics = ControllerMetrics::default();
        let end = pump_logs(
            store.clone(),
            runtime.clone(),
            job,
            "c".into(),
            Some(LogCursor::new("2026-11-22T19:00:01.000000001Z")),
            config,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(end, PumpEnd::Drained);
        let out = output(&store, job).await;
        let marker =
            "[ci] Output truncated: the job printed more than 100 bytes; the rest is not kept.\n";
        assert_eq!(
            out,
            format!("{}{}\n{marker}", "x".repeat(80), "y".repeat(20))
        );

        // Adopted again after the cut: nothing more, and no second marker.
        runtime
            .reads
            .lock()
            .unwrap()
            .push_back(vec![line(3, "more\n")]);
        let end = pump_logs(
            store.clone(),
            runtime.clone(),
            job,
            "c".into(),
            None,
            config,
            &metrics,
        )
        .await
        .unwrap();
        assert_eq!(end, PumpEnd::Drained);
        assert_eq!(output(&store, job).await, out);
        // Counted: what this controller stored (not the 80 bytes before it),
        // and the one line left out after the cut.
        let text = metrics
            .encode(&store, crate::leadership::Leadership::Leader)
            .await
            .unwrap();
        let stored = (out.len() - 80) as f64;
        assert_eq!(
            crate::metrics::sample(&text, "ci_jobs_output_stored_bytes_total"),
            stored
        );
        assert_eq!(
            crate::metrics::sample(&text, "ci_jobs_output_dropped_lines_total"),
            1.0
        );
    }
}
