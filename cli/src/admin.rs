//! `ktctl workers | buckets | locate | handoffs | drain`: the coordinator's admin API, printed for
//! people (or as JSON with `--format json`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use proto::client::{Credentials, Tls, admin_client};
use proto::v1::{self, BucketState, WorkerState};

use crate::{EXIT_BAD_INPUT, EXIT_OK};

/// Where the coordinator is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The coordinators' gRPC URLs, comma-separated: the leader answers, a standby says it is
    /// not the leader and the next URL is tried (`cargo xtask up` runs two, on 9444 and 9445).
    #[arg(
        long,
        env = "KT_COORDINATOR",
        default_value = "https://127.0.0.1:9444,https://127.0.0.1:9445",
        value_delimiter = ',',
        global = true
    )]
    pub coordinator: Vec<String>,
    /// The kubeconfig (default: `$KUBECONFIG`, else `~/.kube/config`, else in-cluster): the
    /// cluster of `tenants`, and the credentials sent to the admin API.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The coordinators' namespace: where their CA bundle is published (ConfigMap
    /// kubetemplater-coordinator-ca), and the name their certificates carry
    /// (kubetemplater-coordinator.<namespace>.svc).
    #[arg(
        long,
        env = "KT_NAMESPACE",
        default_value = "kubetemplater-system",
        global = true
    )]
    pub coordinator_namespace: String,
    /// The coordinators' CA bundle (PEM) instead of the ConfigMap, e.g. with --token and no
    /// kubeconfig.
    #[arg(long, env = "KT_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// A Kubernetes bearer token for the admin API. Without it, the current kubeconfig's
    /// credentials are sent (token, token file or exec plugin). The coordinator checks the token
    /// (TokenReview) and the caller's RBAC: `get shards.kubetemplater.io` to inspect,
    /// `update` to drain or rebalance, in the coordinator's namespace.
    #[arg(long, env = "KT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format of the admin commands and `tenants`.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's answer as JSON.
    Json,
}

/// The admin commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Workers with their Lease state, buckets and load.
    Workers,
    /// The bucket map: per worker its buckets (as ranges) and objects; `--wide` lists every bucket.
    Buckets {
        /// One line per bucket.
        #[arg(long)]
        wide: bool,
    },
    /// Where a namespace's KubeTemplates are handled: bucket, worker, epoch.
    Locate {
        /// The namespace.
        namespace: String,
    },
    /// Recent handoffs.
    Handoffs {
        /// How many (newest first).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Move every bucket off a worker (it keeps running; its buckets go to the others).
    Drain {
        /// The worker id.
        worker: String,
    },
}

impl Connection {
    /// The credentials sent with every admin call: `--token`, else the kubeconfig's.
    pub async fn credentials(&self) -> Result<Credentials, String> {
        if let Some(token) = self.token.as_deref().filter(|t| !t.trim().is_empty()) {
            return Credentials::token(token.trim()).map_err(|e| e.to_string());
        }
        let config = self
            .kube_config()
            .await
            .map_err(|e| format!("the admin API needs credentials: {e}; or pass --token"))?;
        Credentials::from_kube_config(&config).map_err(|e| e.to_string())
    }

    /// Whom to trust: `--ca-file`, else the bundle the coordinators publish in the cluster.
    pub async fn tls(&self) -> Result<Tls, String> {
        if let Some(path) = &self.ca_file {
            let bundle = std::fs::read_to_string(path)
                .map_err(|e| format!("reading --ca-file {}: {e}", path.display()))?;
            return Ok(Tls::new(bundle, &self.coordinator_namespace));
        }
        let config = self.kube_config().await.map_err(|e| {
            format!("the coordinators' CA bundle is read from the cluster: {e}; or pass --ca-file")
        })?;
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("creating the Kubernetes client: {e}"))?;
        Tls::from_cluster(&client, &self.coordinator_namespace)
            .await
            .map_err(|e| e.to_string())
    }

    /// The client configuration of `--kubeconfig`, or from the usual places.
    pub async fn kube_config(&self) -> Result<kube::Config, String> {
        match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(
                    kubeconfig,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))
            }
            None => kube::Config::infer().await.map_err(|e| {
                format!("no usable kubeconfig (pass --kubeconfig or set KUBECONFIG): {e}")
            }),
        }
    }
}

