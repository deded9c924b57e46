//! The handoff state machine of the coordinator leader: it moves buckets from the owners in the
//! map to the owners the planner wants, with the protocol's guarantees (see the `proto` docs).
//! Pure: events in, actions out; the caller persists, sends, and feeds replies back.
//!
//! For every bucket whose target owner differs from its owner in the map:
//!
//! | owner in the map                  | what happens                                                      |
//! |-----------------------------------|-------------------------------------------------------------------|
//! | none                              | epoch + 1, owner := target, **persist**, grant                    |
//! | a worker whose Lease has expired  | the same: it fenced itself before its Lease could expire          |
//! | a live worker with a session      | revoke (b, epoch) to it; on Released (b, epoch): epoch + 1, owner := target, persist, grant |
//! | a live worker without a session   | wait: for its Hello (then revoke) or for its Lease to expire      |
//!
//! Invariants: a bucket's epoch only grows; a grant for epoch e is only sent after the map with
//! epoch e has been persisted ([`Action::Persist`] always precedes the grants it covers); a new
//! owner is granted only after the old one released or provably stopped (expired Lease). So no
//! two workers ever write objects of one bucket in overlapping epochs.

use std::collections::{BTreeMap, BTreeSet};

/// A worker's id (its Lease name).
pub type WorkerId = String;

/// One bucket's entry in the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// Current owner; `None` when unassigned.
    pub owner: Option<WorkerId>,
    /// Epoch of the current (or last) assignment.
    pub epoch: u64,
}

/// Why buckets are revoked (mirrors `proto::v1::HandoffReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The planner moved them.
    Rebalance,
    /// A worker said it is leaving, or an operator drains it.
    Drain,
    /// A new leader found a worker holding buckets the persisted map does not give it.
    CoordinatorRestart,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the map (epochs changed); the grants after it rely on it being durable.
    Persist,
    /// Send a Revoke.
    Revoke {
        /// To whom.
        worker: WorkerId,
        /// (bucket, epoch) pairs.
        buckets: Vec<(u32, u64)>,
        /// Why.
        reason: Reason,
    },
    /// Send a Grant.
    Grant {
        /// To whom.
        worker: WorkerId,
        /// (bucket, epoch) pairs.
        buckets: Vec<(u32, u64)>,
    },
}

/// A handoff under way for one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The owner giving the bucket up.
    pub from: WorkerId,
    /// Who gets it.
    pub to: Option<WorkerId>,
    /// Whether the revoke has been sent on the current session of `from`.
    pub revoke_sent: bool,
    /// Why.
    pub reason: Reason,
}

/// The map and the handoffs in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoffs {
    slots: Vec<Slot>,
    pending: BTreeMap<u32, Pending>,
}

/// Who is alive and reachable right now.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Workers holding an unexpired Lease.
    pub live: BTreeSet<WorkerId>,
    /// Workers with an open session to this leader.
    pub connected: BTreeSet<WorkerId>,
}

/// One revoke to send: its reason and (bucket, epoch) pairs.
type RevokeBatch = (Reason, Vec<(u32, u64)>);

/// Groups (worker, bucket, epoch) triples into one action per worker.
fn grouped(entries: Vec<(WorkerId, u32, u64)>) -> BTreeMap<WorkerId, Vec<(u32, u64)>> {
    let mut out: BTreeMap<WorkerId, Vec<(u32, u64)>> = BTreeMap::new();
    for (w, b, e) in entries {
        out.entry(w).or_default().push((b, e));
    }
    out
}

impl Handoffs {
    /// A map loaded from storage (or all unassigned), with nothing in progress.
    pub fn new(slots: Vec<Slot>) -> Self {
        Self {
            slots,
            pending: BTreeMap::new(),
        }
    }

    /// The map.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Handoffs in progress.
    pub fn pending(&self) -> &BTreeMap<u32, Pending> {
        &self.pending
    }

    /// Gives `bucket` to `to` at a new epoch; returns the grant entry when `to` is someone.
    fn assign(&mut self, bucket: u32, to: Option<WorkerId>) -> Option<(WorkerId, u32, u64)> {
        let slot = &mut self.slots[bucket as usize];
        slot.epoch += 1;
        slot.owner = to.clone();
        to.map(|w| (w, bucket, slot.epoch))
    }

    fn finish(
        actions: &mut Vec<Action>,
        persist: bool,
        grants: Vec<(WorkerId, u32, u64)>,
        members: &Members,
    ) {
        if persist {
            actions.push(Action::Persist);
        }
        for (worker, buckets) in grouped(grants) {
            // A worker without a session gets its buckets in the answer to its Hello.
            if members.connected.contains(&worker) {
                actions.push(Action::Grant { worker, buckets });
            }
        }
    }

