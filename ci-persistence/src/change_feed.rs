//! Wake-ups for whoever waits on the database: the controller waits for new or
//! cancelled jobs ([`Channel::Jobs`]), an event stream waits for changes of its
//! own job only ([`ChangeFeed::subscribe_job`]), so that the cost of streaming
//! grows with the output, not with streams × running jobs.
//!
//! Writers notify waiters in their own process at once. Waiters in other
//! processes learn of changes from the database itself:
//! - on PostgreSQL, a trigger on `jobs` sends `NOTIFY ci_signals` with the
//!   payload `job:<id>` when a job's output or status moved and `jobs` when a
//!   job was created, cancelled, started or ended; a listener receives them, so
//!   nobody polls and no shared row is written per output batch;
//! - on SQLite (one file, several processes), a watcher asks `PRAGMA
//!   data_version` (an in-memory check that changes when any other connection
//!   commits), polling fast for a while after a change and backing off while
//!   nothing changes; when it moved, it reads the `jobs` signal (bumped by a trigger)
//!   and the last sequence and status of the jobs that have subscribers here,
//!   and wakes only those whose row moved.
//!
//! A wake-up is only a hint to look: waiters read the database for themselves,
//! and streams also look every few seconds (the resync) should one be missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ci_common::JobId;
use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::error::Result;
use crate::store::Backend;

/// What changed, for waiters that care about all jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A job was created, cancelled, started or ended.
    Jobs,
}

/// Fan-out of change notifications: [`subscribe`](Self::subscribe) to a
/// channel, or [`subscribe_job`](Self::subscribe_job) to one job, then wait.
#[derive(Debug)]
pub struct ChangeFeed {
    jobs: watch::Sender<u64>,
    job_watches: Arc<JobWatches>,
    /// Tells the SQLite watcher to look now and poll fast again: this process
    /// just wrote (others often answer a write with one of their own: the
    /// controller starts a job the server queued) or began to wait on a job.
    look_soon: Arc<Notify>,
}

/// The senders of the jobs that have subscribers in this process.
#[derive(Debug, Default)]
struct JobWatches {
    senders: Mutex<HashMap<JobId, watch::Sender<u64>>>,
}

impl JobWatches {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, watch::Sender<u64>>> {
        // The map stays consistent whatever panicked while holding it.
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, job_id: JobId) {
        if let Some(sender) = self.lock().get(&job_id) {
            sender.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn subscribed(&self) -> Vec<JobId> {
        self.lock().keys().copied().collect()
    }
}

/// Wake-ups for one job: its output grew or its status changed. Dropping the
/// last watch of a job forgets the job.
#[derive(Debug)]
pub struct JobWatch {
    job_id: JobId,
    receiver: watch::Receiver<u64>,
    watches: Arc<JobWatches>,
}

impl JobWatch {
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Marks everything so far as seen. Call it before reading the job, so
    /// that a change landing during the read wakes the next
    /// [`changed`](Self::changed) instead of being lost.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Whether the job changed after the last [`mark_seen`](Self::mark_seen).
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(true)
    }

    /// Waits until the job changes after the last [`mark_seen`](Self::mark_seen).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as any watch of the job does, this one
            // included, so this cannot happen; should it, wait for nothing
            // rather than spin (the caller's resync still looks).
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut senders = self.watches.lock();
        // Counted under the lock that subscribing takes, so a subscriber
        // arriving now either is counted here or finds no sender and makes one.
        if senders
            .get(&self.job_id)
            .is_some_and(|s| s.receiver_count() <= 1)
        {
            senders.remove(&self.job_id);
        }
    }
}

/// How the SQLite watcher paces its looks at `PRAGMA data_version`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollPace {
    /// Right after a change, after a write of this process, and after a new
    /// job subscription.
    pub fastest: Duration,
    /// The longest wait between two looks after a quiet spell: the worst
    /// latency of another process's first change.
    pub slowest: Duration,
}

