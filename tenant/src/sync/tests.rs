use super::*;

use serde_json::json;

fn buckets() -> NonZeroU32 {
    NonZeroU32::new(256).expect("non-zero")
}

fn registry() -> RegistryRef<'static> {
    RegistryRef {
        namespace: "saas",
        name: "reg",
        uid: "0000-reg",
    }
}

fn template_spec(name_template: &str) -> TenantTemplateSpec {
    serde_json::from_value(json!({
        "registryId": "reg",
        "configMaps": [{
            "id": "cfg",
            "nameTemplate": name_template,
            "labelsTemplate": {"plan": "{{ .planId }}"},
            "spec": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"host": "{{ .host }}"}}
        }]
    }))
    .expect("template spec")
}

fn row(uid: &str, url: &str, plan: &str) -> Row {
    Row {
        uid: uid.to_owned(),
        host_or_url: url.to_owned(),
        activate: "1".to_owned(),
        extra: BTreeMap::from([("planId".to_owned(), plan.to_owned())]),
    }
}

fn existing_of(tenants: &[Tenant]) -> HashMap<String, ExistingTenant> {
    tenants
        .iter()
        .map(|t| {
            let meta = &t.metadata;
            (
                meta.name.clone().expect("name"),
                ExistingTenant {
                    inputs: existing_digest(meta.annotations.as_ref().expect("annotations")),
                    has_bucket: meta
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key(LABEL_BUCKET)),
                    ready: false,
                    deleting: false,
                    template: t.spec.template_ref.clone(),
                },
            )
        })
        .collect()
}

fn names(tenants: &[Tenant]) -> Vec<String> {
    let mut names: Vec<_> = tenants
        .iter()
        .map(|t| t.metadata.name.clone().expect("name"))
        .collect();
    names.sort();
    names
}

struct Fixture {
    web: TenantTemplateSpec,
    api: TenantTemplateSpec,
}

impl Fixture {
    fn new() -> Self {
        Self {
            web: template_spec("{{ .uid }}-web"),
            api: template_spec("{{ .uid }}-api"),
        }
    }

    fn templates(&self, web_generation: i64) -> Vec<TemplateRef<'_>> {
        vec![
            TemplateRef {
                name: "web",
                generation: web_generation,
                spec: &self.web,
            },
            TemplateRef {
                name: "api",
                generation: 1,
                spec: &self.api,
            },
        ]
    }
}

fn run(
    templates: &[TemplateRef<'_>],
    rows: &[Row],
    existing: &HashMap<String, ExistingTenant>,
) -> Plan {
    plan(
        &registry(),
        templates,
        rows,
        existing,
        &DeletionSafety::default(),
        None,
        buckets(),
    )
}

#[test]
fn every_template_times_every_row_is_one_tenant_as_the_original_names_it() {
    let fixture = Fixture::new();
    let rows = [
        row("acme", "https://acme.example.com", "gold"),
        row("beta", "beta.example.com", "free"),
    ];
    let plan = run(&fixture.templates(1), &rows, &HashMap::new());
    assert_eq!(plan.desired, 4);
    assert_eq!(
        names(&plan.writes),
        ["acme-api", "acme-web", "beta-api", "beta-web"]
    );
    assert!(plan.deletes.is_empty() && plan.problems.is_empty());

    let acme_web = plan
        .writes
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("acme-web"))
        .expect("acme-web");
    let meta = &acme_web.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("saas"));
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels[LABEL_TENANT_REGISTRY], "reg");
    assert_eq!(labels[LABEL_TENANT_UID], "acme");
    let bucket = engine::bucket::bucket(
        &engine::bucket::tenant_shard_key("saas", "reg", "acme"),
        buckets(),
    );
    assert_eq!(
        labels[LABEL_BUCKET],
        engine::bucket::bucket_label_value(bucket)
    );
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations[ANNOTATION_HOST_OR_URL],
        "https://acme.example.com"
    );
    assert_eq!(annotations[ANNOTATION_EXTRA], r#"{"planId":"gold"}"#);
    assert_eq!(annotations[ANNOTATION_TEMPLATE_GENERATION], "1");
    let owner = &meta.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("TenantRegistry", "reg", Some(true))
    );
    assert_eq!(acme_web.spec.uid, "acme");
    assert_eq!(acme_web.spec.template_ref, "web");
    let cfg = &acme_web.spec.resources.config_maps[0];
    assert_eq!(cfg.name_template.as_deref(), Some("acme-web"));
    assert_eq!(cfg.labels_template["plan"], "gold");
    assert_eq!(
        cfg.spec["data"]["host"], "{{ .host }}",
        "the manifest is rendered by the worker"
    );
}

