//! The coordinator.

pub mod counts;
pub mod handoff;
