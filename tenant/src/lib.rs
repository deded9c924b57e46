//! tenant: one active database row × one TenantTemplate = one Tenant.
//!
//! - [`datasource`]: read the active rows of a registry's table (MySQL/MariaDB, PostgreSQL,
//!   SQLite)
//! - [`sync`]: which Tenants one registry sync writes and deletes, and the deletion brake
//! - [`registry`]: the registry controller the coordinator leader runs (watches, syncs,
//!   statuses, events)
//! - [`metrics`]: its metrics, the original's names kept

pub mod datasource;
pub mod metrics;
pub mod registry;
pub mod sync;