impl ChangeFeed {
    pub(crate) async fn start(
        backend: Backend,
        url: &str,
        pool: AnyPool,
        pace: PollPace,
    ) -> Result<Arc<ChangeFeed>> {
        let feed = Arc::new(ChangeFeed {
            jobs: watch::channel(0).0,
            job_watches: Arc::default(),
            look_soon: Arc::default(),
        });
        match backend {
            Backend::Sqlite => {
                let conn = pool.acquire().await?.detach();
                tokio::spawn(watch_sqlite(
                    conn,
                    Arc::downgrade(&feed),
                    feed.look_soon.clone(),
                    pace,
                ));
            }
            Backend::Postgres => {
                let listener = listen(url).await?;
                tokio::spawn(listen_postgres(
                    url.to_string(),
                    listener,
                    Arc::downgrade(&feed),
                ));
            }
        }
        Ok(feed)
    }

    /// A receiver that wakes on every later change of `channel`.
    pub fn subscribe(&self, channel: Channel) -> watch::Receiver<u64> {
        match channel {
            Channel::Jobs => self.jobs.subscribe(),
        }
    }

    /// Wake-ups for changes of one job only (its output, its status), from
    /// this process and every other; drop it when done waiting.
    pub fn subscribe_job(&self, job_id: JobId) -> JobWatch {
        let receiver = self
            .job_watches
            .lock()
            .entry(job_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        self.look_soon.notify_one();
        JobWatch {
            job_id,
            receiver,
            watches: self.job_watches.clone(),
        }
    }

    /// Wakes this process's waiters on `channel`.
    pub fn notify(&self, channel: Channel) {
        self.wake(channel);
        self.look_soon.notify_one();
    }

    /// Wakes this process's waiters on one job.
    pub fn notify_job(&self, job_id: JobId) {
        self.job_watches.wake(job_id);
        self.look_soon.notify_one();
    }

    /// Wakes waiters on `channel` for a change another process made.
    fn wake(&self, channel: Channel) {
        match channel {
            Channel::Jobs => self.jobs.send_modify(|v| *v = v.wrapping_add(1)),
        }
    }

    /// Jobs with at least one [`JobWatch`] in this process.
    pub(crate) fn watched_jobs(&self) -> Vec<JobId> {
        self.job_watches.subscribed()
    }
}

/// The PostgreSQL notification channel the triggers send on.
const NOTIFY_CHANNEL: &str = "ci_signals";

/// What a notification on [`NOTIFY_CHANNEL`] says.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Jobs,
    Job(JobId),
    /// "Some job's output grew", from writers older than per-job payloads.
    AnyJob,
}

fn parse_signal(payload: &str) -> Option<Signal> {
    match payload {
        "jobs" => Some(Signal::Jobs),
        "events" => Some(Signal::AnyJob),
        _ => payload
            .strip_prefix("job:")
            .and_then(|id| id.parse().ok())
            .map(Signal::Job),
    }
}