/// Compresses sorted bucket numbers into ranges: `0-3, 7, 9-10`.
pub fn ranges(buckets: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = buckets.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(", ")
}

/// [`ranges`], cut after about `width` characters with the number of ranges left out, so a worker
/// with hundreds of scattered buckets stays one readable line (`--wide` lists every bucket).
pub fn ranges_short(buckets: &[u32], width: usize) -> String {
    let all = ranges(buckets);
    if all.len() <= width {
        return all;
    }
    let parts: Vec<&str> = all.split(", ").collect();
    let mut shown = String::new();
    let mut count = 0;
    for part in &parts {
        if !shown.is_empty() && shown.len() + part.len() + 2 > width {
            break;
        }
        if !shown.is_empty() {
            shown.push_str(", ");
        }
        shown.push_str(part);
        count += 1;
    }
    format!("{shown} … (+{} ranges)", parts.len() - count)
}

pub(crate) fn table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn worker_state(state: i32) -> &'static str {
    match WorkerState::try_from(state) {
        Ok(WorkerState::Alive) => "alive",
        Ok(WorkerState::Expired) => "expired",
        Ok(WorkerState::Draining) => "draining",
        _ => "unknown",
    }
}

fn bucket_state(state: i32) -> &'static str {
    match BucketState::try_from(state) {
        Ok(BucketState::Owned) => "owned",
        Ok(BucketState::Revoking) => "revoking",
        Ok(BucketState::Granting) => "granting",
        Ok(BucketState::Unassigned) => "unassigned",
        _ => "unknown",
    }
}

/// A current-thread runtime for one command; `None` (said on `err`) when it cannot start.
pub(crate) fn runtime(err: &mut dyn Write) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            let _ = writeln!(err, "ktctl: starting the async runtime: {e}");
            None
        }
    }
}

/// Runs an admin command; returns the exit code.
pub fn run(
    connection: &Connection,
    command: &AdminCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let Some(runtime) = runtime(err) else {
        return EXIT_BAD_INPUT;
    };
    match runtime.block_on(call_leader(connection, command, out)) {
        Ok(()) => EXIT_OK,
        Err(message) => {
            let _ = writeln!(err, "ktctl: {message}");
            EXIT_BAD_INPUT
        }
    }
}

/// Why one coordinator could not answer.
enum CallError {
    /// Unreachable, or a standby: another address may answer.
    TryNext(String),
    /// A definite answer (bad request, output failed).
    Final(String),
}

/// Runs `command` against the first coordinator that leads.
async fn call_leader(
    connection: &Connection,
    command: &AdminCommand,
    out: &mut dyn Write,
) -> Result<(), String> {
    let credentials = connection.credentials().await?;
    let tls = connection.tls().await?;
    let mut tried = Vec::new();
    for address in connection
        .coordinator
        .iter()
        .filter(|a| !a.trim().is_empty())
    {
        match call(
            address.trim(),
            &credentials,
            &tls,
            connection.format,
            command,
            out,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(CallError::Final(message)) => return Err(message),
            Err(CallError::TryNext(message)) => tried.push(message),
        }
    }
    if tried.is_empty() {
        return Err("--coordinator names no address".to_owned());
    }
    Err(format!(
        "no coordinator answered as leader: {}",
        tried.join("; ")
    ))
}

/// The leader's bucket map, trying the addresses of `connection` in order as the admin commands
/// do (a standby or an unreachable address is skipped). Connecting and the call are bounded, so
/// a command that only decorates its output with owners does not hang on a filtered address.
pub async fn bucket_map(connection: &Connection) -> Result<v1::GetBucketMapResponse, String> {
    if connection.coordinator.iter().all(|a| a.trim().is_empty()) {
        return Err("--coordinator names no address".to_owned());
    }
    let credentials = connection.credentials().await?;
    let tls = connection.tls().await?;
    proto::client::leader(&connection.coordinator, &credentials, &tls)
        .await
        .map(|(_, map)| map)
        .map_err(|e| e.to_string())
}

