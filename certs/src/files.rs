//! A provided certificate (cert-manager style): PEM files polled for changes.

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::authority::der_to_pem;
use super::{CertError, FileSource, ServingCert, publish};

/// The files' bytes as read in one go, and their combined hash.
#[derive(Debug)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    hash: [u8; 32],
}

async fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| CertError::ReadFile {
            path: path.to_owned(),
            source,
        })
}

async fn read(src: &FileSource) -> Result<Snapshot, CertError> {
    let cert = read_file(&src.cert).await?;
    let key = read_file(&src.key).await?;
    let ca = match &src.ca {
        Some(path) => Some(read_file(path).await?),
        None => None,
    };
    let mut hasher = Sha256::new();
    for part in [Some(&cert), Some(&key), ca.as_ref()] {
        match part {
            Some(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
            None => hasher.update(u64::MAX.to_be_bytes()),
        }
    }
    Ok(Snapshot {
        cert,
        key,
        ca,
        hash: hasher.finalize().into(),
    })
}

fn file_origin(path: &Path) -> String {
    format!("file {}", path.display())
}

fn utf8(bytes: &[u8], path: &Path) -> Result<String, CertError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CertError::Parse {
        origin: file_origin(path),
        problem: "not UTF-8 text".to_owned(),
    })
}

fn parse(src: &FileSource, snap: &Snapshot) -> Result<ServingCert, CertError> {
    let cert_origin = file_origin(&src.cert);
    let chain_pem = utf8(&snap.cert, &src.cert)?;
    let key_pem = SecretString::from(utf8(&snap.key, &src.key)?);
    let ca_pem = match (&src.ca, &snap.ca) {
        (Some(path), Some(bytes)) => {
            let origin = file_origin(path);
            let cas = crate::tls::parse_chain(&utf8(bytes, path)?, &origin)?;
            cas.iter().map(|c| der_to_pem("CERTIFICATE", c)).collect()
        }
        _ => {
            let chain = crate::tls::parse_chain(&chain_pem, &cert_origin)?;
            chain
                .last()
                .map(|c| der_to_pem("CERTIFICATE", c))
                .unwrap_or_default()
        }
    };
    let cert = ServingCert::from_parts(
        ca_pem,
        chain_pem,
        key_pem,
        &cert_origin,
        &file_origin(&src.key),
    )?;
    if cert.not_after <= Timestamp::now() {
        tracing::warn!(
            file = %src.cert.display(),
            not_after = %cert.not_after,
            "the provided serving certificate has expired; serving it until it is replaced"
        );
    }
    Ok(cert)
}

fn check(src: &FileSource) -> Result<(), CertError> {
    if src.poll_interval.is_zero() {
        return Err(CertError::Config(format!(
            "the poll interval of {} must be above zero",
            src.cert.display()
        )));
    }
    Ok(())
}

/// Reads and checks the files once.
pub(crate) async fn load(src: &FileSource) -> Result<ServingCert, CertError> {
    check(src)?;
    parse(src, &read(src).await?)
}

