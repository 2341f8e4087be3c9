//! Caps per user, so one user (or one leaked key) cannot take a replica or
//! the queue for themselves: open event streams and uploads in flight are
//! counted by each replica in memory (they live on its connections), queued
//! jobs in the database (they are shared by every replica). Past a cap the
//! request gets 429 with a `detail` that names the cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use ci_common::UserId;

use crate::error::ApiError;

/// The caps, each per user.
#[derive(Debug, Clone, Copy)]
pub struct UserLimits {
    /// Event streams open at once on one replica.
    pub max_streams: usize,
    /// Jobs waiting to start, on every replica together.
    pub max_queued_jobs: u64,
    /// Uploads being received at once on one replica.
    pub max_uploads: usize,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            max_streams: 200,
            max_queued_jobs: 100,
            max_uploads: 16,
        }
    }
}

/// What each user holds on this replica.
#[derive(Debug, Default)]
pub struct UserSlots {
    held: Mutex<HashMap<(UserId, Kind), usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Stream,
    Upload,
}

/// One stream or upload of a user, given back when dropped.
#[derive(Debug)]
pub struct UserSlot {
    slots: Arc<UserSlots>,
    key: (UserId, Kind),
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl UserSlots {
    fn lock(&self) -> MutexGuard<'_, HashMap<(UserId, Kind), usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(self: &Arc<Self>, user: UserId, kind: Kind, max: usize) -> Option<UserSlot> {
        let mut held = self.lock();
        let n = held.entry((user, kind)).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            slots: self.clone(),
            key: (user, kind),
        })
    }

    /// A place for one more open stream of `user`, or 429.
    pub fn stream(
        self: &Arc<Self>,
        user: UserId,
        limits: &UserLimits,
    ) -> Result<UserSlot, ApiError> {
        self.take(user, Kind::Stream, limits.max_streams)
            .ok_or_else(|| {
                too_many(format!(
                    "Too many open streams: at most {} per user on this server; close some first",
                    limits.max_streams
                ))
            })
    }

    /// A place for one more upload of `user` in flight, or 429.
    pub fn upload(
        self: &Arc<Self>,
        user: UserId,
        limits: &UserLimits,
    ) -> Result<UserSlot, ApiError> {
        self.take(user, Kind::Upload, limits.max_uploads)
            .ok_or_else(|| {
                too_many(format!(
                    "Too many uploads in flight: at most {} per user at once; wait for one to finish",
                    limits.max_uploads
                ))
            })
    }
}

/// The 429 for a user with `queued` jobs waiting, at or past the cap.
pub fn too_many_queued(limits: &UserLimits) -> ApiError {
    too_many(format!(
        "Too many queued jobs: at most {} per user; wait for some to start or cancel them",
        limits.max_queued_jobs
    ))
}

fn too_many(detail: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_cap_and_gets_places_back() {
        let slots = Arc::new(UserSlots::default());
        let limits = UserLimits {
            max_streams: 2,
            max_uploads: 1,
            ..UserLimits::default()
        };
        let (ada, bob) = (UserId::random(), UserId::random());
        let first = slots.stream(ada, &limits).expect("first");
        let _second = slots.stream(ada, &limits).expect("second");
        let refused = slots.stream(ada, &limits).expect_err("third");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.detail.contains("at most 2"), "{}", refused.detail);
        // Another user, and another kind, are counted apart.
        let _bobs = slots.stream(bob, &limits).expect("bob's");
        let _upload = slots.upload(ada, &limits).expect("an upload");
        drop(first);
        slots.stream(ada, &limits).expect("a place given back");
    }
}
