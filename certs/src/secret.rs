//! The self-managed certificate's Secret: decoding, encoding, race-safe writes, the watch loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::authority::{Ca, CertInfo, Leaf, key_spki};
use super::rotation::{self, Material, Policy, Step};
use super::{Backoff, CertError, SecretSource, ServingCert, publish};

/// Label marking a Secret as ours: only such Secrets are written.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on the webhook's Secret (the default of
/// [`SecretSource::manager`]).
pub const MANAGED_BY: &str = "kubetemplater-webhook";
/// Annotation recording when and why the Secret's certificates last changed.
pub const CHANGE_ANNOTATION: &str = "kubetemplater.io/certificate-change";

const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_NEXT_KEY: &str = "ca-next.key";
const SECRET_TYPE: &str = "kubernetes.io/tls";

/// How many conditional writes may lose in a row before giving up (until the next retry).
const MAX_ATTEMPTS: u32 = 5;

/// `namespace/name`, for messages.
fn secret_ref(src: &SecretSource) -> String {
    format!("{}/{}", src.namespace, src.secret_name)
}

fn origin(src: &SecretSource, key: &str) -> String {
    format!("Secret {} key {key}", secret_ref(src))
}

fn is_managed(secret: &Secret, src: &SecretSource) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| *v == src.manager)
}

/// The text under `key`, or why there is none.
fn text(secret: &Secret, key: &str) -> Result<String, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("{key} is missing"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not UTF-8 text"))
}

/// Reads what the Secret holds; unusable parts are left out with the reason recorded.
pub(crate) fn decode(secret: &Secret, src: &SecretSource) -> Material {
    let mut m = Material::default();

    let mut problems: Vec<String> = Vec::new();
    let mut bundle: Vec<CertInfo> = Vec::new();
    match text(secret, CA_CRT) {
        Ok(pem) => match crate::tls::parse_chain(&pem, CA_CRT) {
            Ok(ders) => {
                for (i, der) in ders.into_iter().enumerate() {
                    match CertInfo::parse(der) {
                        Ok(cert) => bundle.push(cert),
                        Err(p) => problems.push(format!("{CA_CRT} certificate #{}: {p}", i + 1)),
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        },
        Err(p) => problems.push(p),
    }

    // Takes the bundle certificate belonging to the key under `key`.
    let take_ca = |bundle: &mut Vec<CertInfo>, key: &str| -> Result<Ca, String> {
        let key_pem = SecretString::from(text(secret, key)?);
        let spki = key_spki(&key_pem).map_err(|p| format!("{key}: {p}"))?;
        let pos = bundle
            .iter()
            .position(|c| c.spki == spki)
            .ok_or_else(|| format!("{key} matches no certificate in {CA_CRT}"))?;
        let cert = bundle.remove(pos);
        if !cert.is_ca {
            return Err(format!("the certificate of {key} in {CA_CRT} is not a CA"));
        }
        Ok(Ca { cert, key_pem })
    };
    match take_ca(&mut bundle, CA_KEY) {
        Ok(ca) => m.signing = Some(ca),
        Err(p) => problems.push(p),
    }
    let has_next = secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(CA_NEXT_KEY));
    if has_next && m.signing.is_some() {
        match take_ca(&mut bundle, CA_NEXT_KEY) {
            Ok(ca) => m.next = Some(ca),
            Err(p) => tracing::warn!(
                secret = %secret_ref(src),
                problem = %p,
                "ignoring the next CA; a new one will be generated when rotation is due"
            ),
        }
    }
    m.previous = bundle;
    if m.signing.is_none() {
        m.ca_problem = Some(problems.join("; "));
    }

    m.leaf = match decode_leaf(secret, src) {
        Ok(leaf) => Some(leaf),
        Err(p) => {
            m.leaf_problem = Some(p);
            None
        }
    };
    m
}

fn decode_leaf(secret: &Secret, src: &SecretSource) -> Result<Leaf, String> {
    let chain_pem = text(secret, TLS_CRT)?;
    let key_pem = SecretString::from(text(secret, TLS_KEY)?);
    let certified = crate::tls::certified_key(
        &chain_pem,
        &key_pem,
        &origin(src, TLS_CRT),
        &origin(src, TLS_KEY),
    )
    .map_err(|e| e.to_string())?;
    let der = certified
        .end_entity_cert()
        .map_err(|e| e.to_string())?
        .clone()
        .into_owned();
    let cert = CertInfo::parse(der).map_err(|p| format!("{TLS_CRT}: {p}"))?;
    Ok(Leaf {
        cert,
        chain_pem,
        key_pem,
    })
}

/// Writes `m` into `secret` (keeping data keys that are not ours), with our label and the
/// change annotation.
fn encode(
    secret: &mut Secret,
    src: &SecretSource,
    m: &Material,
    change: String,
) -> Result<(), CertError> {
    let (signing, leaf) = match (&m.signing, &m.leaf) {
        (Some(s), Some(l)) => (s, l),
        _ => {
            return Err(CertError::Internal(
                "writing certificates that are incomplete".to_owned(),
            ));
        }
    };
    secret
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), src.manager.clone());
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CHANGE_ANNOTATION.to_owned(), change);
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    data.insert(TLS_CRT.to_owned(), bytes(&leaf.chain_pem));
    data.insert(TLS_KEY.to_owned(), bytes(leaf.key_pem.expose_secret()));
    data.insert(CA_CRT.to_owned(), bytes(&m.bundle_pem()));
    data.insert(CA_KEY.to_owned(), bytes(signing.key_pem.expose_secret()));
    match &m.next {
        Some(next) => {
            data.insert(CA_NEXT_KEY.to_owned(), bytes(next.key_pem.expose_secret()));
        }
        None => {
            data.remove(CA_NEXT_KEY);
        }
    }
    secret.string_data = None;
    Ok(())
}