    /// Moves towards `target` (one owner per bucket, `None` = unassigned) given who is live and
    /// connected. Call after every change of target or membership and on a timer.
    pub fn step(&mut self, target: &[Option<WorkerId>], members: &Members) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut grants = Vec::new();
        let mut persist = false;
        let mut revokes = Vec::new();
        for bucket in 0..self.slots.len() {
            let b = u32::try_from(bucket).unwrap_or(u32::MAX);
            let want = target.get(bucket).cloned().flatten();
            let want = want.filter(|w| members.live.contains(w));
            if let Some(p) = self.pending.get_mut(&b) {
                p.to.clone_from(&want);
                if !members.live.contains(&p.from) {
                    // The old owner's Lease expired: it stopped writing before that.
                    self.pending.remove(&b);
                    persist = true;
                    grants.extend(self.assign(b, want));
                } else if !p.revoke_sent && members.connected.contains(&p.from) {
                    p.revoke_sent = true;
                    revokes.push((p.from.clone(), p.reason, b, self.slots[bucket].epoch));
                }
                continue;
            }
            let slot = &self.slots[bucket];
            if slot.owner == want {
                continue;
            }
            match slot.owner.clone() {
                Some(owner) if members.live.contains(&owner) => {
                    let sent = members.connected.contains(&owner);
                    if sent {
                        revokes.push((owner.clone(), Reason::Rebalance, b, slot.epoch));
                    }
                    self.pending.insert(
                        b,
                        Pending {
                            from: owner,
                            to: want,
                            revoke_sent: sent,
                            reason: Reason::Rebalance,
                        },
                    );
                }
                _ => {
                    persist = true;
                    grants.extend(self.assign(b, want));
                }
            }
        }
        let mut by_worker: BTreeMap<(WorkerId, u8), RevokeBatch> = BTreeMap::new();
        for (worker, reason, b, e) in revokes {
            by_worker
                .entry((worker, reason as u8))
                .or_insert((reason, Vec::new()))
                .1
                .push((b, e));
        }
        for ((worker, _), (reason, buckets)) in by_worker {
            actions.push(Action::Revoke {
                worker,
                buckets,
                reason,
            });
        }
        Self::finish(&mut actions, persist, grants, members);
        actions
    }

    /// `worker` released `entries`; completes the matching handoffs.
    pub fn released(
        &mut self,
        worker: &str,
        entries: &[(u32, u64)],
        members: &Members,
    ) -> Vec<Action> {
        let mut grants = Vec::new();
        let mut persist = false;
        for (bucket, epoch) in entries {
            let Some(slot) = self.slots.get(*bucket as usize) else {
                continue;
            };
            let matches =
                self.pending.get(bucket).is_some_and(|p| p.from == worker) && slot.epoch == *epoch;
            if !matches {
                continue;
            }
            let Some(p) = self.pending.remove(bucket) else {
                continue;
            };
            let to = p.to.filter(|w| members.live.contains(w));
            persist = true;
            grants.extend(self.assign(*bucket, to));
        }
        let mut actions = Vec::new();
        Self::finish(&mut actions, persist, grants, members);
        actions
    }

    /// `worker` opened a session holding `held`: revoke what the map does not give it at that
    /// epoch, re-grant what the map gives it and it does not report, send pending revokes.
    pub fn hello(&mut self, worker: &str, held: &[(u32, u64)], members: &Members) -> Vec<Action> {
        let mut actions = Vec::new();
        let held_set: BTreeMap<u32, u64> = held.iter().copied().collect();
        let stale: Vec<(u32, u64)> = held
            .iter()
            .copied()
            .filter(|(b, e)| {
                self.slots
                    .get(*b as usize)
                    .is_none_or(|s| s.owner.as_deref() != Some(worker) || s.epoch != *e)
            })
            .collect();
        if !stale.is_empty() {
            actions.push(Action::Revoke {
                worker: worker.to_owned(),
                buckets: stale,
                reason: Reason::CoordinatorRestart,
            });
        }
        let mut revoke_again = Vec::new();
        for (b, p) in &mut self.pending {
            if p.from == worker {
                p.revoke_sent = true;
                revoke_again.push((*b, self.slots[*b as usize].epoch));
            }
        }
        if !revoke_again.is_empty() {
            actions.push(Action::Revoke {
                worker: worker.to_owned(),
                buckets: revoke_again,
                reason: Reason::Rebalance,
            });
        }
        let regrant: Vec<(u32, u64)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(b, s)| {
                let b = u32::try_from(*b).unwrap_or(u32::MAX);
                s.owner.as_deref() == Some(worker)
                    && !self.pending.contains_key(&b)
                    && held_set.get(&b) != Some(&s.epoch)
            })
            .map(|(b, s)| (u32::try_from(b).unwrap_or(u32::MAX), s.epoch))
            .collect();
        if !regrant.is_empty() && members.connected.contains(worker) {
            actions.push(Action::Grant {
                worker: worker.to_owned(),
                buckets: regrant,
            });
        }
        actions
    }

    /// `worker`'s session closed: revokes sent on it must be sent again on its next session.
    pub fn disconnected(&mut self, worker: &str) {
        for p in self.pending.values_mut() {
            if p.from == worker {
                p.revoke_sent = false;
            }
        }
    }

    /// Marks every bucket of `worker` for revocation with `reason` (leaving, drain); `step` with
    /// a target that excludes it then completes the moves.
    pub fn drain(
        &mut self,
        worker: &str,
        target: &[Option<WorkerId>],
        members: &Members,
    ) -> Vec<Action> {
        for (b, slot) in self.slots.iter().enumerate() {
            let b = u32::try_from(b).unwrap_or(u32::MAX);
            if slot.owner.as_deref() == Some(worker) && !self.pending.contains_key(&b) {
                self.pending.insert(
                    b,
                    Pending {
                        from: worker.to_owned(),
                        to: None,
                        revoke_sent: false,
                        reason: Reason::Drain,
                    },
                );
            }
        }
        self.step(target, members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(live: &[&str], connected: &[&str]) -> Members {
        Members {
            live: live.iter().map(|s| (*s).to_owned()).collect(),
            connected: connected.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn target(owners: &[Option<&str>]) -> Vec<Option<WorkerId>> {
        owners.iter().map(|o| o.map(str::to_owned)).collect()
    }

    #[test]
    fn unassigned_buckets_are_persisted_then_granted() {
        let mut h = Handoffs::new(vec![Slot::default(); 3]);
        let m = members(&["a", "b"], &["a", "b"]);
        let actions = h.step(&target(&[Some("a"), Some("b"), Some("a")]), &m);
        assert_eq!(actions[0], Action::Persist);
        assert_eq!(
            actions[1..],
            [
                Action::Grant {
                    worker: "a".into(),
                    buckets: vec![(0, 1), (2, 1)]
                },
                Action::Grant {
                    worker: "b".into(),
                    buckets: vec![(1, 1)]
                },
            ]
        );
        assert!(
            h.step(&target(&[Some("a"), Some("b"), Some("a")]), &m)
                .is_empty(),
            "converged"
        );
    }

    #[test]
    fn a_live_owner_is_revoked_first_and_the_grant_waits_for_released() {
        let mut h = Handoffs::new(vec![Slot {
            owner: Some("a".into()),
            epoch: 4,
        }]);
        let m = members(&["a", "b"], &["a", "b"]);
        let actions = h.step(&target(&[Some("b")]), &m);
        assert_eq!(
            actions,
            [Action::Revoke {
                worker: "a".into(),
                buckets: vec![(0, 4)],
                reason: Reason::Rebalance
            }]
        );
        // Stepping again sends nothing new: the revoke is outstanding.
        assert!(h.step(&target(&[Some("b")]), &m).is_empty());
        // A stale ack (older epoch) or one from someone else changes nothing.
        assert!(h.released("a", &[(0, 3)], &m).is_empty());
        assert!(h.released("b", &[(0, 4)], &m).is_empty());
        let actions = h.released("a", &[(0, 4)], &m);
        assert_eq!(
            actions,
            [
                Action::Persist,
                Action::Grant {
                    worker: "b".into(),
                    buckets: vec![(0, 5)]
                }
            ]
        );
        assert_eq!(
            h.slots()[0],
            Slot {
                owner: Some("b".into()),
                epoch: 5
            }
        );
    }

    #[test]
    fn an_expired_owner_is_skipped_without_waiting() {
        let mut h = Handoffs::new(vec![Slot {
            owner: Some("dead".into()),
            epoch: 2,
        }]);
        let m = members(&["b"], &["b"]);
        let actions = h.step(&target(&[Some("b")]), &m);
        assert_eq!(
            actions,
            [
                Action::Persist,
                Action::Grant {
                    worker: "b".into(),
                    buckets: vec![(0, 3)]
                }
            ]
        );
    }

    #[test]
    fn an_unacked_revoke_completes_when_the_lease_expires() {
        let mut h = Handoffs::new(vec![Slot {
            owner: Some("a".into()),
            epoch: 1,
        }]);
        let both = members(&["a", "b"], &["a", "b"]);
        h.step(&target(&[Some("b")]), &both);
        // a disappears without acking; while its Lease lives, nothing is granted.
        let a_gone_but_leased = members(&["a", "b"], &["b"]);
        h.disconnected("a");
        assert!(h.step(&target(&[Some("b")]), &a_gone_but_leased).is_empty());
        let expired = members(&["b"], &["b"]);
        assert_eq!(
            h.step(&target(&[Some("b")]), &expired),
            [
                Action::Persist,
                Action::Grant {
                    worker: "b".into(),
                    buckets: vec![(0, 2)]
                }
            ]
        );
    }

    #[test]
    fn a_revoke_lost_with_a_session_is_sent_again_on_hello() {
        let mut h = Handoffs::new(vec![Slot {
            owner: Some("a".into()),
            epoch: 1,
        }]);
        let both = members(&["a", "b"], &["a", "b"]);
        h.step(&target(&[Some("b")]), &both);
        h.disconnected("a");
        let actions = h.hello("a", &[(0, 1)], &both);
        assert_eq!(
            actions,
            [Action::Revoke {
                worker: "a".into(),
                buckets: vec![(0, 1)],
                reason: Reason::Rebalance
            }]
        );
    }

    #[test]
    fn hello_revokes_what_the_map_does_not_give_and_regrants_what_it_does() {
        let mut h = Handoffs::new(vec![
            Slot {
                owner: Some("a".into()),
                epoch: 3,
            },
            Slot {
                owner: Some("b".into()),
                epoch: 7,
            },
            Slot {
                owner: Some("a".into()),
                epoch: 2,
            },
        ]);
        let m = members(&["a", "b"], &["a", "b"]);
        // a says it holds bucket 0 at epoch 3 (fine), bucket 1 at epoch 6 (not its own: revoke),
        // and nothing of bucket 2 (lost grant: send again).
        let actions = h.hello("a", &[(0, 3), (1, 6)], &m);
        assert_eq!(
            actions,
            [
                Action::Revoke {
                    worker: "a".into(),
                    buckets: vec![(1, 6)],
                    reason: Reason::CoordinatorRestart
                },
                Action::Grant {
                    worker: "a".into(),
                    buckets: vec![(2, 2)]
                },
            ]
        );
    }

    #[test]
    fn epochs_only_grow_through_a_back_and_forth() {
        let mut h = Handoffs::new(vec![Slot::default()]);
        let m = members(&["a", "b"], &["a", "b"]);
        h.step(&target(&[Some("a")]), &m);
        let mut last = h.slots()[0].epoch;
        for round in 0..6 {
            let to = if round % 2 == 0 { "b" } else { "a" };
            let from = if round % 2 == 0 { "a" } else { "b" };
            h.step(&target(&[Some(to)]), &m);
            let e = h.slots()[0].epoch;
            h.released(from, &[(0, e)], &m);
            assert!(h.slots()[0].epoch > last);
            last = h.slots()[0].epoch;
            assert_eq!(h.slots()[0].owner.as_deref(), Some(to));
        }
    }

    #[test]
    fn drain_revokes_everything_of_a_worker() {
        let mut h = Handoffs::new(vec![
            Slot {
                owner: Some("a".into()),
                epoch: 1,
            },
            Slot {
                owner: Some("b".into()),
                epoch: 1,
            },
        ]);
        let m = members(&["a", "b"], &["a", "b"]);
        let actions = h.drain("a", &target(&[Some("b"), Some("b")]), &m);
        assert_eq!(
            actions,
            [Action::Revoke {
                worker: "a".into(),
                buckets: vec![(0, 1)],
                reason: Reason::Drain
            }]
        );
    }

    #[test]
    fn grants_to_unconnected_workers_wait_for_their_hello() {
        let mut h = Handoffs::new(vec![Slot::default()]);
        let m = members(&["a"], &[]);
        assert_eq!(h.step(&target(&[Some("a")]), &m), [Action::Persist]);
        let connected = members(&["a"], &["a"]);
        assert_eq!(
            h.hello("a", &[], &connected),
            [Action::Grant {
                worker: "a".into(),
                buckets: vec![(0, 1)]
            }]
        );
    }

    /// A randomised run: workers join, leave, die and come back, targets change, acks arrive
    /// late or never. Among live workers, no bucket is ever held by two, and epochs only grow.
    #[test]
    fn random_runs_never_double_assign() {
        use rand::{Rng as _, SeedableRng as _};
        const B: usize = 16;
        let names = ["w0", "w1", "w2", "w3"];
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut h = Handoffs::new(vec![Slot::default(); B]);
            // What each worker believes it holds: bucket -> epoch.
            let mut holds: BTreeMap<&str, BTreeMap<u32, u64>> = BTreeMap::new();
            let mut seen: BTreeMap<(&str, u32), u64> = BTreeMap::new();
            // Revokes a worker received and has not acked yet.
            let mut inbox: Vec<(&str, Vec<(u32, u64)>)> = Vec::new();
            let mut live: BTreeSet<&str> = names.iter().copied().collect();
            let mut connected = live.clone();
            let mut epochs = [0u64; B];
            for _ in 0..60 {
                let m = Members {
                    live: live.iter().map(|s| (*s).to_owned()).collect(),
                    connected: connected.iter().map(|s| (*s).to_owned()).collect(),
                };
                let alive: Vec<&str> = live.iter().copied().collect();
                let target: Vec<Option<WorkerId>> = (0..B)
                    .map(|_| {
                        (!alive.is_empty())
                            .then(|| alive[rng.random_range(0..alive.len())].to_owned())
                    })
                    .collect();
                let mut actions = match rng.random_range(0..6) {
                    0 if !inbox.is_empty() => {
                        // A worker acks a revoke (releasing first).
                        let (w, entries) = inbox.swap_remove(rng.random_range(0..inbox.len()));
                        if !connected.contains(w) {
                            continue;
                        }
                        for (b, _) in &entries {
                            holds.entry(w).or_default().remove(b);
                        }
                        h.released(w, &entries, &m)
                    }
                    1 => {
                        // A worker dies: its Lease expires, it has stopped writing.
                        let w = names[rng.random_range(0..names.len())];
                        live.remove(w);
                        connected.remove(w);
                        holds.remove(w);
                        inbox.retain(|(x, _)| *x != w);
                        h.disconnected(w);
                        continue;
                    }
                    2 => {
                        // A worker (re)starts: fresh process, nothing held, new session.
                        let w = names[rng.random_range(0..names.len())];
                        if live.contains(w) {
                            continue;
                        }
                        live.insert(w);
                        connected.insert(w);
                        seen.retain(|(x, _), _| *x != w);
                        let m = Members {
                            live: live.iter().map(|s| (*s).to_owned()).collect(),
                            connected: connected.iter().map(|s| (*s).to_owned()).collect(),
                        };
                        h.hello(w, &[], &m)
                    }
                    3 => {
                        // A session drops (the worker lives on, fail static) and comes back.
                        let w = names[rng.random_range(0..names.len())];
                        if !live.contains(w) {
                            continue;
                        }
                        h.disconnected(w);
                        inbox.retain(|(x, _)| *x != w);
                        let held: Vec<(u32, u64)> = holds
                            .get(w)
                            .map(|m| m.iter().map(|(b, e)| (*b, *e)).collect())
                            .unwrap_or_default();
                        h.hello(w, &held, &m)
                    }
                    _ => h.step(&target, &m),
                };
                let mut persisted = false;
                for action in actions.drain(..) {
                    match action {
                        Action::Persist => persisted = true,
                        Action::Revoke {
                            worker, buckets, ..
                        } => {
                            let w = names.iter().copied().find(|n| *n == worker).unwrap();
                            inbox.push((w, buckets));
                        }
                        Action::Grant { worker, buckets } => {
                            let w = names.iter().copied().find(|n| *n == worker).unwrap();
                            for (b, e) in buckets {
                                assert!(
                                    persisted || h.slots()[b as usize].epoch == e,
                                    "grant before persist"
                                );
                                if seen.get(&(w, b)).is_some_and(|s| *s >= e) {
                                    continue;
                                }
                                seen.insert((w, b), e);
                                holds.entry(w).or_default().insert(b, e);
                            }
                        }
                    }
                }
                for (b, slot) in h.slots().iter().enumerate() {
                    assert!(slot.epoch >= epochs[b], "seed {seed}: epoch went back");
                    epochs[b] = slot.epoch;
                    let holders: Vec<&str> = holds
                        .iter()
                        .filter(|(w, m)| live.contains(*w) && m.contains_key(&(b as u32)))
                        .map(|(w, _)| *w)
                        .collect();
                    assert!(
                        holders.len() <= 1,
                        "seed {seed}: bucket {b} held by {holders:?}"
                    );
                }
            }
        }
    }
}
