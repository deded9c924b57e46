//! `operator.kubernetes-tenants.org/v1`: [`TenantRegistry`], [`TenantTemplate`] and [`Tenant`].
//!
//! Field names, required fields, defaults and enum values match Tenant Operator v1.1.8 (plus
//! Lynq's `skipOnDependencyFailure` and the v1.1.11 optional `hostOrUrl`), so its manifests apply
//! unchanged. What we add (PostgreSQL and SQLite sources, TLS, `deletionSafety`) is optional and
//! does not collide with the original's fields.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// === TenantRegistry ===

/// Desired state of a TenantRegistry: the database table of tenants and how to read it. Every
/// active row, combined with every TenantTemplate that references the registry, becomes one
/// Tenant.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats keys such as type_ and priority"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "operator.kubernetes-tenants.org",
    version = "v1",
    kind = "TenantRegistry",
    plural = "tenantregistries",
    singular = "tenantregistry",
    namespaced,
    status = "TenantRegistryStatus",
    shortname = "treg",
    category = "kubetemplater",
    derive = "PartialEq",
    doc = "A database table of tenants. Every active row, combined with every TenantTemplate that references this registry, becomes one Tenant.",
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desired",
        description = "Tenants that should exist (templates x active rows)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.ready",
        description = "Tenants whose Ready condition is True"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Tenants whose Ready condition is not True"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.type",
        description = "Database type",
        priority = 1
    ),
    printcolumn(
        name = "Templates",
        type_ = "integer",
        json_path = ".status.referencingTemplates",
        description = "TenantTemplates referencing this registry",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantRegistrySpec {
    /// Where the tenant rows come from and how often they are read.
    pub source: DataSource,
    /// Which columns hold the tenant's uid, host or URL, and activation flag.
    pub value_mappings: ValueMappings,
    /// More columns to read: template variable name -> column name. Each becomes a variable in
    /// templates, e.g. `{ planId: plan_id }` gives `{{ .planId }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_value_mappings: BTreeMap<String, String>,
    /// Brake against mass deletion when the table suddenly returns far fewer rows (a wrong
    /// table, an emptied table, a broken replica). A sync that would delete more Tenants than
    /// allowed deletes none of them, keeps creating and updating the others, and sets the
    /// registry's `DeletionBlocked` condition until the rows come back, the limit is raised, or
    /// the registry is annotated `kubetemplater.io/confirm-deletions=<count>` with the count the
    /// condition names. When absent, only an empty result is held back (`blockOnEmptyResult`);
    /// the original operator had no brake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_safety: Option<DeletionSafety>,
}

/// Database type of a registry.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// MySQL (or MariaDB); settings in `mysql`.
    Mysql,
    /// PostgreSQL; settings in `postgresql`.
    Postgresql,
    /// SQLite file; settings in `sqlite`.
    Sqlite,
}

impl SourceType {
    /// The value as written in manifests (`mysql`, `postgresql`, `sqlite`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mysql => "mysql",
            Self::Postgresql => "postgresql",
            Self::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for SourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the tenant rows come from. The settings block matching `type` must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'mysql' || has(self.mysql)", "message": "source.mysql is required when source.type is mysql"},
    {"rule": "self.type != 'postgresql' || has(self.postgresql)", "message": "source.postgresql is required when source.type is postgresql"},
    {"rule": "self.type != 'sqlite' || has(self.sqlite)", "message": "source.sqlite is required when source.type is sqlite"},
]))]
pub struct DataSource {
    /// Database type: mysql, postgresql or sqlite.
    #[serde(rename = "type")]
    pub type_: SourceType,
    /// How often the table is read: a number followed by s, m or h, e.g. `30s`, `5m`, `1h`.
    /// Default 30s.
    #[serde(default = "default_sync_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub sync_interval: String,
    /// MySQL connection settings (type mysql).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<MySqlSource>,
    /// PostgreSQL connection settings (type postgresql).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgreSqlSource>,
    /// SQLite database settings (type sqlite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteSource>,
}

