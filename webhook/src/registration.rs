//! The webhook's own Validating- and MutatingWebhookConfiguration, applied with server-side
//! apply (field manager `kubetemplater-webhook`) whenever the CA bundle changes.
//!
//! | configuration (default name) | webhook                                            | resources                       |
//! |------------------------------|----------------------------------------------------|---------------------------------|
//! | `kubetemplater-validating`   | `vkubetemplate.kb.io` (the original's name)         | kubetemplates CREATE, UPDATE    |
//! |                              | `vkubetemplatepolicy.kubetemplater.io`             | kubetemplatepolicies CREATE, UPDATE |
//! |                              | `vtenanttemplate.operator.kubernetes-tenants.org`   | tenanttemplates CREATE, UPDATE  |
//! | `kubetemplater-mutating`     | `mbucket.kubetemplater.io`                          | kubetemplates, tenants CREATE, UPDATE |
//!
//! Every webhook has a namespaceSelector skipping namespaces labelled
//! `kubetemplater.io/admission=disabled` (see [`api::constants::LABEL_ADMISSION`]).
//!
//! All replicas apply identical content, so concurrent applies converge and an apply that changes
//! nothing is not a write. The configurations are applied at start and when the CA changes, never
//! on a timer, so an idle webhook sends no writes.

use std::sync::Arc;
use std::time::Duration;

use api::constants::{ADMISSION_DISABLED, LABEL_ADMISSION};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::review::Operation;
use certs::ServingCert;

/// Field manager of the webhook's writes to its configurations.
pub const FIELD_MANAGER: &str = "kubetemplater-webhook";

/// What the API server does when the webhook cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the request (the original's default).
    Fail,
    /// Let the request through unchecked.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// Where the API server sends reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTarget {
    /// A base URL (`https://127.0.0.1:9443`); the endpoint path is appended. For a webhook outside
    /// the cluster, as in devcluster.
    Url(String),
    /// A Service in front of the replicas.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: i32,
    },
}

/// The configurations to register.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Name of the ValidatingWebhookConfiguration.
    pub validating_name: String,
    /// Name of the MutatingWebhookConfiguration.
    pub mutating_name: String,
    /// Failure policy of every webhook.
    pub failure_policy: FailurePolicy,
    /// Time the API server waits for an answer (1–30 s).
    pub timeout_seconds: i32,
    /// Where reviews go.
    pub target: ClientTarget,
}

/// Webhook names (fixed: users' scripts match `admission webhook "<name>" denied the request`).
pub const KUBETEMPLATE_WEBHOOK: &str = "vkubetemplate.kb.io";
/// Validating webhook for policies.
pub const POLICY_WEBHOOK: &str = "vkubetemplatepolicy.kubetemplater.io";
/// Validating webhook for TenantTemplates.
pub const TENANTTEMPLATE_WEBHOOK: &str = "vtenanttemplate.operator.kubernetes-tenants.org";
/// Mutating webhook adding the bucket label.
pub const BUCKET_WEBHOOK: &str = "mbucket.kubetemplater.io";

/// Every webhook skips namespaces labelled `kubetemplater.io/admission=disabled`.
fn namespace_selector() -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: LABEL_ADMISSION.to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(vec![ADMISSION_DISABLED.to_owned()]),
        }]),
        match_labels: None,
    }
}

fn rule(group: &str, version: &str, resources: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec![version.to_owned()]),
        operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some("Namespaced".to_owned()),
    }
}

