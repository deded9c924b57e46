//! `ktctl tenants <registry>`: a TenantRegistry's Tenants, one line per Tenant: row uid, Tenant,
//! template, bucket, the worker owning the bucket (from the coordinator's bucket map) and
//! readiness, under a line summarising the registry's status.
//!
//! The registry and its Tenants are read with the kubeconfig's credentials (label selector
//! `kubernetes-tenants.org/registry=<registry>`); the bucket owners come from the coordinator
//! leader's admin API. An unreachable coordinator only costs the WORKER column (`?`, with a
//! warning): the rest is still printed. The table is built by [`report`], a pure function.

use std::collections::HashMap;
use std::io::Write;

use api::constants::condition::{DELETION_BLOCKED, READY};
use api::constants::{LABEL_BUCKET, LABEL_TENANT_REGISTRY, LABEL_TENANT_UID};
use api::{Tenant, TenantRegistry};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use proto::v1;
use serde::Serialize;

use crate::admin::{self, Connection, Format};
use crate::{EXIT_BAD_INPUT, EXIT_OK};

/// Arguments of `ktctl tenants`.
#[derive(Debug, Clone, clap::Args)]
pub struct TenantsArgs {
    /// The TenantRegistry's name.
    pub registry: String,
    /// The registry's namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// A condition as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Its reason.
    pub reason: String,
    /// Its message.
    pub message: String,
}

impl ConditionView {
    fn of(conditions: &[Condition], type_: &str) -> Option<Self> {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| ConditionView {
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
    }
}

/// The registry line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `mysql`, `postgresql` or `sqlite`.
    pub source: String,
    /// TenantTemplates referencing it (status).
    pub templates: Option<i32>,
    /// Tenants that should exist (status).
    pub desired: Option<i32>,
    /// Tenants Ready (status).
    pub ready: Option<i32>,
    /// Tenants not Ready (status).
    pub failed: Option<i32>,
    /// The Ready condition (database reachable), if written yet.
    pub ready_condition: Option<ConditionView>,
    /// The DeletionBlocked condition when it is True.
    pub deletion_blocked: Option<ConditionView>,
}

/// Who handles a Tenant's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This worker owns the bucket.
    Worker(String),
    /// The bucket has no owner (no worker runs), or the Tenant has no bucket label yet.
    Nobody,
    /// The coordinator could not be asked.
    Unknown,
}

impl Owner {
    fn cell(&self) -> String {
        match self {
            Owner::Worker(w) => w.clone(),
            Owner::Nobody => "-".to_owned(),
            Owner::Unknown => "?".to_owned(),
        }
    }
}

/// One Tenant's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLine {
    /// The row's uid.
    pub uid: String,
    /// The Tenant's name (`<uid>-<template>`).
    pub name: String,
    /// The TenantTemplate it was rendered from.
    pub template: String,
    /// Its bucket label, if set.
    pub bucket: Option<u32>,
    /// The worker handling the bucket.
    pub owner: Owner,
    /// Its Ready condition, if a worker wrote one.
    pub ready: Option<ConditionView>,
    /// `status.readyResources`.
    pub ready_resources: Option<i32>,
    /// `status.desiredResources`.
    pub desired_resources: Option<i32>,
    /// `status.failedResources`.
    pub failed_resources: Option<i32>,
}

/// Everything `ktctl tenants` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The registry line.
    pub registry: RegistrySummary,
    /// One line per Tenant, by uid then template.
    pub tenants: Vec<TenantLine>,
    /// Whether the bucket owners are known (the coordinator answered).
    pub owners_known: bool,
}

