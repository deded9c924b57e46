//! Custom resource types of kubetemplater and the CRD YAML generated from them.
//!
//! Two API groups, drop-in compatible with the operators they reimplement:
//! - `kubetemplater.io/v1alpha1` ([`kubetemplater`]): [`KubeTemplate`] and [`KubeTemplatePolicy`],
//!   as in KubeTemplater v0.6.2;
//! - `operator.kubernetes-tenants.org/v1` ([`tenants`]): [`TenantRegistry`], [`TenantTemplate`]
//!   and [`Tenant`], as in Tenant Operator v1.1.8.
//!
//! [`crds`] returns the CustomResourceDefinitions; [`write_crds`] and [`check_crds`] keep the
//! copy in `deploy/crds/` up to date. Well-known labels, annotations, finalizers and phases are in
//! [`constants`]; [`conditions`] sets status conditions without moving their transition times.

pub mod conditions;
pub mod constants;
pub mod crdgen;
pub mod kubetemplater;
pub mod schema;
pub mod tenants;

pub use crdgen::{
    Error, GENERATED_HEADER, Result, check_crds, crd_files, crd_yaml, crds, to_yaml, write_crds,
};
pub use kubetemplater::{
    AppliedResource, FieldValidation, FieldValidationType, KubeTemplate, KubeTemplatePolicy,
    KubeTemplatePolicySpec, KubeTemplatePolicyStatus, KubeTemplateSpec, KubeTemplateStatus,
    TemplateItem, ValidationRule,
};
pub use tenants::{
    ConflictPolicy, CreationPolicy, DataSource, DatabaseTls, DeletionPolicy, DeletionSafety,
    MySqlSource, PatchStrategy, PostgreSqlSource, PostgreSqlSslMode, SecretRef, SourceType,
    SqliteSource, TResource, Tenant, TenantRegistry, TenantRegistrySpec, TenantRegistryStatus,
    TenantResources, TenantSpec, TenantStatus, TenantTemplate, TenantTemplateSpec,
    TenantTemplateStatus, ValueMappings,
};