/// The first wait before connecting the listener again after a failure; it
/// doubles with every failed attempt up to [`LISTEN_RETRY_MAX`].
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// A listener on its own connection (not one of the store's pool), listening
/// on [`NOTIFY_CHANNEL`].
async fn listen(url: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Receives PostgreSQL notifications until the feed is dropped.
///
/// A connection can be lost at any time (a database restart or failover, an
/// administrator ending it). When sqlx's listener reconnects at once by
/// itself, `try_recv` says `Ok(None)`; when it cannot, it fails, and a new
/// listener is connected here with a growing wait between attempts. Either
/// way what was sent meanwhile is unknown, so every waiter is woken once the
/// listener listens again, and waiters look for themselves.
async fn listen_postgres(url: String, mut listener: PgListener, feed: Weak<ChangeFeed>) {
    loop {
        let received = listener.try_recv().await;
        let Some(live) = feed.upgrade() else { return };
        match received {
            Ok(Some(n)) => {
                match parse_signal(n.payload()) {
                    Some(Signal::Jobs) => live.wake(Channel::Jobs),
                    Some(Signal::Job(id)) => live.job_watches.wake(id),
                    Some(Signal::AnyJob) => live.job_watches.wake_all(),
                    None => {
                        tracing::debug!(payload = n.payload(), "change listener: unknown signal")
                    }
                }
                continue;
            }
            Ok(None) => {
                tracing::warn!("change listener: the database connection was lost; reconnected");
            }
            Err(e) => {
                tracing::warn!(error = %e, "change listener: the database connection was lost; reconnecting");
                drop(live);
                match reconnect(&url, &feed).await {
                    Some(again) => listener = again,
                    None => return,
                }
                tracing::info!("change listener: listening again");
            }
        }
        if let Some(live) = feed.upgrade() {
            live.wake(Channel::Jobs);
            live.job_watches.wake_all();
        }
    }
}

/// Connects a new listener, waiting longer after every failed attempt;
/// `None` when the feed was dropped meanwhile.
async fn reconnect(url: &str, feed: &Weak<ChangeFeed>) -> Option<PgListener> {
    let mut wait = LISTEN_RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        if feed.strong_count() == 0 {
            return None;
        }
        match listen(url).await {
            Ok(listener) => return Some(listener),
            Err(e) => {
                wait = (wait * 2).min(LISTEN_RETRY_MAX);
                tracing::warn!(error = %e, retry_in = ?wait, "change listener: cannot reconnect");
            }
        }
    }
}

/// Jobs looked up per statement, well under SQLite's parameter limit.
const JOBS_PER_LOOKUP: usize = 500;

/// What the SQLite watcher last saw of a watched job: its last sequence
/// number and its status.
type JobMark = (i64, String);

/// How long the SQLite watcher keeps polling fastest after a nudge (a write
/// or a new job subscription of this process): another process often answers
/// soon (the controller starts the job this server queued, and its container
/// prints a few hundred milliseconds later), and that answer should not wait
/// for a backed-off look.
const FAST_AFTER_NUDGE: Duration = Duration::from_secs(1);

/// How long it keeps polling fastest after another process's change: long
/// enough to follow a job that prints steadily (the controller flushes output
/// every 20 ms) at full speed, short enough that the controller's lease
/// renewal, a write every second, does not keep an idle process polling fast.
const FAST_AFTER_CHANGE: Duration = Duration::from_millis(100);

/// Watches for commits of other processes until the feed is dropped.
///
/// The pace: for [`FAST_AFTER_NUDGE`] after a nudge through `look_soon`, and
/// for [`FAST_AFTER_CHANGE`] after a change, the looks come every
/// `pace.fastest`; after that every quiet look doubles the wait, up to
/// `pace.slowest`. An idle process thus looks tens of times a second
/// instead of hundreds, and a busy one still sees each change within
/// milliseconds.
async fn watch_sqlite(
    mut conn: AnyConnection,
    feed: Weak<ChangeFeed>,
    look_soon: Arc<Notify>,
    pace: PollPace,
) {
    let mut data_version: Option<i64> = None;
    let mut jobs_version: Option<i64> = None;
    let mut seen: HashMap<JobId, JobMark> = HashMap::new();
    let mut wait = pace.fastest;
    let mut fast_until = Instant::now() + FAST_AFTER_NUDGE;
    let mut last_look = Instant::now();
    loop {
        // A nudge shortens the wait to the fastest pace counted from the last
        // look, not from now: this process's own writes nudge it, and a
        // stream of them must neither postpone the next look nor add looks
        // that would only find those writes.
        tokio::select! {
            _ = tokio::time::sleep_until(last_look + wait) => {}
            _ = look_soon.notified() => {
                wait = pace.fastest;
                fast_until = fast_until.max(Instant::now() + FAST_AFTER_NUDGE);
                continue;
            }
        }
        last_look = Instant::now();
        let Some(feed) = feed.upgrade() else { return };
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut conn)
            .await
        {
            Ok(v) if data_version == Some(v) => {
                wait = if Instant::now() < fast_until {
                    pace.fastest
                } else {
                    (wait * 2).min(pace.slowest)
                };
                continue;
            }
            Ok(v) => {
                data_version = Some(v);
                wait = pace.fastest;
                fast_until = fast_until.max(Instant::now() + FAST_AFTER_CHANGE);
            }
            Err(e) => {
                tracing::warn!(error = %e, "change watcher: cannot read data_version");
                wait = pace.slowest.max(Duration::from_secs(1));
                continue;
            }
        }
        if let Err(e) = look(&mut conn, &feed, &mut jobs_version, &mut seen).await {
            tracing::warn!(error = %e, "change watcher: cannot read what changed");
            // Look again next time: the change is not yet accounted for.
            data_version = None;
            wait = pace.slowest.max(Duration::from_secs(1));
        }
    }
}

