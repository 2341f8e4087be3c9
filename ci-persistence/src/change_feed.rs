//! Wake-ups for whoever waits on the database: the controller waits for new or
//! cancelled jobs, event streams wait for new output.
//!
//! Writers bump a version row in `signals` inside the transaction that makes
//! the change, and notify waiters in their own process at once. Waiters in other
//! processes learn of it from a watcher: on SQLite it asks `PRAGMA data_version`
//! (an in-memory check that changes when any other connection commits) every
//! few milliseconds and reads `signals` only when it moved; on PostgreSQL a
//! trigger on `signals` sends a NOTIFY that a listener receives, so nobody polls.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::watch;

use crate::error::Result;
use crate::store::Backend;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A job was created, cancelled, started or ended.
    Jobs,
    /// Some job's output grew.
    Events,
}

impl Channel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Channel::Jobs => "jobs",
            Channel::Events => "events",
        }
    }

    fn from_name(s: &str) -> Option<Channel> {
        [Channel::Jobs, Channel::Events]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// Fan-out of change notifications; subscribe, then `changed().await`.
#[derive(Debug)]
pub struct ChangeFeed {
    jobs: watch::Sender<u64>,
    events: watch::Sender<u64>,
}

impl ChangeFeed {
    pub(crate) async fn start(
        backend: Backend,
        url: &str,
        pool: AnyPool,
        poll: Duration,
    ) -> Result<Arc<ChangeFeed>> {
        let feed = Arc::new(ChangeFeed {
            jobs: watch::channel(0).0,
            events: watch::channel(0).0,
        });
        match backend {
            Backend::Sqlite => {
                let conn = pool.acquire().await?.detach();
                tokio::spawn(watch_sqlite(conn, Arc::downgrade(&feed), poll));
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

    fn sender(&self, channel: Channel) -> &watch::Sender<u64> {
        match channel {
            Channel::Jobs => &self.jobs,
            Channel::Events => &self.events,
        }
    }

    /// A receiver that wakes on every later change of `channel`.
    pub fn subscribe(&self, channel: Channel) -> watch::Receiver<u64> {
        self.sender(channel).subscribe()
    }

    /// Wakes this process's waiters on `channel`.
    pub fn notify(&self, channel: Channel) {
        self.sender(channel).send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The PostgreSQL notification channel the `signals` trigger sends on.
const NOTIFY_CHANNEL: &str = "ci_signals";

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
/// way what was sent meanwhile is unknown, so every channel is woken once the
/// listener listens again, and waiters look for themselves.
async fn listen_postgres(url: String, mut listener: PgListener, feed: Weak<ChangeFeed>) {
    loop {
        let received = listener.try_recv().await;
        let Some(live) = feed.upgrade() else { return };
        match received {
            Ok(Some(n)) => {
                if let Some(channel) = Channel::from_name(n.payload()) {
                    live.notify(channel);
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
            live.notify(Channel::Jobs);
            live.notify(Channel::Events);
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

/// Watches for commits of other processes until the feed is dropped.
async fn watch_sqlite(mut conn: AnyConnection, feed: Weak<ChangeFeed>, poll: Duration) {
    let mut data_version: Option<i64> = None;
    let mut seen: HashMap<Channel, i64> = HashMap::new();
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(feed) = feed.upgrade() else { return };
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut conn)
            .await
        {
            Ok(v) if data_version == Some(v) => continue,
            Ok(v) => data_version = Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "change watcher: cannot read data_version");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        match sqlx::query("SELECT channel, version FROM signals")
            .fetch_all(&mut conn)
            .await
        {
            Ok(rows) => {
                for row in rows {
                    let (Ok(name), Ok(version)) =
                        (row.try_get::<String, _>(0), row.try_get::<i64, _>(1))
                    else {
                        continue;
                    };
                    let Some(channel) = Channel::from_name(&name) else {
                        continue;
                    };
                    if seen.insert(channel, version) != Some(version) {
                        feed.notify(channel);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "change watcher: cannot read signals");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
