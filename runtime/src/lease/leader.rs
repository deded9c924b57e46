//! Leader election: the coordinators campaign for one shared Lease
//! ([`COORDINATOR_LEASE_NAME`](super::COORDINATOR_LEASE_NAME)); the holder leads while its fence
//! is open.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use super::{Acquisition, Fence, Fenced, LeaseConfig, LeaseError, LeaseHolder};

/// Campaigns for one shared Lease. Standbys retry every `retry_period`.
#[derive(Clone)]
pub struct LeaderElector {
    kube_config: kube::Config,
    config: LeaseConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the kube config: it holds credentials.
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a leader gets for one term.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Must be checked before every write made as leader; closed = stop acting.
    pub fence: Fence,
    /// The term (`leaseTransitions`) and how it began: a new leader's term is always higher.
    pub acquisition: Acquisition,
    /// Our identity.
    pub holder: String,
}

/// How a term ended.
#[derive(Debug)]
pub enum LeaderExit<T> {
    /// The leader's work returned (the Lease was then released).
    Finished(T),
    /// The fence closed: the leader's work was dropped at once (the Lease was then released if
    /// still ours, so a standby need not wait for it to expire).
    Lost(Fenced),
    /// Cancelled while campaigning or leading (a lead in progress was dropped and the Lease
    /// released).
    Cancelled,
}

impl LeaderElector {
    /// An elector for `config` (validated).
    pub fn new(kube_config: kube::Config, config: LeaseConfig) -> Result<Self, LeaseError> {
        config.validate()?;
        Ok(Self {
            kube_config,
            config,
        })
    }

    /// The Lease configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Resolves once we are leader: waits as a standby while another holds the Lease.
    pub async fn campaign(&self, cancel: &CancellationToken) -> Result<LeaseHolder, LeaseError> {
        LeaseHolder::acquire(self.kube_config.clone(), self.config.clone(), cancel).await
    }

    /// One term: campaign, then run `lead` until it returns, the fence closes (its future is
    /// dropped at once: "must stop acting") or `cancel` fires; then release the Lease so a
    /// standby takes over at once. To stand by again after a lost term, call it again (the
    /// next term gets a new fence). Work that `lead` spawns must watch the fence itself.
    pub async fn run_as_leader<F, Fut, T>(
        &self,
        cancel: &CancellationToken,
        lead: F,
    ) -> Result<LeaderExit<T>, LeaseError>
    where
        F: FnOnce(Leadership) -> Fut,
        Fut: Future<Output = T>,
    {
        let holder = match self.campaign(cancel).await {
            Ok(holder) => holder,
            Err(LeaseError::Cancelled { .. }) => return Ok(LeaderExit::Cancelled),
            Err(error) => return Err(error),
        };
        let fence = holder.fence();
        let work = lead(Leadership {
            fence: fence.clone(),
            acquisition: holder.acquisition().clone(),
            holder: self.config.holder.clone(),
        });
        let exit = tokio::select! {
            biased;
            fenced = fence.lost() => LeaderExit::Lost(fenced),
            () = cancel.cancelled() => LeaderExit::Cancelled,
            out = work => LeaderExit::Finished(out),
        };
        match &exit {
            LeaderExit::Lost(fenced) => {
                tracing::warn!(%fenced, "leadership lost; stepped down");
            }
            LeaderExit::Cancelled => tracing::info!(lease = %fence.lease(), "stepping down"),
            LeaderExit::Finished(_) => {}
        }
        if let Err(error) = holder.release().await {
            tracing::warn!(%error, "releasing the leader Lease failed; it expires on its own");
        }
        Ok(exit)
    }
}

/// [`LeaderElector::run_as_leader`] for one term with a fresh elector.
pub async fn run_as_leader<F, Fut, T>(
    kube_config: kube::Config,
    config: LeaseConfig,
    cancel: &CancellationToken,
    lead: F,
) -> Result<LeaderExit<T>, LeaseError>
where
    F: FnOnce(Leadership) -> Fut,
    Fut: Future<Output = T>,
{
    LeaderElector::new(kube_config, config)?
        .run_as_leader(cancel, lead)
        .await
}