fn default_sync_interval() -> String {
    "30s".to_owned()
}

/// MySQL connection settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MySqlSource {
    /// Server host name or IP address.
    pub host: String,
    /// Server port, 1-65535. Default 3306.
    #[serde(default = "default_mysql_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// User name to log in with.
    pub username: String,
    /// Secret (in the registry's namespace) and key holding the password. Without it the
    /// password is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_ref: Option<SecretRef>,
    /// Database (schema) name.
    pub database: String,
    /// Table holding one row per tenant.
    pub table: String,
    /// Connect over TLS with these settings. Without it the connection is not encrypted, as in
    /// the original operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DatabaseTls>,
}

fn default_mysql_port() -> i32 {
    3306
}

/// PostgreSQL connection settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgreSqlSource {
    /// Server host name or IP address.
    pub host: String,
    /// Server port, 1-65535. Default 5432.
    #[serde(default = "default_postgresql_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// User name to log in with.
    pub username: String,
    /// Secret (in the registry's namespace) and key holding the password. Without it the
    /// password is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_ref: Option<SecretRef>,
    /// Database name.
    pub database: String,
    /// Table holding one row per tenant, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Whether and how TLS is used, as libpq's sslmode: disable, prefer, require, verify-ca or
    /// verify-full. Default prefer.
    #[serde(default)]
    pub ssl_mode: PostgreSqlSslMode,
    /// CA and client certificate for TLS (used unless sslMode is disable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DatabaseTls>,
}

fn default_postgresql_port() -> i32 {
    5432
}

/// TLS use of a PostgreSQL connection, as libpq's `sslmode`.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PostgreSqlSslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// Always use TLS, without verifying the certificate.
    Require,
    /// Always use TLS and verify the certificate against the CA.
    VerifyCa,
    /// Always use TLS, verify the certificate and that it names the host.
    VerifyFull,
}

/// SQLite database settings. Exactly one of path and url must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.path) != has(self.url)", "message": "exactly one of sqlite.path and sqlite.url must be set"},
]))]
pub struct SqliteSource {
    /// Path of the database file as seen by the operator (e.g. on a mounted volume). Opened
    /// read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SQLite connection URL, e.g. `sqlite:///data/tenants.db?mode=ro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Table holding one row per tenant.
    pub table: String,
}

/// TLS settings of a database connection. Certificates are read from Secrets in the
/// registry's namespace, PEM-encoded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseTls {
    /// Secret key holding the CA bundle that signs the server certificate. Without it the
    /// system's trusted roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_ref: Option<SecretRef>,
    /// Secret key holding a client certificate, for servers that require one (set with
    /// clientKeyRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_ref: Option<SecretRef>,
    /// Secret key holding the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_ref: Option<SecretRef>,
    /// Name expected in the server certificate, when it differs from the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip verification of the server certificate (testing only). Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key in a Secret of the registry's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// Columns holding the built-in tenant values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueMappings {
    /// Column holding the tenant's unique id (template variable `.uid`).
    pub uid: String,
    /// Column holding the tenant's host or URL (variables `.hostOrUrl` and `.host`). Optional;
    /// when unset `.hostOrUrl` is the uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_or_url: Option<String>,
    /// Column holding the activation flag (variable `.activate`). Rows are used only when it is
    /// one of 1, true, TRUE, True, yes, YES, Yes.
    pub activate: String,
}

/// Limits on how many Tenants one registry sync may delete. The default holds back only an
/// empty result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionSafety {
    /// Largest share of the registry's existing Tenants, in percent (0-100), that one sync may
    /// delete. Unset: no percentage limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_delete_percent: Option<i32>,
    /// Largest number of Tenants one sync may delete. Unset: no count limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_delete_count: Option<i32>,
    /// Delete nothing when the query returns no active rows at all while Tenants exist.
    /// Default true.
    #[serde(default = "default_true")]
    pub block_on_empty_result: bool,
}