/// Reads the `jobs` signal and the watched jobs' rows (in one statement while
/// few jobs are watched), and wakes whoever waits on something that moved
/// since the last look.
async fn look(
    conn: &mut AnyConnection,
    feed: &ChangeFeed,
    jobs_version: &mut Option<i64>,
    seen: &mut HashMap<JobId, JobMark>,
) -> Result<()> {
    let watched = feed.watched_jobs();
    seen.retain(|id, _| watched.contains(id));
    let mut batches: Vec<&[JobId]> = watched.chunks(JOBS_PER_LOOKUP).collect();
    if batches.is_empty() {
        batches.push(&[]);
    }
    for (n, ids) in batches.into_iter().enumerate() {
        let mut parts = Vec::new();
        if n == 0 {
            parts.push(
                "SELECT '' AS id, version, '' AS status FROM signals WHERE channel = 'jobs'"
                    .to_string(),
            );
        }
        if !ids.is_empty() {
            let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            parts.push(format!(
                "SELECT id, last_seq, status FROM jobs WHERE id IN ({})",
                placeholders.join(", ")
            ));
        }
        let sql = parts.join(" UNION ALL ");
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: String = row.try_get(0)?;
            let number: i64 = row.try_get(1)?;
            if id.is_empty() {
                if jobs_version.replace(number) != Some(number) {
                    feed.wake(Channel::Jobs);
                }
                continue;
            }
            let Ok(id) = id.parse::<JobId>() else {
                continue;
            };
            let mark: JobMark = (number, row.try_get(2)?);
            // A job seen for the first time is woken too: it may have moved
            // between its subscriber's last read and this look.
            if seen.get(&id) != Some(&mark) {
                seen.insert(id, mark);
                feed.job_watches.wake(id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_name_all_jobs_or_one() {
        let id = JobId::random();
        assert_eq!(parse_signal("jobs"), Some(Signal::Jobs));
        assert_eq!(parse_signal("events"), Some(Signal::AnyJob));
        assert_eq!(parse_signal(&format!("job:{id}")), Some(Signal::Job(id)));
        assert_eq!(parse_signal("job:not-a-uuid"), None);
        assert_eq!(parse_signal("other"), None);
    }

    #[test]
    fn the_last_watch_of_a_job_forgets_it() {
        let watches = Arc::new(JobWatches::default());
        let feed = ChangeFeed {
            jobs: watch::channel(0).0,
            job_watches: watches.clone(),
            look_soon: Arc::default(),
        };
        let (a, b) = (JobId::random(), JobId::random());
        let first = feed.subscribe_job(a);
        let second = feed.subscribe_job(a);
        let other = feed.subscribe_job(b);
        assert_eq!(watches.lock().len(), 2);
        drop(first);
        assert!(watches.lock().contains_key(&a), "one watch of a is left");
        drop(second);
        assert!(!watches.lock().contains_key(&a));
        assert_eq!(feed.watched_jobs(), vec![b]);
        drop(other);
        assert!(watches.lock().is_empty());
    }
}
