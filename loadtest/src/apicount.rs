//! API requests over a window: by verb from kube-apiserver's `apiserver_request_total` (every
//! client, this one included), and on devcluster the writes by identity from the audit log.

use std::collections::BTreeMap;

use devcluster::audit::{AuditEvent, AuditLog, Cursor};

use crate::promtext::Scrape;
use crate::report::{Figure, Report, unit};
use crate::target::Target;

/// Prefix of our components' identities in devcluster (`kubetemplater:worker-0` …).
pub const OUR_IDENTITIES: &str = "kubetemplater:";

/// A window being counted.
#[derive(Debug)]
pub struct Window {
    metrics: Option<Scrape>,
    audit: Option<(AuditLog, Cursor)>,
    metrics_error: Option<String>,
}

/// Writes in a window, from the audit log.
#[derive(Debug, Default, Clone)]
pub struct Writes {
    /// Every successful or failed write event in the window.
    pub events: Vec<AuditEvent>,
}

impl Window {
    /// Starts counting now.
    pub async fn start(target: &Target) -> Self {
        let (metrics, metrics_error) = match target.apiserver_metrics().await {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let audit = target
            .audit()
            .and_then(|log| log.cursor().ok().map(|c| (log, c)));
        Self {
            metrics,
            audit,
            metrics_error,
        }
    }

    /// The audit events since the start (devcluster only).
    pub fn writes(&self) -> Option<Writes> {
        let (log, cursor) = self.audit.as_ref()?;
        log.read_since(*cursor).ok().map(|events| Writes { events })
    }

    /// Ends the window: adds `<prefix>api_requests.<VERB>` figures (kube-apiserver's counter
    /// deltas) and, on devcluster, `<prefix>writes.<identity>` (from the audit log) to `report`.
    /// Returns the audit events of the window.
    pub async fn finish(
        &self,
        target: &Target,
        prefix: &str,
        report: &mut Report,
    ) -> Option<Writes> {
        match (&self.metrics, target.apiserver_metrics().await) {
            (Some(before), Ok(after)) => {
                let before = before.sum_by("apiserver_request_total", &[], "verb");
                let after = after.sum_by("apiserver_request_total", &[], "verb");
                for (verb, n) in &after {
                    let delta = n - before.get(verb).copied().unwrap_or(0.0);
                    if delta > 0.0 {
                        report.figures.push(
                            Figure::new(format!("{prefix}api_requests.{verb}"), delta, unit::COUNT)
                                .describe("kube-apiserver's requests by verb (every client, this one included)"),
                        );
                    }
                }
            }
            (_, Err(e)) => report
                .notes
                .push(format!("API requests by verb unavailable: {e}")),
            (None, Ok(_)) => report.notes.push(format!(
                "API requests by verb unavailable: {}",
                self.metrics_error.as_deref().unwrap_or("no first scrape")
            )),
        }
        let writes = self.writes();
        if let Some(writes) = &writes {
            for (user, n) in writes.by_user() {
                report.figures.push(
                    Figure::new(format!("{prefix}writes.{user}"), n as f64, unit::COUNT)
                        .describe("writes by this identity, from the audit log"),
                );
            }
        }
        writes
    }
}

impl Writes {
    /// Writes per identity.
    pub fn by_user(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in &self.events {
            *out.entry(e.user.component()).or_insert(0) += 1;
        }
        out
    }

    /// Writes by our components, Lease renewals excepted (they prove the processes alive).
    pub fn ours_without_leases(&self) -> Vec<&AuditEvent> {
        self.events
            .iter()
            .filter(|e| e.user.component().starts_with(OUR_IDENTITIES))
            .filter(|e| {
                e.object_ref
                    .as_ref()
                    .is_none_or(|o| o.api_group != "coordination.k8s.io")
            })
            .collect()
    }
}