impl Registration {
    fn client_config(&self, op: Operation, ca_bundle: &[u8]) -> WebhookClientConfig {
        let ca_bundle = Some(ByteString(ca_bundle.to_vec()));
        match &self.target {
            ClientTarget::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{}", base.trim_end_matches('/'), op.path())),
                ca_bundle,
                service: None,
            },
            ClientTarget::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                url: None,
                ca_bundle,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(op.path().to_owned()),
                    port: Some(*port),
                }),
            },
        }
    }

    fn validating_webhook(
        &self,
        name: &str,
        op: Operation,
        rule: RuleWithOperations,
        ca: &[u8],
    ) -> ValidatingWebhook {
        ValidatingWebhook {
            name: name.to_owned(),
            client_config: self.client_config(op, ca),
            rules: Some(vec![rule]),
            failure_policy: Some(self.failure_policy.as_str().to_owned()),
            side_effects: "None".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            timeout_seconds: Some(self.timeout_seconds),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(namespace_selector()),
            ..ValidatingWebhook::default()
        }
    }

    /// The ValidatingWebhookConfiguration with `ca_bundle` (PEM).
    pub fn validating(&self, ca_bundle: &[u8]) -> ValidatingWebhookConfiguration {
        ValidatingWebhookConfiguration {
            metadata: self.metadata(&self.validating_name),
            webhooks: Some(vec![
                self.validating_webhook(
                    KUBETEMPLATE_WEBHOOK,
                    Operation::ValidateKubeTemplate,
                    rule("kubetemplater.io", "v1alpha1", &["kubetemplates"]),
                    ca_bundle,
                ),
                self.validating_webhook(
                    POLICY_WEBHOOK,
                    Operation::ValidatePolicy,
                    rule("kubetemplater.io", "v1alpha1", &["kubetemplatepolicies"]),
                    ca_bundle,
                ),
                self.validating_webhook(
                    TENANTTEMPLATE_WEBHOOK,
                    Operation::ValidateTenantTemplate,
                    rule(
                        "operator.kubernetes-tenants.org",
                        "v1",
                        &["tenanttemplates"],
                    ),
                    ca_bundle,
                ),
            ]),
        }
    }

    /// The MutatingWebhookConfiguration with `ca_bundle` (PEM).
    pub fn mutating(&self, ca_bundle: &[u8]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: self.metadata(&self.mutating_name),
            webhooks: Some(vec![MutatingWebhook {
                name: BUCKET_WEBHOOK.to_owned(),
                client_config: self.client_config(Operation::MutateBucket, ca_bundle),
                rules: Some(vec![
                    rule("kubetemplater.io", "v1alpha1", &["kubetemplates"]),
                    rule("operator.kubernetes-tenants.org", "v1", &["tenants"]),
                ]),
                failure_policy: Some(self.failure_policy.as_str().to_owned()),
                side_effects: "None".to_owned(),
                admission_review_versions: vec!["v1".to_owned()],
                timeout_seconds: Some(self.timeout_seconds),
                match_policy: Some("Equivalent".to_owned()),
                reinvocation_policy: Some("Never".to_owned()),
                namespace_selector: Some(namespace_selector()),
                ..MutatingWebhook::default()
            }]),
        }
    }

    fn metadata(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "kubetemplater-webhook".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        }
    }

    /// Applies both configurations with `ca_bundle`.
    pub async fn apply(&self, client: &kube::Client, ca_bundle: &[u8]) -> kube::Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        validating
            .patch(
                &self.validating_name,
                &params,
                &Patch::Apply(with_type(self.validating(ca_bundle))?),
            )
            .await?;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        mutating
            .patch(
                &self.mutating_name,
                &params,
                &Patch::Apply(with_type(self.mutating(ca_bundle))?),
            )
            .await?;
        Ok(())
    }

    /// Applies the configurations now and whenever the CA in `certs` changes, until `cancel`.
    /// Failures are logged and retried with backoff (1 s doubling to 60 s).
    pub async fn maintain(
        self,
        client: kube::Client,
        mut certs: watch::Receiver<Arc<ServingCert>>,
        cancel: CancellationToken,
        registered: impl Fn() + Send,
    ) {
        let mut applied: Option<String> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            let ca = certs.borrow_and_update().ca_pem.clone();
            if applied.as_deref() != Some(ca.as_str()) {
                match self.apply(&client, ca.as_bytes()).await {
                    Ok(()) => {
                        tracing::info!(
                            validating = %self.validating_name,
                            mutating = %self.mutating_name,
                            "webhook configurations applied with the current CA bundle"
                        );
                        applied = Some(ca);
                        backoff = Duration::from_secs(1);
                        registered();
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "applying the webhook configurations failed");
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = certs.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// SSA needs apiVersion and kind in the body; the typed structs do not carry them.
fn with_type<K: serde::Serialize + kube::Resource<DynamicType = ()>>(
    object: K,
) -> kube::Result<serde_json::Value> {
    let mut value = serde_json::to_value(&object).map_err(kube::Error::SerdeError)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(target: ClientTarget) -> Registration {
        Registration {
            validating_name: "kubetemplater-validating".into(),
            mutating_name: "kubetemplater-mutating".into(),
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
            target,
        }
    }

    #[test]
    fn url_target_appends_each_endpoint_path() {
        let r = registration(ClientTarget::Url("https://127.0.0.1:9443/".into()));
        let v = r.validating(b"CA");
        let hooks = v.webhooks.unwrap();
        assert_eq!(hooks.len(), 3);
        assert_eq!(hooks[0].name, "vkubetemplate.kb.io");
        assert_eq!(
            hooks[0].client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate-kubetemplater-io-v1alpha1-kubetemplate")
        );
        assert_eq!(hooks[0].client_config.ca_bundle.as_ref().unwrap().0, b"CA");
        assert_eq!(hooks[0].failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hooks[0].side_effects, "None");
        let m = r.mutating(b"CA").webhooks.unwrap();
        let resources: Vec<_> = m[0]
            .rules
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|r| r.resources.clone().unwrap())
            .collect();
        assert_eq!(resources, ["kubetemplates", "tenants"]);
    }

    #[test]
    fn service_target_names_the_service_and_path() {
        let r = registration(ClientTarget::Service {
            namespace: "kubetemplater-system".into(),
            name: "kubetemplater-webhook".into(),
            port: 443,
        });
        let m = r.mutating(b"CA").webhooks.unwrap();
        let svc = m[0].client_config.service.as_ref().unwrap();
        assert_eq!(svc.path.as_deref(), Some("/mutate-kubetemplater-io-bucket"));
        assert_eq!(svc.port, Some(443));
        assert!(m[0].client_config.url.is_none());
    }

    #[test]
    fn apply_body_carries_type() {
        let r = registration(ClientTarget::Url("https://x".into()));
        let value = with_type(r.validating(b"CA")).unwrap();
        assert_eq!(value["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(value["kind"], "ValidatingWebhookConfiguration");
    }
}