impl Default for DeletionSafety {
    fn default() -> Self {
        Self {
            max_delete_percent: None,
            max_delete_count: None,
            block_on_empty_result: true,
        }
    }
}

/// Observed state of a TenantRegistry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantRegistryStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of TenantTemplates referencing this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referencing_templates: Option<i32>,
    /// Number of Tenants that should exist: referencing templates x active rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i32>,
    /// Number of this registry's Tenants whose Ready condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i32>,
    /// Number of this registry's Tenants whose Ready condition is not True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i32>,
    /// Latest observations of the registry's state (Ready: database reachable), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

// === TenantTemplate ===

/// Desired state of a TenantTemplate: the registry it is used with and the objects to create
/// for each of its tenants. Strings may use Go templates with the row's values, e.g.
/// `{{ .uid }}`.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats keys such as type_ and priority"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "operator.kubernetes-tenants.org",
    version = "v1",
    kind = "TenantTemplate",
    plural = "tenanttemplates",
    singular = "tenanttemplate",
    namespaced,
    status = "TenantTemplateStatus",
    shortname = "ttpl",
    category = "kubetemplater",
    derive = "PartialEq",
    selectable = ".spec.registryId",
    doc = "The Kubernetes objects to create for every tenant of a registry. Strings may use Go templates with the row's values, e.g. {{ .uid }}.",
    printcolumn(
        name = "Registry",
        type_ = "string",
        json_path = ".spec.registryId",
        description = "TenantRegistry this template is used with"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.totalTenants",
        description = "Tenants using this template"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyTenants",
        description = "Ready Tenants using this template"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status",
        description = "Whether the template passed validation",
        priority = 1
    ),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Applied\")].status",
        description = "Whether every Tenant is ready",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantTemplateSpec {
    /// Name of the TenantRegistry (same namespace) whose rows this template is rendered for.
    /// Cannot be changed.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "registryId is immutable"},
    ]))]
    pub registry_id: String,
    /// The objects to create, grouped by kind.
    #[serde(flatten)]
    pub resources: TenantResources,
}

/// Observed state of a TenantTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantTemplateStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of Tenants using this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tenants: Option<i32>,
    /// Number of those Tenants whose Ready condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_tenants: Option<i32>,
    /// Latest observations of the template's state (Valid, Applied), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

// === Tenant ===

/// Desired state of a Tenant: its uid, template and the objects to create. A Tenant is one
/// TenantTemplate rendered for one database row, created and deleted by its TenantRegistry.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats keys such as type_ and priority"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "operator.kubernetes-tenants.org",
    version = "v1",
    kind = "Tenant",
    plural = "tenants",
    singular = "tenant",
    namespaced,
    status = "TenantStatus",
    shortname = "tnt",
    category = "kubetemplater",
    derive = "PartialEq",
    selectable = ".spec.uid",
    selectable = ".spec.templateRef",
    doc = "One tenant: the objects of one TenantTemplate rendered for one database row. Created and deleted by its TenantRegistry; not meant to be written by hand.",
    printcolumn(
        name = "UID",
        type_ = "string",
        json_path = ".spec.uid",
        description = "The tenant's unique id"
    ),
    printcolumn(
        name = "Template",
        type_ = "string",
        json_path = ".spec.templateRef",
        description = "TenantTemplate it was rendered from"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyResources",
        description = "Objects that are ready"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredResources",
        description = "Objects to create"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failedResources",
        description = "Objects that failed",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The tenant's unique id (the row's uid column).
    pub uid: String,
    /// Name of the TenantTemplate this tenant was rendered from.
    pub template_ref: String,
    /// The objects to create, copied from the template with nameTemplate, labelsTemplate and
    /// annotationsTemplate already rendered.
    #[serde(flatten)]
    pub resources: TenantResources,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of objects that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_resources: Option<i32>,
    /// Number of objects to create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_resources: Option<i32>,
    /// Number of objects that failed to render or apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_resources: Option<i32>,
    /// Objects applied successfully, as `Kind/namespace/name@id`; used to find and clean up
    /// objects removed from the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_resources: Vec<String>,
    /// Digest of the spec and row values last applied completely. A Tenant whose digest is
    /// unchanged and that is Ready is not applied again (no API call while idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,
    /// Latest observations (Ready, Progressing, Conflicted, Degraded), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