/// The report for `registry`, its `tenants` and the leader's bucket map (`None`: the coordinator
/// could not be asked). Pure.
pub fn report(
    registry: &TenantRegistry,
    tenants: &[Tenant],
    map: Option<&v1::GetBucketMapResponse>,
) -> Report {
    let status = registry.status.clone().unwrap_or_default();
    let summary = RegistrySummary {
        namespace: registry.metadata.namespace.clone().unwrap_or_default(),
        name: registry.metadata.name.clone().unwrap_or_default(),
        source: registry.spec.source.type_.as_str().to_owned(),
        templates: status.referencing_templates,
        desired: status.desired,
        ready: status.ready,
        failed: status.failed,
        ready_condition: ConditionView::of(&status.conditions, READY),
        deletion_blocked: ConditionView::of(&status.conditions, DELETION_BLOCKED)
            .filter(|c| c.status == "True"),
    };
    let owners: Option<HashMap<u32, &str>> = map.map(|m| {
        m.buckets
            .iter()
            .map(|b| (b.bucket, b.owner.as_str()))
            .collect()
    });
    let mut lines: Vec<TenantLine> = tenants
        .iter()
        .map(|t| {
            let labels = t.metadata.labels.clone().unwrap_or_default();
            let bucket = labels.get(LABEL_BUCKET).and_then(|b| b.parse::<u32>().ok());
            let owner = match (&owners, bucket) {
                (None, _) => Owner::Unknown,
                (Some(_), None) => Owner::Nobody,
                (Some(owners), Some(b)) => match owners.get(&b) {
                    Some(w) if !w.is_empty() => Owner::Worker((*w).to_owned()),
                    _ => Owner::Nobody,
                },
            };
            let uid = if t.spec.uid.is_empty() {
                labels.get(LABEL_TENANT_UID).cloned().unwrap_or_default()
            } else {
                t.spec.uid.clone()
            };
            let status = t.status.clone().unwrap_or_default();
            TenantLine {
                uid,
                name: t.metadata.name.clone().unwrap_or_default(),
                template: t.spec.template_ref.clone(),
                bucket,
                owner,
                ready: ConditionView::of(&status.conditions, READY),
                ready_resources: status.ready_resources,
                desired_resources: status.desired_resources,
                failed_resources: status.failed_resources,
            }
        })
        .collect();
    lines.sort_by(|a, b| (&a.uid, &a.template, &a.name).cmp(&(&b.uid, &b.template, &b.name)));
    Report {
        registry: summary,
        tenants: lines,
        owners_known: map.is_some(),
    }
}

fn number(n: Option<i32>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// Cuts `text` to `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

impl Report {
    /// The registry line, e.g. `TenantRegistry tenants/local (sqlite): 1 template, 2 desired,
    /// 2 ready, 0 failed; Ready=True DatabaseConnected: the table was read`.
    pub fn headline(&self) -> String {
        let r = &self.registry;
        let templates = match r.templates {
            Some(1) => "1 template".to_owned(),
            n => format!("{} templates", number(n)),
        };
        let ready = match &r.ready_condition {
            Some(c) if c.message.is_empty() => format!("Ready={} {}", c.status, c.reason),
            Some(c) => format!("Ready={} {}: {}", c.status, c.reason, c.message),
            None => "Ready not reported yet".to_owned(),
        };
        format!(
            "TenantRegistry {}/{} ({}): {templates}, {} desired, {} ready, {} failed; {ready}",
            r.namespace,
            r.name,
            r.source,
            number(r.desired),
            number(r.ready),
            number(r.failed),
        )
    }

    /// The Tenant table's header and rows. A MESSAGE column (the Ready message, cut) is added
    /// when a Tenant is not Ready.
    pub fn rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let not_ready = |l: &TenantLine| l.ready.as_ref().is_some_and(|c| c.status != "True");
        let with_message = self.tenants.iter().any(not_ready);
        let mut header = vec![
            "UID",
            "TENANT",
            "TEMPLATE",
            "BUCKET",
            "WORKER",
            "READY",
            "REASON",
            "RESOURCES",
        ];
        if with_message {
            header.push("MESSAGE");
        }
        let rows = self
            .tenants
            .iter()
            .map(|l| {
                let resources = match (l.ready_resources, l.desired_resources) {
                    (None, None) => "-".to_owned(),
                    (ready, desired) => format!("{}/{}", number(ready), number(desired)),
                };
                let resources = match l.failed_resources {
                    Some(failed) if failed > 0 => format!("{resources} ({failed} failed)"),
                    _ => resources,
                };
                let mut row = vec![
                    l.uid.clone(),
                    l.name.clone(),
                    l.template.clone(),
                    l.bucket.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                    l.owner.cell(),
                    l.ready
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |c| c.status.clone()),
                    l.ready
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |c| c.reason.clone()),
                    resources,
                ];
                if with_message {
                    row.push(if not_ready(l) {
                        l.ready
                            .as_ref()
                            .map(|c| cut(&c.message, 100))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    });
                }
                row
            })
            .collect();
        (header, rows)
    }

    /// The report as JSON (`--format json`): `registry` and `tenants`, `worker` null when not
    /// known (`workersKnown` says whether the coordinator answered).
    pub fn to_json(&self) -> serde_json::Value {
        let tenants: Vec<serde_json::Value> = self
            .tenants
            .iter()
            .map(|l| {
                serde_json::json!({
                    "uid": l.uid,
                    "name": l.name,
                    "template": l.template,
                    "bucket": l.bucket,
                    "worker": match &l.owner {
                        Owner::Worker(w) => Some(w.as_str()),
                        Owner::Nobody | Owner::Unknown => None,
                    },
                    "ready": l.ready,
                    "readyResources": l.ready_resources,
                    "desiredResources": l.desired_resources,
                    "failedResources": l.failed_resources,
                })
            })
            .collect();
        serde_json::json!({
            "registry": self.registry,
            "workersKnown": self.owners_known,
            "tenants": tenants,
        })
    }

    /// Prints the report in `format`.
    pub fn print(&self, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
        if format == Format::Json {
            return admin::print_json(out, &self.to_json());
        }
        writeln!(out, "{}", self.headline())?;
        if let Some(blocked) = &self.registry.deletion_blocked {
            writeln!(
                out,
                "DeletionBlocked {}: {}",
                blocked.reason, blocked.message
            )?;
        }
        if self.tenants.is_empty() {
            return writeln!(out, "no Tenants");
        }
        let (header, rows) = self.rows();
        admin::table(out, &header, &rows)
    }
}