async fn call(
    address: &str,
    credentials: &Credentials,
    tls: &Tls,
    format: Format,
    command: &AdminCommand,
    out: &mut dyn Write,
) -> Result<(), CallError> {
    let endpoint = tls
        .endpoint(address)
        .map_err(|e| CallError::Final(format!("coordinator address {address:?}: {e}")))?;
    let mut client = admin_client(endpoint, credentials)
        .await
        .map_err(|e| CallError::TryNext(format!("cannot reach {address}: {e}")))?;
    let status = |e: tonic::Status| {
        let message = format!("{address} answered {:?}: {}", e.code(), e.message());
        if e.code() == tonic::Code::Unavailable {
            CallError::TryNext(message)
        } else {
            CallError::Final(message)
        }
    };
    let json = format == Format::Json;
    let io = |e: std::io::Error| CallError::Final(format!("writing the output: {e}"));
    match command {
        AdminCommand::Workers => {
            let r = client
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(out, &workers_json(&r)).map_err(io);
            }
            let rows: Vec<Vec<String>> = r
                .workers
                .iter()
                .map(|w| {
                    let load = w.load.clone().unwrap_or_default();
                    vec![
                        w.id.clone(),
                        worker_state(w.state).to_owned(),
                        if w.connected { "yes" } else { "no" }.to_owned(),
                        w.buckets_owned.to_string(),
                        load.objects_owned.to_string(),
                        load.queue_depth.to_string(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "WORKER",
                    "STATE",
                    "CONNECTED",
                    "BUCKETS",
                    "OBJECTS",
                    "QUEUE",
                ],
                &rows,
            )
            .map_err(io)
        }
        AdminCommand::Buckets { wide } => {
            let r = client
                .get_bucket_map(v1::GetBucketMapRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(out, &map_json(&r)).map_err(io);
            }
            writeln!(
                out,
                "{} buckets, leader {} (term {})",
                r.bucket_count, r.leader_id, r.leader_epoch
            )
            .map_err(io)?;
            if *wide {
                let rows: Vec<Vec<String>> = r
                    .buckets
                    .iter()
                    .map(|b| {
                        vec![
                            b.bucket.to_string(),
                            if b.owner.is_empty() {
                                "-".to_owned()
                            } else {
                                b.owner.clone()
                            },
                            b.epoch.to_string(),
                            b.objects.to_string(),
                            bucket_state(b.state).to_owned(),
                            b.next_owner.clone(),
                        ]
                    })
                    .collect();
                return table(
                    out,
                    &["BUCKET", "OWNER", "EPOCH", "OBJECTS", "STATE", "NEXT"],
                    &rows,
                )
                .map_err(io);
            }
            let mut per: BTreeMap<String, (Vec<u32>, u64, Vec<u32>)> = BTreeMap::new();
            for b in &r.buckets {
                let owner = if b.owner.is_empty() {
                    "(unassigned)".to_owned()
                } else {
                    b.owner.clone()
                };
                let entry = per.entry(owner).or_default();
                entry.0.push(b.bucket);
                entry.1 += b.objects;
                if b.state == BucketState::Revoking as i32 {
                    entry.2.push(b.bucket);
                }
            }
            let rows: Vec<Vec<String>> = per
                .iter()
                .map(|(owner, (buckets, objects, moving))| {
                    vec![
                        owner.clone(),
                        buckets.len().to_string(),
                        objects.to_string(),
                        if moving.is_empty() {
                            String::new()
                        } else {
                            ranges_short(moving, 30)
                        },
                        ranges_short(buckets, 60),
                    ]
                })
                .collect();
            table(
                out,
                &["WORKER", "BUCKETS", "OBJECTS", "MOVING", "RANGES"],
                &rows,
            )
            .map_err(io)
        }
        AdminCommand::Locate { namespace } => {
            let r = client
                .locate(v1::LocateRequest::namespace(namespace.clone()))
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(
                    out,
                    &serde_json::json!({"namespace": namespace, "shardKey": r.shard_key, "bucket": r.bucket, "owner": r.owner, "epoch": r.epoch, "state": bucket_state(r.state)}),
                )
                .map_err(io);
            }
            let owner = if r.owner.is_empty() {
                "no worker yet"
            } else {
                r.owner.as_str()
            };
            writeln!(
                out,
                "namespace {namespace} -> bucket {} -> {owner} (epoch {}, {})",
                r.bucket,
                r.epoch,
                bucket_state(r.state)
            )
            .map_err(io)
        }
        AdminCommand::Handoffs { limit } => {
            let r = client
                .list_handoffs(v1::ListHandoffsRequest { limit: *limit })
                .await
                .map_err(status)?
                .into_inner();
            let rows: Vec<Vec<String>> = r
                .handoffs
                .iter()
                .map(|h| {
                    let buckets: Vec<u32> = h.buckets.iter().map(|b| b.bucket).collect();
                    let duration = h
                        .duration
                        .and_then(|d| std::time::Duration::try_from(d).ok())
                        .map(|d| format!("{:.0?}", d))
                        .unwrap_or_else(|| "-".to_owned());
                    vec![
                        h.id.clone(),
                        proto::handoff_reason_name(h.reason).to_owned(),
                        duration,
                        if h.from.is_empty() {
                            "-".to_owned()
                        } else {
                            h.from.clone()
                        },
                        if h.to.is_empty() {
                            "-".to_owned()
                        } else {
                            h.to.clone()
                        },
                        buckets.len().to_string(),
                        if json {
                            ranges(&buckets)
                        } else {
                            ranges_short(&buckets, 60)
                        },
                    ]
                })
                .collect();
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"id": r[0], "reason": r[1], "duration": r[2], "from": r[3], "to": r[4], "buckets": r[6]}))
                    .collect();
                return print_json(out, &serde_json::Value::Array(list)).map_err(io);
            }
            table(
                out,
                &["ID", "REASON", "DURATION", "FROM", "TO", "COUNT", "BUCKETS"],
                &rows,
            )
            .map_err(io)
        }
        AdminCommand::Drain { worker } => {
            let r = client
                .drain_worker(v1::DrainWorkerRequest {
                    worker_id: worker.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let buckets: Vec<u32> = r.moves.iter().map(|m| m.bucket).collect();
            writeln!(
                out,
                "draining {worker}: {} bucket(s) moving: {}",
                buckets.len(),
                ranges(&buckets)
            )
            .map_err(io)
        }
    }
}

