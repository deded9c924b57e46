//! Runtime glue.

pub mod lease;
pub mod policies;