fn serving(m: &Material, src: &SecretSource) -> Result<ServingCert, CertError> {
    let leaf = m
        .leaf
        .as_ref()
        .ok_or_else(|| CertError::Internal("no serving certificate to serve".to_owned()))?;
    Ok(ServingCert::from_parts(
        m.bundle_pem(),
        leaf.chain_pem.clone(),
        leaf.key_pem.clone(),
        &origin(src, TLS_CRT),
        &origin(src, TLS_KEY),
    )?
    .with_signer(m.signing.clone().map(crate::client::Signer::new)))
}

/// The certificate to serve and when to look again.
#[derive(Debug)]
pub(crate) struct Ensured {
    pub cert: ServingCert,
    pub next_deadline: Option<Timestamp>,
}

fn kube_err(src: &SecretSource, action: &'static str) -> impl FnOnce(kube::Error) -> CertError {
    let (namespace, name) = (src.namespace.clone(), src.secret_name.clone());
    move |source| CertError::Kube {
        action,
        namespace,
        name,
        source: Box::new(source),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Makes the Secret hold a good certificate and returns it. `known` is the Secret as last seen
/// (from the watch); without it the Secret is read first.
///
/// Every write is conditional (create, or replace at the resourceVersion read), and a lost race
/// re-reads the Secret and starts over from what the winner wrote.
pub(crate) async fn ensure(
    src: &SecretSource,
    policy: &Policy,
    mut known: Option<Secret>,
) -> Result<Ensured, CertError> {
    let api: Api<Secret> = Api::namespaced(src.client.clone(), &src.namespace);
    let name = src.secret_name.as_str();
    for attempt in 1..=MAX_ATTEMPTS {
        let current = match known.take() {
            Some(secret) => Some(secret),
            None => api.get_opt(name).await.map_err(kube_err(src, "reading"))?,
        };
        let now = Timestamp::now();
        let Some(current) = current else {
            let (m, steps) = rotation::converge(Material::default(), policy, now)?;
            let mut secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(src.namespace.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some(SECRET_TYPE.to_owned()),
                ..Secret::default()
            };
            encode(&mut secret, src, &m, change_note(now, &steps))?;
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    let cert = serving(&m, src)?;
                    tracing::info!(
                        secret = %secret_ref(src),
                        fingerprint = %cert.fingerprint,
                        not_after = %cert.not_after,
                        "created the serving certificate Secret with a new CA"
                    );
                    return Ok(Ensured {
                        cert,
                        next_deadline: rotation::next_deadline(&m, policy, now),
                    });
                }
                Err(e) if status_code(&e) == Some(409) => {
                    tracing::debug!(
                        secret = %secret_ref(src),
                        attempt,
                        "another replica created the Secret first; using theirs"
                    );
                    continue;
                }
                Err(e) => return Err(kube_err(src, "creating")(e)),
            }
        };

        let managed = is_managed(&current, src);
        let decoded = decode(&current, src);
        if !managed {
            return use_unmanaged(src, policy, decoded, now);
        }
        let (m, steps) = rotation::converge(decoded, policy, now)?;
        if steps.is_empty() {
            return Ok(Ensured {
                cert: serving(&m, src)?,
                next_deadline: rotation::next_deadline(&m, policy, now),
            });
        }
        let mut updated = current;
        encode(&mut updated, src, &m, change_note(now, &steps))?;
        match api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => {
                let cert = serving(&m, src)?;
                for step in &steps {
                    if step.is_repair() {
                        tracing::warn!(
                            secret = %secret_ref(src),
                            change = %step.describe(),
                            "repaired the certificate Secret"
                        );
                    } else {
                        tracing::info!(
                            secret = %secret_ref(src),
                            change = %step.describe(),
                            "rotated"
                        );
                    }
                }
                tracing::info!(
                    secret = %secret_ref(src),
                    fingerprint = %cert.fingerprint,
                    not_after = %cert.not_after,
                    ca_certificates = m.bundle().len(),
                    "stored the new certificates"
                );
                return Ok(Ensured {
                    cert,
                    next_deadline: rotation::next_deadline(&m, policy, now),
                });
            }
            Err(e) if matches!(status_code(&e), Some(409) | Some(404)) => {
                tracing::debug!(
                    secret = %secret_ref(src),
                    attempt,
                    "the Secret changed (or vanished) since it was read; reading it again"
                );
            }
            Err(e) => return Err(kube_err(src, "updating")(e)),
        }
    }
    Err(CertError::Contended {
        namespace: src.namespace.clone(),
        name: src.secret_name.clone(),
        attempts: MAX_ATTEMPTS,
    })
}

