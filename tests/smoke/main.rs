//! Smoke suite: the control plane we test against behaves like Kubernetes, and our APIs are
//! served by it as users expect. Runs against devcluster, or any cluster with
//! `cargo xtask test --kubeconfig <path>` (the audit test then skips and says so).

mod api_semantics;
mod audit;
mod compat;
mod crds;
mod identities;
mod kubectl;
