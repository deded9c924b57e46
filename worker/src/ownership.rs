//! Which buckets this worker holds, at which epoch, and the protocol's rules for stale and
//! repeated grants and revokes (see the `proto` crate docs). Pure: no I/O.

use std::collections::BTreeMap;

/// Buckets held and the highest epoch seen per bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    held: BTreeMap<u32, u64>,
    seen: BTreeMap<u32, u64>,
}

/// What to do about a revoke.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokePlan {
    /// Held buckets to release (stop work, finish in-flight), then acknowledge.
    pub release: Vec<(u32, u64)>,
    /// Entries to acknowledge at once (bucket not held, or already released).
    pub acknowledge: Vec<(u32, u64)>,
}

impl Ownership {
    /// Nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The held buckets with their epochs.
    pub fn held(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.held.iter().map(|(b, e)| (*b, *e))
    }

    /// Number of held buckets.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether `bucket` is held.
    pub fn holds(&self, bucket: u32) -> bool {
        self.held.contains_key(&bucket)
    }

    /// Applies a grant; returns the buckets newly held. An entry whose epoch is not above every
    /// epoch seen for its bucket is stale and ignored.
    pub fn grant(&mut self, entries: impl IntoIterator<Item = (u32, u64)>) -> Vec<u32> {
        let mut new = Vec::new();
        for (bucket, epoch) in entries {
            if self.seen.get(&bucket).is_some_and(|seen| *seen >= epoch) {
                continue;
            }
            self.seen.insert(bucket, epoch);
            if self.held.insert(bucket, epoch).is_none() {
                new.push(bucket);
            }
        }
        new
    }

    /// Plans a revoke: entries below the epoch held are stale (ignored); held buckets at or above
    /// it are released; anything else is acknowledged as is.
    pub fn plan_revoke(&self, entries: impl IntoIterator<Item = (u32, u64)>) -> RevokePlan {
        let mut plan = RevokePlan::default();
        for (bucket, epoch) in entries {
            match self.held.get(&bucket) {
                Some(held) if epoch < *held => {}
                Some(held) => plan.release.push((bucket, *held)),
                None => plan.acknowledge.push((bucket, epoch)),
            }
        }
        plan
    }

    /// Forgets `buckets` (after their release).
    pub fn remove(&mut self, buckets: &[u32]) {
        for b in buckets {
            self.held.remove(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_idempotent_and_stale_ones_ignored() {
        let mut o = Ownership::new();
        assert_eq!(o.grant([(1, 3), (2, 1)]), vec![1, 2]);
        assert_eq!(o.grant([(1, 3)]), Vec::<u32>::new(), "a repeated grant");
        o.remove(&[1]);
        assert_eq!(
            o.grant([(1, 3)]),
            Vec::<u32>::new(),
            "a stale grant after release"
        );
        assert_eq!(o.grant([(1, 4)]), vec![1]);
        assert_eq!(o.held().collect::<Vec<_>>(), vec![(1, 4), (2, 1)]);
    }

    #[test]
    fn revokes_release_held_ignore_stale_and_ack_the_rest() {
        let mut o = Ownership::new();
        o.grant([(1, 5), (2, 2)]);
        let plan = o.plan_revoke([(1, 5), (2, 1), (3, 7)]);
        assert_eq!(plan.release, vec![(1, 5)]);
        assert_eq!(plan.acknowledge, vec![(3, 7)]);
        // A revoke at a higher epoch than held (the leader's map moved on) still releases.
        assert_eq!(o.plan_revoke([(2, 9)]).release, vec![(2, 2)]);
    }
}
