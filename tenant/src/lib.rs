//! tenant: one active database row × one TenantTemplate = one Tenant.
//!
//! - [`datasource`]: read the active rows of a registry's table (MySQL/MariaDB, PostgreSQL,
//!   SQLite)
//! - [`sync`]: which Tenants one registry sync writes and deletes, and the deletion brake

pub mod datasource;
pub mod sync;
