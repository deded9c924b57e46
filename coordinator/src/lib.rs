//! The coordinator.

pub mod counts;
pub mod handoff;
pub mod store;
