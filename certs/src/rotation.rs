//! When to generate, rotate and retire certificates: pure decisions over a [`Material`] and an
//! injected "now", so every window is unit-tested without waiting.
//!
//! With `R` = `rotate_before`:
//!
//! - the serving certificate is re-issued (by the current CA, which is kept) when it expires
//!   within `R`, is missing or broken, was not signed by the current CA, or lacks a configured
//!   DNS name or IP address;
//! - the CA rotates in two steps. When it expires within `R`, a *next* CA is generated and
//!   added to the bundle while the current CA keeps signing, so every client that picks up the
//!   bundle trusts both. Once the next CA has been in the bundle for `R/2` (or, if rotation
//!   started late, when the current CA expires within `R/4`), it is *promoted*: it becomes the
//!   signing CA and a new serving certificate is issued by it. The old CA stays in the bundle
//!   (as *previous*) until it expires, so a replica still serving the old serving certificate
//!   remains trusted;
//! - a serving certificate that falls due while a next CA waits for promotion is not re-issued
//!   by the old CA if it outlives the promotion (which re-issues it anyway);
//! - everything is regenerated when there is no usable CA (missing, corrupt, key does not match,
//!   expired without a successor).

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};

use super::CertError;
use super::authority::{self, BACKDATE, Ca, CertInfo, Leaf, add, sub};

/// What the certificates must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub leaf_validity: SignedDuration,
    pub ca_validity: SignedDuration,
    pub rotate_before: SignedDuration,
}

impl Policy {
    /// How long a next CA sits in the bundle before it signs.
    fn ca_overlap(&self) -> SignedDuration {
        self.rotate_before / 2
    }

    /// The latest promotion time before the old CA expires.
    fn promotion_margin(&self) -> SignedDuration {
        self.rotate_before / 4
    }
}

/// The CAs and serving certificate, as stored in (or about to be written to) the Secret.
#[derive(Clone, Debug, Default)]
pub(crate) struct Material {
    /// The CA that signs serving certificates (`ca.key`).
    pub signing: Option<Ca>,
    /// A CA already in the bundle, waiting to be promoted (`ca-next.key`).
    pub next: Option<Ca>,
    /// Retired CAs kept in the bundle until they expire (certificates only).
    pub previous: Vec<CertInfo>,
    /// The serving certificate (`tls.crt`, `tls.key`).
    pub leaf: Option<Leaf>,
    /// Why `signing` is missing, when decoding found something unusable.
    pub ca_problem: Option<String>,
    /// Why `leaf` is missing, when decoding found something unusable.
    pub leaf_problem: Option<String>,
}

impl Material {
    /// Every CA certificate clients should trust: signing, next, previous (no duplicates).
    pub fn bundle(&self) -> Vec<&CertInfo> {
        let mut out: Vec<&CertInfo> = Vec::new();
        let all = self
            .signing
            .iter()
            .map(|c| &c.cert)
            .chain(self.next.iter().map(|c| &c.cert))
            .chain(self.previous.iter());
        for cert in all {
            if !out.iter().any(|c| c.der == cert.der) {
                out.push(cert);
            }
        }
        out
    }

    /// The bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        self.bundle().iter().map(|c| c.pem()).collect()
    }
}

/// One change to make (or none). The text says why, for the logs and the Secret's annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Keep,
    Regenerate(String),
    StartCaRotation(String),
    PromoteCa(String),
    /// Replace a serving certificate that is unusable or does not fit the configuration.
    IssueLeaf(String),
    /// Replace a good serving certificate that is about to expire (routine rotation).
    RenewLeaf(String),
    Prune(String),
}

impl Step {
    /// `kind: reason`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Step::Keep => "keep".to_owned(),
            Step::Regenerate(r) => format!("new CA and serving certificate: {r}"),
            Step::StartCaRotation(r) => format!("next CA added to the bundle: {r}"),
            Step::PromoteCa(r) => format!("next CA promoted, new serving certificate: {r}"),
            Step::IssueLeaf(r) | Step::RenewLeaf(r) => format!("new serving certificate: {r}"),
            Step::Prune(r) => format!("bundle pruned: {r}"),
        }
    }

    /// Whether this repairs something broken or missing (rather than routine rotation).
    pub fn is_repair(&self) -> bool {
        matches!(self, Step::Regenerate(_) | Step::IssueLeaf(_))
    }
}

