//! A Tenant's status from what its reconcile found, with the original's conditions and reasons:
//! `Ready` (`Reconciled`, or `ResourcesFailedAndConflicted` > `ResourcesConflicted` >
//! `ResourcesFailed` > `NotAllResourcesReady`), `Progressing` (`Reconciling` / `ReconcileComplete`),
//! `Conflicted` (`ResourceConflict` / `NoConflict`) and `Degraded` (`ResourceFailuresAndConflicts`,
//! `ResourceFailures`, `ResourceConflicts`, `ResourcesNotReady` / `Healthy`). Pure.

use api::TenantStatus;
use api::conditions;
use api::constants::condition::{CONFLICTED, DEGRADED, PROGRESSING, READY};

use super::desired::DesiredError;

/// What one reconcile found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries of the Tenant.
    pub desired: usize,
    /// Applied and ready (or not waited for).
    pub ready: usize,
    /// Failed to render or apply, timed out waiting, or skipped after a failed dependency.
    pub failed: usize,
    /// Of the failed: refused because another field manager owns a field (Stuck).
    pub conflicted: usize,
    /// Applied but not ready yet, or waiting for a dependency.
    pub waiting: usize,
}

fn count(n: usize) -> Option<i32> {
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The status after a reconcile that could render the Tenant. `failures` are shown (first few)
/// in the messages; `applied` becomes `appliedResources`; `applied_hash` is set only when
/// everything is ready.
pub fn tenant_status(
    previous: &TenantStatus,
    generation: Option<i64>,
    counts: &Counts,
    applied: Vec<String>,
    applied_hash: Option<String>,
    failures: &[String],
) -> TenantStatus {
    let mut status = TenantStatus {
        observed_generation: generation,
        ready_resources: count(counts.ready),
        desired_resources: count(counts.desired),
        failed_resources: count(counts.failed),
        applied_resources: applied,
        applied_hash,
        conditions: Vec::new(),
    };
    let detail = summary(failures);
    let conflicts = counts.conflicted;
    let failed_only = counts.failed - conflicts.min(counts.failed);
    let ready = counts.failed == 0 && counts.ready == counts.desired;
    let (reason, message) = match (failed_only > 0, conflicts > 0) {
        _ if ready => (
            "Reconciled",
            format!("all {} resources are ready", counts.desired),
        ),
        (true, true) => (
            "ResourcesFailedAndConflicted",
            format!("{failed_only} failed, {conflicts} conflicted: {detail}"),
        ),
        (false, true) => (
            "ResourcesConflicted",
            format!("{conflicts} conflicted: {detail}"),
        ),
        (true, false) => ("ResourcesFailed", format!("{failed_only} failed: {detail}")),
        (false, false) => (
            "NotAllResourcesReady",
            format!("{} of {} resources are ready", counts.ready, counts.desired),
        ),
    };
    let set = |status: &mut TenantStatus, type_: &str, value: bool, reason: &str, message: &str| {
        conditions::set(
            &mut status.conditions,
            &previous.conditions,
            type_,
            value,
            reason,
            message,
            generation,
        );
    };
    set(&mut status, READY, ready, reason, &message);
    if counts.waiting > 0 {
        set(
            &mut status,
            PROGRESSING,
            true,
            "Reconciling",
            &format!("{} resources are not ready yet", counts.waiting),
        );
    } else {
        set(
            &mut status,
            PROGRESSING,
            false,
            "ReconcileComplete",
            "the last reconcile finished",
        );
    }
    if conflicts > 0 {
        set(&mut status, CONFLICTED, true, "ResourceConflict", &message);
    } else {
        set(
            &mut status,
            CONFLICTED,
            false,
            "NoConflict",
            "no field is owned by another manager",
        );
    }
    let degraded = match (failed_only > 0, conflicts > 0) {
        (true, true) => Some("ResourceFailuresAndConflicts"),
        (true, false) => Some("ResourceFailures"),
        (false, true) => Some("ResourceConflicts"),
        (false, false) if !ready && counts.waiting == 0 => Some("ResourcesNotReady"),
        (false, false) => None,
    };
    match degraded {
        Some(reason) => set(&mut status, DEGRADED, true, reason, &message),
        None => set(&mut status, DEGRADED, false, "Healthy", "nothing failed"),
    }
    status
}

/// The status of a Tenant that cannot be rendered at all (its variables or its dependency
/// graph); `appliedResources` is kept, so nothing is orphaned by the error.
pub fn broken_status(
    previous: &TenantStatus,
    generation: Option<i64>,
    desired: usize,
    error: &DesiredError,
) -> TenantStatus {
    let (ready_reason, degraded_reason) = match error {
        DesiredError::Variables(_) => ("VariablesBuildError", "VariablesBuildError"),
        DesiredError::Dependencies(_) => ("DependencyError", "DependencyCycle"),
    };
    let message = error.to_string();
    let mut status = TenantStatus {
        observed_generation: generation,
        ready_resources: count(0),
        desired_resources: count(desired),
        failed_resources: count(desired),
        applied_resources: previous.applied_resources.clone(),
        applied_hash: None,
        conditions: Vec::new(),
    };
    for (type_, value, reason) in [
        (READY, false, ready_reason),
        (PROGRESSING, false, "ReconcileComplete"),
        (CONFLICTED, false, "NoConflict"),
        (DEGRADED, true, degraded_reason),
    ] {
        conditions::set(
            &mut status.conditions,
            &previous.conditions,
            type_,
            value,
            reason,
            message.as_str(),
            generation,
        );
    }
    status
}

/// Whether `status` says something `current` does not (timestamps aside).
pub fn differs(current: Option<&TenantStatus>, status: &TenantStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    current.observed_generation != status.observed_generation
        || current.ready_resources != status.ready_resources
        || current.desired_resources != status.desired_resources
        || current.failed_resources != status.failed_resources
        || current.applied_resources != status.applied_resources
        || current.applied_hash != status.applied_hash
        || !conditions::same(&current.conditions, &status.conditions)
}

fn summary(failures: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = failures
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if failures.len() > SHOWN {
        text.push_str(&format!(" (and {} more)", failures.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(status: &TenantStatus, type_: &str) -> (String, String) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect(type_);
        (c.status.clone(), c.reason.clone())
    }

    fn counts(
        desired: usize,
        ready: usize,
        failed: usize,
        conflicted: usize,
        waiting: usize,
    ) -> Counts {
        Counts {
            desired,
            ready,
            failed,
            conflicted,
            waiting,
        }
    }

    #[test]
    fn reasons_follow_the_originals_precedence() {
        let base = TenantStatus::default();
        let all = tenant_status(
            &base,
            Some(1),
            &counts(3, 3, 0, 0, 0),
            vec![],
            Some("h".into()),
            &[],
        );
        assert_eq!(reason(&all, READY), ("True".into(), "Reconciled".into()));
        assert_eq!(reason(&all, DEGRADED), ("False".into(), "Healthy".into()));
        assert_eq!(reason(&all, PROGRESSING).1, "ReconcileComplete");

        let both = tenant_status(
            &base,
            Some(1),
            &counts(3, 1, 2, 1, 0),
            vec![],
            None,
            &["x".into()],
        );
        assert_eq!(reason(&both, READY).1, "ResourcesFailedAndConflicted");
        assert_eq!(
            reason(&both, CONFLICTED),
            ("True".into(), "ResourceConflict".into())
        );
        assert_eq!(reason(&both, DEGRADED).1, "ResourceFailuresAndConflicts");

        let conflict = tenant_status(&base, Some(1), &counts(3, 2, 1, 1, 0), vec![], None, &[]);
        assert_eq!(reason(&conflict, READY).1, "ResourcesConflicted");

        let failed = tenant_status(&base, Some(1), &counts(3, 2, 1, 0, 0), vec![], None, &[]);
        assert_eq!(reason(&failed, READY).1, "ResourcesFailed");
        assert_eq!(reason(&failed, DEGRADED).1, "ResourceFailures");

        let waiting = tenant_status(&base, Some(1), &counts(3, 2, 0, 0, 1), vec![], None, &[]);
        assert_eq!(
            reason(&waiting, READY),
            ("False".into(), "NotAllResourcesReady".into())
        );
        assert_eq!(
            reason(&waiting, PROGRESSING),
            ("True".into(), "Reconciling".into())
        );
        assert_eq!(reason(&waiting, DEGRADED).1, "Healthy");
    }

    #[test]
    fn unchanged_status_is_not_a_difference() {
        let base = TenantStatus::default();
        let a = tenant_status(
            &base,
            Some(1),
            &counts(1, 1, 0, 0, 0),
            vec!["k".into()],
            None,
            &[],
        );
        let b = tenant_status(
            &a,
            Some(1),
            &counts(1, 1, 0, 0, 0),
            vec!["k".into()],
            None,
            &[],
        );
        assert!(!differs(Some(&a), &b));
        assert!(differs(None, &b));
        let c = tenant_status(
            &a,
            Some(2),
            &counts(1, 1, 0, 0, 0),
            vec!["k".into()],
            None,
            &[],
        );
        assert!(differs(Some(&a), &c));
    }

    #[test]
    fn a_broken_tenant_keeps_what_it_applied() {
        let previous = TenantStatus {
            applied_resources: vec!["ConfigMap/ns/a@a".into()],
            ..TenantStatus::default()
        };
        let status = broken_status(
            &previous,
            Some(2),
            4,
            &DesiredError::Variables("bad".into()),
        );
        assert_eq!(status.applied_resources, previous.applied_resources);
        assert_eq!(reason(&status, READY).1, "VariablesBuildError");
        assert_eq!(status.failed_resources, Some(4));
    }
}
