//! TenantRegistries on the whole system (a private devcluster, two coordinators, one worker),
//! against SQLite, MariaDB and PostgreSQL at once, each engine in its own namespace: rows become
//! one Tenant per (TenantTemplate × active row) with the labels, annotations and owner reference
//! of the original; a changed row rewrites only its own Tenants; a deactivated row's Tenants go
//! and a new row's come; a second template doubles them; an unreachable database (a stopped
//! server, a moved SQLite file) changes no Tenant and says why in `Ready`; an emptied table is held
//! back by the deletion brake until the deletions are confirmed. And a registry naming a missing
//! table says `TableNotFound`. And the original's quick start, with its table, names and
//! manifests, behaves as its documentation says.
//!
//! The workers render template `web` into a whole stack per row (Namespace, ConfigMap, Secret,
//! Deployment made Ready by kwok, Service after it, a Role with `deletionPolicy: Retain`): the
//! Tenant becomes Ready with all six, a changed row re-renders only its own ConfigMap, and a
//! deactivated row's resources go except the Role, which stays released with the orphan markers.
//! A deleted Tenant counts as deleted when it is gone or has a `deletionTimestamp` (a worker
//! holds it with its finalizer while it cleans up).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use api::constants::condition::{DELETION_BLOCKED, READY};
use api::constants::{
    ANNOTATION_ACTIVATE, ANNOTATION_EXTRA, ANNOTATION_HOST_OR_URL, ANNOTATION_ORPHANED_REASON,
    ANNOTATION_TEMPLATE_GENERATION, LABEL_BUCKET, LABEL_ORPHANED, LABEL_TENANT,
    LABEL_TENANT_REGISTRY, LABEL_TENANT_UID,
};
use api::{Tenant, TenantRegistry, TenantRegistryStatus, TenantTemplate, TenantTemplateStatus};
use devcluster::Layout;
use devcluster::audit::{AuditLog, Cursor};
use devcluster::database::{self, Connection, DatabaseServer, Engine};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use kubetemplater_e2e::eventually;
use kubetemplater_e2e::system::System;
use serde::Deserialize as _;
use serde_json::json;
use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};

/// Every registry's `syncInterval`.
const SYNC: Duration = Duration::from_secs(2);
/// How long anything the controller should do may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The table every engine serves.
const TABLE: &str = "tenants";
/// The registry of each engine's namespace.
const REGISTRY: &str = "registry";
/// The Secret with the database password (MariaDB, PostgreSQL).
const PASSWORD_SECRET: &str = "db-password";
const ANNOTATION_CONFIRM_DELETIONS: &str = "kubetemplater.io/confirm-deletions";
/// The cause `Ready` names during an outage, for every engine (SQLite: "unable to open
/// database file").
const OUTAGE_CAUSE: &str = "DatabaseUnreachable";

/// The three datasources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    MariaDb,
    PostgreSql,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Sqlite, Kind::MariaDb, Kind::PostgreSql];

    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::MariaDb => "mariadb",
            Kind::PostgreSql => "postgresql",
        }
    }
}

/// A private layout for the database servers, stopped on drop (before the directory goes), also
/// when the test fails: the servers outlive the process otherwise.
struct PrivateServers {
    layout: Layout,
    dir: tempfile::TempDir,
}

impl PrivateServers {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kt-registry-")
            .tempdir()
            .context("temporary directory for the databases")?;
        Ok(Self {
            layout: Layout::new(dir.path()),
            dir,
        })
    }
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        if let Err(err) = database::stop_all(&self.layout) {
            eprintln!("stopping the test's database servers: {err}");
        }
    }
}

/// One engine's table, and how to break and mend it.
enum Db {
    /// A file the coordinator (a local process) reads.
    Sqlite { path: PathBuf },
    /// A server on loopback, in the test's private layout.
    Server(Box<ServerDb>),
}

/// A database of a server devcluster runs.
struct ServerDb {
    layout: Layout,
    server: DatabaseServer,
    connection: Connection,
}

impl Db {
    async fn sqlite(dir: &Path) -> Result<Self> {
        let db = Db::Sqlite {
            path: dir.join("tenants.db"),
        };
        db.exec("SELECT 1").await?;
        Ok(db)
    }

    async fn server(layout: &Layout, engine: Engine) -> Result<Self> {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || {
            let server = DatabaseServer::start(&layout, engine)
                .with_context(|| format!("starting {engine}"))?;
            let connection = server
                .create_database(&database::unique_name("registry"))
                .context("creating the test's database")?;
            Ok(Db::Server(Box::new(ServerDb {
                layout,
                server,
                connection,
            })))
        })
        .await?
    }

    /// Runs SQL as the table's owner.
    async fn exec(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite { path } => {
                // A rollback journal, not sqlx's default WAL: a writer and the coordinator's
                // reader then share nothing but the one file.
                let mut conn = SqliteConnection::connect_with(
                    &SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Delete),
                )
                .await
                .with_context(|| format!("opening {}", path.display()))?;
                sqlx::raw_sql(sql)
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("running {sql:?}"))?;
                conn.close().await?;
            }
            Db::Server(db) => {
                let (server, database, sql) = (
                    db.server.clone(),
                    db.connection.database.clone(),
                    sql.to_owned(),
                );
                tokio::task::spawn_blocking(move || {
                    server
                        .execute(&database, &sql)
                        .with_context(|| format!("running {sql:?}"))
                })
                .await??;
            }
        }
        Ok(())
    }

    /// The registry's `spec.source`.
    fn source(&self, table: &str) -> serde_json::Value {
        match self {
            Db::Sqlite { path } => json!({
                "type": "sqlite",
                "syncInterval": format!("{}s", SYNC.as_secs()),
                "sqlite": { "path": path.display().to_string(), "table": table },
            }),
            Db::Server(db) => {
                let connection = &db.connection;
                let (type_, block) = match connection.engine {
                    Engine::MariaDb => ("mysql", "mysql"),
                    Engine::PostgreSql => ("postgresql", "postgresql"),
                };
                json!({
                    "type": type_,
                    "syncInterval": format!("{}s", SYNC.as_secs()),
                    block: {
                        "host": connection.host,
                        "port": connection.port,
                        "username": connection.username,
                        "passwordRef": { "name": PASSWORD_SECRET, "key": "password" },
                        "database": connection.database,
                        "table": table,
                    },
                })
            }
        }
    }

    /// The Secret the registry's `passwordRef` names, if any.
    fn secret(&self) -> Option<Secret> {
        let Db::Server(db) = self else {
            return None;
        };
        let connection = &db.connection;
        Some(Secret {
            metadata: ObjectMeta {
                name: Some(PASSWORD_SECRET.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(connection.password.clone().into_bytes()),
            )])),
            ..Secret::default()
        })
    }

    /// Whether an outage can be staged (an external server cannot be stopped).
    fn can_fail(&self) -> bool {
        match self {
            Db::Sqlite { .. } => true,
            Db::Server(db) => !db.server.is_external(),
        }
    }

    /// SQLite: the file is renamed away; a server: stopped.
    async fn break_it(&self) -> Result<()> {
        match self {
            Db::Sqlite { path } => {
                std::fs::rename(path, moved(path)).context("renaming the database file away")
            }
            Db::Server(db) => {
                let server = db.server.clone();
                tokio::task::spawn_blocking(move || server.stop().context("stopping the server"))
                    .await?
            }
        }
    }

    /// Undoes [`Db::break_it`].
    async fn mend(&self) -> Result<()> {
        match self {
            Db::Sqlite { path } => {
                std::fs::rename(moved(path), path).context("renaming the database file back")
            }
            Db::Server(db) => {
                let (layout, engine) = (db.layout.clone(), db.connection.engine);
                tokio::task::spawn_blocking(move || {
                    DatabaseServer::start(&layout, engine)
                        .map(drop)
                        .context("starting the server again")
                })
                .await?
            }
        }
    }
}

