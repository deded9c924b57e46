//! Starting, finding and stopping one local control plane: etcd, kube-apiserver,
//! kube-controller-manager, kwok with its fake Nodes, kube-scheduler and (optionally) Jaeger.

pub mod kwok;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::pki::{self, Pki};
use crate::process::{self, ProcessRecord, Started, tail_of};
use crate::toolchain::KUBERNETES_VERSION;
use crate::{kubeconfig, toolchain};

/// Controllers of kube-controller-manager that run without nodes.
pub const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "replicationcontroller-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "disruption-controller",
    "resourcequota-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
];

/// The ports one control plane listens on (all on 127.0.0.1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ports {
    /// etcd client port.
    pub etcd: u16,
    /// kube-apiserver HTTPS port.
    pub apiserver: u16,
    /// Jaeger OTLP/gRPC receiver.
    pub otlp_grpc: u16,
    /// Jaeger OTLP/HTTP receiver.
    pub otlp_http: u16,
    /// Jaeger query HTTP API and UI.
    pub jaeger_query: u16,
    /// Jaeger query gRPC API.
    pub jaeger_query_grpc: u16,
    /// Jaeger health check.
    pub jaeger_health: u16,
}

impl Default for Ports {
    /// The shared cluster's well-known ports.
    fn default() -> Self {
        Self {
            etcd: 23790,
            apiserver: 6443,
            otlp_grpc: 4317,
            otlp_http: 4318,
            jaeger_query: 16686,
            jaeger_query_grpc: 16685,
            jaeger_health: 13133,
        }
    }
}

impl Ports {
    /// Free ports chosen by the kernel, for a private cluster.
    pub fn free() -> Result<Self> {
        Ok(Self {
            etcd: free_port()?,
            apiserver: free_port()?,
            otlp_grpc: free_port()?,
            otlp_http: free_port()?,
            jaeger_query: free_port()?,
            jaeger_query_grpc: free_port()?,
            jaeger_health: free_port()?,
        })
    }

    fn claims(&self, jaeger: bool) -> Vec<(&'static str, u16)> {
        let mut claims = vec![("etcd", self.etcd), ("kube-apiserver", self.apiserver)];
        if jaeger {
            claims.extend([
                ("jaeger (OTLP gRPC)", self.otlp_grpc),
                ("jaeger (OTLP HTTP)", self.otlp_http),
                ("jaeger (query)", self.jaeger_query),
                ("jaeger (query gRPC)", self.jaeger_query_grpc),
                ("jaeger (health)", self.jaeger_health),
            ]);
        }
        claims
    }
}

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range.
///
/// Ports the kernel hands out for `bind(0)` come from the same range as the source ports
/// of outgoing connections, so a port found free that way can be taken by any client
/// connection before the component binds it (a real failure we saw in CI). Ports below
/// `net.ipv4.ip_local_port_range` are only ever taken by explicit binds. Ports handed out
/// by this process are remembered so two private clusters in one test binary never get
/// the same one.
pub fn free_port() -> Result<u16> {
    use rand::Rng;
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    let (low, high) = non_ephemeral_range();
    let mut rng = rand::rng();
    for _ in 0..512 {
        let port = rng.random_range(low..high);
        let mut seen = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            seen.insert(port);
            return Ok(port);
        }
    }
    // Every probe was busy: let the kernel choose (may race, but start() retries).
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding", "127.0.0.1:0"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(Error::io("reading address of", "127.0.0.1:0"))
}

/// `[low, high)` of ports below the kernel's ephemeral range and above the well-known ones.
fn non_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|w| w.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    if ephemeral_low > 20_000 + 1_000 {
        (20_000, ephemeral_low)
    } else {
        // An unusual kernel setting: use the range above the ephemeral one's default top.
        (61_000, 65_000)
    }
}

fn ensure_port_free(component: &'static str, port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|_| Error::PortBusy { component, port })
}

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where state, logs and certificates go.
    pub layout: Layout,
    /// Ports to listen on.
    pub ports: Ports,
    /// Whether to run Jaeger too.
    pub jaeger: bool,
    /// How long to wait for each component to become ready.
    pub ready_timeout: Duration,
}

impl ClusterConfig {
    /// The shared cluster: `.local/`, well-known ports, with Jaeger.
    pub fn shared() -> Self {
        Self {
            layout: Layout::shared(),
            ports: Ports::default(),
            jaeger: true,
            ready_timeout: Duration::from_secs(120),
        }
    }