/// A Secret without our label: served when its serving certificate is usable, never written.
fn use_unmanaged(
    src: &SecretSource,
    policy: &Policy,
    m: Material,
    now: Timestamp,
) -> Result<Ensured, CertError> {
    let step = rotation::plan(&m, policy, now);
    let not_managed = |problem: String| CertError::SecretNotManaged {
        namespace: src.namespace.clone(),
        name: src.secret_name.clone(),
        manager: src.manager.clone(),
        problem,
    };
    let usable = match &m.leaf {
        None => Err(m
            .leaf_problem
            .clone()
            .unwrap_or_else(|| format!("{TLS_CRT} is missing"))),
        Some(leaf) if now >= leaf.cert.not_after => {
            Err(format!("{TLS_CRT} expired at {}", leaf.cert.not_after))
        }
        Some(_) if m.bundle().is_empty() => Err(m
            .ca_problem
            .clone()
            .unwrap_or_else(|| format!("{CA_CRT} holds no CA certificate"))),
        Some(_) => Ok(()),
    };
    usable.map_err(not_managed)?;
    if step != Step::Keep {
        tracing::warn!(
            secret = %secret_ref(src),
            needed = %step.describe(),
            manager = %src.manager,
            "the Secret is not ours (label {MANAGED_BY_LABEL}=<manager> missing): \
             serving it as it is, without rotating it"
        );
    }
    Ok(Ensured {
        cert: serving(&m, src)?,
        next_deadline: m
            .leaf
            .as_ref()
            .map(|l| l.cert.not_after)
            .filter(|t| *t > now),
    })
}