fn moved(path: &Path) -> PathBuf {
    path.with_extension("db.moved")
}

#[tokio::test(flavor = "multi_thread")]
async fn registries_turn_rows_into_tenants_on_every_engine() -> Result<()> {
    let started = Instant::now();
    let servers = PrivateServers::new()?;
    let system = System::start(1, false).await?;
    eprintln!("system started in {:.1?}", started.elapsed());
    let buckets = u32::try_from(system.map().await?.buckets.len())
        .ok()
        .and_then(NonZeroU32::new)
        .context("the bucket map has no buckets")?;
    let env = Env {
        client: system.client.clone(),
        audit: system.audit(),
        buckets,
    };

    // The engines run side by side, each in its own namespace with its own registry; each
    // reports its own outcome (a failure names the engine and the step).
    let runs = Kind::ALL.map(|kind| {
        let (env, layout, dir) = (&env, &servers.layout, servers.dir.path());
        async move {
            let began = Instant::now();
            let result = engine_scenarios(env, kind, layout, dir).await;
            (kind, result, began.elapsed())
        }
    });
    let missing_table = missing_table(&env, servers.dir.path());
    let quickstart = the_documented_quickstart(&env, &servers.layout);
    let (runs, missing_table, quickstart) =
        tokio::join!(futures::future::join_all(runs), missing_table, quickstart);

    let mut failures = Vec::new();
    for (kind, result, took) in runs {
        match result {
            Ok(()) => eprintln!("{}: passed in {took:.1?}", kind.name()),
            Err(e) => {
                eprintln!("{}: FAILED after {took:.1?}: {e:#}", kind.name());
                failures.push(format!("{}: {e:#}", kind.name()));
            }
        }
    }
    if let Err(e) = missing_table {
        eprintln!("missing table: FAILED: {e:#}");
        failures.push(format!("missing table: {e:#}"));
    }
    if let Err(e) = quickstart {
        eprintln!("the documented quickstart: FAILED: {e:#}");
        failures.push(format!("the documented quickstart: {e:#}"));
    }
    eprintln!("whole test: {:.1?}", started.elapsed());
    if !failures.is_empty() {
        system.keep_logs("tenants-registry");
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}

/// What every engine's run shares.
struct Env {
    client: Client,
    audit: Option<AuditLog>,
    buckets: NonZeroU32,
}

async fn namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("kt-{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                "kubetemplater.io/e2e".to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

fn registry_object(
    namespace: &str,
    name: &str,
    source: serde_json::Value,
) -> Result<TenantRegistry> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantRegistry",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "source": source,
            "valueMappings": { "uid": "id", "hostOrUrl": "url", "activate": "active" },
            "extraValueMappings": { "planId": "plan" },
        },
    }))?)
}

/// Template `web` is a whole stack: a Namespace of its own (named after the run's namespace, so
/// the engines' tenants do not collide), a ConfigMap and a Secret, a Deployment that waits for
/// both, a Service that waits for the Deployment to be ready, and a Role kept on deletion
/// (`deletionPolicy: Retain`). Other templates are one ConfigMap.
fn template_object(namespace: &str, name: &str, registry: &str) -> Result<TenantTemplate> {
    let mut spec = json!({
        "registryId": registry,
        "configMaps": [{
            "id": "config",
            "nameTemplate": format!("{{{{ .uid }}}}-{name}"),
            "spec": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "data": { "plan": "{{ .planId }}" },
            },
        }],
    });
    if name == "web" {
        spec["namespaces"] = json!([{
            "id": "space",
            "nameTemplate": format!("{{{{ .uid }}}}-{namespace}"),
            "spec": {"apiVersion": "v1", "kind": "Namespace"},
        }]);
        spec["secrets"] = json!([{
            "id": "secret",
            "nameTemplate": "{{ .uid }}-web",
            "spec": {"apiVersion": "v1", "kind": "Secret",
                     "stringData": {"token": "{{ .uid | sha1sum }}"}},
        }]);
        spec["deployments"] = json!([{
            "id": "app",
            "nameTemplate": "{{ .uid }}-web",
            "dependIds": ["config", "secret"],
            "spec": {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "{{ .uid }}"}},
                "template": {"metadata": {"labels": {"app": "{{ .uid }}"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}},
        }]);
        spec["services"] = json!([{
            "id": "svc",
            "nameTemplate": "{{ .uid }}-web",
            "dependIds": ["app"],
            "spec": {"apiVersion": "v1", "kind": "Service", "spec": {
                "selector": {"app": "{{ .uid }}"}, "ports": [{"port": 80}]}},
        }]);
        spec["manifests"] = json!([{
            "id": "role",
            "nameTemplate": "{{ .uid }}-web",
            "deletionPolicy": "Retain",
            "spec": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                     "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        }]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "operator.kubernetes-tenants.org/v1",
        "kind": "TenantTemplate",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    }))?)
}