// === shared by TenantTemplate and Tenant ===

/// The 16 lists of objects of a TenantTemplate or Tenant. The list only groups entries: each
/// entry's `spec.apiVersion` and `spec.kind` decide what is created. Ids are unique across all
/// lists.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantResources {
    /// ServiceAccounts to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub service_accounts: Vec<TResource>,
    /// Deployments to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub deployments: Vec<TResource>,
    /// StatefulSets to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub stateful_sets: Vec<TResource>,
    /// DaemonSets to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub daemon_sets: Vec<TResource>,
    /// Services to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub services: Vec<TResource>,
    /// Ingresses to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub ingresses: Vec<TResource>,
    /// ConfigMaps to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub config_maps: Vec<TResource>,
    /// Secrets to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub secrets: Vec<TResource>,
    /// PersistentVolumeClaims to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub persistent_volume_claims: Vec<TResource>,
    /// Jobs to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub jobs: Vec<TResource>,
    /// CronJobs to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub cron_jobs: Vec<TResource>,
    /// PodDisruptionBudgets to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub pod_disruption_budgets: Vec<TResource>,
    /// NetworkPolicies to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub network_policies: Vec<TResource>,
    /// HorizontalPodAutoscalers to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub horizontal_pod_autoscalers: Vec<TResource>,
    /// Namespaces to create. Namespaces are cluster-scoped: targetNamespace is ignored and they
    /// are tracked by label, never by owner reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub namespaces: Vec<TResource>,
    /// Objects of any other kind (custom resources included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub manifests: Vec<TResource>,
}

impl TenantResources {
    /// Names of the 16 lists as written in manifests, in declaration order.
    pub const LIST_NAMES: [&'static str; 16] = [
        "serviceAccounts",
        "deployments",
        "statefulSets",
        "daemonSets",
        "services",
        "ingresses",
        "configMaps",
        "secrets",
        "persistentVolumeClaims",
        "jobs",
        "cronJobs",
        "podDisruptionBudgets",
        "networkPolicies",
        "horizontalPodAutoscalers",
        "namespaces",
        "manifests",
    ];

    /// The 16 lists with their manifest names, in declaration order.
    pub fn lists(&self) -> [(&'static str, &[TResource]); 16] {
        let l = Self::LIST_NAMES;
        [
            (l[0], &self.service_accounts),
            (l[1], &self.deployments),
            (l[2], &self.stateful_sets),
            (l[3], &self.daemon_sets),
            (l[4], &self.services),
            (l[5], &self.ingresses),
            (l[6], &self.config_maps),
            (l[7], &self.secrets),
            (l[8], &self.persistent_volume_claims),
            (l[9], &self.jobs),
            (l[10], &self.cron_jobs),
            (l[11], &self.pod_disruption_budgets),
            (l[12], &self.network_policies),
            (l[13], &self.horizontal_pod_autoscalers),
            (l[14], &self.namespaces),
            (l[15], &self.manifests),
        ]
    }

    /// Every entry of every list, with the name of its list, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &TResource)> {
        self.lists()
            .into_iter()
            .flat_map(|(list, entries)| entries.iter().map(move |entry| (list, entry)))
    }

    /// Total number of entries over all lists.
    pub fn len(&self) -> usize {
        self.lists().iter().map(|(_, entries)| entries.len()).sum()
    }

