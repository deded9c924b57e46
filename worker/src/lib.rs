//! The worker.
pub mod apply;
pub mod config;
pub mod desired;
pub mod drift;
pub mod identity;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod queue;
pub mod reconcile;
pub mod run;
pub mod session;
pub mod tenant;
pub mod watches;
pub mod writes;

pub use config::Args;
pub use run::{RunError, run, run_with};
