//! Tenants on workers: render a Tenant's objects, apply them level by level, wait for readiness,
//! clean up, and report in the Tenant's status.
//!
//! - [`desired`]: variables, objects in levels, the skip digest (pure)
//! - [`readiness`]: is a live object ready (pure)
//! - [`ignore`]: `ignoreFields` paths, keeping live values
//! - [`metrics`]: the original's Tenant metrics
//! - [`status`]: the Tenant status and its conditions (pure)
//! - [`reconcile`]: one reconcile of one Tenant

pub mod desired;
pub mod ignore;
pub mod metrics;
pub mod readiness;
pub mod reconcile;
pub mod status;
