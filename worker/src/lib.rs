//! The worker.
pub mod apply;
pub mod config;
pub mod desired;
pub mod metrics;
pub mod reconcile;
pub mod watches;
