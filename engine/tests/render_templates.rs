//! Template behaviour: variables, control structures, whitespace trimming, typed values,
//! resource rendering and error reporting.

use api::TResource;
use engine::render::{
    FailureKind, Position, RenderError, Renderer, Vars, render_resource, render_str, render_value,
};
use serde_json::{Value, json};

fn vars() -> Vars {
    Vars::tenant("acme", "https://acme.example.com", "true")
        .with_registry_id("reg")
        .with_template_ref("web")
        .with_extra([
            ("planId", "gold"),
            ("replicas", "3"),
            ("ratio", "0.25"),
            ("ha", "yes"),
        ])
}

fn r(template: &str) -> String {
    render_str(template, &vars()).unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn builtin_variables() {
    assert_eq!(
        r(
            "{{ .uid }} {{ .hostOrUrl }} {{ .host }} {{ .activate }} {{ .registryId }} {{ .templateRef }} {{ .planId }}"
        ),
        "acme https://acme.example.com acme.example.com true reg web gold"
    );
    assert_eq!(r("{{ $.uid }}"), "acme");
}

#[test]
fn empty_host_or_url_falls_back_to_uid() {
    let v = Vars::tenant("acme", "", "1");
    assert_eq!(v.get("hostOrUrl"), Some("acme"));
    assert_eq!(v.get("host"), Some("acme"));
}

#[test]
fn extras_may_shadow_builtins() {
    let v = Vars::tenant("acme", "", "true").with_extra([("uid", "other")]);
    assert_eq!(render_str("{{ .uid }}", &v).expect("ok"), "other");
    let v: Vars = [("a", "1"), ("b", "2")].into_iter().collect();
    assert_eq!(v.names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(v.len(), 2);
}

#[test]
fn missing_variable_is_an_error_not_no_value() {
    let err = render_str("name: {{ .uid }}-{{ .plan }}", &vars()).expect_err("missing");
    assert_eq!(err.missing_variable(), Some("plan"));
    let failure = err.failure().expect("template failure");
    assert_eq!(
        failure.kind,
        FailureKind::MissingVariable {
            name: "plan".into()
        }
    );
    assert_eq!(
        failure.position(),
        Some(Position {
            line: 1,
            column: 21
        })
    );
    assert_eq!(
        err.to_string(),
        "template \"name: {{ .uid }}-{{ .plan }}\" at 1:21: undefined variable .plan \
         (defined: activate, ha, host, hostOrUrl, planId, ratio, registryId, replicas, \
         templateRef, uid)"
    );
    assert!(!err.to_string().contains("<no value>"));
    // inside a control structure too
    let err = render_str("{{ if .activate }}\n  {{ .nothing }}\n{{ end }}", &vars())
        .expect_err("missing");
    assert_eq!(
        err.failure().and_then(|f| f.position()),
        Some(Position { line: 2, column: 6 })
    );
    // and with no variables at all
    let err = render_str("{{ .uid }}", &Vars::new()).expect_err("missing");
    assert!(err.to_string().contains("(defined: none)"), "{err}");
}

#[test]
fn plain_text_passes_through() {
    assert_eq!(r(""), "");
    assert_eq!(
        r("no templates here: { } }} {"),
        "no templates here: { } }} {"
    );
}

#[test]
fn whitespace_trimming() {
    assert_eq!(r("a  {{- .uid -}}  b"), "aacmeb");
    assert_eq!(r("a  {{- .uid }}  b"), "aacme  b");
    assert_eq!(r("a  {{ .uid -}}\n\n  b"), "a  acmeb");
    assert_eq!(r("{{- /* a comment */ -}}   x"), "x");
    assert_eq!(
        r("items:\n{{- range list \"a\" \"b\" }}\n- {{ . }}\n{{- end }}\n"),
        "items:\n- a\n- b\n"
    );
}

#[test]
fn if_else_chains() {
    let t = r#"{{ if eq .planId "silver" }}S{{ else if eq .planId "gold" }}G{{ else }}B{{ end }}"#;
    assert_eq!(r(t), "G");
    assert_eq!(r(r#"{{ if .activate }}on{{ end }}"#), "on");
    assert_eq!(
        r(r#"{{ if not (eq .activate "true") }}off{{ else }}on{{ end }}"#),
        "on"
    );
}

#[test]
fn range_with_index_and_else() {
    assert_eq!(
        r(r#"{{ range $i, $p := list "80" "443" }}{{ if $i }},{{ end }}{{ $p }}{{ end }}"#),
        "80,443"
    );
    assert_eq!(
        r(r#"{{ range $x := list }}{{ $x }}{{ else }}none{{ end }}"#),
        "none"
    );
    assert_eq!(
        r(r#"{{ range list 1 2 }}{{ . }}{{ else }}none{{ end }}"#),
        "12"
    );
    assert_eq!(
        r(
            r#"{{ range $i, $v := list "a" "b" "c" "d" }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ if eq $i 3 }}{{ break }}{{ end }}{{ $v }}{{ end }}"#
        ),
        "ac"
    );
    assert_eq!(
        r(r#"{{ range $k, $v := fromJson "{\"b\": 2, \"a\": 1}" }}{{ $k }}={{ $v }};{{ end }}"#),
        "a=1;b=2;"
    );
    assert_eq!(r("{{ range 3 }}{{ . }}{{ end }}"), "012");
    // $ stays the root inside range
    assert_eq!(r(r#"{{ range list 1 2 }}{{ $.uid }}{{ end }}"#), "acmeacme");
}

#[test]
fn with_and_variables() {
    assert_eq!(r(r#"{{ with .planId }}plan={{ . }}{{ end }}"#), "plan=gold");
    assert_eq!(r(r#"{{ with "" }}x{{ else }}empty{{ end }}"#), "empty");
    assert_eq!(
        r(r#"{{ $name := printf "%s-%s" .uid .planId }}{{ $name }}/{{ $name | upper }}"#),
        "acme-gold/ACME-GOLD"
    );
}

#[test]
fn parse_errors_name_position_or_message() {
    for (template, text, position) in [
        (
            "{{ .uid | nope }}",
            "function nope not defined",
            Some((1, 11)),
        ),
        ("ok\n{{ .uid", "unclosed action", Some((2, 1))),
        (
            "{{ $missing }}",
            "undefined variable $missing",
            Some((1, 4)),
        ),
        ("{{ if .uid }}x", "unexpected EOF", Some((1, 4))),
        (r#"{{ template "x" }}"#, "not supported", Some((1, 4))),
        (r#"{{ "\q" }}"#, "unknown escape", Some((1, 5))),
        ("{{ break }}", "outside {{range}}", Some((1, 4))),
        ("{{ .uid }} {{ end }}", "unexpected {{end}}", Some((1, 15))),
        ("{{ .uid | 3 }}", "non executable command", Some((1, 11))),
        ("{{ }}", "missing value", Some((1, 4))),
    ] {
        let err = render_str(template, &vars()).expect_err(template);
        let failure = err.failure().expect("template failure");
        assert!(failure.message.contains(text), "{template}: {err}");
        assert_eq!(
            failure.position().map(|p| (p.line, p.column)),
            position,
            "{template}: {err}"
        );
        assert!(matches!(
            failure.kind,
            FailureKind::Parse | FailureKind::Refused
        ));
    }
}

#[test]
fn typed_whole_value_templates() {
    let spec = json!({
        "replicas": "{{ .replicas | int }}",
        "ratio": "{{ .ratio | float }}",
        "negative": "{{ \"-1.5\" | float }}",
        "enabled": "{{ .ha | bool }}",
        "call": "{{ int .replicas }}",
        "trimmed": "{{- .replicas | int -}}",
        "text": "replicas: {{ .replicas | int }}",
        "spaced": " {{ .replicas | int }}",
        "plain": "{{ .replicas }}",
        "quoted": "{{ .replicas | int | quote }}",
        "list": ["{{ .replicas | int }}", ["{{ .ha | bool }}"]],
        "count": 7,
        "flag": false,
        "none": null
    });
    let out = render_value(&spec, &vars()).expect("renders");
    assert_eq!(
        out,
        json!({
            "replicas": 3,
            "ratio": 0.25,
            "negative": -1.5,
            "enabled": true,
            "call": 3,
            "trimmed": 3,
            "text": "replicas: 3",
            "spaced": " 3",
            "plain": "3",
            "quoted": "\"3\"",
            "list": [3, [true]],
            "count": 7,
            "flag": false,
            "none": null
        })
    );
    assert!(out["replicas"].is_i64());
    assert!(out["ratio"].is_f64());
}

#[test]
fn keys_are_not_rendered() {
    let out = render_value(&json!({"{{ .uid }}": "{{ .uid }}"}), &vars()).expect("renders");
    assert_eq!(out, json!({"{{ .uid }}": "acme"}));
    assert_eq!(
        render_value(&json!("{{ .replicas | int }}"), &vars()).expect("ok"),
        json!(3)
    );
}

fn resource(value: Value) -> TResource {
    serde_json::from_value(value).expect("resource")
}

fn deployment() -> TResource {
    resource(json!({
        "id": "app",
        "nameTemplate": "{{ .uid }}-app",
        "labelsTemplate": {"tenant": "{{ .uid }}", "app.kubernetes.io/name": "web"},
        "annotationsTemplate": {"example.com/plan": "{{ .planId }}"},
        "spec": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "ignored",
                "labels": {"team": "payments", "tenant": "overridden"},
                "annotations": {"keep": "me"}
            },
            "spec": {
                "replicas": "{{ .replicas | int }}",
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "registry.example.com/{{ .planId }}:1.0",
                     "env": [{"name": "HOST", "value": "{{ .host }}"}]}
                ]}}
            }
        }
    }))
}

#[test]
fn render_resource_sets_name_namespace_and_merges_metadata() {
    let rendered = render_resource(&deployment(), &vars(), "tenants").expect("renders");
    assert_eq!(rendered.id, "app");
    assert_eq!(rendered.api_version, "apps/v1");
    assert_eq!(rendered.kind, "Deployment");
    assert_eq!(rendered.name, "acme-app");
    assert_eq!(rendered.namespace, "tenants");
    assert_eq!(
        rendered.object,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "acme-app",
                "namespace": "tenants",
                "labels": {"team": "payments", "tenant": "acme", "app.kubernetes.io/name": "web"},
                "annotations": {"keep": "me", "example.com/plan": "gold"}
            },
            "spec": {
                "replicas": 3,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "registry.example.com/gold:1.0",
                     "env": [{"name": "HOST", "value": "acme.example.com"}]}
                ]}}
            }
        })
    );
}

#[test]
fn target_namespace_is_templated_and_namespaces_get_none() {
    let mut res = deployment();
    res.target_namespace = Some("{{ .uid }}-ns".into());
    let rendered = render_resource(&res, &vars(), "tenants").expect("renders");
    assert_eq!(rendered.namespace, "acme-ns");
    assert_eq!(rendered.object["metadata"]["namespace"], "acme-ns");

    res.target_namespace = Some(String::new());
    assert_eq!(
        render_resource(&res, &vars(), "tenants")
            .expect("ok")
            .namespace,
        "tenants"
    );

    let ns = resource(json!({"id": "ns", "nameTemplate": "{{ .uid }}",
                             "spec": {"apiVersion": "v1", "kind": "Namespace"}}));
    let rendered = render_resource(&ns, &vars(), "tenants").expect("renders");
    assert_eq!(rendered.name, "acme");
    assert_eq!(
        rendered.object,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}})
    );
}

#[test]
fn resource_errors_name_id_path_and_position() {
    let mut res = deployment();
    res.spec["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example.com/{{ .imageTag }}");
    let err = render_resource(&res, &vars(), "tenants").expect_err("missing variable");
    assert_eq!(err.resource(), Some("app"));
    assert_eq!(
        err.path(),
        Some("spec.spec.template.spec.containers[0].image")
    );
    assert_eq!(err.missing_variable(), Some("imageTag"));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "resource \"app\": spec.spec.template.spec.containers[0].image: template \
             \"registry.example.com/{{ .imageTag }}\" at 1:25: undefined variable .imageTag"
        ),
        "{text}"
    );

    let mut res = deployment();
    res.labels_template.insert(
        "app.kubernetes.io/part-of".into(),
        "{{ .uid | bogus }}".into(),
    );
    let err = render_resource(&res, &vars(), "tenants").expect_err("bad function");
    assert_eq!(
        err.path(),
        Some(r#"labelsTemplate["app.kubernetes.io/part-of"]"#)
    );
    assert!(
        err.to_string()
            .contains("at 1:11: function bogus not defined"),
        "{err}"
    );

    let mut res = deployment();
    res.name_template = Some("{{ div 1 0 }}".into());
    let err = render_resource(&res, &vars(), "tenants").expect_err("exec error");
    assert_eq!(err.path(), Some("nameTemplate"));
    assert!(
        err.to_string().contains("div: integer divide by zero"),
        "{err}"
    );

    let mut res = deployment();
    res.spec["metadata"]["labels"] = json!({"x": ["{{ .uid }}", "{{ .a.b }}"]});
    let err = render_resource(&res, &vars(), "tenants").expect_err("missing");
    assert_eq!(err.path(), Some("spec.metadata.labels.x[1]"));
}

#[test]
fn invalid_resources() {
    let no_name = resource(json!({"id": "x", "spec": {"apiVersion": "v1", "kind": "ConfigMap"}}));
    let err = render_resource(&no_name, &vars(), "ns").expect_err("no name");
    assert!(matches!(err, RenderError::InvalidResource { .. }));
    assert_eq!(err.resource(), Some("x"));
    assert!(err.to_string().contains("has no name"), "{err}");

    let no_kind = resource(json!({"id": "x", "nameTemplate": "a", "spec": {"apiVersion": "v1"}}));
    assert!(
        render_resource(&no_kind, &vars(), "ns")
            .expect_err("kind")
            .to_string()
            .contains("spec.kind")
    );

    let null_meta = resource(json!({"id": "x", "nameTemplate": "{{ .uid }}-cfg",
                                    "spec": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": null}}));
    let rendered = render_resource(&null_meta, &vars(), "ns").expect("null metadata is absent");
    assert_eq!(
        rendered.object["metadata"],
        json!({"name": "acme-cfg", "namespace": "ns"})
    );

    let bad_meta = resource(json!({"id": "x", "nameTemplate": "a",
                                   "spec": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": "x"}}));
    assert!(render_resource(&bad_meta, &vars(), "ns").is_err());

    let bad_labels = resource(
        json!({"id": "x", "nameTemplate": "a", "labelsTemplate": {"a": "b"},
                                     "spec": {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"labels": ["x"]}}}),
    );
    assert!(render_resource(&bad_labels, &vars(), "ns").is_err());
}

#[test]
fn go_semantics() {
    // and/or short-circuit (Go 1.18+)
    assert_eq!(r("{{ and false (div 1 0) }}"), "false");
    assert_eq!(r(r#"{{ or .uid (div 1 0) }}"#), "acme");
    // printing like fmt.Print
    assert_eq!(r(r#"{{ list 1 "a" true 1.5 }}"#), "[1 a true 1.5]");
    assert_eq!(
        r(r#"{{ fromJson "{\"b\": [1], \"a\": {\"x\": null}}" }}"#),
        "map[a:map[x:<nil>] b:[1]]"
    );
    assert_eq!(
        r("{{ 1e6 }} {{ 123456.0 }} {{ 0.000012 }} {{ -7 }} {{ 0x1F }} {{ 'a' }}"),
        "1e+06 123456 1.2e-05 -7 31 97"
    );
    assert_eq!(
        r(r#"{{ print 1 2 "x" 3 }}|{{ println "a" 1 }}"#),
        "1 2x3|a 1\n"
    );
    // assignment inside range updates the outer variable
    assert_eq!(
        r(r#"{{ $n := 0 }}{{ range list 1 2 3 }}{{ $n = add $n . }}{{ end }}{{ $n }}"#),
        "6"
    );
    // else with
    assert_eq!(
        r(r#"{{ with "" }}a{{ else with .planId }}{{ . }}{{ else }}c{{ end }}"#),
        "gold"
    );
    // variables are scoped to their block
    let err =
        render_str(r#"{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}"#, &vars()).expect_err("scoped");
    assert!(err.to_string().contains("undefined variable $x"), "{err}");
    // fields of non-maps
    let err = render_str("{{ .uid.name }}", &vars()).expect_err("string has no fields");
    assert!(
        err.to_string()
            .contains("can't evaluate field name in type string"),
        "{err}"
    );
    // unicode and escapes in literals
    assert_eq!(
        r(r#"{{ "caf\u00e9 \x41\t|" }}{{ `raw\n` }}"#),
        "café A\t|raw\\n"
    );
}

#[test]
fn runaway_templates_are_stopped() {
    // doubling a value 40 times
    let doubling = format!(
        "{{{{ $x := \"ab\" }}}}{}{{{{ len $x }}}}",
        "{{ $x = print $x $x }}".repeat(40)
    );
    let err = render_str(&doubling, &vars()).expect_err("too large");
    assert!(err.to_string().contains("result larger than"), "{err}");
    let err = render_str(r#"{{ replace "" .hostOrUrl .hostOrUrl | replace "" .hostOrUrl | replace "" .hostOrUrl | replace "" .hostOrUrl | len }}"#, &vars()).expect_err("too large");
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = render_str(
        "{{ range 1000 }}{{ range 1000 }}{{ range 1000 }}x{{ end }}{{ end }}{{ end }}",
        &vars(),
    )
    .expect_err("too long");
    assert!(
        err.to_string().contains("steps") || err.to_string().contains("output"),
        "{err}"
    );
    let deep = format!("{}x{}", "{{ if true }}".repeat(70), "{{ end }}".repeat(70));
    let err = render_str(&deep, &vars()).expect_err("too deep");
    assert!(err.to_string().contains("nests deeper"), "{err}");
    let parens = format!("{{{{ {}1{} }}}}", "(".repeat(70), ")".repeat(70));
    assert!(render_str(&parens, &vars()).is_err());
    assert!(render_str(&"x{{ .uid }}".repeat(30_000), &vars()).is_err());
}

#[test]
fn renderers_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Renderer>();
    assert_send_sync::<RenderError>();
}

#[test]
fn renderer_compiles_each_template_once() {
    let mut renderer = Renderer::new();
    let res = deployment();
    for uid in ["a", "b", "c"] {
        let v = Vars::tenant(uid, "", "true").with_extra([("planId", "p"), ("replicas", "1")]);
        let rendered = renderer.render_resource(&res, &v, "ns").expect("renders");
        assert_eq!(rendered.name, format!("{uid}-app"));
    }
    // nameTemplate, replicas, image, env value, tenant label, plan annotation
    assert_eq!(renderer.cached_templates(), 6);
    assert!(format!("{renderer:?}").contains("cached_templates: 6"));
    assert!(renderer.check_syntax("{{ .uid }}").is_ok());
    assert!(renderer.check_syntax("{{ .uid ").is_err());
    assert!(renderer.check_syntax("no template").is_ok());
}