    /// A private cluster in `dir` on free ports.
    pub fn private(dir: impl Into<PathBuf>, jaeger: bool) -> Result<Self> {
        Ok(Self {
            layout: Layout::new(dir),
            ports: Ports::free()?,
            jaeger,
            ready_timeout: Duration::from_secs(120),
        })
    }
}

/// Jaeger's addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JaegerEndpoints {
    /// OTLP over gRPC (`OTEL_EXPORTER_OTLP_ENDPOINT` for gRPC exporters).
    pub otlp_grpc: String,
    /// OTLP over HTTP.
    pub otlp_http: String,
    /// Query HTTP API and UI (`/api/traces`, `/search`).
    pub query: String,
    /// Query gRPC API (host:port).
    pub query_grpc: String,
}

/// Everything a client needs to find the running control plane; written to `endpoints.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// kube-apiserver URL.
    pub apiserver: String,
    /// etcd client URL.
    pub etcd: String,
    /// Jaeger, when running.
    pub jaeger: Option<JaegerEndpoints>,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory holding one kubeconfig per component identity.
    pub kubeconfigs: PathBuf,
    /// CA certificate that signed kube-apiserver's serving certificate.
    pub ca_cert: PathBuf,
    /// kube-apiserver's audit log (JSON lines, one per write).
    pub audit_log: PathBuf,
    /// Directory of process logs.
    pub logs: PathBuf,
    /// Kubernetes version of the binaries.
    pub kubernetes_version: String,
    /// Ports in use.
    pub ports: Ports,
    /// Control-plane processes, in start order.
    pub processes: Vec<ProcessRecord>,
    /// Processes of our own components started on top (coordinator, workers, webhook …).
    #[serde(default)]
    pub components: Vec<ProcessRecord>,
    /// Extra named addresses published by components (e.g. `webhook`).
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
}

impl Endpoints {
    /// Reads `endpoints.json` from `layout`; `Ok(None)` when there is none.
    pub fn load(layout: &Layout) -> Result<Option<Self>> {
        let path = layout.endpoints_file();
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::BadState {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                action: "reading",
                path,
                source: e,
            }),
        }
    }

    /// Writes `endpoints.json` into `layout`.
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.endpoints_file();
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(Error::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("writing", &path))
    }

    /// Whether every recorded control-plane process is alive.
    pub fn processes_alive(&self) -> bool {
        self.processes.iter().all(ProcessRecord::is_alive)
    }

    /// Whether the recorded cluster is alive and kube-apiserver answers `/readyz`.
    pub async fn is_live(&self) -> bool {
        if !self.processes_alive() {
            return false;
        }
        let Ok(ca) = fs::read_to_string(&self.ca_cert) else {
            return false;
        };
        let Ok(token) = admin_token(&self.kubeconfig) else {
            return false;
        };
        let Ok(http) = https_client(&ca) else {
            return false;
        };
        probe_readyz(&http, &self.apiserver, &token).await.is_ok()
    }

    /// The kubeconfig of a component identity.
    pub fn kubeconfig_for(&self, identity: &str) -> PathBuf {
        self.kubeconfigs.join(format!("{identity}.kubeconfig"))
    }

    /// A Kubernetes client for the admin identity.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

/// A Kubernetes client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let config = config_from_kubeconfig(path).await?;
    kube::Client::try_from(config).map_err(Error::kube(format!(
        "loading kubeconfig {}",
        path.display()
    )))
}

/// The client configuration of a kubeconfig file's current context (its credentials too).
pub async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config> {
    let action = format!("loading kubeconfig {}", path.display());
    let config = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kube {
        action: action.clone(),
        source: Box::new(e),
    })?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kube {
                action,
                source: Box::new(e),
            })?;
    Ok(config)
}

fn admin_token(kubeconfig: &Path) -> Result<String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| Error::BadState {
        path: kubeconfig.to_path_buf(),
        message: e.to_string(),
    })?;
    config
        .auth_infos
        .iter()
        .find_map(|a| a.auth_info.as_ref().and_then(|i| i.token.as_ref()))
        .map(|t| {
            use secrecy::ExposeSecret;
            t.expose_secret().to_string()
        })
        .ok_or_else(|| Error::BadState {
            path: kubeconfig.to_path_buf(),
            message: "no token in kubeconfig".into(),
        })
}

