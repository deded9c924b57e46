//! Our own components on top of a devcluster, run as local processes exactly as they would run
//! in pods: each under its own API identity (`<component>.kubeconfig`), exporting traces to the
//! cluster's Jaeger, logging to `logs/<component>.log`, recorded in `endpoints.json` so
//! `cargo xtask down` (or dropping a [`PrivateCluster`](crate::testing::PrivateCluster)) stops
//! them first.
//!
//! Webhook replicas (`webhook-0`, `webhook-1`, …) all listen on one address with `SO_REUSEPORT`
//! and register themselves in kube-apiserver by URL (`https://127.0.0.1:<port>`) with the CA of
//! the certificate they share through a Secret. Before starting them, [`install_prerequisites`]
//! applies `deploy/devcluster/` (the system namespace and the components' RBAC).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{Endpoints, record_components};
use crate::error::{Error, Result};
use crate::layout::{Layout, repo_root};
use crate::process::{self, ProcessRecord};
use crate::toolchain;

/// Namespace of our components (certificate Secret, policies, bucket map).
pub const SYSTEM_NAMESPACE: &str = "kubetemplater-system";

/// Port the shared devcluster's webhook replicas listen on (the original's).
pub const WEBHOOK_PORT: u16 = 9443;

/// Address key in `endpoints.json` for the webhook's base URL.
pub const WEBHOOK_ADDRESS: &str = "webhook";

/// How to run the webhook replicas.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The `kubetemplater-webhook` binary.
    pub binary: PathBuf,
    /// How many replicas (identities `webhook-0` …).
    pub replicas: u32,
    /// The shared review port on 127.0.0.1.
    pub port: u16,
    /// More flags for every replica.
    pub extra_args: Vec<String>,
    /// How long each replica may take to become ready.
    pub ready_timeout: Duration,
}

impl WebhookConfig {
    /// `replicas` replicas of `binary` on `port`.
    pub fn new(binary: impl Into<PathBuf>, replicas: u32, port: u16) -> Self {
        Self {
            binary: binary.into(),
            replicas,
            port,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(90),
        }
    }
}

/// A component process we started.
#[derive(Debug, Clone)]
pub struct Component {
    /// Its process.
    pub record: ProcessRecord,
    /// Its admin endpoint (`http://127.0.0.1:<port>`: /metrics, /healthz, /readyz).
    pub admin: String,
}

/// The `kubetemplater-webhook` binary of this build profile, next to the test or xtask binary
/// (`target/<profile>/`).
pub fn binary_in_target_dir(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    // Test binaries live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    let candidate = dir.join(name);
    candidate.is_file().then_some(candidate)
}