/// Polls the files until `cancel`, sending each new good certificate.
pub(crate) async fn maintain(
    src: FileSource,
    tx: watch::Sender<Arc<ServingCert>>,
    cancel: CancellationToken,
) -> Result<(), CertError> {
    check(&src)?;
    let mut last_hash: Option<[u8; 32]> = None;
    let mut last_read_error: Option<String> = None;
    loop {
        match read(&src).await {
            Ok(snap) => {
                last_read_error = None;
                if last_hash != Some(snap.hash) {
                    last_hash = Some(snap.hash);
                    match parse(&src, &snap) {
                        Ok(cert) => {
                            let (fingerprint, not_after) =
                                (cert.fingerprint.clone(), cert.not_after);
                            if publish(&tx, cert) {
                                tracing::info!(
                                    file = %src.cert.display(),
                                    %fingerprint,
                                    %not_after,
                                    "reloaded the provided serving certificate"
                                );
                            }
                        }
                        Err(error) => tracing::error!(
                            %error,
                            reason = error.metric_label(),
                            "the provided certificate files are unusable; keeping the current serving certificate"
                        ),
                    }
                }
            }
            Err(error) => {
                let message = error.to_string();
                if last_read_error.as_ref() != Some(&message) {
                    tracing::warn!(
                        %error,
                        "reading the provided certificate files failed; keeping the current serving certificate"
                    );
                    last_read_error = Some(message);
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(src.poll_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::CertSource;

    fn generated() -> ServingCert {
        ServingCert::generate(
            &["webhook.example".to_owned()],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join("tls.key"), key).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
    }

    fn source(dir: &Path, ca: bool) -> FileSource {
        FileSource {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: ca.then(|| dir.join("ca.crt")),
            poll_interval: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn loads_a_pair_and_uses_the_ca_file_or_the_chain_end() {
        let dir = tempfile::tempdir().unwrap();
        let a = generated();
        let chain = format!("{}{}", a.chain_pem, a.ca_pem);
        write(dir.path(), &chain, a.key_pem().expose_secret());
        let cert = load(&source(dir.path(), false)).await.unwrap();
        assert_eq!(cert.fingerprint, a.fingerprint);
        assert_eq!(cert.ca_pem, a.ca_pem, "last certificate of the chain");

        let other = generated();
        std::fs::write(dir.path().join("ca.crt"), &other.ca_pem).unwrap();
        let cert = crate::load(&CertSource::Files(source(dir.path(), true)))
            .await
            .map(|c| c.ca_pem);
        assert_eq!(cert.unwrap(), other.ca_pem);
    }

    #[tokio::test]
    async fn bad_files_give_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), false);
        let err = load(&src).await.unwrap_err();
        assert_eq!(err.metric_label(), "file_read");
        assert!(err.to_string().contains("tls.crt"), "{err}");

        let (a, b) = (generated(), generated());
        write(dir.path(), &a.chain_pem, b.key_pem().expose_secret());
        let err = load(&src).await.unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("file {}", dir.path().join("tls.key").display()))
                && msg.contains(&format!("file {}", dir.path().join("tls.crt").display())),
            "{msg}"
        );

        write(dir.path(), "garbage", a.key_pem().expose_secret());
        let err = load(&src).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("tls.crt: no PEM CERTIFICATE block"),
            "{err}"
        );

        let zero = FileSource {
            poll_interval: Duration::ZERO,
            ..src
        };
        assert!(load(&zero).await.unwrap_err().is_fatal());
    }

    async fn next_change(rx: &mut watch::Receiver<Arc<ServingCert>>) -> Arc<ServingCert> {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a new certificate within 5 s")
            .unwrap();
        Arc::clone(&rx.borrow_and_update())
    }

    #[tokio::test]
    async fn polling_reloads_new_files_and_keeps_the_old_cert_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), false);
        let a = generated();
        write(dir.path(), &a.chain_pem, a.key_pem().expose_secret());
        let first = load(&src).await.unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(first));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(maintain(src.clone(), tx, cancel.clone()));

        let b = generated();
        write(dir.path(), &b.chain_pem, b.key_pem().expose_secret());
        assert_eq!(next_change(&mut rx).await.fingerprint, b.fingerprint);

        // A mismatched pair, then garbage: the current certificate stays.
        let c = generated();
        write(dir.path(), &c.chain_pem, a.key_pem().expose_secret());
        tokio::time::sleep(Duration::from_millis(300)).await;
        write(dir.path(), "garbage", "garbage");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!rx.has_changed().unwrap(), "nothing sent for bad files");
        assert_eq!(rx.borrow().fingerprint, b.fingerprint);

        write(dir.path(), &c.chain_pem, c.key_pem().expose_secret());
        assert_eq!(next_change(&mut rx).await.fingerprint, c.fingerprint);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