#[test]
fn only_what_changed_is_written() {
    let fixture = Fixture::new();
    let rows = vec![
        row("acme", "https://acme.example.com", "gold"),
        row("beta", "beta.example.com", "free"),
    ];
    let first = run(&fixture.templates(1), &rows, &HashMap::new());
    let existing = existing_of(&first.writes);

    let again = run(&fixture.templates(1), &rows, &existing);
    assert!(again.writes.is_empty(), "nothing changed, nothing written");
    assert_eq!(again.unchanged, 4);

    let mut changed = rows.clone();
    changed[1].extra.insert("planId".into(), "gold".into());
    let plan = run(&fixture.templates(1), &changed, &existing);
    assert_eq!(names(&plan.writes), ["beta-api", "beta-web"]);

    let plan = run(&fixture.templates(2), &rows, &existing);
    assert_eq!(
        names(&plan.writes),
        ["acme-web", "beta-web"],
        "a template's new generation rewrites its own Tenants only"
    );

    let mut unlabelled = existing.clone();
    unlabelled.get_mut("acme-api").expect("acme-api").has_bucket = false;
    let plan = run(&fixture.templates(1), &rows, &unlabelled);
    assert_eq!(
        names(&plan.writes),
        ["acme-api"],
        "the bucket label is added"
    );
}

#[test]
fn tenants_of_gone_rows_and_gone_templates_are_deleted() {
    let fixture = Fixture::new();
    let rows = vec![
        row("acme", "https://acme.example.com", "gold"),
        row("beta", "beta.example.com", "free"),
    ];
    let existing = existing_of(&run(&fixture.templates(1), &rows, &HashMap::new()).writes);

    let plan = run(&fixture.templates(1), &rows[..1], &existing);
    assert_eq!(plan.deletes, ["beta-api", "beta-web"]);
    assert!(plan.writes.is_empty());

    let templates = fixture.templates(1);
    let plan = run(&templates[1..], &rows, &existing);
    assert_eq!(plan.deletes, ["acme-web", "beta-web"]);
}

#[test]
fn an_empty_result_deletes_nothing_until_confirmed() {
    let fixture = Fixture::new();
    let rows = vec![row("acme", "a.example.com", "gold")];
    let existing = existing_of(&run(&fixture.templates(1), &rows, &HashMap::new()).writes);

    let plan = run(&fixture.templates(1), &[], &existing);
    assert!(plan.deletes.is_empty());
    let blocked = plan.blocked.expect("blocked");
    assert_eq!((blocked.pending, blocked.reason), (2, "EmptyResult"));
    assert!(
        blocked
            .message
            .contains("kubetemplater.io/confirm-deletions=\"2\""),
        "{}",
        blocked.message
    );

    let confirmed = plan_with(&fixture, &[], &existing, DeletionSafety::default(), "2");
    assert_eq!(confirmed.deletes.len(), 2);
    let stale = plan_with(&fixture, &[], &existing, DeletionSafety::default(), "5");
    assert!(stale.blocked.is_some(), "a confirmation of another count");
}

fn plan_with(
    fixture: &Fixture,
    rows: &[Row],
    existing: &HashMap<String, ExistingTenant>,
    safety: DeletionSafety,
    confirmed: &str,
) -> Plan {
    plan(
        &registry(),
        &fixture.templates(1),
        rows,
        existing,
        &safety,
        Some(confirmed),
        buckets(),
    )
}