/// Applies `deploy/devcluster/` (system namespace, our components' RBAC) as admin.
pub fn install_prerequisites(layout: &Layout, admin_kubeconfig: &Path) -> Result<()> {
    let dir = repo_root().join("deploy/devcluster");
    let output = std::process::Command::new(toolchain::binary_or_path(layout, "kubectl"))
        .env("KUBECONFIG", admin_kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--field-manager=kubetemplater-install",
            "-f",
        ])
        .arg(&dir)
        .output()
        .map_err(Error::io("running kubectl apply on", &dir))?;
    if !output.status.success() {
        return Err(Error::Command {
            what: format!("kubectl apply -f {}", dir.display()),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Alive component processes whose name starts with `prefix` (e.g. `webhook-`).
pub fn running(endpoints: &Endpoints, prefix: &str) -> Vec<ProcessRecord> {
    endpoints
        .components
        .iter()
        .filter(|c| c.component.starts_with(prefix) && c.is_alive())
        .cloned()
        .collect()
}

/// The base URL webhook replicas on `port` register.
pub fn webhook_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// Starts the webhook replicas, waits until every one is ready (policy cache synced, certificate
/// loaded, listener bound, configurations registered) and records them in `layout`.
pub async fn start_webhooks(
    layout: &Layout,
    endpoints: &Endpoints,
    config: &WebhookConfig,
) -> Result<Vec<Component>> {
    let mut started = Vec::new();
    for i in 0..config.replicas {
        let identity = format!("webhook-{i}");
        let admin_port = crate::cluster::free_port()?;
        let url = webhook_url(config.port);
        let mut args: Vec<String> = [
            "--listen-addr",
            &format!("127.0.0.1:{}", config.port),
            "--url",
            &url,
            "--namespace",
            SYSTEM_NAMESPACE,
            "--cert-ip-addresses",
            "127.0.0.1",
            "--cert-dns-names",
            "localhost",
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(config.extra_args.iter().cloned());
        let env = component_env(endpoints, &identity).await?;
        let process = process::spawn_with_env(
            &identity,
            &config.binary,
            &args,
            &env,
            &layout.log(&identity),
        )?;
        started.push((process, format!("http://127.0.0.1:{admin_port}")));
    }
    // Recorded before waiting, so a failed start (or a crash of the caller) still leaves them
    // to `cargo xtask down` / the private cluster's drop; all stop if one never gets ready.
    let addresses = vec![(WEBHOOK_ADDRESS.to_owned(), webhook_url(config.port))];
    wait_all_ready(layout, started, &addresses, config.ready_timeout).await
}

/// The coordinators' gRPC ports in the shared devcluster (`coordinator-0`, `coordinator-1`);
/// `ktctl`'s default `--coordinator` names both.
pub const COORDINATOR_PORTS: [u16; 2] = [9444, 9445];

/// Address key in `endpoints.json` for the coordinators' gRPC URLs (comma-separated).
pub const COORDINATOR_ADDRESSES: &str = "coordinators";

/// How to run coordinators and workers.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The `kubetemplater-coordinator` binary.
    pub coordinator_binary: PathBuf,
    /// The `kubetemplater-worker` binary.
    pub worker_binary: PathBuf,
    /// The coordinators' gRPC ports on 127.0.0.1, one per coordinator (identities
    /// `coordinator-0` …; devcluster provisions two).
    pub coordinator_ports: Vec<u16>,
    /// More flags for every coordinator.
    pub coordinator_args: Vec<String>,
    /// More flags for every worker.
    pub worker_args: Vec<String>,
    /// How long each process may take to become ready.
    pub ready_timeout: Duration,
}

impl ShardConfig {
    /// Both binaries, coordinators on `coordinator_ports`.
    pub fn new(
        coordinator_binary: impl Into<PathBuf>,
        worker_binary: impl Into<PathBuf>,
        coordinator_ports: Vec<u16>,
    ) -> Self {
        Self {
            coordinator_binary: coordinator_binary.into(),
            worker_binary: worker_binary.into(),
            coordinator_ports,
            coordinator_args: Vec::new(),
            worker_args: Vec::new(),
            ready_timeout: Duration::from_secs(90),
        }
    }

    /// The coordinators' gRPC URLs, comma-separated (for `--coordinator-addr` and `ktctl`).
    pub fn coordinator_urls(&self) -> String {
        self.coordinator_ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl ShardConfig {
    /// The configuration of the coordinators and workers running on a devcluster: the binaries
    /// they were started from and the coordinators' gRPC ports (from `endpoints.json`), default
    /// flags otherwise. For scaling a system someone else started (`cargo xtask up`, a test).
    pub fn of_running(endpoints: &Endpoints) -> Result<Self> {
        let coordinator = running(endpoints, "coordinator-")
            .into_iter()
            .next()
            .ok_or_else(|| Error::Scale {
                message: "no coordinator runs (start the system with `cargo xtask up`)".into(),
            })?;
        let worker_binary = running(endpoints, "worker-")
            .into_iter()
            .next()
            .map(|w| w.program)
            .or_else(|| {
                coordinator
                    .program
                    .parent()
                    .map(|dir| dir.join("kubetemplater-worker"))
            })
            .ok_or_else(|| Error::Scale {
                message: "cannot tell where the worker binary is".into(),
            })?;
        let urls = endpoints
            .addresses
            .get(COORDINATOR_ADDRESSES)
            .ok_or_else(|| Error::Scale {
                message: format!("endpoints.json has no `{COORDINATOR_ADDRESSES}` address"),
            })?;
        let coordinator_ports = urls
            .split(',')
            .map(|url| {
                url.rsplit(':')
                    .next()
                    .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                    .ok_or_else(|| Error::Scale {
                        message: format!("coordinator address {url:?} has no port"),
                    })
            })
            .collect::<Result<Vec<u16>>>()?;
        Ok(Self::new(
            coordinator.program,
            worker_binary,
            coordinator_ports,
        ))
    }
}

/// What [`scale_workers`] changed.
#[derive(Debug, Default)]
pub struct Scaled {
    /// Workers stopped (gracefully: each handed its buckets over first).
    pub stopped: Vec<String>,
    /// Workers started, ready.
    pub started: Vec<Component>,
}

/// Brings the number of running workers to `wanted`: stops the highest-numbered ones with
/// SIGTERM (each hands its buckets over before it exits) or starts the lowest free identities
/// and waits until they are ready.
pub async fn scale_workers(
    layout: &Layout,
    endpoints: &Endpoints,
    config: &ShardConfig,
    wanted: usize,
) -> Result<Scaled> {
    if wanted > crate::pki::WORKER_IDENTITIES {
        return Err(Error::Scale {
            message: format!(
                "{wanted} workers wanted; devcluster has identities for {}",
                crate::pki::WORKER_IDENTITIES
            ),
        });
    }
    let mut workers: Vec<(usize, ProcessRecord)> = running(endpoints, "worker-")
        .into_iter()
        .filter_map(|r| Some((r.component.strip_prefix("worker-")?.parse().ok()?, r)))
        .collect();
    workers.sort_by_key(|(i, _)| *i);
    let mut scaled = Scaled::default();
    if workers.len() > wanted {
        for (_, record) in workers.drain(wanted..).rev() {
            record.stop(Duration::from_secs(40));
            scaled.stopped.push(record.component);
        }
    } else if workers.len() < wanted {
        let taken: Vec<usize> = workers.iter().map(|(i, _)| *i).collect();
        let new: Vec<usize> = (0..crate::pki::WORKER_IDENTITIES)
            .filter(|i| !taken.contains(i))
            .take(wanted - workers.len())
            .collect();
        scaled.started = start_workers(layout, endpoints, config, new).await?;
    }
    Ok(scaled)
}

/// Starts the coordinators (all of them serve gRPC; one leads) and waits until each is ready.
pub async fn start_coordinators(
    layout: &Layout,
    endpoints: &Endpoints,
    config: &ShardConfig,
) -> Result<Vec<Component>> {
    let mut started = Vec::new();
    for (i, port) in config.coordinator_ports.iter().enumerate() {
        let identity = format!("coordinator-{i}");
        let admin_port = crate::cluster::free_port()?;
        let mut args: Vec<String> = [
            "--id",
            &identity,
            "--grpc-addr",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            SYSTEM_NAMESPACE,
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(config.coordinator_args.iter().cloned());
        started.push(
            spawn_component(
                layout,
                endpoints,
                &identity,
                &config.coordinator_binary,
                &args,
                admin_port,
            )
            .await?,
        );
    }
    let addresses = vec![(COORDINATOR_ADDRESSES.to_owned(), config.coordinator_urls())];
    wait_all_ready(layout, started, &addresses, config.ready_timeout).await
}

/// Starts workers `worker-<i>` for every `i` in `ids` and waits until each is ready (Lease
/// held, policy cache synced, session with the leader open).
pub async fn start_workers(
    layout: &Layout,
    endpoints: &Endpoints,
    config: &ShardConfig,
    ids: impl IntoIterator<Item = usize>,
) -> Result<Vec<Component>> {
    let mut started = Vec::new();
    for i in ids {
        let identity = format!("worker-{i}");
        let admin_port = crate::cluster::free_port()?;
        let mut args: Vec<String> = [
            "--worker-id",
            &identity,
            "--coordinator-addr",
            &config.coordinator_urls(),
            "--namespace",
            SYSTEM_NAMESPACE,
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(config.worker_args.iter().cloned());
        started.push(
            spawn_component(
                layout,
                endpoints,
                &identity,
                &config.worker_binary,
                &args,
                admin_port,
            )
            .await?,
        );
    }
    wait_all_ready(layout, started, &[], config.ready_timeout).await
}

async fn spawn_component(
    layout: &Layout,
    endpoints: &Endpoints,
    identity: &str,
    binary: &Path,
    args: &[String],
    admin_port: u16,
) -> Result<(process::Started, String)> {
    let env = component_env(endpoints, identity).await?;
    let process = process::spawn_with_env(identity, binary, args, &env, &layout.log(identity))?;
    Ok((process, format!("http://127.0.0.1:{admin_port}")))
}

/// Records `started` (so `down` stops them even if waiting fails), then waits for each; on a
/// failure stops them all.
async fn wait_all_ready(
    layout: &Layout,
    started: Vec<(process::Started, String)>,
    addresses: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<Component>> {
    let records: Vec<_> = started.iter().map(|(p, _)| p.record.clone()).collect();
    let mut addresses = addresses.to_vec();
    addresses.extend(
        started
            .iter()
            .map(|(p, admin)| (format!("{}.admin", p.record.component), admin.clone())),
    );
    record_components(layout, &records, &addresses)?;
    let mut components = Vec::new();
    for (mut process, admin) in started {
        if let Err(error) = wait_ready(&mut process, &admin, timeout).await {
            for record in &records {
                record.stop(Duration::from_secs(5));
            }
            return Err(error);
        }
        components.push(Component {
            record: process.record,
            admin,
        });
    }
    Ok(components)
}

/// Environment of a component process: a kubeconfig for its chart ServiceAccount with a token
/// bound to a Pod of its name ([`crate::identity`]) and OTLP export to Jaeger.
pub async fn component_env(endpoints: &Endpoints, identity: &str) -> Result<Vec<(String, String)>> {
    let kubeconfig = crate::identity::service_account_kubeconfig(
        &endpoints.kubeconfig,
        &endpoints.kubeconfigs,
        identity,
    )
    .await?;
    let mut env = vec![
        ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
            format!("service.instance.id={identity}"),
        ),
        // Export spans quickly so tests and people see them in Jaeger within a second.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ];
    if let Some(jaeger) = &endpoints.jaeger {
        env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            jaeger.otlp_grpc.clone(),
        ));
    }
    Ok(env)
}

async fn wait_ready(process: &mut process::Started, admin: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let url = format!("{admin}/readyz");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|source| Error::Http {
            action: "building an HTTP client for readiness probes",
            source,
        })?;
    loop {
        process.check_running()?;
        let last = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => response.text().await.unwrap_or_default().trim().to_owned(),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                component: process.record.component.clone(),
                seconds: timeout.as_secs(),
                last,
                log: process.record.log.clone(),
                tail: process::tail_of(&process.record.log, 25),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