fn change_note(now: Timestamp, steps: &[Step]) -> String {
    let what: Vec<String> = steps.iter().map(Step::describe).collect();
    format!(
        "{}: {}",
        now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        what.join("; ")
    )
}

/// How long to sleep until `deadline` (a second past it, so the decision sees it as reached),
/// at most `cap`.
fn until(deadline: Option<Timestamp>, now: Timestamp, cap: Duration) -> Duration {
    let Some(deadline) = deadline else {
        return cap;
    };
    let wait = deadline.duration_since(now);
    let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO) + Duration::from_secs(1);
    wait.min(cap)
}

/// What a watch event asks for.
#[derive(Debug)]
enum WatchAction {
    /// Nothing (bookkeeping event, or an error the stream retries by itself).
    Nothing,
    /// Reconcile from this Secret as seen by the watch.
    Reconcile(Box<Secret>),
    /// Read the Secret (absent or deleted: it gets created).
    Fetch,
    /// The stream ended: start a new watch.
    Restart,
}

/// Interprets one watch event. `seen_in_init` tracks whether the current (re)list found the
/// Secret, so an empty list means it does not exist.
fn on_event(
    event: Option<Result<Event<Secret>, watcher::Error>>,
    seen_in_init: &mut bool,
    src: &SecretSource,
) -> WatchAction {
    let secret = secret_ref(src);
    match event {
        Some(Ok(Event::Init)) => {
            *seen_in_init = false;
            WatchAction::Nothing
        }
        Some(Ok(Event::InitApply(obj))) => {
            *seen_in_init = true;
            WatchAction::Reconcile(Box::new(obj))
        }
        Some(Ok(Event::Apply(obj))) => WatchAction::Reconcile(Box::new(obj)),
        Some(Ok(Event::InitDone)) if *seen_in_init => WatchAction::Nothing,
        Some(Ok(Event::InitDone)) => {
            tracing::info!(%secret, "the certificate Secret does not exist; creating it");
            WatchAction::Fetch
        }
        Some(Ok(Event::Delete(_))) => {
            tracing::warn!(%secret, "the certificate Secret was deleted; recreating it");
            WatchAction::Fetch
        }
        Some(Err(error)) => {
            // The stream backs off by itself; the timer keeps rotation going meanwhile.
            tracing::warn!(%secret, %error, "watching the certificate Secret failed; retrying");
            WatchAction::Nothing
        }
        None => {
            tracing::warn!(%secret, "the certificate Secret watch ended; restarting it");
            WatchAction::Restart
        }
    }
}

/// A watch on the one Secret, retried with kube-runtime's default backoff.
fn watch_secret(
    src: &SecretSource,
) -> futures::stream::BoxStream<'static, Result<Event<Secret>, watcher::Error>> {
    let api: Api<Secret> = Api::namespaced(src.client.clone(), &src.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", src.secret_name));
    watcher::watcher(api, config).default_backoff().boxed()
}

