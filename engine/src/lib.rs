//! engine: the pure decisions of kubetemplater, shared by the webhook, the workers and `ktctl`.
//!
//! Nothing here does I/O or needs an async runtime: callers hand in objects and policies and get
//! verdicts, rendered objects, dependency levels and hashes back.
//!
//! - [`policy`]: is a KubeTemplate admitted by its namespace's KubeTemplatePolicy, and if not, why
//! - [`render`]: Go text/template rendering of tenant resources
//! - [`dag`]: dependency levels of tenant resources
//! - [`hash`]: the desired-state hash that lets workers skip unchanged applies
//! - [`bucket`]: shard key → bucket

pub mod bucket;
pub mod dag;
mod gojson;
pub mod hash;
pub mod policy;
pub mod render;