/// When `next` gets promoted.
fn promotion_time(signing: &Ca, next: &Ca, policy: &Policy) -> Timestamp {
    let introduced = add(next.cert.not_before, BACKDATE);
    add(introduced, policy.ca_overlap()).min(sub(signing.cert.not_after, policy.promotion_margin()))
}

/// The next change `m` needs at `now`.
pub(crate) fn plan(m: &Material, policy: &Policy, now: Timestamp) -> Step {
    let r = policy.rotate_before;
    let Some(signing) = &m.signing else {
        return Step::Regenerate(
            m.ca_problem
                .clone()
                .unwrap_or_else(|| "there is no CA yet".to_owned()),
        );
    };
    if now >= signing.cert.not_after {
        let why = format!("the CA expired at {}", signing.cert.not_after);
        return match m.next {
            Some(_) => Step::PromoteCa(why),
            None => Step::Regenerate(why),
        };
    }
    let promote_at = m.next.as_ref().map(|n| promotion_time(signing, n, policy));
    match (&m.next, promote_at) {
        (Some(next), Some(at)) if now >= at => {
            return Step::PromoteCa(format!(
                "the next CA has been in the bundle since {}, the current one expires at {}",
                add(next.cert.not_before, BACKDATE),
                signing.cert.not_after
            ));
        }
        (None, _) if signing.cert.not_after <= add(now, r) => {
            return Step::StartCaRotation(format!(
                "the CA expires at {} (within {})",
                signing.cert.not_after,
                days(r)
            ));
        }
        _ => {}
    }

    let Some(leaf) = &m.leaf else {
        return Step::IssueLeaf(
            m.leaf_problem
                .clone()
                .unwrap_or_else(|| "there is no serving certificate yet".to_owned()),
        );
    };
    if !leaf.cert.signed_by(&signing.cert) {
        return Step::IssueLeaf("tls.crt was not issued by the CA of ca.key".to_owned());
    }
    let missing: Vec<String> = policy
        .dns_names
        .iter()
        .filter(|n| {
            !leaf
                .cert
                .dns_names
                .iter()
                .any(|d| d.eq_ignore_ascii_case(n))
        })
        .cloned()
        .chain(
            policy
                .ip_addresses
                .iter()
                .filter(|ip| !leaf.cert.ip_addresses.contains(ip))
                .map(IpAddr::to_string),
        )
        .collect();
    if !missing.is_empty() {
        return Step::IssueLeaf(format!("tls.crt lacks {}", missing.join(", ")));
    }
    if now >= leaf.cert.not_after {
        return Step::IssueLeaf(format!("tls.crt expired at {}", leaf.cert.not_after));
    }
    if leaf.cert.not_after <= add(now, r) {
        let deferred = promote_at.is_some_and(|at| leaf.cert.not_after > at);
        if !deferred {
            return Step::RenewLeaf(format!(
                "tls.crt expires at {} (within {})",
                leaf.cert.not_after,
                days(r)
            ));
        }
    }

    let expired = m.previous.iter().filter(|c| now >= c.not_after).count();
    if expired > 0 {
        return Step::Prune(format!("{expired} retired CA certificate(s) expired"));
    }
    Step::Keep
}

/// Carries out `step` on `m`.
pub(crate) fn apply(
    mut m: Material,
    step: &Step,
    policy: &Policy,
    now: Timestamp,
) -> Result<Material, CertError> {
    let issue = |ca: &Ca| {
        authority::issue_leaf(
            ca,
            &policy.dns_names,
            &policy.ip_addresses,
            now,
            policy.leaf_validity,
        )
    };
    match step {
        Step::Keep => {}
        Step::Regenerate(_) => {
            let ca = authority::generate_ca(now, policy.ca_validity)?;
            let leaf = issue(&ca)?;
            // CA certificates that still parse stay trusted until they expire, so replicas that
            // still serve the old serving certificate keep working while they reload.
            let mut previous: Vec<CertInfo> = Vec::new();
            let old = m
                .signing
                .take()
                .map(|c| c.cert)
                .into_iter()
                .chain(m.next.take().map(|c| c.cert))
                .chain(m.previous.drain(..));
            for cert in old {
                if cert.is_ca && now < cert.not_after && !previous.iter().any(|p| p.der == cert.der)
                {
                    previous.push(cert);
                }
            }
            m = Material {
                signing: Some(ca),
                next: None,
                previous,
                leaf: Some(leaf),
                ca_problem: None,
                leaf_problem: None,
            };
        }
        Step::StartCaRotation(_) => {
            m.next = Some(authority::generate_ca(now, policy.ca_validity)?);
        }
        Step::PromoteCa(_) => {
            let next = m
                .next
                .take()
                .ok_or_else(|| inconsistent("promote without a next CA"))?;
            if let Some(old) = m.signing.take()
                && now < old.cert.not_after
            {
                m.previous.insert(0, old.cert);
            }
            m.leaf = Some(issue(&next)?);
            m.leaf_problem = None;
            m.signing = Some(next);
        }
        Step::IssueLeaf(_) | Step::RenewLeaf(_) => {
            let signing = m
                .signing
                .as_ref()
                .ok_or_else(|| inconsistent("issue without a CA"))?;
            m.leaf = Some(issue(signing)?);
            m.leaf_problem = None;
        }
        Step::Prune(_) => m.previous.retain(|c| now < c.not_after),
    }
    Ok(m)
}

