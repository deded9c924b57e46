//! The coordinator: worker membership, the bucket → worker map, handoffs, the admin API.
//!
//! The assignment logic is pure and lives in [`ring`] (the consistent-hash ring over the workers,
//! with stable hashing) and [`plan`] (consistent hashing with bounded loads, sticky, weighted by
//! objects per bucket; moves between plans). [`handoff`]
//! turns a plan into revoke → release → grant steps, [`core`] runs the leader's loop.

pub mod access;
pub mod admin;
pub mod config;
pub mod core;
pub mod counts;
pub mod handoff;
pub mod identity;
pub mod members;
pub mod metrics;
pub mod plan;
pub mod ring;
pub mod run;
pub mod sessions;
pub mod store;
pub mod transport;

pub use config::Args;
pub use run::{RunError, run};
