//! Open event streams end soon after their credential stops being good: a
//! stream is authenticated once, when it opens, and may then run for as long
//! as its job does, so without this a revoked key or a deactivated user
//! would keep receiving a job's output to its end.
//!
//! One task per replica looks again, every [`ServerConfig::credential_check`]
//! (crate::ServerConfig), at each distinct key hash that open streams were
//! opened with (one query per key, however many streams share it), and ends
//! the streams of the keys that no longer authenticate. A database that does
//! not answer ends nothing: the streams see that for themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ci_persistence::Store;
use tokio_util::sync::CancellationToken;

/// The keys of this replica's open streams.
#[derive(Debug, Default)]
pub struct StreamCredentials {
    keys: Mutex<HashMap<String, Watched>>,
}

#[derive(Debug)]
struct Watched {
    streams: usize,
    revoked: CancellationToken,
}

/// One open stream's hold on its key; cancelled when the key stops being
/// good, released when the stream ends.
#[derive(Debug)]
pub struct StreamCredential {
    credentials: Arc<StreamCredentials>,
    key_hash: String,
    pub revoked: CancellationToken,
}

impl Drop for StreamCredential {
    fn drop(&mut self) {
        let mut keys = self.credentials.lock();
        if let Some(watched) = keys.get_mut(&self.key_hash) {
            watched.streams = watched.streams.saturating_sub(1);
            if watched.streams == 0 {
                keys.remove(&self.key_hash);
            }
        }
    }
}

impl StreamCredentials {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `key_hash` for as long as the returned hold lives.
    pub fn hold(self: &Arc<Self>, key_hash: &str) -> StreamCredential {
        let mut keys = self.lock();
        let watched = keys.entry(key_hash.to_string()).or_insert_with(|| Watched {
            streams: 0,
            revoked: CancellationToken::new(),
        });
        watched.streams += 1;
        StreamCredential {
            credentials: self.clone(),
            key_hash: key_hash.to_string(),
            revoked: watched.revoked.clone(),
        }
    }

    /// Checks every watched key once; ends the streams of those that no
    /// longer authenticate.
    async fn check(&self, store: &Store) {
        let hashes: Vec<String> = self.lock().keys().cloned().collect();
        for hash in hashes {
            match store.authenticate(&hash).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Some(watched) = self.lock().remove(&hash) {
                        tracing::info!(
                            streams = watched.streams,
                            "ending streams: their key was revoked or its user deactivated"
                        );
                        watched.revoked.cancel();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the keys of open streams");
                    return;
                }
            }
        }
    }

    /// Checks every `interval` until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        store: Store,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(&store).await,
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