    /// Whether every list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One object of a TenantTemplate or Tenant, with its policies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TResource {
    /// Identifier of this entry, unique across all lists; used by dependIds.
    pub id: String,
    /// The whole Kubernetes object (apiVersion, kind, metadata, spec...). Any string in it may
    /// be a Go template, e.g. `{{ .uid }}-app`.
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub spec: Map<String, Value>,
    /// Ids of entries that are applied before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depend_ids: Vec<String>,
    /// Whether to skip this entry when one of its dependencies failed. Unset means true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_on_dependency_failure: Option<bool>,
    /// WhenNeeded (default): applied on every reconcile. Once: created once, then never
    /// changed (created again only if deleted).
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// Delete (default): deleted with its Tenant or when removed from the template. Retain:
    /// kept and marked as orphaned instead.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stuck (default): fail when another owner manages the object's fields. Force: take them
    /// over.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// How the object is written: apply (default, server-side apply), merge (JSON merge patch)
    /// or replace (create, else update the whole object).
    #[serde(default)]
    pub patch_strategy: PatchStrategy,
    /// Go template for metadata.name, e.g. `{{ .uid }}-app`; unset keeps the name in spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_template: Option<String>,
    /// Namespace to create the object in (may be a Go template); unset means the Tenant's
    /// namespace. Objects in another namespace are tracked by label, not owner reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Labels to set on the object; values may be Go templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_template: BTreeMap<String, String>,
    /// Annotations to set on the object; values may be Go templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations_template: BTreeMap<String, String>,
    /// Count the object as ready only once it reports ready (true, default), or as soon as it
    /// is applied (false).
    #[serde(default = "default_true")]
    pub wait_for_ready: bool,
    /// How long to wait for the object to become ready, in seconds (1-3600). Default 300.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// JSONPath expressions (e.g. `$.spec.replicas`) of fields set at creation and then left
    /// alone, for fields managed by someone else such as an autoscaler. No effect with
    /// creationPolicy Once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_fields: Vec<String>,
}

impl TResource {
    /// Whether to skip this entry when a dependency failed (`skipOnDependencyFailure`,
    /// default true).
    pub fn skips_on_dependency_failure(&self) -> bool {
        self.skip_on_dependency_failure.unwrap_or(true)
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout_seconds() -> i32 {
    300
}

/// When an entry is applied.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum CreationPolicy {
    /// Applied on every reconcile.
    #[default]
    WhenNeeded,
    /// Created once and then never changed; created again only if deleted.
    Once,
}

/// What happens to an object when its Tenant is deleted or its entry is removed.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum DeletionPolicy {
    /// The object is deleted.
    #[default]
    Delete,
    /// The object is kept, without owner, and marked as orphaned.
    Retain,
}

/// What happens when another field manager owns fields of the object.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum ConflictPolicy {
    /// Fail and report the conflict.
    #[default]
    Stuck,
    /// Take the fields over (forced server-side apply).
    Force,
}

