//! The coordinator.

pub mod core;
pub mod counts;
pub mod handoff;
pub mod sessions;
pub mod store;
