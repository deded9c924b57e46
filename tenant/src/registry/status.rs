//! TenantRegistry and TenantTemplate statuses, computed from what the controller knows. Pure;
//! the controller writes a status only when it differs from the one the object has.

use api::constants::condition::{APPLIED, DELETION_BLOCKED, READY, VALID};
use api::{TenantRegistryStatus, TenantTemplateStatus};

use crate::datasource::SourceError;
use crate::sync::Blocked;
use api::conditions;

/// Ready reason when the last read succeeded (the original's).
pub const REASON_CONNECTED: &str = "DatabaseConnected";
/// Ready reason when the last read failed (the original's).
pub const REASON_CONNECTION_FAILED: &str = "DatabaseConnectionFailed";

/// The outcome of the last read of a registry's table.
#[derive(Debug, Clone, PartialEq)]
pub enum LastRead {
    /// No read finished yet.
    None,
    /// The table was read.
    Ok,
    /// The read failed.
    Failed(SourceError),
}

/// What a registry's status is computed from.
#[derive(Debug, Clone)]
pub struct RegistryFacts<'a> {
    /// The generation the last sync used.
    pub observed_generation: Option<i64>,
    /// TenantTemplates referencing the registry.
    pub templates: usize,
    /// Tenants that should exist (templates × active rows), from the last successful read.
    pub desired: Option<usize>,
    /// The registry's Tenants whose Ready condition is True.
    pub ready: usize,
    /// The registry's Tenants whose Ready condition is not True.
    pub failed: usize,
    /// The last read.
    pub read: &'a LastRead,
    /// Rows of the last successful read that produced no Tenant.
    pub problems: usize,
    /// Deletions held back by the brake.
    pub blocked: Option<&'a Blocked>,
}

fn count(n: usize) -> Option<i32> {
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The registry status for `facts`; conditions keep their transition times from `previous`.
pub fn registry_status(
    previous: &TenantRegistryStatus,
    facts: &RegistryFacts<'_>,
) -> TenantRegistryStatus {
    let mut status = TenantRegistryStatus {
        observed_generation: facts.observed_generation.or(previous.observed_generation),
        referencing_templates: count(facts.templates),
        desired: facts.desired.map_or(previous.desired, count),
        ready: count(facts.ready),
        failed: count(facts.failed),
        conditions: previous
            .conditions
            .iter()
            .filter(|c| c.type_ != READY && c.type_ != DELETION_BLOCKED)
            .cloned()
            .collect(),
    };
    let generation = status.observed_generation;
    match facts.read {
        LastRead::None => {}
        LastRead::Ok => {
            let message = match facts.problems {
                0 => "the table was read".to_owned(),
                1 => "the table was read; 1 row produced no Tenant (see the registry's \
                      TemplateRenderFailed events)"
                    .to_owned(),
                n => format!(
                    "the table was read; {n} rows produced no Tenant (see the registry's \
                     TemplateRenderFailed events)"
                ),
            };
            conditions::set(
                &mut status.conditions,
                &previous.conditions,
                READY,
                true,
                REASON_CONNECTED,
                message,
                generation,
            );
        }
        LastRead::Failed(error) => conditions::set(
            &mut status.conditions,
            &previous.conditions,
            READY,
            false,
            REASON_CONNECTION_FAILED,
            format!(
                "{}: {error}; no Tenant is created, changed or deleted until a read succeeds",
                error.cause()
            ),
            generation,
        ),
    }
    match facts.blocked {
        Some(blocked) => conditions::set(
            &mut status.conditions,
            &previous.conditions,
            DELETION_BLOCKED,
            true,
            blocked.reason,
            blocked.message.clone(),
            generation,
        ),
        None if matches!(facts.read, LastRead::Ok) => conditions::set(
            &mut status.conditions,
            &previous.conditions,
            DELETION_BLOCKED,
            false,
            "WithinLimits",
            "the last sync's deletions were within the deletion brake's limits",
            generation,
        ),
        // A failed read deletes nothing: keep what the last successful sync said.
        None => status.conditions.extend(
            previous
                .conditions
                .iter()
                .filter(|c| c.type_ == DELETION_BLOCKED)
                .cloned(),
        ),
    }
    status
}

/// Whether `status` says something `current` does not (timestamps aside): then it is written.
pub fn registry_differs(
    current: Option<&TenantRegistryStatus>,
    status: &TenantRegistryStatus,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    current.observed_generation != status.observed_generation
        || current.referencing_templates != status.referencing_templates
        || current.desired != status.desired
        || current.ready != status.ready
        || current.failed != status.failed
        || !conditions::same(&current.conditions, &status.conditions)
}

/// What a template's status is computed from.
#[derive(Debug, Clone)]
pub struct TemplateFacts<'a> {
    /// The template's generation.
    pub generation: Option<i64>,
    /// Its Tenants.
    pub total: usize,
    /// Its Tenants whose Ready condition is True.
    pub ready: usize,
    /// Validation problems (empty: valid).
    pub problems: &'a [String],
    /// The referenced registry exists.
    pub registry_found: bool,
    /// The referenced registry's name.
    pub registry: &'a str,
}

