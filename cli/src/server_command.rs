//! `synod server`: run one cluster member.
//!
//! Settings come from flags, then `SYNOD_*` environment variables, then a TOML file given
//! with `--config`, then defaults (which, like etcd's, make a one-member cluster on
//! 127.0.0.1:2379).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use synod_server::member::{Listeners, MemberConfig, MemberSpec, run_member, url_address};

/// Arguments of `synod server`.
#[derive(clap::Args, Debug, Default)]
pub struct ServerArgs {
    /// A TOML file with any of the settings below (keys as the flags, with underscores:
    /// name, data_dir, listen_peer_url, listen_client_url, initial_cluster, ...).
    #[arg(long, env = "SYNOD_CONFIG")]
    pub config: Option<PathBuf>,
    /// This member's name; must appear in --initial-cluster. [default: default]
    #[arg(long, env = "SYNOD_NAME")]
    pub name: Option<String>,
    /// Where the write-ahead log and snapshots live. [default: <name>.synod]
    #[arg(long, env = "SYNOD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address peers connect to. [default: http://127.0.0.1:2380]
    #[arg(long, env = "SYNOD_LISTEN_PEER_URL")]
    pub listen_peer_url: Option<String>,
    /// Address clients connect to (etcd v3 gRPC). [default: http://127.0.0.1:2379]
    #[arg(long, env = "SYNOD_LISTEN_CLIENT_URL")]
    pub listen_client_url: Option<String>,
    /// Serve HTTP /metrics (Prometheus) and /health (JSON; 503 without a leader) here.
    /// [default: none]
    #[arg(long, env = "SYNOD_LISTEN_METRICS_URL")]
    pub listen_metrics_url: Option<String>,
    /// Every member as name=peerURL, comma-separated, identical on every member.
    /// [default: <name>=<listen-peer-url>]
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Every member's client URL as name=clientURL, comma-separated; members forward
    /// requests to the leader there. [default: this member's listen-client-url only]
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER_CLIENTS")]
    pub initial_cluster_clients: Option<String>,
    /// Heartbeat interval in milliseconds. [default: 50]
    #[arg(long, env = "SYNOD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Shortest election timeout in milliseconds (the longest is twice this). [default: 500]
    #[arg(long, env = "SYNOD_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Largest client request in bytes. [default: 1572864, as etcd]
    #[arg(long, env = "SYNOD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Applied log entries between snapshots: each snapshot encodes the whole store and
    /// lets the log before it be deleted; lower keeps restarts and the log short, higher
    /// costs fewer snapshots. [default: 100000]
    #[arg(long, env = "SYNOD_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    /// `new` to found a cluster with the members of --initial-cluster; `existing` to join
    /// a running one after `etcdctl member add` (list this member last in
    /// --initial-cluster, after the members it joins). [default: new]
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Threads serving clients and peers. Members sharing one machine (`synod up`) get
    /// an equal share of its cores each. [default: one per core]
    #[arg(long, env = "SYNOD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

/// The same settings read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    listen_peer_url: Option<String>,
    listen_client_url: Option<String>,
    listen_metrics_url: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_clients: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    max_request_bytes: Option<usize>,
    snapshot_threshold: Option<u64>,
    initial_cluster_state: Option<String>,
    worker_threads: Option<u16>,
}

/// Parses `name=url,name=url`.
fn parse_pairs(flag: &str, text: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (name, url) = entry.trim().split_once('=').with_context(|| {
                format!("--{flag}: '{entry}' is not name=URL (e.g. m1=http://127.0.0.1:2380)")
            })?;
            Ok((name.to_string(), url.to_string()))
        })
        .collect()
}

/// Reads the TOML file given with `--config`, if any.
fn file_settings(arguments: &ServerArgs) -> Result<FileSettings> {
    match &arguments.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
        }
        None => Ok(FileSettings::default()),
    }
}

