//! The coordinator.

pub mod admin;
pub mod core;
pub mod counts;
pub mod handoff;
pub mod members;
pub mod sessions;
pub mod store;
