//! Reading kube-apiserver's audit log: who wrote what, and when.
//!
//! devcluster runs kube-apiserver with an audit policy that records the metadata of every write
//! (create, update, patch, delete, deletecollection) once, at `ResponseComplete`, in blocking mode.
//! Tests use this to prove which identity made each write (no double apply across a handoff, no
//! writes when idle). Only devcluster exposes the log; against another cluster these checks skip.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The user that made a request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AuditUser {
    /// User name (`system:serviceaccount:kubetemplater-system:kubetemplater-worker`,
    /// `devcluster:admin`, `kubetemplater:loadtest` …).
    pub username: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes: for a pod-bound ServiceAccount token, the pod's name and UID.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl AuditUser {
    /// Which of our processes made the request, as `kubetemplater:<process>`
    /// (`kubetemplater:worker-3`): our components run under the chart's ServiceAccounts
    /// (`kubetemplater-*` in `kubetemplater-system`) with tokens bound to a Pod named after the
    /// process ([`crate::identity`]), in devcluster and in a real install alike. Any other user
    /// is its user name.
    pub fn component(&self) -> String {
        let ours = self
            .username
            .strip_prefix("system:serviceaccount:kubetemplater-system:kubetemplater-")
            .is_some();
        match self
            .extra
            .get(crate::identity::POD_NAME_EXTRA)
            .and_then(|pods| pods.first())
        {
            Some(pod) if ours => format!("kubetemplater:{pod}"),
            _ => self.username.clone(),
        }
    }
}

/// The object a request touched.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Resource (plural), e.g. `configmaps`.
    #[serde(default)]
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// Object name (may be empty for collection requests).
    #[serde(default)]
    pub name: String,
    /// API group, empty for the core group.
    #[serde(default)]
    pub api_group: String,
    /// API version.
    #[serde(default)]
    pub api_version: String,
    /// Subresource (`status` …), empty for the main resource.
    #[serde(default)]
    pub subresource: String,
}

/// The response status of an audited request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

/// One audit event (the fields tests use).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Unique id of the request.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// Stage (always `ResponseComplete` with devcluster's policy, or `Panic`).
    pub stage: String,
    /// Verb: create, update, patch, delete, deletecollection.
    pub verb: String,
    /// Request URI.
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
    /// Who made the request.
    pub user: AuditUser,
    /// The client's user agent.
    #[serde(default)]
    pub user_agent: String,
    /// What it touched.
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    /// The response status.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    /// When the request was received.
    pub request_received_timestamp: jiff::Timestamp,
    /// When this stage was reached.
    pub stage_timestamp: jiff::Timestamp,
}

impl AuditEvent {
    /// Whether the write succeeded (2xx).
    pub fn succeeded(&self) -> bool {
        self.response_status
            .as_ref()
            .is_some_and(|s| (200..300).contains(&s.code))
    }

    /// `resource[/subresource] namespace/name`, for messages.
    pub fn describe(&self) -> String {
        match &self.object_ref {
            Some(o) => {
                let sub = if o.subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{}", o.subresource)
                };
                format!(
                    "{} {}{} {}/{} by {}",
                    self.verb,
                    o.resource,
                    sub,
                    o.namespace,
                    o.name,
                    self.user.component()
                )
            }
            None => format!(
                "{} {} by {}",
                self.verb,
                self.request_uri,
                self.user.component()
            ),
        }
    }
}

/// A position in the audit log: events after it are the ones a test caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u64);

/// The audit log of a devcluster.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The audit log at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current end of the log.
    pub fn cursor(&self) -> Result<Cursor> {
        let len = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(Error::io("reading", &self.path))?;
        Ok(Cursor(len))
    }

    /// Every event written after `cursor` (complete lines only).
    pub fn read_since(&self, cursor: Cursor) -> Result<Vec<AuditEvent>> {
        let mut file = File::open(&self.path).map_err(Error::io("opening", &self.path))?;
        file.seek(SeekFrom::Start(cursor.0))
            .map_err(Error::io("seeking in", &self.path))?;
        let mut events = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(Error::io("reading", &self.path))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<AuditEvent>(&line) {
                Ok(event) => events.push(event),
                // The last line may still be being written.
                Err(e) if e.is_eof() => break,
                Err(e) => {
                    return Err(Error::BadState {
                        path: self.path.clone(),
                        message: format!("line {} after the cursor: {e}", i + 1),
                    });
                }
            }
        }
        Ok(events)
    }

    /// Successful writes after `cursor` by `username` (a user name, or one of our processes as
    /// [`AuditUser::component`] names it).
    pub fn writes_by(&self, cursor: Cursor, username: &str) -> Result<Vec<AuditEvent>> {
        Ok(self
            .read_since(cursor)?
            .into_iter()
            .filter(|e| {
                e.succeeded() && (e.user.username == username || e.user.component() == username)
            })
            .collect())
    }

    /// Waits up to `timeout` for an event after `cursor` matching `pred`.
    pub async fn wait_for(
        &self,
        cursor: Cursor,
        timeout: Duration,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> Result<Option<AuditEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.read_since(cursor)?.into_iter().find(|e| pred(e)) {
                return Ok(Some(found));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns1/configmaps?fieldManager=kubectl","verb":"create","user":{"username":"kubetemplater:worker-0","groups":["kubetemplater:workers","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"kubectl/v1.36.3","objectRef":{"resource":"configmaps","namespace":"ns1","name":"cm","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":"2026-11-25T03:00:00.000001Z","stageTimestamp":"2026-11-25T03:00:00.010000Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;

    #[test]
    fn parses_apiserver_lines_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, format!("{LINE}\n")).unwrap();
        let log = AuditLog::new(&path);
        let cursor = log.cursor().unwrap();
        assert!(log.read_since(cursor).unwrap().is_empty());
        let denied = LINE
            .replace("\"code\":201", "\"code\":403")
            .replace("\"a1\"", "\"a2\"");
        // A partial last line (still being written) is not an error.
        std::fs::write(&path, format!("{LINE}\n{LINE}\n{denied}\n{{\"kind\":\"Ev")).unwrap();
        let events = log.read_since(cursor).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].describe(),
            "create configmaps ns1/cm by kubetemplater:worker-0"
        );
        let writes = log.writes_by(cursor, "kubetemplater:worker-0").unwrap();
        assert_eq!(writes.len(), 1, "the 403 is not a write");
        assert!(events[0].stage_timestamp > events[0].request_received_timestamp);
    }

    #[test]
    fn our_processes_are_named_by_the_pod_their_token_is_bound_to() {
        let user = |name: &str, pod: Option<&str>| AuditUser {
            username: name.into(),
            groups: vec![],
            extra: pod
                .map(|p| {
                    [(
                        crate::identity::POD_NAME_EXTRA.to_owned(),
                        vec![p.to_owned()],
                    )]
                    .into()
                })
                .unwrap_or_default(),
        };
        let worker = "system:serviceaccount:kubetemplater-system:kubetemplater-worker";
        assert_eq!(
            user(worker, Some("worker-3")).component(),
            "kubetemplater:worker-3"
        );
        assert_eq!(user(worker, None).component(), worker);
        let other = "system:serviceaccount:apps:builder";
        assert_eq!(user(other, Some("builder-1")).component(), other);
        assert_eq!(
            user("devcluster:admin", None).component(),
            "devcluster:admin"
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "not json at all\n").unwrap();
        let err = AuditLog::new(&path)
            .read_since(Cursor(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("audit.log"), "{err}");
    }
}
