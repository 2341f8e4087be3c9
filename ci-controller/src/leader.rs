//! The lease that makes one controller the only one acting. The leader renews
//! a row in the database; a standby keeps trying to take it and succeeds once
//! the leader stops renewing (it died) or releases it (it shut down).

use std::time::Duration;

use tokio::time::Instant;

use ci_persistence::{Store, StoreError};

use crate::metrics::ControllerMetrics;

pub const LEASE_NAME: &str = "controller";

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// How long a lease lasts without renewal: the longest a dead leader's
    /// jobs wait for a standby.
    pub ttl: Duration,
    /// How often the leader renews, and a standby tries.
    pub renew_every: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
        }
    }
}

/// Waits until this controller holds the lease.
pub async fn acquire(store: &Store, holder: &str, config: &LeaseConfig) -> Result<(), StoreError> {
    let mut announced = false;
    loop {
        match store
            .try_acquire_lease(LEASE_NAME, holder, config.ttl)
            .await
        {
            Ok(true) => return Ok(()),
            Ok(false) => {
                if !announced {
                    let leader = store.lease_holder(LEASE_NAME).await.ok().flatten();
                    tracing::info!(leader = ?leader, "another controller is active; standing by");
                    announced = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the lease; retrying"),
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// Renews the lease until it cannot be kept; returns when leadership is lost,
/// at which point this controller must stop acting.
///
/// It returns before the lease can have expired, so two never act at once:
/// after failed renewals, and also when a renewal hangs (a connection whose
/// peer vanished without a word, a lock on the lease row), which is given up
/// on in time rather than awaited.
pub async fn keep(
    store: &Store,
    holder: &str,
    config: &LeaseConfig,
    metrics: &ControllerMetrics,
) -> String {
    let mut last_renewal = Instant::now();
    // The lease written at `last_renewal` lasts until `ttl` after it; stop
    // acting one renewal period before that.
    let margin = config.ttl.saturating_sub(config.renew_every);
    loop {
        tokio::time::sleep(config.renew_every).await;
        let renewal = store.try_acquire_lease(LEASE_NAME, holder, config.ttl);
        match tokio::time::timeout_at(last_renewal + margin, renewal).await {
            Ok(Ok(true)) => last_renewal = Instant::now(),
            Ok(Ok(false)) => return "another controller took the lease".to_string(),
            Ok(Err(e)) => {
                metrics.lease_renewal_failed();
                tracing::warn!(error = %e, "cannot renew the lease");
                if last_renewal.elapsed() >= margin {
                    return format!("the lease could not be renewed in time: {e}");
                }
            }
            Err(_) => {
                metrics.lease_renewal_failed();
                return format!(
                    "renewing the lease did not finish within {:?} of the last renewal",
                    margin
                );
            }
        }
    }
}
