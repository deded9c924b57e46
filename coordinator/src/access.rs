//! Who may call the `AdminService`: cluster RBAC decides, no second permission system.
//!
//! A caller sends a Kubernetes bearer token (`authorization: Bearer …`; `ktctl` sends the current
//! kubeconfig's credentials). The coordinator asks the API server who it is (TokenReview), then
//! whether that user may act on the virtual resource [`RESOURCE`] of API group [`GROUP`] in the
//! coordinator's namespace (SubjectAccessReview):
//!
//! | calls                                             | verb     |
//! |---------------------------------------------------|----------|
//! | ListWorkers, GetBucketMap, Locate, ListHandoffs, Rebalance with `dry_run` | `get` |
//! | DrainWorker, Rebalance                            | `update` |
//!
//! A refusal names the missing permission (`update shards.kubetemplater.io in namespace …`), so
//! the fix is one RBAC rule. Both answers are cached briefly ([`IDENTITY_TTL`],
//! [`DECISION_TTL`]; a few hundred entries at most), so `ktctl` in a loop costs the API server
//! little, and a revoked permission takes effect within seconds.
//!
//! RBAC of the coordinator: `create` on `tokenreviews.authentication.k8s.io` and
//! `subjectaccessreviews.authorization.k8s.io`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::{Request, Status};

/// API group of the virtual resource the admin API is authorized on.
pub const GROUP: &str = "kubetemplater.io";
/// The virtual resource: the shard map (workers, buckets, handoffs).
pub const RESOURCE: &str = "shards";
/// How long a token's identity is remembered.
pub const IDENTITY_TTL: Duration = Duration::from_secs(60);
/// How long an allow or deny decision is remembered.
pub const DECISION_TTL: Duration = Duration::from_secs(10);
/// Entries per cache; the oldest are dropped beyond it.
const CACHE_CAPACITY: usize = 512;

/// What a call does, and so which verb it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Inspect: verb `get`.
    Read,
    /// Move shards (drain, rebalance): verb `update`.
    Change,
}

impl Action {
    /// The RBAC verb checked for this action.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Read => "get",
            Action::Change => "update",
        }
    }
}

/// The authenticated caller of one admin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Kubernetes user name (`system:serviceaccount:ns:name`, `kubetemplater:e2e` …).
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its UID, when the authenticator gives one.
    pub uid: Option<String>,
    /// Extra attributes (pod name and UID of a bound ServiceAccount token …).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    fn from_user_info(user: UserInfo) -> Option<Self> {
        Some(Self {
            username: user.username.filter(|u| !u.is_empty())?,
            groups: user.groups.unwrap_or_default(),
            uid: user.uid.filter(|u| !u.is_empty()),
            extra: user.extra.unwrap_or_default(),
        })
    }
}

/// Authorizes admin calls against cluster RBAC.
pub struct Access {
    client: kube::Client,
    namespace: String,
    identities: TtlCache<[u8; 32], Result<Caller, String>>,
    decisions: TtlCache<(String, Action), Decision>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    reason: String,
}

impl Access {
    /// Checks callers with `client` (the coordinator's own identity) for `namespace`, the
    /// coordinator's namespace.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            identities: TtlCache::new(IDENTITY_TTL, CACHE_CAPACITY),
            decisions: TtlCache::new(DECISION_TTL, CACHE_CAPACITY),
        }
    }

    /// The permission `action` needs, as a person would write it.
    pub fn permission(&self, action: Action) -> String {
        format!(
            "{} {RESOURCE}.{GROUP} in namespace {:?}",
            action.verb(),
            self.namespace
        )
    }

    /// Lets `request` through when its token belongs to a user allowed to do `action`;
    /// `call` names the RPC in the refusal.
    pub async fn authorize<T>(
        &self,
        request: &Request<T>,
        action: Action,
        call: &str,
    ) -> Result<Caller, Status> {
        let caller = self.caller(request).await?;
        let key = (caller.username.clone(), action);
        let decision = match self.decisions.get(&key) {
            Some(decision) => decision,
            None => {
                let decision = self
                    .review(
                        &caller,
                        ResourceAttributes {
                            group: Some(GROUP.to_owned()),
                            resource: Some(RESOURCE.to_owned()),
                            verb: Some(action.verb().to_owned()),
                            namespace: Some(self.namespace.clone()),
                            ..Default::default()
                        },
                    )
                    .await?;
                self.decisions.insert(key, decision.clone());
                decision
            }
        };
        if decision.allowed {
            tracing::debug!(user = %caller.username, call, verb = action.verb(), "admin call allowed");
            Ok(caller)
        } else {
            tracing::info!(user = %caller.username, call, verb = action.verb(), reason = %decision.reason, "admin call refused");
            Err(Status::permission_denied(denied_message(
                &caller.username,
                &self.permission(action),
                call,
                &decision.reason,
            )))
        }
    }

    /// Who sent `request`: its bearer token, checked with TokenReview (cached).
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let token = bearer_token(request)?;
        self.authenticate(token).await
    }

    /// Whether `caller` may update the Lease `name` in the coordinator's namespace: the test of
    /// a worker's identity before its certificate is signed. `Ok(None)` when allowed, else
    /// the refusal (naming the permission).
    pub async fn may_hold_lease(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let decision = self
            .review(
                caller,
                ResourceAttributes {
                    group: Some("coordination.k8s.io".to_owned()),
                    resource: Some("leases".to_owned()),
                    verb: Some("update".to_owned()),
                    name: Some(name.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
            )
            .await?;
        Ok((!decision.allowed).then(|| {
            denied_message(
                &caller.username,
                &format!(
                    "update leases.coordination.k8s.io {name:?} in namespace {:?}",
                    self.namespace
                ),
                "Certify",
                &decision.reason,
            )
        }))
    }

    async fn authenticate(&self, token: &str) -> Result<Caller, Status> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.identities.get(&key) {
            return known.map_err(Status::unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "checking the caller's token with the API server (TokenReview) failed: {e}"
                ))
            })?;
        let outcome = token_outcome(answer);
        self.identities.insert(key, outcome.clone());
        outcome.map_err(Status::unauthenticated)
    }

    async fn review(
        &self,
        caller: &Caller,
        attributes: ResourceAttributes,
    ) -> Result<Decision, Status> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                groups: Some(caller.groups.clone()),
                uid: caller.uid.clone(),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "checking the caller's permission with the API server (SubjectAccessReview) failed: {e}"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        Ok(Decision {
            allowed: status.allowed && !status.denied.unwrap_or(false),
            reason: status
                .evaluation_error
                .filter(|e| !e.is_empty())
                .or(status.reason)
                .unwrap_or_default(),
        })
    }
}