fn https_client(ca_pem: &str) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|source| Error::Http {
        action: "parsing the devcluster CA",
        source,
    })?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| Error::Http {
            action: "building an HTTPS client",
            source,
        })
}

async fn probe_readyz(
    http: &reqwest::Client,
    apiserver: &str,
    token: &str,
) -> std::result::Result<(), String> {
    let resp = http
        .get(format!("{apiserver}/readyz"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        let failing: Vec<&str> = body.lines().filter(|l| l.contains("[-]")).collect();
        Err(format!("/readyz answered {status}: {}", failing.join("; ")))
    }
}

async fn probe_http(http: &reqwest::Client, url: &str) -> std::result::Result<(), String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", resp.status()))
    }
}

/// A running control plane this process started (or found).
#[derive(Debug)]
pub struct Cluster {
    /// Its layout.
    pub layout: Layout,
    /// Its endpoints.
    pub endpoints: Endpoints,
    /// Whether this process started it (and so may stop it).
    pub started_here: bool,
}

impl Cluster {
    /// Stops every process of this cluster, components first.
    pub fn stop(&self) -> Result<()> {
        stop(&self.layout)
    }
}

/// Holds an exclusive lock on a state directory while starting or stopping it.
#[derive(Debug)]
struct DirLock(File);

impl DirLock {
    fn acquire(layout: &Layout) -> Result<Self> {
        let root = layout.root();
        fs::create_dir_all(root).map_err(Error::io("creating", root))?;
        let path = layout.lock_file();
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        file.lock().map_err(Error::io("locking", &path))?;
        Ok(Self(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Starts the control plane described by `config`, or returns the one already running there.
///
/// Binaries are built first when missing or stale. On any failure everything started so far is
/// stopped again.
pub async fn start(config: &ClusterConfig) -> Result<Cluster> {
    let layout = &config.layout;
    let tools: Vec<toolchain::Tool> = toolchain::Tool::ALL
        .into_iter()
        .filter(|&t| config.jaeger || t != toolchain::Tool::Jaeger)
        .collect();
    toolchain::ensure_tools_built(layout, &tools)?;
    let _lock = DirLock::acquire(layout)?;
    if let Some(existing) = Endpoints::load(layout)? {
        if existing.is_live().await {
            return Ok(Cluster {
                layout: layout.clone(),
                endpoints: existing,
                started_here: false,
            });
        }
        // A dead or half-dead cluster: clear it before starting afresh.
        stop_recorded(&existing);
        let _ = fs::remove_file(layout.endpoints_file());
    }
    let mut started: Vec<Started> = Vec::new();
    match start_fresh(config, &mut started).await {
        Ok(endpoints) => {
            endpoints.save(layout)?;
            Ok(Cluster {
                layout: layout.clone(),
                endpoints,
                started_here: true,
            })
        }
        Err(err) => {
            for s in started.iter().rev() {
                s.record.stop(Duration::from_secs(5));
            }
            Err(err)
        }
    }
}

async fn start_fresh(config: &ClusterConfig, started: &mut Vec<Started>) -> Result<Endpoints> {
    let layout = &config.layout;
    let ports = config.ports;
    for (component, port) in ports.claims(config.jaeger) {
        ensure_port_free(component, port)?;
    }
    // A fresh start is a fresh cluster: no data or audit entries from an earlier run.
    let etcd_dir = layout.etcd_data_dir();
    if etcd_dir.exists() {
        fs::remove_dir_all(&etcd_dir).map_err(Error::io("removing", &etcd_dir))?;
    }
    let logs = layout.logs_dir();
    fs::create_dir_all(&logs).map_err(Error::io("creating", &logs))?;
    let _ = fs::remove_file(layout.audit_log());
    let config_dir = layout.config_dir();
    fs::create_dir_all(&config_dir).map_err(Error::io("creating", &config_dir))?;
    let pki = pki::ensure(&layout.pki_dir())?;
    let ca_pem = pki.ca_pem()?;
    let http = https_client(&ca_pem)?;

    // etcd
    let etcd_url = format!("http://127.0.0.1:{}", ports.etcd);
    let mut etcd = process::spawn(
        "etcd",
        &layout.bin("etcd"),
        &etcd_args(layout, &etcd_url),
        &layout.log("etcd"),
    )?;
    let etcd_health = format!("{etcd_url}/health");
    let result = wait_ready(config, "etcd", &mut etcd, started, || {
        probe_http(&http, &etcd_health)
    })
    .await;
    started.push(etcd);
    result?;

    // kube-apiserver
    let apiserver_url = format!("https://127.0.0.1:{}", ports.apiserver);
    let audit_policy = config_dir.join("audit-policy.yaml");
    fs::write(&audit_policy, AUDIT_POLICY).map_err(Error::io("writing", &audit_policy))?;
    let args = apiserver_args(layout, &pki, &etcd_url, ports.apiserver, &audit_policy);
    let mut apiserver = process::spawn(
        "kube-apiserver",
        &layout.bin("kube-apiserver"),
        &args,
        &layout.log("kube-apiserver"),
    )?;
    let admin = pki
        .identity("admin")
        .map(|i| i.token.clone())
        .unwrap_or_default();
    let result = wait_ready(config, "kube-apiserver", &mut apiserver, started, || {
        probe_readyz(&http, &apiserver_url, &admin)
    })
    .await;
    started.push(apiserver);
    result?;

    // kubeconfigs
    for identity in &pki.identities {
        kubeconfig::write(
            &layout.kubeconfig_for(&identity.name),
            &apiserver_url,
            &ca_pem,
            identity,
        )?;
    }
    if let Some(admin) = pki.identity("admin") {
        kubeconfig::write(&layout.admin_kubeconfig(), &apiserver_url, &ca_pem, admin)?;
    }

    // kube-controller-manager: ready once the serviceaccount controller has made `default/default`.
    let args = controller_manager_args(layout, &pki);
    let mut kcm = process::spawn(
        "kube-controller-manager",
        &layout.bin("kube-controller-manager"),
        &args,
        &layout.log("kube-controller-manager"),
    )?;
    let client = client_from_kubeconfig(&layout.admin_kubeconfig()).await?;
    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), "default");
    let result = wait_ready(
        config,
        "kube-controller-manager",
        &mut kcm,
        started,
        || async {
            match sas.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("serviceaccount default/default not created yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    started.push(kcm);
    result?;

    // kwok, ready once it has made the fake Nodes Ready.
    let kwok_dir = config_dir.join("kwok");
    fs::create_dir_all(&kwok_dir).map_err(Error::io("creating", &kwok_dir))?;
    let kwok_config = kwok_dir.join("kwok.yaml");
    fs::write(&kwok_config, kwok::STAGES).map_err(Error::io("writing", &kwok_config))?;
    let mut kwok_process = process::spawn_with_env(
        "kwok",
        &layout.bin("kwok"),
        &kwok::kwok_args(&layout.kubeconfig_for("kwok"), &kwok_config),
        &[("KWOK_WORKDIR".to_string(), kwok_dir.display().to_string())],
        &layout.log("kwok"),
    )?;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let result = match kwok::create_fake_nodes(&nodes).await {
        Ok(()) => {
            wait_ready(config, "kwok", &mut kwok_process, started, || {
                kwok::fake_nodes_ready(&nodes)
            })
            .await
        }
        Err(e) => Err(e),
    };
    started.push(kwok_process);
    result?;

    // kube-scheduler, ready once a probe pod is scheduled on a fake Node and kwok made it Ready.
    let scheduler_config = config_dir.join("kube-scheduler.yaml");
    fs::write(
        &scheduler_config,
        kwok::scheduler_config_yaml(&layout.kubeconfig_for("kube-scheduler")),
    )
    .map_err(Error::io("writing", &scheduler_config))?;
    let mut scheduler = process::spawn(
        "kube-scheduler",
        &layout.bin("kube-scheduler"),
        &kwok::scheduler_args(&scheduler_config),
        &layout.log("kube-scheduler"),
    )?;
    let probe_pods = kwok::probe_pods(client.clone());
    let result = match kwok::create_probe_pod(&probe_pods).await {
        Ok(()) => {
            wait_ready(config, "kube-scheduler", &mut scheduler, started, || {
                kwok::probe_pod_ready(&probe_pods)
            })
            .await
        }
        Err(e) => Err(e),
    };
    started.push(scheduler);
    result?;
    kwok::delete_probe_pod(&probe_pods).await?;

    // Jaeger
    let jaeger = if config.jaeger {
        let jaeger_config = config_dir.join("jaeger.yaml");
        fs::write(&jaeger_config, jaeger_config_yaml(&ports))
            .map_err(Error::io("writing", &jaeger_config))?;
        let args = vec![format!("--config={}", jaeger_config.display())];
        let mut jaeger = process::spawn(
            "jaeger",
            &layout.bin("jaeger"),
            &args,
            &layout.log("jaeger"),
        )?;
        let query = format!("http://127.0.0.1:{}", ports.jaeger_query);
        let services = format!("{query}/api/services");
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| Error::Http {
                action: "building an HTTP client",
                source,
            })?;
        let result = wait_ready(config, "jaeger", &mut jaeger, started, || {
            probe_http(&plain, &services)
        })
        .await;
        started.push(jaeger);
        result?;
        Some(JaegerEndpoints {
            otlp_grpc: format!("http://127.0.0.1:{}", ports.otlp_grpc),
            otlp_http: format!("http://127.0.0.1:{}", ports.otlp_http),
            query,
            query_grpc: format!("127.0.0.1:{}", ports.jaeger_query_grpc),
        })
    } else {
        None
    };

    Ok(Endpoints {
        apiserver: apiserver_url,
        etcd: etcd_url,
        jaeger,
        kubeconfig: layout.admin_kubeconfig(),
        kubeconfigs: layout.kubeconfigs_dir(),
        ca_cert: pki.ca_cert.clone(),
        audit_log: layout.audit_log(),
        logs: layout.logs_dir(),
        kubernetes_version: KUBERNETES_VERSION.to_string(),
        ports,
        processes: started.iter().map(|s| s.record.clone()).collect(),
        components: Vec::new(),
        addresses: BTreeMap::new(),
    })
}

/// Waits until `probe` succeeds for `process`, failing at once when it or any process started
/// before it (`earlier`) exits.
async fn wait_ready<F, Fut>(
    config: &ClusterConfig,
    component: &'static str,
    process: &mut Started,
    earlier: &mut [Started],
    probe: F,
) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let started = Instant::now();
    let mut last = String::from("not probed yet");
    while started.elapsed() < config.ready_timeout {
        process.check_running()?;
        for p in earlier.iter_mut() {
            p.check_running()?;
        }
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::NotReady {
        component: component.to_owned(),
        seconds: config.ready_timeout.as_secs(),
        last,
        tail: tail_of(&process.record.log, 25),
        log: process.record.log.clone(),
    })
}

fn etcd_args(layout: &Layout, url: &str) -> Vec<String> {
    vec![
        "--name=devcluster".into(),
        format!("--data-dir={}", layout.etcd_data_dir().display()),
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        // A throwaway single member: no peers, no fsync.
        "--listen-peer-urls=http://127.0.0.1:0".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:0".into(),
        "--initial-cluster=devcluster=http://127.0.0.1:0".into(),
        "--unsafe-no-fsync=true".into(),
        "--quota-backend-bytes=8589934592".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(
    layout: &Layout,
    pki: &Pki,
    etcd_url: &str,
    port: u16,
    audit_policy: &Path,
) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        // No kubelets, no other apiservers: the `kubernetes` service endpoints are not reconciled.
        "--endpoint-reconciler-type=none".into(),
        format!("--tls-cert-file={}", p(&pki.server_cert)),
        format!("--tls-private-key-file={}", p(&pki.server_key)),
        format!("--client-ca-file={}", p(&pki.ca_cert)),
        format!("--token-auth-file={}", p(&pki.tokens)),
        "--authorization-mode=RBAC".into(),
        "--anonymous-auth=false".into(),
        format!("--service-account-issuer=https://127.0.0.1:{port}"),
        format!("--service-account-key-file={}", p(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
        "--service-cluster-ip-range=10.0.0.0/16".into(),
        // The ServiceAccount admission plugin rejects pods in namespaces whose `default`
        // ServiceAccount the controller has not created yet; envtest disables it too.
        // TaintNodesByCondition gives every new Node the not-ready NoSchedule taint, which only
        // the node-lifecycle controller (not run here) removes: kwok's fake Nodes would never
        // take a pod.
        "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".into(),
        format!("--audit-policy-file={}", p(audit_policy)),
        format!("--audit-log-path={}", p(&layout.audit_log())),
        "--audit-log-mode=blocking".into(),
        "--audit-log-format=json".into(),
        "--audit-log-maxsize=0".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn controller_manager_args(layout: &Layout, pki: &Pki) -> Vec<String> {
    vec![
        format!(
            "--kubeconfig={}",
            layout.kubeconfig_for("kube-controller-manager").display()
        ),
        format!("--controllers={}", CONTROLLERS.join(",")),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        format!(
            "--service-account-private-key-file={}",
            pki.sa_key.display()
        ),
        "--use-service-account-credentials=false".into(),
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
        "--v=1".into(),
    ]
}

/// Audit policy: metadata of every write (with the user that made it); nothing for reads.
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"#;

fn jaeger_config_yaml(ports: &Ports) -> String {
    format!(
        r#"# Generated by devcluster: Jaeger all-in-one with in-memory storage, bound to loopback.
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#,
        health = ports.jaeger_health,
        query = ports.jaeger_query,
        query_grpc = ports.jaeger_query_grpc,
        otlp_grpc = ports.otlp_grpc,
        otlp_http = ports.otlp_http,
    )
}

fn stop_recorded(endpoints: &Endpoints) {
    for record in endpoints.components.iter().rev() {
        record.stop(Duration::from_secs(30));
    }
    for record in endpoints.processes.iter().rev() {
        record.stop(Duration::from_secs(10));
    }
}

/// Stops the cluster recorded in `layout` (components first, then the control plane) and
/// removes its endpoints file. Returns the records that were stopped.
pub fn stop(layout: &Layout) -> Result<()> {
    let _lock = DirLock::acquire(layout)?;
    if let Some(endpoints) = Endpoints::load(layout)? {
        stop_recorded(&endpoints);
        let path = layout.endpoints_file();
        fs::remove_file(&path).map_err(Error::io("removing", &path))?;
    }
    Ok(())
}

/// Records processes of our own components in the endpoints file, so `stop` ends them too.
pub fn record_components(
    layout: &Layout,
    records: &[ProcessRecord],
    addresses: &[(String, String)],
) -> Result<()> {
    let _lock = DirLock::acquire(layout)?;
    let mut endpoints = Endpoints::load(layout)?.ok_or_else(|| Error::NotRunning {
        path: layout.endpoints_file(),
    })?;
    endpoints
        .components
        .retain(|c| c.is_alive() && !records.iter().any(|r| r.component == c.component));
    endpoints.components.extend(records.iter().cloned());
    for (k, v) in addresses {
        endpoints.addresses.insert(k.clone(), v.clone());
    }
    endpoints.save(layout)
}

/// The last lines of a component's log, for error messages.
pub fn log_tail(layout: &Layout, component: &str, lines: usize) -> String {
    tail_of(&layout.log(component), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_port_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = ensure_port_free("kube-apiserver", port)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&port.to_string()) && err.contains("kube-apiserver"),
            "{err}"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = Ports::free().unwrap();
        let all = p
            .claims(true)
            .into_iter()
            .map(|(_, port)| port)
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(all.len(), 7);
    }

    #[test]
    fn jaeger_config_binds_loopback_only() {
        let yaml = jaeger_config_yaml(&Ports::default());
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let text = serde_yaml::to_string(&doc).unwrap();
        assert!(!text.contains("0.0.0.0"));
        assert!(text.contains("127.0.0.1:4317") && text.contains("127.0.0.1:16686"));
    }

    #[test]
    fn endpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert!(Endpoints::load(&layout).unwrap().is_none());
        let e = Endpoints {
            apiserver: "https://127.0.0.1:1".into(),
            etcd: "http://127.0.0.1:2".into(),
            jaeger: None,
            kubeconfig: "k".into(),
            kubeconfigs: "ks".into(),
            ca_cert: "ca".into(),
            audit_log: "a".into(),
            logs: "l".into(),
            kubernetes_version: KUBERNETES_VERSION.into(),
            ports: Ports::default(),
            processes: vec![],
            components: vec![],
            addresses: BTreeMap::new(),
        };
        e.save(&layout).unwrap();
        let back = Endpoints::load(&layout).unwrap().unwrap();
        assert_eq!(back.apiserver, e.apiserver);
        fs::write(layout.endpoints_file(), "{not json").unwrap();
        assert!(
            Endpoints::load(&layout)
                .unwrap_err()
                .to_string()
                .contains("endpoints.json")
        );
    }
}
