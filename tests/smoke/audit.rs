//! The audit log names the identity behind each write (devcluster only). It uses the `e2e`
//! identity, which has no permissions of its own (the components' identities have their RBAC
//! from deploy/devcluster/).

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kubetemplater_e2e::{Env, TEST_MANAGER};

#[tokio::test]
async fn audit_log_shows_writes_under_component_identities() -> Result<()> {
    let env = Env::get().await?;
    let Some(audit) = env
        .target
        .audit("audit_log_shows_writes_under_component_identities")
    else {
        return Ok(());
    };
    let ns = env.namespace("audit").await?;
    let identity = env
        .target
        .client_as("e2e")
        .await?
        .context("the e2e identity")?;
    let configmaps: Api<ConfigMap> = Api::namespaced(identity, &ns);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("by-worker".into());

    // Before RBAC grants anything, the write is refused, and the refusal is no write.
    let cursor = audit.cursor()?;
    let denied = configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("no permission yet");
    assert!(
        matches!(&denied, kube::Error::Api(e) if e.code == 403),
        "{denied}"
    );

    // Grant the e2e group configmap writes in this namespace only.
    let rule = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: ["get", "create", "patch"].map(String::from).to_vec(),
        ..Default::default()
    };
    let role = Role {
        metadata: ObjectMeta {
            name: Some("cm-writer".into()),
            ..Default::default()
        },
        rules: Some(vec![rule]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("e2e-cm-writer".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "cm-writer".into(),
        },
        subjects: Some(vec![Subject {
            kind: "Group".into(),
            name: "kubetemplater:e2e".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    let params = PatchParams::apply(TEST_MANAGER);
    Api::<Role>::namespaced(env.client.clone(), &ns)
        .patch("cm-writer", &params, &Patch::Apply(&role))
        .await?;
    Api::<RoleBinding>::namespaced(env.client.clone(), &ns)
        .patch("e2e-cm-writer", &params, &Patch::Apply(&binding))
        .await?;
    // RBAC changes reach the authorizer through a watch; retry briefly.
    let mut created = None;
    for _ in 0..50 {
        match configmaps.create(&PostParams::default(), &cm).await {
            Ok(c) => {
                created = Some(c);
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    created.context("the e2e identity could not write even after the RoleBinding")?;

    let ns2 = ns.clone();
    let event = audit
        .wait_for(cursor, Duration::from_secs(10), |e| {
            e.verb == "create"
                && e.succeeded()
                && e.object_ref
                    .as_ref()
                    .is_some_and(|o| o.namespace == ns2 && o.name == "by-worker")
        })
        .await?
        .context("no audit event for the write")?;
    assert_eq!(event.user.username, "kubetemplater:e2e");
    assert!(event.user.groups.contains(&"kubetemplater:e2e".to_string()));

    let writes = audit.writes_by(cursor, "kubetemplater:e2e")?;
    let in_ns: Vec<_> = writes
        .iter()
        .filter(|e| e.object_ref.as_ref().is_some_and(|o| o.namespace == ns))
        .collect();
    assert_eq!(
        in_ns.len(),
        1,
        "exactly one successful write by the e2e identity: {:?}",
        in_ns.iter().map(|e| e.describe()).collect::<Vec<_>>()
    );
    let refused = audit
        .read_since(cursor)?
        .into_iter()
        .filter(|e| e.user.username == "kubetemplater:e2e" && !e.succeeded())
        .count();
    assert!(refused >= 1, "the refused write is audited with its 403");
    env.target.delete_namespace(&ns).await?;
    Ok(())
}