/// Waits until `uid`'s web Tenant is Ready with its six resources, and checks them.
async fn stack_is_ready(run: &Run<'_>, uid: &str, plan: &str) -> Result<()> {
    let tenants = &run.tenants;
    let name = format!("{uid}-web");
    let name = &name;
    eventually(
        Duration::from_secs(60),
        &run.what(&format!("{name} Ready with 6 of 6 resources")),
        || async move {
            let status = tenants.get(name).await?.status.unwrap_or_default();
            let ready = condition(&status.conditions, READY).context("no Ready condition")?;
            ensure!(
                ready.status == "True" && status.ready_resources == Some(6),
                "Ready {} {} ({}), {:?} of {:?} ready",
                ready.status,
                ready.reason,
                ready.message,
                status.ready_resources,
                status.desired_resources
            );
            Ok(true)
        },
    )
    .await?;
    let client = run.env.client.clone();
    let ns = run.namespace.as_str();
    let config = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("the ConfigMap")?;
    ensure!(
        config
            .data
            .unwrap_or_default()
            .get("plan")
            .map(String::as_str)
            == Some(plan),
        "{name}: ConfigMap plan is not {plan}"
    );
    let owner = config.metadata.owner_references.unwrap_or_default();
    ensure!(
        owner.iter().any(|o| o.kind == "Tenant" && o.name == *name),
        "{name}: the ConfigMap is owned by its Tenant: {owner:?}"
    );
    Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("the Secret")?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("the Deployment")?;
    ensure!(
        deployment.status.and_then(|s| s.available_replicas) == Some(1),
        "{name}: the Deployment is available"
    );
    Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("the Service")?;
    Api::<Role>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .context("the Role")?;
    let space = Api::<Namespace>::all(client)
        .get(&format!("{uid}-{ns}"))
        .await
        .context("the tenant's Namespace")?;
    ensure!(
        space.labels().get(LABEL_TENANT).map(String::as_str) == Some(name.as_str()),
        "{name}: its Namespace carries the tracking label"
    );
    Ok(())
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn describe(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What identifies a Tenant and what it was made from: a Tenant deleted and made again, or
/// rewritten from other values, differs.
type Fingerprint = BTreeMap<String, (String, BTreeMap<String, String>)>;

/// One engine's namespace, registry and APIs.
struct Run<'a> {
    env: &'a Env,
    engine: &'static str,
    namespace: String,
    tenants: Api<Tenant>,
    registries: Api<TenantRegistry>,
    templates: Api<TenantTemplate>,
}

impl Run<'_> {
    fn what(&self, what: &str) -> String {
        format!("{}: {what}", self.engine)
    }

    /// The registry's Tenants by name, those being deleted included.
    async fn all_tenants(&self) -> Result<BTreeMap<String, Tenant>> {
        let list = self
            .tenants
            .list(&ListParams::default().labels(&format!("{LABEL_TENANT_REGISTRY}={REGISTRY}")))
            .await?;
        Ok(list.items.into_iter().map(|t| (t.name_any(), t)).collect())
    }

    /// The registry's Tenants that are not being deleted.
    async fn live_tenants(&self) -> Result<BTreeMap<String, Tenant>> {
        let mut tenants = self.all_tenants().await?;
        tenants.retain(|_, t| t.metadata.deletion_timestamp.is_none());
        Ok(tenants)
    }

    /// Waits until the live Tenants are exactly `expected` (every other one gone or being
    /// deleted); returns them.
    async fn wait_tenants(&self, expected: &[&str]) -> Result<BTreeMap<String, Tenant>> {
        let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        let what = self.what(&format!("the live Tenants to be {expected:?}"));
        let expected = &expected;
        eventually(TIMEOUT, &what, || async move {
            let names: BTreeSet<String> = self.live_tenants().await?.into_keys().collect();
            ensure!(names == *expected, "they are {names:?}");
            Ok(true)
        })
        .await?;
        self.live_tenants().await
    }

    async fn registry(&self, name: &str) -> Result<TenantRegistry> {
        Ok(self.registries.get(name).await?)
    }

    /// Waits until `check` accepts the registry's status; returns it.
    async fn wait_registry(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&TenantRegistryStatus) -> Result<()>,
    ) -> Result<TenantRegistryStatus> {
        let check = &check;
        eventually(TIMEOUT, &self.what(what), || async move {
            let status = self.registry(name).await?.status.unwrap_or_default();
            check(&status).with_context(|| {
                format!(
                    "status: desired {:?}, referencingTemplates {:?}, conditions [{}]",
                    status.desired,
                    status.referencing_templates,
                    describe(&status.conditions)
                )
            })?;
            Ok(true)
        })
        .await?;
        Ok(self.registry(name).await?.status.unwrap_or_default())
    }

    /// Waits until `check` accepts the template's status.
    async fn wait_template(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&TenantTemplateStatus) -> Result<()>,
    ) -> Result<()> {
        let check = &check;
        eventually(TIMEOUT, &self.what(what), || async move {
            let status = self.templates.get(name).await?.status.unwrap_or_default();
            check(&status).with_context(|| {
                format!(
                    "status: totalTenants {:?}, conditions [{}]",
                    status.total_tenants,
                    describe(&status.conditions)
                )
            })?;
            Ok(true)
        })
        .await
    }

    /// Waits until the registry's Ready condition has `status` and `reason` and its message
    /// starts with `message`.
    async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        self.wait_registry(
            name,
            &format!("registry {name} Ready={status} {reason} \"{message}…\""),
            |s| {
                let ready = condition(&s.conditions, READY).context("no Ready condition")?;
                ensure!(
                    ready.status == status
                        && ready.reason == reason
                        && ready.message.starts_with(message),
                    "Ready is {} {}: {}",
                    ready.status,
                    ready.reason,
                    ready.message
                );
                Ok(())
            },
        )
        .await
        .map(drop)
    }

    async fn fingerprint(&self) -> Result<Fingerprint> {
        Ok(self
            .all_tenants()
            .await?
            .into_iter()
            .map(|(name, t)| {
                let deleting = if t.metadata.deletion_timestamp.is_some() {
                    "deleting:"
                } else {
                    ""
                };
                let ours: BTreeMap<String, String> = t
                    .annotations()
                    .iter()
                    .filter(|(k, _)| k.starts_with("kubernetes-tenants.org/"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (
                    name,
                    (
                        format!("{deleting}{}", t.metadata.uid.unwrap_or_default()),
                        ours,
                    ),
                )
            })
            .collect())
    }

    /// Checks one Tenant against the row and template it was made from.
    async fn check_tenant(
        &self,
        tenants: &BTreeMap<String, Tenant>,
        uid: &str,
        template: &str,
        url: &str,
        plan: &str,
    ) -> Result<()> {
        let name = format!("{uid}-{template}");
        let tenant = tenants
            .get(&name)
            .with_context(|| format!("{name} missing"))?;
        let registry = self.registry(REGISTRY).await?;
        let generation = self
            .templates
            .get(template)
            .await?
            .metadata
            .generation
            .context("template without a generation")?;
        let labels = tenant.labels();
        let annotations = tenant.annotations();
        let label = |key: &str| labels.get(key).map(String::as_str);
        let annotation = |key: &str| annotations.get(key).map(String::as_str);
        ensure!(
            label(LABEL_TENANT_REGISTRY) == Some(REGISTRY),
            "{name}: labels {labels:?}"
        );
        ensure!(
            label(LABEL_TENANT_UID) == Some(uid),
            "{name}: labels {labels:?}"
        );
        let bucket = label(LABEL_BUCKET).with_context(|| format!("{name}: no bucket label"))?;
        ensure!(
            !bucket.is_empty() && bucket.bytes().all(|b| b.is_ascii_digit()),
            "{name}: the bucket label {bucket:?} is not a decimal number"
        );
        let expected_bucket = engine::bucket::bucket(
            &engine::bucket::tenant_shard_key(&self.namespace, REGISTRY, uid),
            self.env.buckets,
        );
        ensure!(
            bucket == engine::bucket::bucket_label_value(expected_bucket),
            "{name}: bucket label {bucket}, the tenant shard key hashes to {expected_bucket}"
        );
        ensure!(
            annotation(ANNOTATION_HOST_OR_URL) == Some(url),
            "{name}: annotations {annotations:?}"
        );
        ensure!(
            annotation(ANNOTATION_ACTIVATE) == Some("1"),
            "{name}: annotations {annotations:?}"
        );
        let extra: serde_json::Value = serde_json::from_str(
            annotation(ANNOTATION_EXTRA).with_context(|| format!("{name}: no extra annotation"))?,
        )
        .with_context(|| format!("{name}: the extra annotation is not JSON"))?;
        ensure!(
            extra == json!({ "planId": plan }),
            "{name}: extra annotation {extra}, expected planId {plan}"
        );
        ensure!(
            annotation(ANNOTATION_TEMPLATE_GENERATION) == Some(generation.to_string().as_str()),
            "{name}: annotations {annotations:?}, template generation {generation}"
        );
        let owners = tenant.owner_references();
        ensure!(
            owners.len() == 1
                && owners[0].kind == "TenantRegistry"
                && owners[0].api_version == "operator.kubernetes-tenants.org/v1"
                && owners[0].name == REGISTRY
                && Some(&owners[0].uid) == registry.metadata.uid.as_ref()
                && owners[0].controller == Some(true),
            "{name}: owner references {owners:?}"
        );
        ensure!(
            tenant.spec.uid == uid && tenant.spec.template_ref == template,
            "{name}: spec.uid {:?}, spec.templateRef {:?}",
            tenant.spec.uid,
            tenant.spec.template_ref
        );
        let config_maps = &tenant.spec.resources.config_maps;
        ensure!(
            config_maps.len() == 1
                && config_maps[0].name_template.as_deref() == Some(name.as_str()),
            "{name}: the template's configMaps entry with its nameTemplate rendered, got {:?}",
            config_maps
                .iter()
                .map(|c| c.name_template.clone())
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Waits until `name`'s resourceVersion stays the same for one sync interval; returns it.
    async fn settled_version(&self, name: &str) -> Result<String> {
        let mut last = None;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let version = self.tenants.get(name).await?.resource_version();
            if version.is_some() && version == last {
                return version.context("no resourceVersion");
            }
            ensure!(
                Instant::now() < deadline,
                "{name} kept changing for {TIMEOUT:?}"
            );
            last = version;
            tokio::time::sleep(SYNC + Duration::from_millis(500)).await;
        }
    }

    /// Writes to Tenant `name` after `cursor` (audit log, devcluster only), as "user verb".
    fn tenant_writes(&self, cursor: Option<Cursor>, name: &str) -> Result<Vec<String>> {
        let (Some(audit), Some(cursor)) = (&self.env.audit, cursor) else {
            return Ok(Vec::new());
        };
        Ok(audit
            .read_since(cursor)?
            .into_iter()
            .filter(|e| {
                e.succeeded() && matches!(e.verb.as_str(), "create" | "update" | "patch" | "delete")
            })
            .filter(|e| {
                e.object_ref.as_ref().is_some_and(|o| {
                    o.resource == "tenants" && o.namespace == self.namespace && o.name == name
                })
            })
            .map(|e| {
                let subresource = e
                    .object_ref
                    .as_ref()
                    .map(|o| o.subresource.clone())
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                format!("{} {}{subresource}", e.user.component(), e.verb)
            })
            .collect())
    }
}

/// A registry naming a table that does not exist says so.
async fn missing_table(env: &Env, dir: &Path) -> Result<()> {
    let client = &env.client;
    let namespace = namespace(client, "tenants-missing").await?;
    // Its own directory: the SQLite engine's outage cannot touch it.
    let dir = dir.join("missing");
    std::fs::create_dir_all(&dir)?;
    let db = Db::sqlite(&dir).await?;
    db.exec("CREATE TABLE other (id TEXT, url TEXT, active TEXT, plan TEXT)")
        .await?;
    let run = Run {
        env,
        engine: "missing table (sqlite)",
        tenants: Api::namespaced(client.clone(), &namespace),
        registries: Api::namespaced(client.clone(), &namespace),
        templates: Api::namespaced(client.clone(), &namespace),
        namespace,
    };
    // A template that comes before its registry: not valid until the registry exists.
    run.templates
        .create(
            &PostParams::default(),
            &template_object(&run.namespace, "web", REGISTRY)?,
        )
        .await
        .context("creating TenantTemplate web")?;
    run.wait_template("web", "template web Valid False RegistryNotFound", |s| {
        let valid = condition(&s.conditions, "Valid").context("no Valid condition")?;
        ensure!(
            valid.status == "False" && valid.reason == "RegistryNotFound",
            "Valid {} {}",
            valid.status,
            valid.reason
        );
        Ok(())
    })
    .await?;
    run.registries
        .create(
            &PostParams::default(),
            &registry_object(&run.namespace, REGISTRY, db.source("no_such_table"))?,
        )
        .await
        .context("creating the TenantRegistry")?;
    run.wait_ready(
        REGISTRY,
        "False",
        "DatabaseConnectionFailed",
        "TableNotFound:",
    )
    .await?;
    let status = run.registry(REGISTRY).await?.status.unwrap_or_default();
    let message = condition(&status.conditions, READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("no_such_table"),
        "the Ready message names the table: {message}"
    );
    eprintln!("missing table: Ready says {message:?}");
    ensure!(
        status.referencing_templates == Some(1),
        "referencingTemplates {:?}",
        status.referencing_templates
    );
    ensure!(
        run.all_tenants().await?.is_empty(),
        "no Tenant without a read"
    );
    // The registry exists now, though it has no Tenants: the template is valid.
    run.wait_template(
        "web",
        "template web Valid True once its registry exists",
        |s| {
            let valid = condition(&s.conditions, "Valid").context("no Valid condition")?;
            ensure!(
                valid.status == "True",
                "Valid {} {}: {}",
                valid.status,
                valid.reason,
                valid.message
            );
            ensure!(
                s.total_tenants == Some(0),
                "totalTenants {:?}",
                s.total_tenants
            );
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// Every scenario on one engine, in order; an error names the engine and the step.
async fn engine_scenarios(env: &Env, kind: Kind, layout: &Layout, dir: &Path) -> Result<()> {
    let engine = kind.name();
    let db = match kind {
        Kind::Sqlite => {
            let dir = dir.join("sqlite");
            std::fs::create_dir_all(&dir)?;
            Db::sqlite(&dir).await?
        }
        Kind::MariaDb => Db::server(layout, Engine::MariaDb).await?,
        Kind::PostgreSql => Db::server(layout, Engine::PostgreSql).await?,
    };
    let client = &env.client;
    let namespace = namespace(client, &format!("tenants-{engine}")).await?;
    eprintln!("{engine}: namespace {namespace}");
    let run = Run {
        env,
        engine,
        tenants: Api::namespaced(client.clone(), &namespace),
        registries: Api::namespaced(client.clone(), &namespace),
        templates: Api::namespaced(client.clone(), &namespace),
        namespace,
    };
    let step = |n: u32, what: &str| format!("step {n} ({what})");

    rows_become_tenants(&run, &db)
        .await
        .with_context(|| step(1, "rows become Tenants"))?;
    a_changed_row_rewrites_its_tenant_only(&run, &db)
        .await
        .with_context(|| step(2, "a changed row"))?;
    rows_come_and_go(&run, &db)
        .await
        .with_context(|| step(3, "a row deactivated, a row added"))?;
    a_second_template(&run)
        .await
        .with_context(|| step(4, "a second template"))?;
    if db.can_fail() {
        an_outage_changes_nothing(&run, &db)
            .await
            .with_context(|| step(5, "an outage"))?;
    } else {
        eprintln!("SKIP {engine} outage: the server is external and cannot be stopped");
    }
    the_brake_holds_an_empty_result(&run, &db)
        .await
        .with_context(|| step(6, "the deletion brake"))?;
    Ok(())
}

async fn rows_become_tenants(run: &Run<'_>, db: &Db) -> Result<()> {
    db.exec(&format!(
        "CREATE TABLE {TABLE} (id VARCHAR(64) PRIMARY KEY, url VARCHAR(255), active VARCHAR(8), \
         plan VARCHAR(32));\n\
         INSERT INTO {TABLE} (id, url, active, plan) VALUES \
         ('a1', 'https://a1.example.com', '1', 'gold'), \
         ('a2', 'https://a2.example.com', '1', 'silver'), \
         ('a3', 'https://a3.example.com', '0', 'gold');"
    ))
    .await?;
    if let Some(secret) = db.secret() {
        Api::<Secret>::namespaced(run.env.client.clone(), &run.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the password Secret")?;
    }
    run.templates
        .create(
            &PostParams::default(),
            &template_object(&run.namespace, "web", REGISTRY)?,
        )
        .await
        .context("creating TenantTemplate web")?;
    run.registries
        .create(
            &PostParams::default(),
            &registry_object(&run.namespace, REGISTRY, db.source(TABLE))?,
        )
        .await
        .context("creating the TenantRegistry")?;

    let tenants = run.wait_tenants(&["a1-web", "a2-web"]).await?;
    let all: BTreeSet<String> = run.all_tenants().await?.into_keys().collect();
    ensure!(
        all == BTreeSet::from(["a1-web".to_owned(), "a2-web".to_owned()]),
        "no Tenant for the inactive row a3: {all:?}"
    );
    run.check_tenant(&tenants, "a1", "web", "https://a1.example.com", "gold")
        .await?;
    run.check_tenant(&tenants, "a2", "web", "https://a2.example.com", "silver")
        .await?;
    stack_is_ready(run, "a1", "gold").await?;
    stack_is_ready(run, "a2", "silver").await?;
    run.wait_registry(
        REGISTRY,
        "registry desired 2, referencingTemplates 1, Ready True DatabaseConnected",
        |s| {
            ensure!(s.desired == Some(2), "desired {:?}", s.desired);
            ensure!(
                s.referencing_templates == Some(1),
                "referencingTemplates {:?}",
                s.referencing_templates
            );
            let ready = condition(&s.conditions, READY).context("no Ready condition")?;
            ensure!(
                ready.status == "True" && ready.reason == "DatabaseConnected",
                "Ready {} {}",
                ready.status,
                ready.reason
            );
            Ok(())
        },
    )
    .await?;
    run.wait_template("web", "template web totalTenants 2, Valid True", |s| {
        ensure!(
            s.total_tenants == Some(2),
            "totalTenants {:?}",
            s.total_tenants
        );
        let valid = condition(&s.conditions, "Valid").context("no Valid condition")?;
        ensure!(
            valid.status == "True",
            "Valid {} {}",
            valid.status,
            valid.reason
        );
        ensure!(
            condition(&s.conditions, "Applied").is_some(),
            "no Applied condition"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

async fn a_changed_row_rewrites_its_tenant_only(run: &Run<'_>, db: &Db) -> Result<()> {
    let a1_version = run.settled_version("a1-web").await?;
    let cursor = run.env.audit.as_ref().map(AuditLog::cursor).transpose()?;
    db.exec(&format!(
        "UPDATE {TABLE} SET plan = 'platinum' WHERE id = 'a2'"
    ))
    .await?;
    let tenants = &run.tenants;
    eventually(
        TIMEOUT,
        &run.what("a2-web's extra annotation to say planId platinum"),
        || async move {
            let a2 = tenants.get("a2-web").await?;
            let extra = a2.annotations().get(ANNOTATION_EXTRA).cloned();
            ensure!(
                extra.as_deref() == Some(r#"{"planId":"platinum"}"#),
                "extra is {extra:?}"
            );
            Ok(true)
        },
    )
    .await?;
    let changed = run.live_tenants().await?;
    run.check_tenant(&changed, "a2", "web", "https://a2.example.com", "platinum")
        .await?;
    let a1_config = Api::<ConfigMap>::namespaced(run.env.client.clone(), &run.namespace)
        .get("a1-web")
        .await?
        .resource_version();
    stack_is_ready(run, "a2", "platinum").await?;
    // Two more syncs: a1's row did not change, so neither does its Tenant.
    tokio::time::sleep(2 * SYNC + Duration::from_millis(500)).await;
    let now = run.tenants.get("a1-web").await?.resource_version();
    if now.as_deref() != Some(a1_version.as_str()) {
        let writes = run.tenant_writes(cursor, "a1-web")?;
        // A worker reconciling the Tenant (status, finalizer) is not the registry's doing.
        let foreign: Vec<&String> = writes
            .iter()
            .filter(|w| !w.starts_with("kubetemplater:worker-"))
            .collect();
        ensure!(
            run.env.audit.is_some() && foreign.is_empty(),
            "a1-web changed from resourceVersion {a1_version} to {now:?} though its row did not; \
             writes to it: {writes:?}"
        );
        eprintln!(
            "{}: a1-web's resourceVersion changed, but only through workers: {writes:?}",
            run.engine
        );
    }
    let writes = run.tenant_writes(cursor, "a1-web")?;
    ensure!(
        writes
            .iter()
            .all(|w| !w.starts_with("kubetemplater:coordinator-")),
        "the registry wrote a1-web though its row did not change: {writes:?}"
    );
    let a1_config_now = Api::<ConfigMap>::namespaced(run.env.client.clone(), &run.namespace)
        .get("a1-web")
        .await?
        .resource_version();
    ensure!(
        a1_config_now == a1_config,
        "a1's ConfigMap was written though its row did not change"
    );
    Ok(())
}

async fn rows_come_and_go(run: &Run<'_>, db: &Db) -> Result<()> {
    db.exec(&format!("UPDATE {TABLE} SET active = '0' WHERE id = 'a1'"))
        .await?;
    run.wait_tenants(&["a2-web"])
        .await
        .context("a1-web deleted after a1 was deactivated")?;
    // Its resources go with it; the Role (Retain) stays, released with the orphan markers.
    let client = run.env.client.clone();
    let ns = run.namespace.clone();
    let (client, ns) = (&client, &ns);
    eventually(
        TIMEOUT,
        &run.what("a1's resources deleted, its Role retained"),
        || async move {
            let config = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt("a1-web")
                .await?;
            ensure!(
                config.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
                "the ConfigMap is still there"
            );
            let space = Api::<Namespace>::all(client.clone())
                .get_opt(&format!("a1-{ns}"))
                .await?;
            ensure!(
                space.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
                "the Namespace is still there"
            );
            let role = Api::<Role>::namespaced(client.clone(), ns)
                .get_opt("a1-web")
                .await?
                .context("the Role (Retain) was deleted")?;
            ensure!(
                role.labels().get(LABEL_ORPHANED).map(String::as_str) == Some("true")
                    && !role.labels().contains_key(LABEL_TENANT),
                "the Role is not released: labels {:?}",
                role.labels()
            );
            ensure!(
                role.annotations()
                    .get(ANNOTATION_ORPHANED_REASON)
                    .map(String::as_str)
                    == Some("TenantDeleted"),
                "orphaned-reason {:?}",
                role.annotations().get(ANNOTATION_ORPHANED_REASON)
            );
            Ok(true)
        },
    )
    .await?;
    db.exec(&format!(
        "INSERT INTO {TABLE} (id, url, active, plan) VALUES \
         ('a4', 'https://a4.example.com', '1', 'bronze')"
    ))
    .await?;
    let tenants = run
        .wait_tenants(&["a2-web", "a4-web"])
        .await
        .context("a4-web created after a4 was inserted")?;
    run.check_tenant(&tenants, "a4", "web", "https://a4.example.com", "bronze")
        .await?;
    run.wait_registry(REGISTRY, "registry desired 2", |s| {
        ensure!(s.desired == Some(2), "desired {:?}", s.desired);
        Ok(())
    })
    .await?;
    Ok(())
}

async fn a_second_template(run: &Run<'_>) -> Result<()> {
    run.templates
        .create(
            &PostParams::default(),
            &template_object(&run.namespace, "api", REGISTRY)?,
        )
        .await
        .context("creating TenantTemplate api")?;
    let tenants = run
        .wait_tenants(&["a2-api", "a2-web", "a4-api", "a4-web"])
        .await?;
    run.check_tenant(&tenants, "a2", "api", "https://a2.example.com", "platinum")
        .await?;
    run.check_tenant(&tenants, "a4", "api", "https://a4.example.com", "bronze")
        .await?;
    run.wait_registry(
        REGISTRY,
        "registry desired 4, referencingTemplates 2",
        |s| {
            ensure!(s.desired == Some(4), "desired {:?}", s.desired);
            ensure!(
                s.referencing_templates == Some(2),
                "referencingTemplates {:?}",
                s.referencing_templates
            );
            Ok(())
        },
    )
    .await?;
    for template in ["web", "api"] {
        run.wait_template(
            template,
            &format!("template {template} totalTenants 2"),
            |s| {
                ensure!(
                    s.total_tenants == Some(2),
                    "totalTenants {:?}",
                    s.total_tenants
                );
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

async fn an_outage_changes_nothing(run: &Run<'_>, db: &Db) -> Result<()> {
    let before = run.fingerprint().await?;
    ensure!(
        before.len() == 4,
        "four Tenants before the outage: {before:?}"
    );
    db.break_it().await?;
    let cause = OUTAGE_CAUSE;
    let broken = Instant::now();
    run.wait_ready(
        REGISTRY,
        "False",
        "DatabaseConnectionFailed",
        &format!("{cause}:"),
    )
    .await
    .context("the outage reported")?;
    eprintln!(
        "{}: outage reported after {:.1?}",
        run.engine,
        broken.elapsed()
    );
    // Three more syncs fail; none deletes (or rewrites) a Tenant.
    let until = Instant::now() + 3 * SYNC;
    while Instant::now() < until {
        let now = run.fingerprint().await?;
        ensure!(
            now == before,
            "the Tenants changed while the database was unreachable:\nbefore {before:?}\nnow {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = run.registry(REGISTRY).await?.status.unwrap_or_default();
    let ready = condition(&status.conditions, READY).context("no Ready condition")?;
    ensure!(
        ready.status == "False" && ready.message.starts_with(cause),
        "still failing after three syncs: Ready {} {}: {}",
        ready.status,
        ready.reason,
        ready.message
    );
    ensure!(
        status.desired == Some(4),
        "desired keeps the last read's 4 while reads fail: {:?}",
        status.desired
    );
    eprintln!("{}: Ready during the outage: {}", run.engine, ready.message);

    db.mend().await?;
    let mended = Instant::now();
    run.wait_ready(REGISTRY, "True", "DatabaseConnected", "")
        .await
        .context("Ready again after the database came back")?;
    eprintln!(
        "{}: Ready again {:.1?} after the database came back",
        run.engine,
        mended.elapsed()
    );
    tokio::time::sleep(SYNC).await;
    let after = run.fingerprint().await?;
    ensure!(
        after == before,
        "the Tenants changed across the outage:\nbefore {before:?}\nafter {after:?}"
    );
    Ok(())
}

async fn the_brake_holds_an_empty_result(run: &Run<'_>, db: &Db) -> Result<()> {
    let before = run.fingerprint().await?;
    db.exec(&format!("DELETE FROM {TABLE}")).await?;
    let status = run
        .wait_registry(REGISTRY, "DeletionBlocked True EmptyResult", |s| {
            let blocked = condition(&s.conditions, DELETION_BLOCKED)
                .context("no DeletionBlocked condition")?;
            ensure!(
                blocked.status == "True" && blocked.reason == "EmptyResult",
                "DeletionBlocked {} {}",
                blocked.status,
                blocked.reason
            );
            Ok(())
        })
        .await?;
    let message = condition(&status.conditions, DELETION_BLOCKED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let pending: u32 = message
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no count at the start of {message:?}"))?;
    ensure!(pending == 4, "4 deletions held back: {message}");
    ensure!(
        message.contains(&format!("{ANNOTATION_CONFIRM_DELETIONS}=\"{pending}\"")),
        "the message says how to confirm: {message}"
    );
    // Held back over another sync.
    tokio::time::sleep(SYNC + Duration::from_millis(500)).await;
    let now = run.fingerprint().await?;
    ensure!(
        now == before,
        "Tenants deleted despite the brake:\nbefore {before:?}\nnow {now:?}"
    );

    run.registries
        .patch(
            REGISTRY,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "annotations": { ANNOTATION_CONFIRM_DELETIONS: pending.to_string() } }
            })),
        )
        .await
        .context("confirming the deletions")?;
    run.wait_tenants(&[])
        .await
        .context("every Tenant deleted after the confirmation")?;
    run.wait_registry(REGISTRY, "DeletionBlocked lifted, desired 0", |s| {
        ensure!(s.desired == Some(0), "desired {:?}", s.desired);
        let blocked =
            condition(&s.conditions, DELETION_BLOCKED).context("no DeletionBlocked condition")?;
        ensure!(
            blocked.status == "False",
            "DeletionBlocked {} {}",
            blocked.status,
            blocked.reason
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// The original's quick start (its docs/quickstart.md), with its names and shapes: a MySQL table
/// `tenant_configs (tenant_id, tenant_url, is_active, subscription_plan)` with acme-corp and
/// beta-inc active and gamma-llc not, registry `test-registry`, template `test-template` with a
/// Deployment and a Service `<uid>-app`, applied as YAML. As documented: Tenants
/// `<uid>-test-template`, Ready; `-l kubernetes-tenants.org/tenant` lists the resources; a new
/// row adds a tenant; a deactivated row's Tenant and resources go. (The documented sync interval,
/// 30 s, is 2 s here.)
async fn the_documented_quickstart(env: &Env, layout: &Layout) -> Result<()> {
    let db = Db::server(layout, Engine::MariaDb).await?;
    let Db::Server(server) = &db else {
        bail!("a MariaDB server");
    };
    let c = &server.connection;
    db.exec(
        "CREATE TABLE tenant_configs (tenant_id VARCHAR(64) PRIMARY KEY, tenant_url VARCHAR(255), \
         is_active TINYINT(1), subscription_plan VARCHAR(32));
         INSERT INTO tenant_configs VALUES \
         ('acme-corp', 'https://acme.example.com', 1, 'enterprise'), \
         ('beta-inc', 'https://beta.example.com', 1, 'startup'), \
         ('gamma-llc', 'https://gamma.example.com', 0, 'trial');",
    )
    .await?;
    let client = &env.client;
    let ns = namespace(client, "tenants-quickstart").await?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("mysql-credentials".to_owned()),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([(
                    "password".to_owned(),
                    c.password.clone(),
                )])),
                ..Secret::default()
            },
        )
        .await?;
    let manifests = format!(
        r#"
apiVersion: operator.kubernetes-tenants.org/v1
kind: TenantRegistry
metadata:
  name: test-registry
  namespace: {ns}
spec:
  source:
    type: mysql
    syncInterval: 2s
    mysql:
      host: {host}
      port: {port}
      username: {user}
      passwordRef:
        name: mysql-credentials
        key: password
      database: {database}
      table: tenant_configs
  valueMappings:
    uid: tenant_id
    hostOrUrl: tenant_url
    activate: is_active
  extraValueMappings:
    planId: subscription_plan
---
apiVersion: operator.kubernetes-tenants.org/v1
kind: TenantTemplate
metadata:
  name: test-template
  namespace: {ns}
spec:
  registryId: test-registry
  deployments:
    - id: app
      nameTemplate: "{{{{ .uid }}}}-app"
      spec:
        apiVersion: apps/v1
        kind: Deployment
        spec:
          replicas: 1
          selector:
            matchLabels:
              app: "{{{{ .uid }}}}"
          template:
            metadata:
              labels:
                app: "{{{{ .uid }}}}"
            spec:
              containers:
                - name: app
                  image: nginx:stable
                  env:
                    - name: TENANT_HOST
                      value: "{{{{ .host }}}}"
                    - name: PLAN
                      value: "{{{{ .planId }}}}"
  services:
    - id: svc
      nameTemplate: "{{{{ .uid }}}}-app"
      dependIds: [app]
      spec:
        apiVersion: v1
        kind: Service
        spec:
          selector:
            app: "{{{{ .uid }}}}"
          ports:
            - port: 80
              targetPort: 8080
"#,
        host = c.host,
        port = c.port,
        user = c.username,
        database = c.database,
    );
    for document in serde_yaml::Deserializer::from_str(&manifests) {
        let value = serde_json::Value::deserialize(document)?;
        let object: kube::api::DynamicObject = serde_json::from_value(value.clone())?;
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let resource = if kind == "TenantRegistry" {
            kube::api::ApiResource::erase::<TenantRegistry>(&())
        } else {
            kube::api::ApiResource::erase::<TenantTemplate>(&())
        };
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
            .patch(
                &name,
                &PatchParams::apply("quickstart"),
                &Patch::Apply(&value),
            )
            .await
            .with_context(|| format!("applying {kind} {name} as written in the docs"))?;
    }

    let tenants: Api<Tenant> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let wait_ready = |expected: Vec<&'static str>| {
        let (tenants, deployments, services) = (&tenants, &deployments, &services);
        async move {
            eventually(
                Duration::from_secs(60),
                &format!("quickstart: Tenants {expected:?} Ready with their resources listed by label"),
                || {
                    let expected = expected.clone();
                    async move {
                        let live: BTreeMap<String, bool> = tenants
                            .list(&ListParams::default())
                            .await?
                            .items
                            .into_iter()
                            .filter(|t| t.metadata.deletion_timestamp.is_none())
                            .map(|t| {
                                let ready = t.status.as_ref().is_some_and(|s| {
                                    condition(&s.conditions, READY)
                                        .is_some_and(|c| c.status == "True")
                                });
                                (t.name_any(), ready)
                            })
                            .collect();
                        let wanted: BTreeMap<String, bool> = expected
                            .iter()
                            .map(|uid| (format!("{uid}-test-template"), true))
                            .collect();
                        ensure!(live == wanted, "Tenants (name → Ready): {live:?}");
                        let by_label = ListParams::default().labels(LABEL_TENANT);
                        let mut names: Vec<String> = deployments
                            .list(&by_label)
                            .await?
                            .items
                            .into_iter()
                            .filter(|d| d.metadata.deletion_timestamp.is_none())
                            .map(|d| format!("deployment/{}", d.name_any()))
                            .chain(
                                services
                                    .list(&by_label)
                                    .await?
                                    .items
                                    .into_iter()
                                    .filter(|s| s.metadata.deletion_timestamp.is_none())
                                    .map(|s| format!("service/{}", s.name_any())),
                            )
                            .collect();
                        names.sort();
                        let mut want: Vec<String> = expected
                            .iter()
                            .flat_map(|uid| {
                                [format!("deployment/{uid}-app"), format!("service/{uid}-app")]
                            })
                            .collect();
                        want.sort();
                        ensure!(
                            names == want,
                            "kubectl get deployments,services -l kubernetes-tenants.org/tenant: {names:?}"
                        );
                        Ok(true)
                    }
                },
            )
            .await
        }
    };
    wait_ready(vec!["acme-corp", "beta-inc"]).await?;
    let acme = deployments.get("acme-corp-app").await?;
    let env_of = |d: &Deployment| -> BTreeMap<String, String> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| s.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    };
    ensure!(
        env_of(&acme)
            == BTreeMap::from([
                ("PLAN".to_owned(), "enterprise".to_owned()),
                ("TENANT_HOST".to_owned(), "acme.example.com".to_owned())
            ]),
        "acme-corp-app's environment: {:?}",
        env_of(&acme)
    );

    // "Add a New Tenant", then "Deactivate a Tenant".
    db.exec(
        "INSERT INTO tenant_configs (tenant_id, tenant_url, is_active, subscription_plan) \
         VALUES ('delta-co', 'https://delta.example.com', 1, 'enterprise');",
    )
    .await?;
    wait_ready(vec!["acme-corp", "beta-inc", "delta-co"]).await?;
    db.exec("UPDATE tenant_configs SET is_active = 0 WHERE tenant_id = 'acme-corp';")
        .await?;
    wait_ready(vec!["beta-inc", "delta-co"]).await?;
    Ok(())
}
