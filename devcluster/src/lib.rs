//! devcluster: a real local Kubernetes control plane for the demo, the tests and the benchmarks.
//!
//! It builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and
//! Jaeger with `go build` from small pinned Go modules under `devcluster/go/` ([`toolchain`]),
//! then runs them on loopback ([`cluster`]): kube-apiserver over TLS with RBAC, a static token
//! file giving every component its own identity ([`pki`]), an audit log of every write
//! ([`audit`]), and kwok's fake Nodes with kube-scheduler so Deployments, StatefulSets and Jobs
//! become Ready without a kubelet. Nothing here emulates the API server: server-side apply,
//! watches, admission webhooks, garbage collection, RBAC and audit are the real ones.
//! [`database`] starts throwaway MariaDB and PostgreSQL servers for the tenant tests.
//!
//! Tests get the cluster through [`testing::target`].

pub mod audit;
pub mod cluster;
pub mod database;
mod error;
pub mod identity;
pub mod kubeconfig;
pub mod layout;
pub mod pki;
pub mod process;
pub mod stack;
pub mod testing;
pub mod toolchain;

pub use cluster::{Cluster, ClusterConfig, Endpoints, JaegerEndpoints, Ports, start, stop};
pub use error::{Error, Result};
pub use layout::Layout;