#[test]
fn count_and_percent_limits_hold_back_mass_deletion() {
    let safety = |count, percent| DeletionSafety {
        max_delete_count: count,
        max_delete_percent: percent,
        block_on_empty_result: true,
    };
    assert_eq!(brake(&safety(Some(5), None), 100, 5, 95, None), None);
    let blocked = brake(&safety(Some(5), None), 100, 6, 94, None).expect("count");
    assert_eq!(blocked.reason, "TooManyDeletions");
    assert!(blocked.message.contains("maxDeleteCount (5)"));
    assert_eq!(brake(&safety(None, Some(10)), 100, 10, 90, None), None);
    assert!(brake(&safety(None, Some(10)), 100, 11, 89, None).is_some());
    assert_eq!(
        brake(&safety(None, Some(10)), 100, 11, 89, Some("11")),
        None,
        "confirmed"
    );
    let off = DeletionSafety {
        block_on_empty_result: false,
        ..safety(None, None)
    };
    assert_eq!(brake(&off, 100, 100, 0, None), None, "brake released");
    assert_eq!(brake(&safety(None, None), 0, 0, 0, None), None);
}

#[test]
fn bad_rows_are_reported_and_the_rest_go_ahead() {
    let fixture = Fixture::new();
    let rows = vec![
        row("acme", "a.example.com", "gold"),
        row("acme", "dup.example.com", "gold"),
        row("", "empty.example.com", "gold"),
        row("Big_Co", "b.example.com", "gold"),
        row("x".repeat(64).as_str(), "long.example.com", "gold"),
    ];
    let plan = run(&fixture.templates(1), &rows, &HashMap::new());
    assert_eq!(names(&plan.writes), ["acme-api", "acme-web"]);
    let problems: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(problems[0].contains("same uid"), "{}", problems[0]);
    assert!(
        problems[1].contains("uid column is empty"),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].contains("Tenant name \"Big_Co-web\" is not valid"),
        "{}",
        problems[2]
    );
    assert!(problems[4].contains("at most 63"), "{}", problems[4]);
}

#[test]
fn a_missing_variable_fails_that_tenant_only() {
    let broken = template_spec("{{ .uid }}-{{ .tier }}");
    let fine = template_spec("{{ .uid }}");
    let templates = [
        TemplateRef {
            name: "broken",
            generation: 1,
            spec: &broken,
        },
        TemplateRef {
            name: "fine",
            generation: 1,
            spec: &fine,
        },
    ];
    let plan = run(
        &templates,
        &[row("acme", "a.example.com", "gold")],
        &HashMap::new(),
    );
    assert_eq!(names(&plan.writes), ["acme-fine"]);
    assert_eq!(plan.problems.len(), 1);
    let problem = plan.problems[0].to_string();
    assert!(
        problem.starts_with("row \"acme\", template broken: resource cfg: nameTemplate:")
            && problem.contains("tier"),
        "{problem}"
    );
    assert_eq!(plan.desired, 2);
}

#[test]
fn tenants_being_deleted_are_neither_deleted_again_nor_rewritten() {
    let fixture = Fixture::new();
    let rows = vec![
        row("acme", "a.example.com", "gold"),
        row("beta", "b.example.com", "gold"),
    ];
    let mut existing = existing_of(&run(&fixture.templates(1), &rows, &HashMap::new()).writes);
    for name in ["acme-web", "beta-web"] {
        existing.get_mut(name).expect(name).deleting = true;
    }
    // acme's row changed: its web Tenant is on its way out, so it waits.
    let mut changed = rows.clone();
    changed[0].host_or_url = "new.example.com".into();
    let plan = run(&fixture.templates(1), &changed[..1], &existing);
    assert_eq!(names(&plan.writes), ["acme-api"]);
    assert_eq!(plan.waiting, 1);
    assert_eq!(plan.deletes, ["beta-api"], "beta-web is already going");
}