pub(crate) fn print_json(out: &mut dyn Write, value: &serde_json::Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

fn workers_json(r: &v1::ListWorkersResponse) -> serde_json::Value {
    serde_json::Value::Array(
        r.workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.id, "state": worker_state(w.state), "connected": w.connected,
                    "buckets": w.buckets_owned,
                    "objects": w.load.as_ref().map_or(0, |l| l.objects_owned),
                    "queueDepth": w.load.as_ref().map_or(0, |l| l.queue_depth),
                })
            })
            .collect(),
    )
}

fn map_json(r: &v1::GetBucketMapResponse) -> serde_json::Value {
    serde_json::json!({
        "bucketCount": r.bucket_count, "leader": r.leader_id, "leaderEpoch": r.leader_epoch,
        "buckets": r.buckets.iter().map(|b| serde_json::json!({
            "bucket": b.bucket, "owner": b.owner, "epoch": b.epoch, "objects": b.objects,
            "state": bucket_state(b.state), "nextOwner": b.next_owner,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::{ranges, ranges_short};

    #[test]
    fn long_range_lists_are_cut_with_a_count() {
        let scattered: Vec<u32> = (0..100).map(|b| b * 2).collect();
        let short = ranges_short(&scattered, 20);
        assert!(short.starts_with("0, 2, 4, 6, 8, 10"), "{short}");
        assert!(short.ends_with("ranges)"), "{short}");
        let shown = short.split(" … ").next().unwrap().split(", ").count();
        assert!(
            short.contains(&format!("(+{} ranges)", 100 - shown)),
            "{short}"
        );
        assert_eq!(ranges_short(&[1, 2, 3], 20), "1-3");
    }

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3, 7, 9-10");
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[5]), "5");
    }
}
