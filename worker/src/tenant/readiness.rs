//! Is a live object ready? The original's rules per kind (with Lynq's later fix: a Deployment
//! or StatefulSet in the middle of a rollout is not ready until the controller observed the new
//! generation and every replica is updated).

use serde_json::Value;

fn int(value: &Value, path: &[&str]) -> i64 {
    let mut v = value;
    for key in path {
        match v.get(key) {
            Some(next) => v = next,
            None => return 0,
        }
    }
    v.as_i64().unwrap_or(0)
}

fn condition_true(object: &Value, type_: &str) -> Option<bool> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .map(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

fn observed_current(object: &Value) -> bool {
    let generation = int(object, &["metadata", "generation"]);
    generation == 0 || int(object, &["status", "observedGeneration"]) >= generation
}

/// Whether `object` (as read from the API server) of `kind` is ready.
pub fn is_ready(kind: &str, object: &Value) -> bool {
    match kind {
        "Namespace" => object.pointer("/status/phase").and_then(Value::as_str) == Some("Active"),
        "ConfigMap"
        | "Secret"
        | "ServiceAccount"
        | "CronJob"
        | "PodDisruptionBudget"
        | "NetworkPolicy"
        | "Role"
        | "RoleBinding"
        | "ClusterRole"
        | "ClusterRoleBinding" => true,
        "Service" => {
            object.pointer("/spec/type").and_then(Value::as_str) != Some("LoadBalancer")
                || object
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .is_some_and(|i| !i.is_empty())
        }
        // As `kubectl rollout status`: the new generation observed, every replica updated, no
        // old replica left, and every updated one available.
        "Deployment" => {
            let wanted = replicas(object);
            let updated = int(object, &["status", "updatedReplicas"]);
            observed_current(object)
                && updated >= wanted
                && int(object, &["status", "replicas"]) <= updated
                && int(object, &["status", "availableReplicas"]) >= updated
        }
        "StatefulSet" => {
            let wanted = replicas(object);
            let revision = |key: &str| {
                object
                    .pointer(&format!("/status/{key}"))
                    .and_then(Value::as_str)
            };
            observed_current(object)
                && int(object, &["status", "readyReplicas"]) >= wanted
                && int(object, &["status", "updatedReplicas"]) >= wanted
                && revision("updateRevision") == revision("currentRevision")
        }
        "DaemonSet" => {
            let desired = int(object, &["status", "desiredNumberScheduled"]);
            desired > 0 && int(object, &["status", "numberReady"]) >= desired
        }
        "Job" => match (
            condition_true(object, "Complete"),
            condition_true(object, "Failed"),
        ) {
            (Some(true), _) => true,
            (_, Some(true)) => false,
            _ => int(object, &["status", "succeeded"]) > 0,
        },
        "Ingress" => {
            object
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .is_some_and(|i| !i.is_empty())
                || object
                    .pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .is_some_and(|r| !r.is_empty())
        }
        "PersistentVolumeClaim" => {
            object.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
        }
        "HorizontalPodAutoscaler" => condition_true(object, "AbleToScale") == Some(true),
        // Any other kind: Ready=True, or no conditions at all.
        _ => match condition_true(object, "Ready") {
            Some(ready) => ready,
            None => object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty),
        },
    }
}

/// `spec.replicas`; unset or 0 counts as 1, as the original.
fn replicas(object: &Value) -> i64 {
    match int(object, &["spec", "replicas"]) {
        0 => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workloads_are_ready_once_the_rollout_is_done() {
        let mut deployment = json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "availableReplicas": 2, "updatedReplicas": 2}
        });
        assert!(is_ready("Deployment", &deployment));
        deployment["status"]["observedGeneration"] = json!(1);
        assert!(
            !is_ready("Deployment", &deployment),
            "generation not observed"
        );
        deployment["status"]["observedGeneration"] = json!(2);
        deployment["status"]["updatedReplicas"] = json!(1);
        assert!(!is_ready("Deployment", &deployment), "mid-rollout");
        // A stalled rollout: the new replica exists (updated) but is not available; the old one
        // still is.
        let stalled = json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1,
                       "availableReplicas": 1, "unavailableReplicas": 1}
        });
        assert!(!is_ready("Deployment", &stalled), "old replicas left");
        assert!(!is_ready(
            "Deployment",
            &json!({"spec": {}, "status": {"availableReplicas": 0}})
        ));
        assert!(is_ready(
            "StatefulSet",
            &json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "updatedReplicas": 1}})
        ));
        assert!(!is_ready(
            "StatefulSet",
            &json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "updatedReplicas": 1,
                "currentRevision": "a", "updateRevision": "b"}})
        ));
        assert!(!is_ready(
            "DaemonSet",
            &json!({"status": {"desiredNumberScheduled": 0}})
        ));
    }

    #[test]
    fn jobs_namespaces_claims_services() {
        let complete = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(is_ready("Job", &complete));
        let failed = json!({"status": {"succeeded": 1, "conditions": [{"type": "Failed", "status": "True"}]}});
        assert!(!is_ready("Job", &failed));
        assert!(is_ready("Job", &json!({"status": {"succeeded": 1}})));
        assert!(is_ready(
            "Namespace",
            &json!({"status": {"phase": "Active"}})
        ));
        assert!(!is_ready(
            "Namespace",
            &json!({"status": {"phase": "Terminating"}})
        ));
        assert!(!is_ready(
            "PersistentVolumeClaim",
            &json!({"status": {"phase": "Pending"}})
        ));
        assert!(is_ready("Service", &json!({"spec": {"type": "ClusterIP"}})));
        assert!(!is_ready(
            "Service",
            &json!({"spec": {"type": "LoadBalancer"}})
        ));
        assert!(is_ready("ConfigMap", &json!({})));
    }

    #[test]
    fn other_kinds_follow_their_ready_condition() {
        assert!(is_ready("Widget", &json!({"status": {}})));
        assert!(is_ready(
            "Widget",
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        ));
        assert!(!is_ready(
            "Widget",
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        ));
        assert!(!is_ready(
            "Widget",
            &json!({"status": {"conditions": [{"type": "Synced", "status": "True"}]}})
        ));
    }
}