/// `30d`, or jiff's friendly form when not whole days.
fn days(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs % 86_400 == 0 && d.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{d:#}")
    }
}

fn inconsistent(what: &str) -> CertError {
    CertError::Internal(format!("certificate rotation: {what}"))
}

/// Applies steps until nothing is left to do; returns the result and the steps taken (empty:
/// nothing to write).
pub(crate) fn converge(
    mut m: Material,
    policy: &Policy,
    now: Timestamp,
) -> Result<(Material, Vec<Step>), CertError> {
    let mut steps = Vec::new();
    // Each step removes its own cause; the longest chain is
    // regenerate/promote → prune, or start-rotation → issue-leaf → prune.
    for _ in 0..8 {
        let step = plan(&m, policy, now);
        if step == Step::Keep {
            return Ok((m, steps));
        }
        m = apply(m, &step, policy, now)?;
        steps.push(step);
    }
    Err(inconsistent(&format!(
        "no stable state after {}",
        steps
            .iter()
            .map(Step::describe)
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// The earliest moment after `now` at which [`plan`] could ask for a change of the (converged)
/// `m`; `None` when nothing is scheduled.
pub(crate) fn next_deadline(m: &Material, policy: &Policy, now: Timestamp) -> Option<Timestamp> {
    let r = policy.rotate_before;
    let signing = m.signing.as_ref()?;
    let mut candidates = vec![signing.cert.not_after];
    let promote_at = m.next.as_ref().map(|n| promotion_time(signing, n, policy));
    match promote_at {
        Some(at) => candidates.push(at),
        None => candidates.push(sub(signing.cert.not_after, r)),
    }
    if let Some(leaf) = &m.leaf {
        candidates.push(leaf.cert.not_after);
        candidates.push(sub(leaf.cert.not_after, r));
    }
    candidates.extend(m.previous.iter().map(|c| c.not_after));
    candidates.into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const DAY: SignedDuration = SignedDuration::from_hours(24);

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            dns_names: vec!["webhook".to_owned(), "webhook.ns.svc".to_owned()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            leaf_validity: DAY * 90,
            ca_validity: DAY * 3650,
            rotate_before: DAY * 30,
        }
    }

    fn fresh(p: &Policy, now: Timestamp) -> Material {
        let (m, steps) = converge(Material::default(), p, now).unwrap();
        assert!(
            matches!(steps.as_slice(), [Step::Regenerate(_)]),
            "{steps:?}"
        );
        m
    }

    fn leaf_der(m: &Material) -> Vec<u8> {
        m.leaf.as_ref().unwrap().cert.der.to_vec()
    }

    fn signing_der(m: &Material) -> Vec<u8> {
        m.signing.as_ref().unwrap().cert.der.to_vec()
    }

    #[test]
    fn empty_material_is_generated_with_the_configured_names() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let leaf = &m.leaf.as_ref().unwrap().cert;
        assert_eq!(leaf.dns_names, p.dns_names);
        assert_eq!(leaf.ip_addresses, p.ip_addresses);
        assert_eq!(leaf.not_after, add(t0, DAY * 90));
        assert_eq!(
            m.signing.as_ref().unwrap().cert.not_after,
            add(t0, DAY * 3650)
        );
        assert_eq!(m.bundle().len(), 1);
        assert_eq!(plan(&m, &p, t0), Step::Keep);
    }

    #[test]
    fn leaf_rotates_within_rotate_before_and_the_ca_is_kept() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let due = add(t0, DAY * 60);
        assert_eq!(
            plan(&m, &p, sub(due, SignedDuration::from_secs(1))),
            Step::Keep
        );
        assert!(matches!(plan(&m, &p, due), Step::RenewLeaf(r) if r.contains("within")));
        assert_eq!(next_deadline(&m, &p, t0), Some(due));

        let (rotated, steps) = converge(m.clone(), &p, due).unwrap();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_ne!(leaf_der(&rotated), leaf_der(&m));
        assert_eq!(signing_der(&rotated), signing_der(&m), "CA untouched");
        assert_eq!(rotated.bundle_pem(), m.bundle_pem(), "bundle untouched");
        assert!(rotated.next.is_none());
        assert_eq!(
            rotated.leaf.as_ref().unwrap().cert.not_after,
            add(due, DAY * 90)
        );
    }

    #[test]
    fn a_missing_name_or_a_foreign_issuer_reissues_the_leaf() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let mut more = p.clone();
        more.dns_names.push("other.example".to_owned());
        assert!(
            matches!(plan(&m, &more, t0), Step::IssueLeaf(r) if r.contains("lacks other.example"))
        );
        let mut fewer = p.clone();
        fewer.dns_names.pop();
        fewer.ip_addresses.clear();
        assert_eq!(
            plan(&m, &fewer, t0),
            Step::Keep,
            "a superset of names is fine"
        );

        let other = fresh(&p, t0);
        let mut mixed = m.clone();
        mixed.leaf = other.leaf.clone();
        assert!(matches!(plan(&mixed, &p, t0), Step::IssueLeaf(r) if r.contains("not issued")));
        let (fixed, _) = converge(mixed, &p, t0).unwrap();
        assert!(
            fixed
                .leaf
                .as_ref()
                .unwrap()
                .cert
                .signed_by(&fixed.signing.as_ref().unwrap().cert)
        );
    }

    #[test]
    fn a_missing_ca_regenerates_and_keeps_parseable_old_cas_trusted() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let broken = Material {
            signing: None,
            next: None,
            previous: vec![m.signing.as_ref().unwrap().cert.clone()],
            leaf: m.leaf.clone(),
            ca_problem: Some("ca.key: garbage".to_owned()),
            leaf_problem: None,
        };
        assert_eq!(
            plan(&broken, &p, t0),
            Step::Regenerate("ca.key: garbage".to_owned())
        );
        let (fixed, steps) = converge(broken, &p, t0).unwrap();
        assert_eq!(steps.len(), 1);
        assert_ne!(signing_der(&fixed), signing_der(&m));
        assert_eq!(
            fixed.bundle().len(),
            2,
            "new CA plus the still-valid old one"
        );
        assert_eq!(plan(&fixed, &p, t0), Step::Keep);
    }

    #[test]
    fn an_expired_ca_without_successor_is_regenerated() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let later = add(t0, DAY * 4000);
        assert!(matches!(plan(&m, &p, later), Step::Regenerate(r) if r.contains("expired")));
        let (fixed, _) = converge(m, &p, later).unwrap();
        assert_eq!(fixed.bundle().len(), 1, "the expired CA is dropped");
    }

    #[test]
    fn ca_rotation_adds_the_next_ca_first_and_promotes_it_after_the_overlap() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let mut m = fresh(&p, t0);
        let ca_end = m.signing.as_ref().unwrap().cert.not_after;
        // Bring the leaf to the CA's end, as regular rotation would.
        m = converge(m, &p, sub(ca_end, DAY * 40)).unwrap().0;
        assert_eq!(
            m.leaf.as_ref().unwrap().cert.not_after,
            ca_end,
            "capped at the CA"
        );

        let start = sub(ca_end, DAY * 30);
        assert_eq!(
            plan(&m, &p, sub(start, SignedDuration::from_secs(1))),
            Step::Keep
        );
        assert!(matches!(plan(&m, &p, start), Step::StartCaRotation(_)));
        let (phase_a, steps) = converge(m.clone(), &p, start).unwrap();
        assert_eq!(
            steps.len(),
            1,
            "only the CA step: the leaf waits for promotion: {steps:?}"
        );
        assert_eq!(leaf_der(&phase_a), leaf_der(&m), "same serving certificate");
        assert_eq!(signing_der(&phase_a), signing_der(&m), "old CA still signs");
        assert_eq!(phase_a.bundle().len(), 2, "old + next");

        let promote = add(start, DAY * 15);
        assert_eq!(next_deadline(&phase_a, &p, start), Some(promote));
        assert_eq!(
            plan(&phase_a, &p, sub(promote, SignedDuration::from_secs(1))),
            Step::Keep
        );
        let (phase_b, steps) = converge(phase_a.clone(), &p, promote).unwrap();
        assert!(
            matches!(steps.as_slice(), [Step::PromoteCa(_)]),
            "{steps:?}"
        );
        let next_der = phase_a.next.as_ref().unwrap().cert.der.to_vec();
        assert_eq!(signing_der(&phase_b), next_der);
        assert!(phase_b.next.is_none());
        assert_eq!(phase_b.bundle().len(), 2, "new + old until the old expires");
        assert!(
            phase_b
                .leaf
                .as_ref()
                .unwrap()
                .cert
                .signed_by(&phase_b.signing.as_ref().unwrap().cert)
        );

        assert_eq!(next_deadline(&phase_b, &p, promote), Some(ca_end));
        let (after, steps) = converge(phase_b.clone(), &p, ca_end).unwrap();
        assert!(matches!(steps.as_slice(), [Step::Prune(_)]), "{steps:?}");
        assert_eq!(after.bundle().len(), 1);
        assert_eq!(leaf_der(&after), leaf_der(&phase_b));
    }

    #[test]
    fn a_late_ca_rotation_still_promotes_before_the_old_ca_expires() {
        let p = policy();
        let t0 = ts("2030-01-01T00:00:00Z");
        let m = fresh(&p, t0);
        let ca_end = m.signing.as_ref().unwrap().cert.not_after;
        let late = sub(ca_end, DAY * 10);
        let (m, _) = converge(m, &p, late).unwrap();
        assert!(m.next.is_some());
        assert_eq!(next_deadline(&m, &p, late), Some(sub(ca_end, DAY * 30 / 4)));
    }

    /// Runs `days` of wall-clock time in 6-hour steps, the way `maintain` would, and checks the
    /// invariants clients depend on at every step.
    #[test]
    fn years_of_rotation_keep_clients_working() {
        let p = Policy {
            ca_validity: DAY * 400,
            ..policy()
        };
        let t0 = ts("2030-01-01T00:00:00Z");
        let mut m = fresh(&p, t0);
        // When each CA certificate was first published in the bundle.
        let mut first_published: std::collections::HashMap<Vec<u8>, Timestamp> =
            bundle_ders(&m).into_iter().map(|der| (der, t0)).collect();
        let (mut leaf_rotations, mut ca_promotions) = (0, 0);
        let mut now = t0;
        let end = add(t0, DAY * 1300);
        while now < end {
            now = add(now, SignedDuration::from_hours(6));
            let (next, steps) = converge(m.clone(), &p, now).unwrap();
            assert_eq!(plan(&next, &p, now), Step::Keep);
            let leaf = &next.leaf.as_ref().unwrap().cert;
            assert!(
                leaf.not_before <= now && now < leaf.not_after,
                "leaf valid at {now}"
            );
            assert!(
                leaf.not_after >= add(now, p.rotate_before / 4),
                "leaf not about to expire at {now}"
            );
            let issuer = next
                .bundle()
                .into_iter()
                .find(|ca| leaf.signed_by(ca))
                .expect("the leaf's CA is in the bundle");
            assert!(now < issuer.not_after);
            if leaf_der(&next) != leaf_der(&m) {
                leaf_rotations += 1;
            }
            if signing_der(&next) != signing_der(&m) {
                ca_promotions += 1;
                // Clients had the new CA in their bundle for the whole overlap before any
                // serving certificate signed by it appeared.
                let since = first_published
                    .get(&issuer.der.to_vec())
                    .copied()
                    .expect("the new CA was published before it signed");
                assert!(
                    now.duration_since(since) >= p.rotate_before / 2,
                    "at {now} the leaf moved to a CA published only at {since} ({steps:?})"
                );
            }
            assert!(next.bundle().len() <= 3);
            for der in bundle_ders(&next) {
                first_published.entry(der).or_insert(now);
            }
            m = next;
        }
        // 1300 days: a CA lives 400 days, a leaf about 60 (90 - 30), shorter around promotions.
        assert_eq!(ca_promotions, 3, "CA promotions");
        assert!(
            (20..=30).contains(&leaf_rotations),
            "{leaf_rotations} leaf rotations"
        );
    }

    fn bundle_ders(m: &Material) -> Vec<Vec<u8>> {
        m.bundle().iter().map(|c| c.der.to_vec()).collect()
    }
}
