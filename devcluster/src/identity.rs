//! Our components' identities as they are in pods: each process runs under its chart
//! ServiceAccount (`kubetemplater-coordinator`, `-worker`, `-webhook` in `kubetemplater-system`)
//! with a token from the TokenRequest API bound to a placeholder Pod named after the process
//! (`worker-3`). The API server then sees what it sees in a real install:
//! `system:serviceaccount:kubetemplater-system:kubetemplater-worker` with the extra attribute
//! `authentication.kubernetes.io/pod-name: worker-3`. RBAC decides with the ServiceAccounts'
//! bindings only, so every test that runs the components proves those rules suffice, and the
//! audit log still tells the processes apart (`AuditUser::component`).
//!
//! The placeholder Pod is never scheduled (its scheduler does not exist) and satisfies Pod
//! Security `restricted`; deleting it revokes the token, as deleting a pod does.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

use crate::cluster::config_from_kubeconfig;
use crate::error::{Error, Result};
use crate::stack::SYSTEM_NAMESPACE;

/// Extra attribute of a pod-bound token's user naming the pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Lifetime asked for a component's token: 48 hours (longer than any test or benchmark run).
pub const TOKEN_SECONDS: i64 = 48 * 3600;
/// The scheduler named by placeholder Pods: none exists, so they stay Pending and cost nothing.
const PLACEHOLDER_SCHEDULER: &str = "kubetemplater-identity-placeholder";

/// The ServiceAccount a component process runs under, by its name (`worker-3` →
/// `kubetemplater-worker`); `None` for names that are not ours.
pub fn service_account_of(process: &str) -> Option<&'static str> {
    [
        ("coordinator-", "kubetemplater-coordinator"),
        ("worker-", "kubetemplater-worker"),
        ("webhook-", "kubetemplater-webhook"),
    ]
    .into_iter()
    .find(|(prefix, _)| process.starts_with(prefix))
    .map(|(_, account)| account)
}

/// Writes a kubeconfig for `process` under its ServiceAccount (a pod-bound token) into `dir`,
/// creating its placeholder Pod when missing (as the admin of `admin_kubeconfig`); returns its
/// path.
pub async fn service_account_kubeconfig(
    admin_kubeconfig: &Path,
    dir: &Path,
    process: &str,
) -> Result<PathBuf> {
    let account = service_account_of(process).ok_or_else(|| Error::Scale {
        message: format!(
            "{process:?} is not a component name (coordinator-N, worker-N, webhook-N)"
        ),
    })?;
    let action = |what: &str| format!("{what} for {process} (ServiceAccount {account})");
    let config = config_from_kubeconfig(admin_kubeconfig).await?;
    let client = kube::Client::try_from(config).map_err(Error::kube(action("a client")))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let pod = match pods
        .get_opt(process)
        .await
        .map_err(Error::kube(action("reading the placeholder Pod")))?
    {
        Some(pod) => pod,
        None => match pods
            .create(&PostParams::default(), &placeholder(process, account)?)
            .await
        {
            Ok(pod) => pod,
            // Created concurrently (two tests scaling the same shared system): use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => pods
                .get(process)
                .await
                .map_err(Error::kube(action("reading the placeholder Pod")))?,
            Err(e) => return Err(Error::kube(action("creating the placeholder Pod"))(e)),
        },
    };
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(process.to_owned()),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer: TokenRequest = Api::<ServiceAccount>::namespaced(client, SYSTEM_NAMESPACE)
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .map_err(Error::kube(action("requesting a token")))?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Scale {
            message: action("the TokenRequest answer held no token"),
        })?;
    let path = dir.join(format!("{process}.serviceaccount.kubeconfig"));
    write_kubeconfig(admin_kubeconfig, &path, process, account, &token)?;
    Ok(path)
}

/// A Pod that only exists to bind `process`'s token to: never scheduled, restricted-compliant.
fn placeholder(process: &str, account: &str) -> Result<Pod> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": process,
            "labels": {"app.kubernetes.io/part-of": "kubetemplater", "devcluster/identity": "placeholder"},
            "annotations": {"devcluster/purpose": "binds the token of the local process of this name (it never runs here)"},
        },
        "spec": {
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "schedulerName": PLACEHOLDER_SCHEDULER,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "process",
                "image": "kubetemplater.invalid/placeholder:none",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                },
            }],
        },
    }))
    .map_err(|e| Error::Scale {
        message: format!("the placeholder Pod of {process}: {e}"),
    })
}

/// The admin kubeconfig's cluster with `token` as the only user, at `path` (mode 0600).
fn write_kubeconfig(
    admin: &Path,
    path: &Path,
    process: &str,
    account: &str,
    token: &str,
) -> Result<()> {
    let bad = |message: String| Error::BadState {
        path: admin.to_path_buf(),
        message,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(admin).map_err(|e| bad(e.to_string()))?;
    let context = kubeconfig
        .current_context
        .as_ref()
        .and_then(|name| kubeconfig.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| bad("no current context".to_owned()))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| bad(format!("no cluster {:?}", context.cluster)))?;
    let cluster = serde_json::to_value(cluster).map_err(|e| bad(e.to_string()))?;
    let name = format!("{process}@{account}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": context.cluster, "user": name, "namespace": SYSTEM_NAMESPACE}}],
        "current-context": name,
        "preferences": {},
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| bad(e.to_string()))?;
    let text = format!(
        "# {process} as ServiceAccount {SYSTEM_NAMESPACE}/{account} (token bound to Pod {process})\n{text}"
    );
    crate::kubeconfig::write_private(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_component_has_its_chart_service_account() {
        assert_eq!(
            service_account_of("worker-12"),
            Some("kubetemplater-worker")
        );
        assert_eq!(
            service_account_of("coordinator-0"),
            Some("kubetemplater-coordinator")
        );
        assert_eq!(
            service_account_of("webhook-1"),
            Some("kubetemplater-webhook")
        );
        assert_eq!(service_account_of("loadtest"), None);
    }

    #[test]
    fn the_placeholder_is_never_scheduled_and_restricted() {
        let pod = placeholder("worker-0", "kubetemplater-worker").unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some(PLACEHOLDER_SCHEDULER));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("kubetemplater-worker")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        let container = &spec.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
    }
}
