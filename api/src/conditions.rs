//! Setting a condition in a status without moving its `lastTransitionTime` when its status did not
//! change, and comparing statuses without the timestamps (so an unchanged status is never
//! written).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets condition `type_` in `conditions`, keeping the previous transition time when the status
/// is the same.
pub fn set(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(
            || Time(jiff::Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        last_transition_time: since,
        observed_generation,
    });
}

/// Whether two condition lists say the same thing (order and transition times aside).
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// Whether condition `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let mut first = Vec::new();
        set(&mut first, &[], "Ready", true, "Ok", "fine", Some(1));
        let since = first[0].last_transition_time.clone();
        let mut second = Vec::new();
        set(&mut second, &first, "Ready", true, "Ok", "fine", Some(1));
        assert_eq!(second[0].last_transition_time, since);
        assert!(same(&first, &second));
        let mut third = Vec::new();
        set(&mut third, &first, "Ready", false, "Broken", "no", Some(1));
        assert!(!same(&first, &third));
        assert!(is_true(&first, "Ready") && !is_true(&third, "Ready"));
    }
}
