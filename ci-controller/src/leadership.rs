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
        let reconciler = Reconciler::new(store.clone(), runtime.clone(), config.clone());
        let mut run = tokio::spawn(reconciler.run(term.clone()));
        tokio::select! {
            lost = leader::keep(&store, &holder, &lease) => {
                term.cancel();
                let _ = run.await;
                tracing::warn!(reason = %lost, "lost the controller lease; stopped acting and standing by");
            }
            _ = &mut run => break,
        }
    }
    leadership.send_replace(Leadership::Standby);
    if let Err(e) = store.release_lease(LEASE_NAME, &holder).await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
    Ok(())
}
