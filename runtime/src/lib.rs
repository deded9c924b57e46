//! Runtime glue.

pub mod policies;