/// The token of `authorization: Bearer <token>`, or why there is none.
fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Err(Status::unauthenticated(
            "the admin API needs a Kubernetes bearer token in the `authorization` metadata \
             (ktctl sends the current kubeconfig's credentials, or --token)",
        ));
    };
    let value = value.to_str().map_err(|_| {
        Status::unauthenticated("the `authorization` metadata is not visible ASCII")
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Status::unauthenticated(
            "the `authorization` metadata must be `Bearer <token>` (a Kubernetes token; \
             client certificates and basic auth are not accepted by the admin API)",
        )),
    }
}

/// The caller a TokenReview answer names, or why the token was not accepted.
fn token_outcome(answer: TokenReview) -> Result<Caller, String> {
    let status = answer.status.unwrap_or_default();
    if !status.authenticated.unwrap_or(false) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "no reason given".to_owned());
        return Err(format!(
            "the API server did not accept the caller's token (TokenReview): {why}"
        ));
    }
    status.user.and_then(Caller::from_user_info).ok_or_else(|| {
        "the API server accepted the caller's token but named no user (TokenReview)".to_owned()
    })
}

fn denied_message(user: &str, permission: &str, call: &str, reason: &str) -> String {
    let mut message = format!("user {user:?} lacks permission `{permission}`, which {call} needs");
    if !reason.is_empty() {
        message.push_str(&format!(" (authorizer: {reason})"));
    }
    message
}

/// A small map whose entries expire; beyond its capacity the oldest entry goes.
struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    fn request_with(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        request
    }

    #[test]
    fn the_bearer_token_is_read_from_the_metadata() {
        assert_eq!(bearer_token(&request_with("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&request_with("bearer  abc ")).unwrap(), "abc");
    }

    #[test]
    fn a_missing_or_other_credential_is_unauthenticated_with_the_reason() {
        let missing = bearer_token(&Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(
            missing
                .message()
                .contains("needs a Kubernetes bearer token")
        );
        for value in ["Basic dXNlcjpwdw==", "Bearer ", "abc"] {
            let err = bearer_token(&request_with(value)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{value}");
            assert!(
                err.message().contains("must be `Bearer <token>`"),
                "{value}"
            );
        }
    }

    #[test]
    fn a_rejected_token_says_why() {
        let answer = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(false),
                error: Some("token has expired".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = token_outcome(answer).unwrap_err();
        assert!(err.contains("token has expired"), "{err}");
    }

    #[test]
    fn an_accepted_token_names_the_caller() {
        let answer = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:ops:alice".into()),
                    groups: Some(vec!["system:serviceaccounts".into()]),
                    uid: Some("u-1".into()),
                    extra: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let caller = token_outcome(answer).unwrap();
        assert_eq!(caller.username, "system:serviceaccount:ops:alice");
        assert_eq!(caller.groups, ["system:serviceaccounts"]);
        assert_eq!(caller.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn an_accepted_token_without_a_user_is_refused() {
        let answer = TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(token_outcome(answer).unwrap_err().contains("named no user"));
    }

    #[test]
    fn the_refusal_names_user_permission_and_call() {
        let message = denied_message(
            "kubetemplater:e2e",
            "update shards.kubetemplater.io in namespace \"kt\"",
            "DrainWorker",
            "",
        );
        assert_eq!(
            message,
            "user \"kubetemplater:e2e\" lacks permission `update shards.kubetemplater.io in namespace \"kt\"`, which DrainWorker needs"
        );
        let with_reason = denied_message("u", "get x", "Locate", "no RBAC policy matched");
        assert!(with_reason.ends_with("(authorizer: no RBAC policy matched)"));
    }

    #[tokio::test(start_paused = true)]
    async fn cache_entries_expire_and_the_oldest_goes_beyond_capacity() {
        let cache = TtlCache::new(Duration::from_secs(10), 2);
        cache.insert("a", 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.insert("b", 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.insert("c", 3);
        assert_eq!(cache.get(&"a"), None, "the oldest went");
        assert_eq!((cache.get(&"b"), cache.get(&"c")), (Some(2), Some(3)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.get(&"b"), None, "expired");
        assert_eq!(cache.get(&"c"), Some(3));
    }
}
