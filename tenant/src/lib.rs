//! tenant: one active database row × one TenantTemplate = one Tenant.
//!
//! - [`datasource`]: read the active rows of a registry's table (MySQL/MariaDB, PostgreSQL,
//!   SQLite)

pub mod datasource;