/// The watch loop behind [`super::maintain`] for a Secret.
pub(crate) async fn maintain(
    src: SecretSource,
    tx: watch::Sender<Arc<ServingCert>>,
    cancel: CancellationToken,
) -> Result<(), CertError> {
    let policy = src.policy()?;
    let mut events = watch_secret(&src);
    let mut backoff = Backoff::new();
    let mut seen_in_init = false;
    // The first reconcile comes from the watch's initial list.
    let mut next_check = tokio::time::Instant::now() + src.recheck_interval;

    loop {
        let known = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            event = events.next() => match on_event(event, &mut seen_in_init, &src) {
                WatchAction::Nothing => continue,
                WatchAction::Reconcile(secret) => Some(*secret),
                WatchAction::Fetch => None,
                WatchAction::Restart => {
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Backoff::FIRST) => {}
                    }
                    events = watch_secret(&src);
                    continue;
                }
            },
            () = tokio::time::sleep_until(next_check) => None,
        };

        let delay = match ensure(&src, &policy, known).await {
            Ok(ensured) => {
                backoff.succeeded();
                let fingerprint = ensured.cert.fingerprint.clone();
                let not_after = ensured.cert.not_after;
                if publish(&tx, ensured.cert) {
                    tracing::info!(
                        secret = %secret_ref(&src),
                        %fingerprint,
                        %not_after,
                        "serving certificate updated"
                    );
                }
                let now = Timestamp::now();
                until(ensured.next_deadline, now, src.recheck_interval)
            }
            Err(error) if error.is_fatal() => return Err(error),
            Err(error) => {
                let delay = backoff.failed();
                tracing::error!(
                    %error,
                    reason = error.metric_label(),
                    retry_in = ?delay,
                    "keeping the current serving certificate"
                );
                delay
            }
        };
        next_check = tokio::time::Instant::now() + delay;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use jiff::SignedDuration;

    use super::*;

    fn src() -> SecretSource {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        SecretSource {
            dns_names: vec!["webhook.ns.svc".to_owned()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ..SecretSource::defaults(kube::Client::try_from(config).unwrap(), "ns", "tls")
        }
    }

    fn stored(src: &SecretSource, now: Timestamp) -> (Secret, Material) {
        let policy = src.policy().unwrap();
        let (m, steps) = rotation::converge(Material::default(), &policy, now).unwrap();
        let mut secret = Secret::default();
        encode(&mut secret, src, &m, change_note(now, &steps)).unwrap();
        (secret, m)
    }

    #[tokio::test]
    async fn encode_then_decode_round_trips() {
        let src = src();
        let policy = src.policy().unwrap();
        let now = Timestamp::now();
        let (secret, m) = stored(&src, now);
        assert!(is_managed(&secret, &src));
        let data = secret.data.as_ref().unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["ca.crt", "ca.key", "tls.crt", "tls.key"]);
        let note = &secret.metadata.annotations.as_ref().unwrap()[CHANGE_ANNOTATION];
        assert!(note.contains("new CA and serving certificate"), "{note}");

        let back = decode(&secret, &src);
        assert!(back.ca_problem.is_none() && back.leaf_problem.is_none());
        assert_eq!(back.bundle_pem(), m.bundle_pem());
        assert_eq!(rotation::plan(&back, &policy, now), Step::Keep);
        let cert = serving(&back, &src).unwrap();
        assert_eq!(cert.ca_pem, m.bundle_pem());
    }

    #[tokio::test]
    async fn next_ca_key_round_trips_during_rotation() {
        let src = src();
        let policy = src.policy().unwrap();
        let now = Timestamp::now();
        let (_, m) = stored(&src, now);
        let late = m.signing.as_ref().unwrap().cert.not_after - SignedDuration::from_hours(24 * 20);
        let (rotating, steps) = rotation::converge(m, &policy, late).unwrap();
        assert!(matches!(steps[0], Step::StartCaRotation(_)), "{steps:?}");
        let mut secret = Secret::default();
        encode(&mut secret, &src, &rotating, change_note(late, &steps)).unwrap();
        assert!(secret.data.as_ref().unwrap().contains_key(CA_NEXT_KEY));
        let back = decode(&secret, &src);
        assert_eq!(
            back.next.as_ref().unwrap().cert.der,
            rotating.next.as_ref().unwrap().cert.der
        );
        assert_eq!(rotation::plan(&back, &policy, late), Step::Keep);

        // After promotion the next key is gone again.
        let promoted =
            rotation::converge(back, &policy, late + SignedDuration::from_hours(24 * 16))
                .unwrap()
                .0;
        encode(&mut secret, &src, &promoted, String::new()).unwrap();
        assert!(!secret.data.as_ref().unwrap().contains_key(CA_NEXT_KEY));
    }

    #[tokio::test]
    async fn corrupt_parts_are_reported_with_their_key() {
        let src = src();
        let policy = src.policy().unwrap();
        let now = Timestamp::now();
        let (mut secret, m) = stored(&src, now);
        let data = secret.data.as_mut().unwrap();
        data.insert(TLS_KEY.to_owned(), data[CA_KEY].clone());
        let back = decode(&secret, &src);
        let problem = back.leaf_problem.clone().unwrap();
        assert!(
            problem.contains("does not match") && problem.contains("Secret ns/tls key tls.key"),
            "{problem}"
        );
        let (fixed, steps) = rotation::converge(back, &policy, now).unwrap();
        assert!(
            matches!(steps.as_slice(), [Step::IssueLeaf(_)]),
            "{steps:?}"
        );
        assert_eq!(fixed.bundle_pem(), m.bundle_pem(), "CA kept");

        let data = secret.data.as_mut().unwrap();
        data.insert(CA_KEY.to_owned(), ByteString(b"garbage".to_vec()));
        data.insert(CA_CRT.to_owned(), ByteString(vec![0xff, 0xfe]));
        let back = decode(&secret, &src);
        let problem = back.ca_problem.clone().unwrap();
        assert!(
            problem.contains("ca.crt is not UTF-8") && problem.contains("ca.key"),
            "{problem}"
        );
        assert!(matches!(
            rotation::plan(&back, &policy, now),
            Step::Regenerate(_)
        ));
    }

    #[tokio::test]
    async fn unmanaged_secrets_are_used_read_only_or_refused() {
        let src = src();
        let policy = src.policy().unwrap();
        let now = Timestamp::now();
        let (mut secret, _) = stored(&src, now);
        secret.metadata.labels = None;
        let data = secret.data.as_mut().unwrap();
        data.remove(CA_KEY);
        // Usable as it is (no CA key needed to serve).
        let ensured = use_unmanaged(&src, &policy, decode(&secret, &src), now).unwrap();
        assert!(ensured.cert.ca_pem.contains("BEGIN CERTIFICATE"));

        let data = secret.data.as_mut().unwrap();
        data.insert(TLS_CRT.to_owned(), ByteString(b"junk".to_vec()));
        let err = use_unmanaged(&src, &policy, decode(&secret, &src), now).unwrap_err();
        assert_eq!(err.metric_label(), "secret_not_managed");
        let msg = err.to_string();
        assert!(
            msg.contains("Secret ns/tls")
                && msg.contains("tls.crt")
                && msg.contains("not labelled"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn an_empty_initial_list_or_a_deletion_means_create() {
        let src = src();
        let mut seen = false;
        let ev = |e: Event<Secret>| Some(Ok(e));
        assert!(matches!(
            on_event(ev(Event::Init), &mut seen, &src),
            WatchAction::Nothing
        ));
        assert!(matches!(
            on_event(ev(Event::InitDone), &mut seen, &src),
            WatchAction::Fetch
        ));

        assert!(matches!(
            on_event(ev(Event::Init), &mut seen, &src),
            WatchAction::Nothing
        ));
        let found = on_event(ev(Event::InitApply(Secret::default())), &mut seen, &src);
        assert!(matches!(found, WatchAction::Reconcile(_)));
        assert!(matches!(
            on_event(ev(Event::InitDone), &mut seen, &src),
            WatchAction::Nothing
        ));

        let applied = on_event(ev(Event::Apply(Secret::default())), &mut seen, &src);
        assert!(matches!(applied, WatchAction::Reconcile(_)));
        let deleted = on_event(ev(Event::Delete(Secret::default())), &mut seen, &src);
        assert!(matches!(deleted, WatchAction::Fetch));
        assert!(matches!(
            on_event(None, &mut seen, &src),
            WatchAction::Restart
        ));
    }

    #[test]
    fn sleeps_until_just_after_the_deadline_but_not_longer_than_the_cap() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let cap = Duration::from_secs(600);
        assert_eq!(until(None, now, cap), cap);
        let soon = now + SignedDuration::from_secs(30);
        assert_eq!(until(Some(soon), now, cap), Duration::from_secs(31));
        let past = now - SignedDuration::from_secs(30);
        assert_eq!(until(Some(past), now, cap), Duration::from_secs(1));
        let far = now + SignedDuration::from_hours(100);
        assert_eq!(until(Some(far), now, cap), cap);
    }
}