/// The template status for `facts`, as the original: `Valid` and `Applied`.
pub fn template_status(
    previous: &TenantTemplateStatus,
    facts: &TemplateFacts<'_>,
) -> TenantTemplateStatus {
    let mut status = TenantTemplateStatus {
        observed_generation: facts.generation,
        total_tenants: count(facts.total),
        ready_tenants: count(facts.ready),
        conditions: previous
            .conditions
            .iter()
            .filter(|c| c.type_ != VALID && c.type_ != APPLIED)
            .cloned()
            .collect(),
    };
    let (valid, reason, message) = if !facts.registry_found {
        (
            false,
            "RegistryNotFound",
            format!(
                "TenantRegistry {:?} does not exist in this namespace",
                facts.registry
            ),
        )
    } else if facts.problems.is_empty() {
        (true, "ValidationPassed", "the template is valid".to_owned())
    } else {
        (false, "ValidationFailed", facts.problems.join("; "))
    };
    conditions::set(
        &mut status.conditions,
        &previous.conditions,
        VALID,
        valid,
        reason,
        message,
        facts.generation,
    );
    let (applied, reason, message) = if facts.total == 0 {
        (
            false,
            "NoTenants",
            "no Tenant uses this template".to_owned(),
        )
    } else if facts.ready == facts.total {
        (
            true,
            "AllTenantsReady",
            format!("all {} Tenants are ready", facts.total),
        )
    } else {
        (
            false,
            "NotAllTenantsReady",
            format!("{} of {} Tenants are ready", facts.ready, facts.total),
        )
    };
    conditions::set(
        &mut status.conditions,
        &previous.conditions,
        APPLIED,
        applied,
        reason,
        message,
        facts.generation,
    );
    status
}

/// Whether `status` says something `current` does not (timestamps aside).
pub fn template_differs(
    current: Option<&TenantTemplateStatus>,
    status: &TenantTemplateStatus,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    current.observed_generation != status.observed_generation
        || current.total_tenants != status.total_tenants
        || current.ready_tenants != status.ready_tenants
        || !conditions::same(&current.conditions, &status.conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(read: &LastRead) -> RegistryFacts<'_> {
        RegistryFacts {
            observed_generation: Some(3),
            templates: 2,
            desired: Some(10),
            ready: 7,
            failed: 3,
            read,
            problems: 0,
            blocked: None,
        }
    }

    #[test]
    fn a_failed_read_keeps_the_last_desired_count_and_says_why() {
        let ok = registry_status(&TenantRegistryStatus::default(), &facts(&LastRead::Ok));
        assert_eq!(
            (ok.desired, ok.ready, ok.failed, ok.referencing_templates),
            (Some(10), Some(7), Some(3), Some(2))
        );
        assert!(conditions::is_true(&ok.conditions, READY));
        assert!(!registry_differs(
            Some(&ok),
            &registry_status(&ok, &facts(&LastRead::Ok))
        ));

        let failed_read = LastRead::Failed(SourceError::Timeout { seconds: 60 });
        let mut f = facts(&failed_read);
        f.desired = None;
        let failed = registry_status(&ok, &f);
        assert_eq!(failed.desired, Some(10));
        let ready = failed
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready.reason, REASON_CONNECTION_FAILED);
        assert!(
            ready.message.starts_with("QueryTimeout: "),
            "{}",
            ready.message
        );
        assert!(registry_differs(Some(&ok), &failed));
    }

    #[test]
    fn held_back_deletions_are_a_condition_until_a_sync_is_within_limits() {
        let blocked = Blocked {
            pending: 5,
            existing: 5,
            reason: "EmptyResult",
            message: "5 of 5".to_owned(),
        };
        let mut f = facts(&LastRead::Ok);
        f.blocked = Some(&blocked);
        let held = registry_status(&TenantRegistryStatus::default(), &f);
        assert!(conditions::is_true(&held.conditions, DELETION_BLOCKED));

        let failed_read = LastRead::Failed(SourceError::Query("x".into()));
        let still = registry_status(&held, &facts(&failed_read));
        assert!(
            conditions::is_true(&still.conditions, DELETION_BLOCKED),
            "a failed read does not lift it"
        );
        let released = registry_status(&still, &facts(&LastRead::Ok));
        assert!(!conditions::is_true(&released.conditions, DELETION_BLOCKED));
    }

    #[test]
    fn template_conditions_follow_the_original() {
        let none: [String; 0] = [];
        let mut f = TemplateFacts {
            generation: Some(2),
            total: 0,
            ready: 0,
            problems: &none,
            registry_found: true,
            registry: "reg",
        };
        let s = template_status(&TenantTemplateStatus::default(), &f);
        let reason = |s: &TenantTemplateStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.reason.clone())
        };
        assert_eq!(reason(&s, VALID).as_deref(), Some("ValidationPassed"));
        assert_eq!(reason(&s, APPLIED).as_deref(), Some("NoTenants"));
        f.total = 4;
        f.ready = 3;
        let s = template_status(&s, &f);
        assert_eq!(reason(&s, APPLIED).as_deref(), Some("NotAllTenantsReady"));
        assert_eq!((s.total_tenants, s.ready_tenants), (Some(4), Some(3)));
        f.ready = 4;
        assert_eq!(
            reason(&template_status(&s, &f), APPLIED).as_deref(),
            Some("AllTenantsReady")
        );
        f.registry_found = false;
        assert_eq!(
            reason(&template_status(&s, &f), VALID).as_deref(),
            Some("RegistryNotFound")
        );
    }
}
