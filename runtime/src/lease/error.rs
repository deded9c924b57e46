//! What can fail, and why a holder stopped holding.

use std::fmt;
use std::sync::Arc;

/// Why a Lease operation failed. Every message names the Lease (or the list) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The configuration cannot give the fencing guarantee (or names no Lease or holder).
    #[error("Lease {namespace}/{name}: invalid configuration: {problem}")]
    InvalidConfig {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// No `kube::Client` could be built from the `kube::Config`.
    #[error("Lease {namespace}/{name}: building a Kubernetes client: {source}")]
    Client {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Reading the Lease failed (and retrying cannot help).
    #[error("Lease {namespace}/{name}: reading it failed: {source}")]
    Read {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Creating the absent Lease failed (and retrying cannot help).
    #[error("Lease {namespace}/{name}: creating it failed: {source}")]
    Create {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Taking over an expired or released Lease failed (and retrying cannot help).
    #[error("Lease {namespace}/{name}: taking it over from {previous:?} failed: {source}")]
    TakeOver {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The holder it was taken from (`None`: it was released).
        previous: Option<String>,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Handing the Lease back failed; it will expire on its own instead.
    #[error("Lease {namespace}/{name}: releasing it failed (it expires on its own): {source}")]
    Release {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing Leases failed.
    #[error("Leases in {namespace} matching {selector:?}: listing failed: {source}")]
    List {
        /// Namespace listed.
        namespace: String,
        /// The label selector.
        selector: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The renew thread could not be started.
    #[error("Lease {namespace}/{name}: starting the renew thread failed: {source}")]
    RenewThread {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Acquisition was cancelled before the Lease became ours.
    #[error("Lease {namespace}/{name}: acquisition cancelled before it became ours")]
    Cancelled {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
    },
}

impl LeaseError {
    /// A short, stable label for metrics (`invalid_config`, `client`, `read`, `create`,
    /// `take_over`, `release`, `list`, `renew_thread`, `cancelled`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaseError::InvalidConfig { .. } => "invalid_config",
            LeaseError::Client { .. } => "client",
            LeaseError::Read { .. } => "read",
            LeaseError::Create { .. } => "create",
            LeaseError::TakeOver { .. } => "take_over",
            LeaseError::Release { .. } => "release",
            LeaseError::List { .. } => "list",
            LeaseError::RenewThread { .. } => "renew_thread",
            LeaseError::Cancelled { .. } => "cancelled",
        }
    }
}

/// Why a holder no longer holds its Lease. Once lost, a [`LeaseHolder`](super::LeaseHolder)
/// never holds again; holding again means acquiring again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal succeeded within the renew deadline (API server unreachable, requests
    /// refused or too slow): we stopped writing before the Lease could expire.
    RenewDeadlinePassed,
    /// The Lease names another holder, or a newer term under our identity.
    TakenOver {
        /// Its holder now (empty when it was released by someone else).
        holder: String,
    },
    /// The Lease was deleted.
    Deleted,
    /// We released it ([`LeaseHolder::release`](super::LeaseHolder::release)).
    Released,
    /// The [`LeaseHolder`](super::LeaseHolder) was dropped without release: renewals stopped.
    Dropped,
    /// The renew thread could not run (its runtime or client could not be built).
    RenewerFailed {
        /// What failed.
        problem: String,
    },
}

impl LostReason {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LostReason::RenewDeadlinePassed => "renew_deadline",
            LostReason::TakenOver { .. } => "taken_over",
            LostReason::Deleted => "deleted",
            LostReason::Released => "released",
            LostReason::Dropped => "dropped",
            LostReason::RenewerFailed { .. } => "renewer_failed",
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::RenewDeadlinePassed => {
                f.write_str("no renewal succeeded within the renew deadline")
            }
            LostReason::TakenOver { holder } if holder.is_empty() => {
                f.write_str("it was released by someone else")
            }
            LostReason::TakenOver { holder } => write!(f, "it is now held by {holder:?}"),
            LostReason::Deleted => f.write_str("it was deleted"),
            LostReason::Released => f.write_str("it was released"),
            LostReason::Dropped => f.write_str("its holder was dropped without releasing it"),
            LostReason::RenewerFailed { problem } => {
                write!(f, "the renew thread could not run: {problem}")
            }
        }
    }
}

/// A fenced holder may no longer write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fenced: Lease {lease} is no longer held: {reason}")]
pub struct Fenced {
    /// `namespace/name` of the Lease.
    pub lease: Arc<str>,
    /// Why.
    pub reason: LostReason,
}