/// How an object is written.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PatchStrategy {
    /// Server-side apply.
    #[default]
    Apply,
    /// JSON merge patch of the whole object.
    Merge,
    /// Create if missing, else replace the whole object.
    Replace,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Resource;
    use serde_json::json;

    fn registry(source: Value) -> Value {
        json!({
            "apiVersion": "operator.kubernetes-tenants.org/v1",
            "kind": "TenantRegistry",
            "metadata": {"name": "reg", "namespace": "saas"},
            "spec": {
                "source": source,
                "valueMappings": {"uid": "id", "hostOrUrl": "url", "activate": "is_active"},
                "extraValueMappings": {"planId": "plan_id"}
            }
        })
    }

    #[test]
    fn registry_defaults_match_the_original() {
        let value = registry(json!({
            "type": "mysql",
            "mysql": {"host": "db", "username": "app", "database": "saas", "table": "tenants"}
        }));
        let reg: TenantRegistry = serde_json::from_value(value).expect("registry");
        let source = &reg.spec.source;
        assert_eq!(source.type_, SourceType::Mysql);
        assert_eq!(source.sync_interval, "30s");
        let mysql = source.mysql.as_ref().expect("mysql");
        assert_eq!(mysql.port, 3306);
        assert_eq!(mysql.password_ref, None);
        assert_eq!(reg.spec.value_mappings.host_or_url.as_deref(), Some("url"));
        assert_eq!(reg.spec.extra_value_mappings["planId"], "plan_id");
        assert_eq!(reg.spec.deletion_safety, None);
    }

    #[test]
    fn registry_with_our_sources_round_trips() {
        for source in [
            json!({"type": "sqlite", "syncInterval": "1m",
                   "sqlite": {"path": "/data/tenants.db", "table": "tenants"}}),
            json!({"type": "postgresql", "syncInterval": "2h",
                   "postgresql": {"host": "pg", "port": 5433, "username": "app",
                                  "passwordRef": {"name": "pg", "key": "password"},
                                  "database": "saas", "table": "public.tenants",
                                  "sslMode": "verify-full",
                                  "tls": {"caRef": {"name": "pg-ca", "key": "ca.crt"},
                                          "serverName": "pg.example.com",
                                          "insecureSkipVerify": false}}}),
        ] {
            let mut value = registry(source);
            value["spec"]["deletionSafety"] =
                json!({"maxDeletePercent": 20, "maxDeleteCount": 50, "blockOnEmptyResult": true});
            let reg: TenantRegistry = serde_json::from_value(value.clone()).expect("registry");
            assert_eq!(serde_json::to_value(&reg).expect("encodes"), value);
        }
        let pg: PostgreSqlSource = serde_json::from_value(json!({
            "host": "pg", "username": "u", "database": "d", "table": "t"
        }))
        .expect("postgresql");
        assert_eq!((pg.port, pg.ssl_mode), (5432, PostgreSqlSslMode::Prefer));
        let safety: DeletionSafety = serde_json::from_value(json!({})).expect("safety");
        assert!(safety.block_on_empty_result);
    }

    #[test]
    fn unknown_source_type_is_rejected() {
        let value = registry(json!({"type": "oracle"}));
        assert!(serde_json::from_value::<TenantRegistry>(value).is_err());
    }

    fn template() -> Value {
        json!({
            "apiVersion": "operator.kubernetes-tenants.org/v1",
            "kind": "TenantTemplate",
            "metadata": {"name": "web", "namespace": "saas"},
            "spec": {
                "registryId": "reg",
                "namespaces": [{"id": "ns", "nameTemplate": "{{ .uid }}",
                                "spec": {"apiVersion": "v1", "kind": "Namespace"}}],
                "deployments": [{"id": "app", "dependIds": ["ns"], "nameTemplate": "{{ .uid }}-app",
                                 "targetNamespace": "{{ .uid }}",
                                 "labelsTemplate": {"tenant": "{{ .uid }}"},
                                 "ignoreFields": ["$.spec.replicas"],
                                 "spec": {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "spec": {"replicas": 1}}}],
                "manifests": [{"id": "cr", "creationPolicy": "Once", "deletionPolicy": "Retain",
                               "conflictPolicy": "Force", "patchStrategy": "replace",
                               "waitForReady": false, "timeoutSeconds": 60,
                               "skipOnDependencyFailure": false,
                               "spec": {"apiVersion": "example.io/v1", "kind": "Widget"}}]
            }
        })
    }

    #[test]
    fn tresource_defaults_match_the_original() {
        let tt: TenantTemplate = serde_json::from_value(template()).expect("template");
        let app = &tt.spec.resources.deployments[0];
        assert_eq!(app.creation_policy, CreationPolicy::WhenNeeded);
        assert_eq!(app.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(app.conflict_policy, ConflictPolicy::Stuck);
        assert_eq!(app.patch_strategy, PatchStrategy::Apply);
        assert!(app.wait_for_ready);
        assert_eq!(app.timeout_seconds, 300);
        assert!(app.skips_on_dependency_failure());
        let cr = &tt.spec.resources.manifests[0];
        assert_eq!(cr.creation_policy, CreationPolicy::Once);
        assert_eq!(cr.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(cr.conflict_policy, ConflictPolicy::Force);
        assert_eq!(cr.patch_strategy, PatchStrategy::Replace);
        assert!(!cr.wait_for_ready && !cr.skips_on_dependency_failure());
    }

    #[test]
    fn template_lists_are_flattened_into_spec() {
        let tt: TenantTemplate = serde_json::from_value(template()).expect("template");
        let resources = &tt.spec.resources;
        assert_eq!(resources.len(), 3);
        assert!(!resources.is_empty());
        let ids: Vec<(&str, &str)> = resources
            .iter()
            .map(|(list, entry)| (list, entry.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("deployments", "app"),
                ("namespaces", "ns"),
                ("manifests", "cr")
            ]
        );
        let back = serde_json::to_value(&tt).expect("encodes");
        assert_eq!(back["spec"]["registryId"], "reg");
        assert_eq!(back["spec"]["deployments"][0]["id"], "app");
        assert!(back["spec"].get("resources").is_none());
        let again: TenantTemplate = serde_json::from_value(back).expect("decodes again");
        assert_eq!(again, tt);
        assert!(TenantResources::default().is_empty());
    }

    #[test]
    fn list_names_match_serialized_field_names() {
        let entry = json!([{"id": "x", "spec": {}}]);
        let mut spec = serde_json::Map::new();
        for name in TenantResources::LIST_NAMES {
            spec.insert(name.to_owned(), entry.clone());
        }
        let resources: TenantResources =
            serde_json::from_value(Value::Object(spec.clone())).expect("all lists");
        let lists = resources.lists();
        for (i, (name, entries)) in lists.iter().enumerate() {
            assert_eq!(*name, TenantResources::LIST_NAMES[i]);
            assert_eq!(entries.len(), 1, "{name}");
        }
        let back = serde_json::to_value(&resources).expect("encodes");
        let keys: Vec<&String> = back.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 16);
    }

    #[test]
    fn tenant_round_trips() {
        let tenant = json!({
            "apiVersion": "operator.kubernetes-tenants.org/v1",
            "kind": "Tenant",
            "metadata": {"name": "acme-web", "namespace": "saas",
                         "labels": {"kubernetes-tenants.org/registry": "reg",
                                    "kubernetes-tenants.org/uid": "acme"}},
            "spec": {"uid": "acme", "templateRef": "web",
                     "configMaps": [{"id": "cfg", "spec": {"apiVersion": "v1", "kind": "ConfigMap"},
                                     "creationPolicy": "WhenNeeded", "deletionPolicy": "Delete",
                                     "conflictPolicy": "Stuck", "patchStrategy": "apply",
                                     "waitForReady": true, "timeoutSeconds": 300}]},
            "status": {"observedGeneration": 2, "readyResources": 1, "desiredResources": 1,
                       "failedResources": 0, "appliedResources": ["ConfigMap/saas/acme-cfg@cfg"],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                                       "message": "ok",
                                       "lastTransitionTime": "2025-11-12T00:00:00Z"}]}
        });
        let parsed: Tenant = serde_json::from_value(tenant.clone()).expect("tenant");
        assert_eq!(parsed.spec.uid, "acme");
        assert_eq!(serde_json::to_value(&parsed).expect("encodes"), tenant);
    }

    #[test]
    fn resource_identity() {
        assert_eq!(
            TenantRegistry::api_version(&()),
            "operator.kubernetes-tenants.org/v1"
        );
        assert_eq!(TenantRegistry::plural(&()), "tenantregistries");
        assert_eq!(TenantTemplate::plural(&()), "tenanttemplates");
        assert_eq!(Tenant::plural(&()), "tenants");
    }
}