/// Runs `ktctl tenants`; returns the exit code.
pub fn run(
    connection: &Connection,
    args: &TenantsArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Some(runtime) = crate::admin::runtime(err) else {
        return EXIT_BAD_INPUT;
    };
    match runtime.block_on(collect(connection, args, err)) {
        Ok(report) => match report.print(connection.format, out) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                let _ = writeln!(err, "ktctl: writing the output: {e}");
                EXIT_BAD_INPUT
            }
        },
        Err(message) => {
            let _ = writeln!(err, "ktctl: {message}");
            EXIT_BAD_INPUT
        }
    }
}

async fn collect(
    connection: &Connection,
    args: &TenantsArgs,
    err: &mut dyn Write,
) -> Result<Report, String> {
    let config = connection.kube_config().await?;
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("creating the Kubernetes client: {e}"))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let registries: Api<TenantRegistry> = Api::namespaced(client.clone(), &namespace);
    let registry = registries
        .get_opt(&args.registry)
        .await
        .map_err(|e| {
            format!(
                "reading TenantRegistry {namespace}/{}: {e}",
                args.registry
            )
        })?
        .ok_or_else(|| {
            format!(
                "TenantRegistry {namespace}/{} not found (kubectl get tenantregistries -n {namespace} lists them)",
                args.registry
            )
        })?;
    let tenants: Api<Tenant> = Api::namespaced(client, &namespace);
    let tenants = tenants
        .list(&ListParams::default().labels(&format!("{LABEL_TENANT_REGISTRY}={}", args.registry)))
        .await
        .map_err(|e| {
            format!(
                "listing the Tenants of TenantRegistry {namespace}/{}: {e}",
                args.registry
            )
        })?
        .items;
    let map = if tenants.is_empty() {
        // Nothing to decorate: do not ask the coordinator.
        Some(v1::GetBucketMapResponse::default())
    } else {
        match admin::bucket_map(connection).await {
            Ok(map) => Some(map),
            Err(message) => {
                let _ = writeln!(
                    err,
                    "ktctl: warning: the WORKER column is unknown (?): {message}"
                );
                None
            }
        }
    };
    Ok(report(&registry, &tenants, map.as_ref()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test fixtures")]

    use super::*;
    use api::{TenantRegistrySpec, TenantRegistryStatus, TenantStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use proto::v1::{BucketAssignment, BucketState};

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: Time(Default::default()),
            observed_generation: None,
        }
    }

    fn registry(conditions: Vec<Condition>) -> TenantRegistry {
        let spec: TenantRegistrySpec = serde_json::from_value(serde_json::json!({
            "source": {"type": "sqlite", "syncInterval": "30s", "sqlite": {"path": "/x.db", "table": "tenants"}},
            "valueMappings": {"uid": "id", "activate": "is_active"},
        }))
        .unwrap();
        let mut r = TenantRegistry::new("local", spec);
        r.metadata.namespace = Some("tenants".to_owned());
        r.status = Some(TenantRegistryStatus {
            referencing_templates: Some(1),
            desired: Some(3),
            ready: Some(2),
            failed: Some(1),
            conditions,
            ..Default::default()
        });
        r
    }

    fn tenant(uid: &str, template: &str, bucket: Option<u32>, ready: Option<bool>) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "operator.kubernetes-tenants.org/v1",
            "kind": "Tenant",
            "metadata": {"name": format!("{uid}-{template}"), "namespace": "tenants"},
            "spec": {"uid": uid, "templateRef": template},
        }))
        .unwrap();
        let mut labels = std::collections::BTreeMap::from([
            (LABEL_TENANT_REGISTRY.to_owned(), "local".to_owned()),
            (LABEL_TENANT_UID.to_owned(), uid.to_owned()),
        ]);
        if let Some(b) = bucket {
            labels.insert(LABEL_BUCKET.to_owned(), b.to_string());
        }
        t.metadata = ObjectMeta {
            labels: Some(labels),
            ..t.metadata
        };
        t.status = ready.map(|ready| TenantStatus {
            ready_resources: Some(if ready { 4 } else { 2 }),
            desired_resources: Some(4),
            failed_resources: Some(if ready { 0 } else { 1 }),
            conditions: vec![if ready {
                condition("Ready", "True", "Reconciled", "all 4 resources are ready")
            } else {
                condition(
                    "Ready",
                    "False",
                    "ResourcesFailed",
                    "1 failed: Deployment tenant-b/b-app: timed out",
                )
            }],
            ..Default::default()
        });
        t
    }

    fn map() -> v1::GetBucketMapResponse {
        let assignment = |bucket: u32, owner: &str| BucketAssignment {
            bucket,
            owner: owner.to_owned(),
            state: BucketState::Owned as i32,
            ..Default::default()
        };
        v1::GetBucketMapResponse {
            bucket_count: 4,
            buckets: vec![
                assignment(0, "worker-0"),
                assignment(1, "worker-1"),
                assignment(2, ""),
                assignment(3, "worker-0"),
            ],
            ..Default::default()
        }
    }

    fn sample() -> Vec<Tenant> {
        vec![
            tenant("b", "web", Some(3), Some(false)),
            tenant("a", "web", Some(1), Some(true)),
            tenant("a", "api", Some(2), None),
            tenant("c", "web", None, None),
        ]
    }

    #[test]
    fn tenants_are_sorted_by_uid_then_template_with_their_owner() {
        let r = report(
            &registry(vec![condition(
                "Ready",
                "True",
                "DatabaseConnected",
                "the table was read",
            )]),
            &sample(),
            Some(&map()),
        );
        let (header, rows) = r.rows();
        assert_eq!(
            header,
            [
                "UID",
                "TENANT",
                "TEMPLATE",
                "BUCKET",
                "WORKER",
                "READY",
                "REASON",
                "RESOURCES",
                "MESSAGE"
            ]
        );
        let cells: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            cells,
            vec![
                vec!["a", "a-api", "api", "2", "-", "-", "-", "-", ""],
                vec![
                    "a",
                    "a-web",
                    "web",
                    "1",
                    "worker-1",
                    "True",
                    "Reconciled",
                    "4/4",
                    ""
                ],
                vec![
                    "b",
                    "b-web",
                    "web",
                    "3",
                    "worker-0",
                    "False",
                    "ResourcesFailed",
                    "2/4 (1 failed)",
                    "1 failed: Deployment tenant-b/b-app: timed out"
                ],
                vec!["c", "c-web", "web", "-", "-", "-", "-", "-", ""],
            ]
        );
        assert_eq!(
            r.headline(),
            "TenantRegistry tenants/local (sqlite): 1 template, 3 desired, 2 ready, 1 failed; \
             Ready=True DatabaseConnected: the table was read"
        );
        assert!(r.registry.deletion_blocked.is_none());
    }

    #[test]
    fn an_unknown_map_shows_question_marks_and_no_message_column_when_all_are_ready() {
        let tenants = vec![
            tenant("x", "web", Some(1), Some(true)),
            tenant("y", "web", Some(0), Some(true)),
        ];
        let r = report(&registry(Vec::new()), &tenants, None);
        let (header, rows) = r.rows();
        assert_eq!(header.last(), Some(&"RESOURCES"));
        assert!(rows.iter().all(|row| row[4] == "?"), "{rows:?}");
        assert!(r.headline().ends_with("; Ready not reported yet"));
        let json = r.to_json();
        assert_eq!(json["workersKnown"], false);
        assert_eq!(json["tenants"][0]["worker"], serde_json::Value::Null);
        assert_eq!(json["tenants"][1]["uid"], "y");
    }

    #[test]
    fn a_blocked_deletion_and_a_failed_read_are_shown() {
        let r = report(
            &registry(vec![
                condition(
                    "Ready",
                    "False",
                    "DatabaseConnectionFailed",
                    "DatabaseUnreachable: connection refused",
                ),
                condition(
                    "DeletionBlocked",
                    "True",
                    "EmptyResult",
                    "the query returned no active rows",
                ),
            ]),
            &[],
            Some(&map()),
        );
        let mut out = Vec::new();
        r.print(Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "TenantRegistry tenants/local (sqlite): 1 template, 3 desired, 2 ready, 1 failed; \
             Ready=False DatabaseConnectionFailed: DatabaseUnreachable: connection refused\n\
             DeletionBlocked EmptyResult: the query returned no active rows\n\
             no Tenants\n"
        );
        let json = r.to_json();
        assert_eq!(json["registry"]["deletionBlocked"]["reason"], "EmptyResult");
        assert_eq!(json["registry"]["readyCondition"]["status"], "False");
        assert_eq!(json["registry"]["source"], "sqlite");
    }

    #[test]
    fn a_false_deletion_blocked_is_not_shown() {
        let r = report(
            &registry(vec![condition(
                "DeletionBlocked",
                "False",
                "NotBlocked",
                "",
            )]),
            &[],
            None,
        );
        assert!(r.registry.deletion_blocked.is_none());
    }

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
