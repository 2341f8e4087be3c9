//! The controller's life: take the lease, reconcile while it is held, stand by
//! when it is lost, and take it again; hand it over on shutdown.
//!
//! Each term of leadership gets a fresh [`Reconciler`], which adopts the
//! running containers like a fresh start. Whether this controller leads right
//! now is published on a [`watch`] channel, for whoever needs to know (a
//! readiness probe, say).

use std::sync::Arc;

use ci_persistence::{Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::leader::{self, LeaseConfig, LEASE_NAME};
use crate::metrics::ControllerMetrics;
use crate::reaper::Reaper;
use crate::runtime::ContainerRuntime;
use crate::Reconciler;

/// Whether this controller acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Waiting for the lease (another controller holds it, or the database
    /// cannot be reached).
    Standby,
    /// Holding the lease and reconciling.
    Leader,
}

impl Leadership {
    /// The `status` of the controller's `/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Leadership::Leader => "leader",
            Leadership::Standby => "standby",
        }
    }
}

/// Why the controller stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    #[error("cannot take the controller lease: {0}")]
    Acquire(#[source] StoreError),
}

/// Who this controller is and what it leads with.
pub struct Controller {
    pub store: Store,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub config: ControllerConfig,
    pub lease: LeaseConfig,
    /// This controller's name in the lease row; unique per process.
    pub holder: String,
    /// Shared with the status listener, which serves them.
    pub metrics: Arc<ControllerMetrics>,
}

/// Leads whenever it can until `shutdown`, publishing each change of
/// leadership on `leadership`; on shutdown the lease is released at once
/// instead of making a standby wait for it to expire.
pub async fn run(
    controller: Controller,
    shutdown: CancellationToken,
    leadership: watch::Sender<Leadership>,
) -> Result<(), LeadershipError> {
    let Controller {
        store,
        runtime,
        config,
        lease,
        holder,
        metrics,
    } = controller;
    // One term of leadership per round: a controller that loses the lease (the
    // database was out of reach for longer than the lease lasts, or another
    // controller took it) stops acting, stands by and takes it again when it
    // can; the new term adopts the running containers like a fresh start.
    loop {
        leadership.send_replace(Leadership::Standby);
        tokio::select! {
            r = leader::acquire(&store, &holder, &lease) => r.map_err(LeadershipError::Acquire)?,
            _ = shutdown.cancelled() => return Ok(()),
        }
        leadership.send_replace(Leadership::Leader);
        tracing::info!(
            holder,
            image = %config.image,
            prefix = %config.container_prefix,
            network = %config.network_mode,
            max_concurrent_jobs = config.max_concurrent_jobs,
            "this controller is the leader; reconciling"
        );

        let term = shutdown.child_token();
        let reconciler = Reconciler::new(store.clone(), runtime.clone(), config.clone())
            .with_metrics(metrics.clone());
        let mut run = tokio::spawn(reconciler.run(term.clone()));
        // The reaper beside the reconciler, as its own task: a pass never
        // waits for it, and it stops with the term.
        let reaper = tokio::spawn(
            Reaper::new(store.clone(), config.reaper.clone())
                .with_metrics(metrics.clone())
                .run(term.clone()),
        );
        let shut_down = tokio::select! {
            lost = leader::keep(&store, &holder, &lease, &metrics) => {
                term.cancel();
                let _ = run.await;
                tracing::warn!(reason = %lost, "lost the controller lease; stopped acting and standing by");
                false
            }
            _ = &mut run => true,
        };
        term.cancel();
        let _ = reaper.await;
        if shut_down {
            break;
        }
    }
    leadership.send_replace(Leadership::Standby);
    if let Err(e) = store.release_lease(LEASE_NAME, &holder).await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ci_persistence::DatabaseLocation;

    use super::*;
    use crate::fake_runtime::{FakeRuntime, PATIENCE};

    fn controller(store: &Store, holder: &str) -> Controller {
        Controller {
            store: store.clone(),
            runtime: Arc::new(FakeRuntime::with_image("runner:fake")),
            config: ControllerConfig {
                reconcile_interval: Duration::from_millis(50),
                ..ControllerConfig::default()
            },
            lease: LeaseConfig {
                ttl: Duration::from_secs(30),
                renew_every: Duration::from_millis(50),
            },
            holder: holder.to_string(),
            metrics: Arc::default(),
        }
    }

    async fn until(leadership: &mut watch::Receiver<Leadership>, wanted: Leadership) {
        tokio::time::timeout(PATIENCE, leadership.wait_for(|l| *l == wanted))
            .await
            .expect("the leadership to change in time")
            .expect("the controller to keep publishing");
    }

    #[tokio::test]
    async fn one_leads_the_other_stands_by_and_takes_over_on_hand_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseLocation::SqliteFile(dir.path().join("jobs.db")))
            .await
            .unwrap();
        let (first_tx, mut first) = watch::channel(Leadership::Standby);
        let first_stop = CancellationToken::new();
        let first_run = tokio::spawn(run(
            controller(&store, "first"),
            first_stop.clone(),
            first_tx,
        ));
        until(&mut first, Leadership::Leader).await;

        let (second_tx, mut second) = watch::channel(Leadership::Leader);
        let second_stop = CancellationToken::new();
        let second_run = tokio::spawn(run(
            controller(&store, "second"),
            second_stop.clone(),
            second_tx,
        ));
        until(&mut second, Leadership::Standby).await;
        assert_eq!(*first.borrow(), Leadership::Leader, "one at a time");

        // Shutting down hands the lease over at once, long before it expires.
        first_stop.cancel();
        first_run.await.unwrap().unwrap();
        assert_eq!(*first.borrow(), Leadership::Standby);
        until(&mut second, Leadership::Leader).await;

        second_stop.cancel();
        second_run.await.unwrap().unwrap();
    }
}