/// The member configuration these arguments describe, and the worker thread count
/// (`None`: one per core).
fn member_settings(arguments: ServerArgs) -> Result<(MemberConfig, Option<u16>)> {
    let file = file_settings(&arguments)?;
    if file.worker_threads == Some(0) {
        bail!("worker_threads in the config file must be at least 1");
    }
    let worker_threads = arguments.worker_threads.or(file.worker_threads);
    let name = arguments
        .name
        .or(file.name)
        .unwrap_or_else(|| "default".into());
    let data_dir = arguments
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(format!("{name}.synod")));
    let peer_url = arguments
        .listen_peer_url
        .or(file.listen_peer_url)
        .unwrap_or_else(|| "http://127.0.0.1:2380".into());
    let client_url = arguments
        .listen_client_url
        .or(file.listen_client_url)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let cluster = arguments
        .initial_cluster
        .or(file.initial_cluster)
        .unwrap_or_else(|| format!("{name}={peer_url}"));
    let clients = arguments
        .initial_cluster_clients
        .or(file.initial_cluster_clients)
        .unwrap_or_else(|| format!("{name}={client_url}"));
    let clients = parse_pairs("initial-cluster-clients", &clients)?;
    let mut specs = Vec::new();
    for (member, peer) in parse_pairs("initial-cluster", &cluster)? {
        url_address(&peer)?;
        let client = clients
            .iter()
            .find(|(name, _)| *name == member)
            .map(|(_, url)| url.clone())
            .unwrap_or_default();
        specs.push(MemberSpec {
            name: member,
            peer_url: peer,
            client_url: client,
        });
    }
    if specs.is_empty() {
        bail!("--initial-cluster names no member");
    }
    let mut config = MemberConfig::new(
        name,
        data_dir,
        url_address(&peer_url)?,
        url_address(&client_url)?,
        specs,
    );
    if let Some(ms) = arguments.heartbeat_ms.or(file.heartbeat_ms) {
        config.heartbeat = Duration::from_millis(ms.max(1));
    }
    match arguments
        .initial_cluster_state
        .as_deref()
        .or(file.initial_cluster_state.as_deref())
    {
        None | Some("new") => {}
        Some("existing") => config.join_existing = true,
        Some(other) => bail!(
            "--initial-cluster-state must be `new` (found a cluster) or `existing` (join one \
             after `etcdctl member add`), not `{other}`"
        ),
    }
    if let Some(entries) = arguments.snapshot_threshold.or(file.snapshot_threshold) {
        if entries == 0 {
            bail!("--snapshot-threshold must be at least 1 (entries between snapshots)");
        }
        config.snapshot_threshold_entries = entries;
    }
    if let Some(ms) = arguments.election_timeout_ms.or(file.election_timeout_ms) {
        config.election_timeout = Duration::from_millis(ms.max(1));
    }
    if config.election_timeout <= config.heartbeat * 2 {
        bail!(
            "the election timeout ({:?}) must be well above the heartbeat ({:?}); use at least 5x",
            config.election_timeout,
            config.heartbeat
        );
    }
    if let Some(url) = arguments.listen_metrics_url.or(file.listen_metrics_url) {
        config.metrics_listen = Some(url_address(&url)?);
    }
    if let Some(bytes) = arguments.max_request_bytes.or(file.max_request_bytes) {
        config.max_request_bytes = bytes;
    }
    Ok((config, worker_threads))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the member until SIGTERM or Ctrl-C.
pub fn run(arguments: ServerArgs) -> Result<ExitCode> {
    init_logging();
    let (config, worker_threads) = member_settings(arguments)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        run_member(config, listeners, async {
            termination().await;
            tracing::info!("shutting down");
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (tempfile::TempDir, ServerArgs) {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("synod.toml");
        std::fs::write(&path, text).expect("writes the config file");
        let arguments = ServerArgs {
            config: Some(path),
            ..ServerArgs::default()
        };
        (directory, arguments)
    }

    #[test]
    fn worker_threads_come_from_the_flag_then_the_file_else_one_per_core() {
        let (_, worker_threads) = member_settings(ServerArgs::default()).expect("defaults");
        assert_eq!(worker_threads, None);
        let (_directory, mut arguments) = with_file("worker_threads = 3\n");
        let (_, worker_threads) = member_settings(ServerArgs {
            config: arguments.config.clone(),
            ..ServerArgs::default()
        })
        .expect("file");
        assert_eq!(worker_threads, Some(3));
        arguments.worker_threads = Some(1);
        let (_, worker_threads) = member_settings(arguments).expect("flag");
        assert_eq!(worker_threads, Some(1), "the flag wins over the file");
    }

    #[test]
    fn zero_worker_threads_in_the_file_is_refused() {
        let (_directory, arguments) = with_file("worker_threads = 0\n");
        let error = member_settings(arguments).expect_err("zero threads");
        assert!(error.to_string().contains("worker_threads"), "{error}");
    }

    #[test]
    fn members_sharing_a_machine_split_its_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(crate::local_cluster::share_of_cores(1), cores);
        assert_eq!(crate::local_cluster::share_of_cores(3), (cores / 3).max(1));
        assert_eq!(crate::local_cluster::share_of_cores(0), cores);
        assert_eq!(crate::local_cluster::share_of_cores(cores + 1), 1);
    }
}
