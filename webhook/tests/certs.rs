//! The self-managed serving certificate against the real API server: race-safe creation by
//! several replicas, rotation by `maintain`, watch-driven pick-up of another replica's change,
//! repair of a corrupt Secret, refusal to touch a Secret that is not ours.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webhook::certs::{self, CertSource, MANAGED_BY, MANAGED_BY_LABEL, SecretSource, ServingCert};

const SECRET: &str = "webhook-tls";
const DAY: Duration = Duration::from_secs(86_400);

struct Env {
    target: devcluster::testing::Target,
    client: kube::Client,
    ns: String,
}

impl Env {
    async fn new(prefix: &str) -> Result<Self> {
        let target = devcluster::testing::target().await?;
        let client = target.client().await?;
        let ns = target.namespace(prefix).await?;
        Ok(Self { target, client, ns })
    }

    fn source(&self) -> SecretSource {
        SecretSource {
            dns_names: vec![format!("webhook.{}.svc", self.ns)],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ..SecretSource::defaults(self.client.clone(), &self.ns, SECRET)
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn secret(&self) -> Result<Secret> {
        Ok(self.secrets().get(SECRET).await?)
    }

    async fn cleanup(self) -> Result<()> {
        Ok(self.target.delete_namespace(&self.ns).await?)
    }
}

fn text(secret: &Secret, key: &str) -> Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("Secret has no {key}"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

/// A serving certificate for `names` signed by the Secret's signing CA, valid for `validity`,
/// as another replica (or a test) would write it: `(tls.crt, tls.key)`.
fn leaf_from_secret_ca(
    secret: &Secret,
    names: Vec<String>,
    validity: Duration,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&text(secret, "ca.key")?)?;
    let issuer = Issuer::from_ca_cert_pem(&text(secret, "ca.crt")?, ca_key)?;
    let mut params = CertificateParams::new(names)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn names(env: &Env) -> Vec<String> {
    vec![format!("webhook.{}.svc", env.ns), "127.0.0.1".to_owned()]
}

/// Writes `tls.crt`/`tls.key` into the Secret, as another replica would.
async fn write_leaf(env: &Env, cert: &str, key: &str) -> Result<()> {
    let mut secret = env.secret().await?;
    let data = secret.data.get_or_insert_default();
    data.insert("tls.crt".into(), ByteString(cert.as_bytes().to_vec()));
    data.insert("tls.key".into(), ByteString(key.as_bytes().to_vec()));
    env.secrets()
        .replace(SECRET, &PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// Waits until the channel holds a certificate satisfying `pred`.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<ServingCert>>,
    within: Duration,
    what: &str,
    pred: impl Fn(&ServingCert) -> bool,
) -> Result<Arc<ServingCert>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        {
            let current = rx.borrow_and_update();
            if pred(&current) {
                return Ok(Arc::clone(&current));
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("the certificate channel closed while waiting for {what}"),
            Err(_) => bail!("no certificate with {what} within {within:?}"),
        }
    }
}

struct Maintained {
    rx: watch::Receiver<Arc<ServingCert>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), certs::CertError>>,
}

fn spawn_maintain(source: SecretSource, first: ServingCert) -> Maintained {
    let (tx, rx) = watch::channel(Arc::new(first));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(certs::maintain(
        CertSource::Secret(source),
        tx,
        cancel.clone(),
    ));
    Maintained { rx, cancel, task }
}

impl Maintained {
    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("maintain did not stop on cancel")???;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_loads_create_one_secret_and_agree() -> Result<()> {
    let env = Env::new("certs").await?;
    // Four replicas starting at once, each with its own client.
    let mut sources = Vec::new();
    for _ in 0..4 {
        sources.push(SecretSource {
            client: env.target.client().await?,
            ..env.source()
        });
    }
    let audit = env
        .target
        .audit("concurrent_loads_create_one_secret_and_agree");
    let cursor = audit.as_ref().map(|a| a.cursor()).transpose()?;
    let loads = sources
        .iter()
        .map(|s| async move { certs::load(&CertSource::Secret(s.clone())).await });
    let results = futures::future::join_all(loads).await;
    let certs: Vec<ServingCert> = results.into_iter().collect::<Result<_, _>>()?;
    for cert in &certs[1..] {
        assert_eq!(
            cert.fingerprint, certs[0].fingerprint,
            "same serving certificate"
        );
        assert_eq!(cert.ca_pem, certs[0].ca_pem, "same CA bundle");
    }

    let list = env
        .secrets()
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await?;
    assert_eq!(list.items.len(), 1, "exactly one Secret");
    let secret = &list.items[0];
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(text(secret, "tls.crt")?, certs[0].chain_pem);
    assert_eq!(text(secret, "ca.crt")?, certs[0].ca_pem);
    let mut keys: Vec<&str> = secret
        .data
        .as_ref()
        .context("data")?
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);

    if let (Some(audit), Some(cursor)) = (&audit, cursor) {
        let writes: Vec<_> = audit
            .read_since(cursor)?
            .into_iter()
            .filter(|e| {
                e.object_ref
                    .as_ref()
                    .is_some_and(|o| o.resource == "secrets" && o.namespace == env.ns)
            })
            .collect();
        let codes: Vec<(String, u16)> = writes
            .iter()
            .map(|e| {
                (
                    e.verb.clone(),
                    e.response_status.as_ref().map_or(0, |s| s.code),
                )
            })
            .collect();
        eprintln!("secret writes: {codes:?}");
        assert_eq!(
            writes.iter().filter(|e| e.succeeded()).count(),
            1,
            "one successful write (the create), the losers only read: {codes:?}"
        );
    }

    // A later load reads the same Secret without changing it.
    let rv = secret.metadata.resource_version.clone();
    let again = certs::load(&CertSource::Secret(env.source())).await?;
    assert_eq!(again.fingerprint, certs[0].fingerprint);
    assert_eq!(
        env.secret().await?.metadata.resource_version,
        rv,
        "no write"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn maintain_rotates_a_serving_certificate_near_expiry_and_keeps_the_ca() -> Result<()> {
    let env = Env::new("certs").await?;
    let first = certs::load(&CertSource::Secret(env.source())).await?;
    let secret = env.secret().await?;
    // Two days left: well inside the 30-day rotation window.
    let (cert, key) = leaf_from_secret_ca(&secret, names(&env), 2 * DAY)?;
    write_leaf(&env, &cert, &key).await?;
    let expiring = ServingCert::from_pem(first.ca_pem.clone(), cert, SecretString::from(key))?;

    // Two replicas notice at the same time; one rotation wins, the other adopts it.
    let audit = env
        .target
        .audit("maintain_rotates_a_serving_certificate_near_expiry");
    let cursor = audit.as_ref().map(|a| a.cursor()).transpose()?;
    let mut m = spawn_maintain(env.source(), expiring.clone());
    let mut other = spawn_maintain(
        SecretSource {
            client: env.target.client().await?,
            ..env.source()
        },
        expiring.clone(),
    );
    let started = Instant::now();
    let rotated = wait_for(
        &mut m.rx,
        Duration::from_secs(20),
        "a rotated certificate",
        |c| c.fingerprint != expiring.fingerprint,
    )
    .await?;
    eprintln!("rotated after {:?}", started.elapsed());
    wait_for(
        &mut other.rx,
        Duration::from_secs(5),
        "the same rotated certificate on the other replica",
        |c| c.fingerprint == rotated.fingerprint,
    )
    .await?;
    if let (Some(audit), Some(cursor)) = (&audit, cursor) {
        let updates: Vec<u16> = audit
            .read_since(cursor)?
            .into_iter()
            .filter(|e| {
                e.verb == "update"
                    && e.object_ref
                        .as_ref()
                        .is_some_and(|o| o.resource == "secrets" && o.namespace == env.ns)
            })
            .map(|e| e.response_status.map_or(0, |s| s.code))
            .collect();
        eprintln!("secret updates: {updates:?}");
        assert_eq!(
            updates.iter().filter(|c| **c == 200).count(),
            1,
            "one rotation stored: {updates:?}"
        );
    }
    let min_not_after = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 89);
    assert!(
        rotated.not_after > min_not_after,
        "fresh 90-day certificate: {}",
        rotated.not_after
    );
    assert_eq!(
        rotated.ca_pem, first.ca_pem,
        "the CA is not rotated with the leaf"
    );

    let stored = env.secret().await?;
    assert_eq!(text(&stored, "tls.crt")?, rotated.chain_pem);
    assert_eq!(text(&stored, "tls.key")?, rotated.key_pem().expose_secret());
    assert_eq!(text(&stored, "ca.key")?, text(&secret, "ca.key")?);
    let note = stored
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(certs::CHANGE_ANNOTATION))
        .context("change annotation")?;
    assert!(note.contains("within 30d"), "{note}");
    m.stop().await?;
    other.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn another_replicas_change_reaches_maintain_through_the_watch() -> Result<()> {
    let env = Env::new("certs").await?;
    let first = certs::load(&CertSource::Secret(env.source())).await?;
    // An hour between rechecks: only the watch can deliver the change in time.
    let source = SecretSource {
        recheck_interval: Duration::from_secs(3600),
        ..env.source()
    };
    let mut m = spawn_maintain(source, first.clone());
    // Let the watch start (its initial list is the Secret as it is: nothing to send).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(m.rx.borrow().fingerprint, first.fingerprint);

    let secret = env.secret().await?;
    let (cert, key) = leaf_from_secret_ca(&secret, names(&env), 90 * DAY)?;
    let theirs = ServingCert::from_pem(
        first.ca_pem.clone(),
        cert.clone(),
        SecretString::from(key.clone()),
    )?;
    let written = Instant::now();
    write_leaf(&env, &cert, &key).await?;
    let seen = wait_for(
        &mut m.rx,
        Duration::from_secs(3),
        "the other replica's certificate",
        |c| c.fingerprint == theirs.fingerprint,
    )
    .await?;
    eprintln!("picked up after {:?}", written.elapsed());
    assert_eq!(seen.ca_pem, first.ca_pem);
    // It was good, so it is used as it is, not replaced.
    assert_eq!(text(&env.secret().await?, "tls.crt")?, cert);

    // A deleted Secret is recreated (new CA: the old key went with it).
    env.secrets().delete(SECRET, &Default::default()).await?;
    let recreated = wait_for(
        &mut m.rx,
        Duration::from_secs(10),
        "a recreated certificate",
        |c| c.ca_pem != first.ca_pem,
    )
    .await?;
    assert_eq!(text(&env.secret().await?, "tls.crt")?, recreated.chain_pem);
    m.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_managed_secret_is_repaired() -> Result<()> {
    let env = Env::new("certs").await?;
    let source = CertSource::Secret(env.source());
    let first = certs::load(&source).await?;

    // A broken serving certificate only: re-issued by the same CA.
    let mut secret = env.secret().await?;
    secret.data.get_or_insert_default().insert(
        "tls.crt".into(),
        ByteString(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
    );
    env.secrets()
        .replace(SECRET, &PostParams::default(), &secret)
        .await?;
    let repaired = certs::load(&source).await?;
    assert_ne!(repaired.fingerprint, first.fingerprint);
    assert_eq!(repaired.ca_pem, first.ca_pem, "CA kept");

    // A broken CA: everything regenerated.
    let mut secret = env.secret().await?;
    let data = secret.data.get_or_insert_default();
    data.insert("ca.key".into(), ByteString(b"garbage".to_vec()));
    data.insert("ca.crt".into(), ByteString(b"garbage".to_vec()));
    env.secrets()
        .replace(SECRET, &PostParams::default(), &secret)
        .await?;
    let regenerated = certs::load(&source).await?;
    assert_ne!(regenerated.ca_pem, first.ca_pem, "new CA");
    let stored = env.secret().await?;
    assert_eq!(text(&stored, "ca.crt")?, regenerated.ca_pem);
    let note = stored
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(certs::CHANGE_ANNOTATION))
        .context("change annotation")?;
    assert!(note.contains("new CA") && note.contains("ca.key"), "{note}");

    // Stable from then on.
    let rv = stored.metadata.resource_version.clone();
    assert_eq!(
        certs::load(&source).await?.fingerprint,
        regenerated.fingerprint
    );
    assert_eq!(env.secret().await?.metadata.resource_version, rv);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_secret_that_is_not_ours_is_an_error_and_left_alone() -> Result<()> {
    let env = Env::new("certs").await?;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [("tls.crt", "junk"), ("tls.key", "junk")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    let created = env
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    let err = certs::load(&CertSource::Secret(env.source()))
        .await
        .err()
        .context("loading a corrupt foreign Secret succeeded")?;
    assert_eq!(err.metric_label(), "secret_not_managed");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("Secret {}/{SECRET}", env.ns)) && msg.contains("tls.crt"),
        "{msg}"
    );
    assert_eq!(
        env.secret().await?.metadata.resource_version,
        created.metadata.resource_version,
        "not written"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_first_adds_the_next_ca_to_the_bundle() -> Result<()> {
    let env = Env::new("certs").await?;
    // A short-lived CA (40 days) whose leaf runs to its end.
    let short = SecretSource {
        ca_validity: 40 * DAY,
        leaf_validity: 40 * DAY,
        rotate_before: 30 * DAY,
        ..env.source()
    };
    let first = certs::load(&CertSource::Secret(short.clone())).await?;
    assert_eq!(first.ca_pem.matches("BEGIN CERTIFICATE").count(), 1);

    // With a 45-day window the CA is due: the next CA joins the bundle, the serving certificate
    // stays (it outlives the promotion, due in 22.5 days, which will re-issue it).
    let due = SecretSource {
        rotate_before: 45 * DAY,
        leaf_validity: 60 * DAY,
        ca_validity: 60 * DAY,
        ..short
    };
    let mut m = spawn_maintain(due, first.clone());
    let rotating = wait_for(&mut m.rx, Duration::from_secs(20), "a two-CA bundle", |c| {
        c.ca_pem.matches("BEGIN CERTIFICATE").count() == 2
    })
    .await?;
    assert_eq!(
        rotating.fingerprint, first.fingerprint,
        "same serving certificate"
    );
    assert!(
        rotating.ca_pem.starts_with(&first.ca_pem),
        "old CA still first (it signs)"
    );
    let stored = env.secret().await?;
    assert!(
        stored
            .data
            .as_ref()
            .context("data")?
            .contains_key("ca-next.key")
    );
    m.stop().await?;
    env.cleanup().await
}
