//! One cluster member as a process runs it: durable storage, the consensus node on the
//! runtime, the etcd gRPC API and the HTTP endpoints, until shutdown.

use crate::api::etcdserverpb as pb;
use crate::etcd::services::{
    AddedMember, ClusterService, Forwarder, KvService, LeaseService, MAX_REQUEST_BYTES_DEFAULT,
    MaintenanceService, Shared, WatchService, added_member_id,
};
use crate::etcd::{Consensus, LearnedMembers, MemberInfo, Membership, Proxy, observer};
use crate::log::{LogError, RecordLog};
use crate::runtime::{Boot, NodeConfig, NodeHandle};
use crate::values::ValueFile;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use synod_core::hash::StableHasher;
use synod_core::node::NodeId;
use synod_protocols::mvcc::machine::MvccMachine;
use synod_protocols::mvcc::records::RecordFile;
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant};
use synod_protocols::raft::{MembershipChange, RaftConfig, RaftNode, RaftVariant, ReadMode};
use synod_storage::{Wal, WalOptions};
use tokio::net::TcpListener;

/// A member of the initial cluster, as every member is told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Unique name.
    pub name: String,
    /// Where peers reach it (`http://host:port`).
    pub peer_url: String,
    /// Where clients (and forwarding members) reach it (`http://host:port`).
    pub client_url: String,
}

/// Which replication protocol runs the state machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsensusKind {
    /// Raft with pre-vote, check-quorum and ReadIndex reads.
    #[default]
    Raft,
    /// Multi-Paxos with a distinguished proposer (every read goes through the log).
    Paxos,
}

/// Everything one member needs to start.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// This member's name (one of `initial_cluster`).
    pub name: String,
    /// Where its write-ahead log and snapshots live.
    pub data_dir: PathBuf,
    /// The address to accept peer connections on.
    pub peer_listen: SocketAddr,
    /// The address to accept client gRPC connections on.
    pub client_listen: SocketAddr,
    /// Every member, this one included, in the same order on every member.
    pub initial_cluster: Vec<MemberSpec>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Shortest election timeout (the longest is twice this).
    pub election_timeout: Duration,
    /// The largest client request accepted, encoded.
    pub max_request_bytes: usize,
    /// The replication protocol.
    pub consensus: ConsensusKind,
    /// Where to serve HTTP `/metrics` and `/health`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Applied entries beyond the last snapshot that trigger a new one (Raft).
    pub snapshot_threshold_entries: u64,
    /// This member joins a running cluster (Raft; etcd's `--initial-cluster-state
    /// existing`): it was added with MemberAdd, is listed last in `initial_cluster`, and
    /// waits for the leader instead of campaigning, whatever its role.
    pub join_existing: bool,
}

impl MemberConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        peer_listen: SocketAddr,
        client_listen: SocketAddr,
        initial_cluster: Vec<MemberSpec>,
    ) -> Self {
        MemberConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            peer_listen,
            client_listen,
            initial_cluster,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            max_request_bytes: MAX_REQUEST_BYTES_DEFAULT,
            consensus: ConsensusKind::default(),
            metrics_listen: None,
            snapshot_threshold_entries: 100_000,
            join_existing: false,
        }
    }
}

/// Why a member could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The write-ahead log could not be opened.
    #[error("cannot open the data directory: {0}")]
    Storage(#[from] synod_storage::StorageError),
    /// A durable record did not decode.
    #[error(transparent)]
    Start(#[from] crate::runtime::StartError),
    /// A socket could not be bound or served.
    #[error("network: {0}")]
    Network(String),
}

/// The write-ahead log as the runtime's record log.
impl RecordLog for Wal {
    fn append(&mut self, payload: &[u8], checkpoint: bool) -> Result<(), LogError> {
        let result = if checkpoint {
            self.append_checkpoint(payload)
        } else {
            Wal::append(self, payload)
        };
        result
            .map(|_| ())
            .map_err(|error| LogError::Other(error.to_string()))
    }

    fn sync(&mut self) -> Result<(), LogError> {
        Wal::sync(self)
            .map(|_| ())
            .map_err(|error| LogError::Other(error.to_string()))
    }

    fn append_checkpoint_with(
        &mut self,
        write: &mut crate::log::WriteRecord,
    ) -> Result<(), LogError> {
        Wal::append_checkpoint_with(self, write)
            .map(|_| ())
            .map_err(|error| LogError::Other(error.to_string()))
    }

    fn append_compaction_with(
        &mut self,
        write: Box<crate::log::WriteRecord>,
    ) -> Result<(), LogError> {
        Wal::append_compaction_with(self, write)
            .map(|_| ())
            .map_err(|error| LogError::Other(error.to_string()))
    }
}

/// The socket address in `url` (`http://127.0.0.1:2379` or `127.0.0.1:2379`).
pub fn url_address(url: &str) -> Result<SocketAddr, MemberError> {
    let bare = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    bare.parse()
        .map_err(|_| MemberError::Config(format!("'{url}' is not http://IP:PORT")))
}

fn stable_id(parts: &[&str]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = StableHasher::new();
    for part in parts {
        hasher.write(part.as_bytes());
        hasher.write(&[0]);
    }
    // etcd member ids are never zero (zero means "none" on the wire).
    hasher.finish() | 1
}

/// Node ids, etcd member ids and URLs for `initial_cluster`.
pub fn membership(config: &MemberConfig) -> Result<Membership, MemberError> {
    let mut members = BTreeMap::new();
    let mut me = None;
    // A joining member is listed last; the cluster it joins was named without it.
    let founders = config
        .initial_cluster
        .len()
        .saturating_sub(usize::from(config.join_existing));
    let cluster_parts: Vec<&str> = config
        .initial_cluster
        .iter()
        .take(founders)
        .flat_map(|spec| [spec.name.as_str(), spec.peer_url.as_str()])
        .collect();
    for (index, spec) in config.initial_cluster.iter().enumerate() {
        let node = NodeId(index as u32);
        if members
            .values()
            .any(|member: &MemberInfo| member.name == spec.name)
        {
            return Err(MemberError::Config(format!(
                "member name '{}' appears twice in the initial cluster",
                spec.name
            )));
        }
        if spec.name == config.name {
            me = Some(node);
        }
        // A member that joins goes by the id MemberAdd gave it; the others by their names.
        let member_id = if index >= founders {
            added_member_id(&spec.peer_url, node)
        } else {
            stable_id(&[&spec.name, &spec.peer_url])
        };
        members.insert(
            node,
            MemberInfo {
                member_id,
                name: spec.name.clone(),
                peer_urls: vec![spec.peer_url.clone()],
                client_urls: vec![spec.client_url.clone()],
            },
        );
    }
    let me = me.ok_or_else(|| {
        MemberError::Config(format!(
            "this member's name '{}' is not in the initial cluster ({})",
            config.name,
            config
                .initial_cluster
                .iter()
                .map(|spec| spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok(Membership {
        cluster_id: stable_id(&cluster_parts),
        members,
        me,
        learned: LearnedMembers::default(),
    })
}

/// Sockets a member serves on, bound by the caller (tests bind port 0 and learn the
/// ports before configuring the cluster).
pub struct Listeners {
    /// Peer connections.
    pub peer: TcpListener,
    /// Client gRPC connections.
    pub client: TcpListener,
    /// HTTP `/metrics` and `/health`, if wanted.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &MemberConfig) -> Result<Listeners, MemberError> {
        let bind = |address: SocketAddr| async move {
            TcpListener::bind(address).await.map_err(|error| {
                MemberError::Network(format!("cannot listen on {address}: {error}"))
            })
        };
        Ok(Listeners {
            peer: bind(config.peer_listen).await?,
            client: bind(config.client_listen).await?,
            metrics: match config.metrics_listen {
                Some(address) => Some(bind(address).await?),
                None => None,
            },
        })
    }
}

/// Runs a member until `shutdown` completes; then stops serving and closes storage (what
/// was acknowledged is durable already).
pub async fn run_member(
    config: MemberConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MemberError> {
    match config.consensus {
        ConsensusKind::Raft => {
            // Every member starts from the same configuration, the initial cluster; one
            // that joins later is outside it (it learns its role from the log).
            let mut first_voters: Vec<NodeId> = (0..config.initial_cluster.len())
                .map(|index| NodeId(index as u32))
                .collect();
            if config.join_existing {
                first_voters.pop();
            }
            let node = RaftNode::<MvccMachine>::new(
                RaftVariant::Correct,
                RaftConfig {
                    heartbeat_interval: config.heartbeat,
                    election_timeout_min: config.election_timeout,
                    election_timeout_max: config.election_timeout * 2,
                    read_mode: ReadMode::ReadIndex,
                    snapshot_threshold_entries: config.snapshot_threshold_entries,
                    snapshot_chunk_bytes: 1024 * 1024,
                    snapshot_catch_up_entries: SNAPSHOT_CATCH_UP_ENTRIES,
                    append_entries_max: 1024,
                    append_bytes_max: 1024 * 1024,
                    inflight_messages_max: 16,
                    inflight_bytes_max: 16 * 1024 * 1024,
                    // The digest only feeds the simulator's replica comparison.
                    applied_digests: false,
                    ..RaftConfig::default()
                },
            )
            .with_voters(first_voters)
            .with_state(machine_with_value_file(&config)?);
            run_node(node, config, listeners, shutdown).await
        }
        ConsensusKind::Paxos => {
            let node = PaxosNode::<MvccMachine>::new(
                PaxosVariant::Correct,
                PaxosConfig {
                    heartbeat_interval: config.heartbeat,
                    election_timeout_min: config.election_timeout,
                    election_timeout_max: config.election_timeout * 2,
                },
            );
            run_node(node, config, listeners, shutdown).await
        }
    }
}

/// Entries a member keeps in memory behind its latest snapshot (as etcd does), so a
/// follower a little behind catches up from the log rather than by a transfer of the
/// whole store.
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;

/// A state machine keeping its keys' and values' bytes in a file under the data
/// directory (rebuilt from the snapshot and log on every start), not on the heap.
fn machine_with_value_file(config: &MemberConfig) -> Result<MvccMachine, MemberError> {
    let directory = config.data_dir.join("values");
    let file = ValueFile::start(&directory).map_err(|error| {
        MemberError::Config(format!(
            "cannot create the value file in {}: {error}",
            directory.display()
        ))
    })?;
    let file: Arc<dyn RecordFile> = file;
    let mut machine = MvccMachine::new();
    machine.use_file(&file).map_err(MemberError::Config)?;
    Ok(machine)
}

/// How often a member looks at the configuration for members added to it (to dial them
/// and learn their client URLs), members removed from it (to stop sending to them) and its
/// own description (to complete it).
const FOLLOW_CONFIGURATION_EVERY: Duration = Duration::from_millis(100);

/// What [`follow_configuration`] needs to see of the node.
struct ConfigurationView {
    /// Every node the configuration in effect names.
    nodes: BTreeSet<NodeId>,
    /// Its description of members.
    addresses: BTreeMap<NodeId, String>,
    /// Whether that configuration is committed.
    committed: bool,
    /// Whether this node leads.
    leads: bool,
}

/// Follows the replicated configuration while the node runs (Raft only):
/// - dials the members it names that this node does not send to yet: members added at run
///   time at the peer URLs it carries, members of the initial cluster (`initial`) at theirs;
/// - once a configuration that no longer names a member is committed, stops sending to it
///   and closes the connection (not before: a leader on its way out still needs the
///   acknowledgements that commit its removal);
/// - keeps `learned` equal to its description of the members added at run time, so the API
///   can name them and forward to them;
/// - for a member that joined at run time (`me`, with its name and client URLs), completes
///   its own description once it leads: MemberAdd recorded only its id and peer URL, and
///   without its client URL the others could not forward requests to it while it leads.
fn follow_configuration<N: Consensus>(
    node: Weak<NodeHandle<N>>,
    id: NodeId,
    initial: BTreeMap<NodeId, SocketAddr>,
    learned: LearnedMembers,
    me: Option<MemberInfo>,
) {
    tokio::spawn(async move {
        // The runtime starts sending to every member of the initial cluster.
        let mut dialed: BTreeSet<NodeId> =
            initial.keys().copied().filter(|&peer| peer != id).collect();
        // Holding the node only while looking at it lets it stop with the member.
        while let Some(node) = node.upgrade() {
            let Ok(view) = node
                .read(move |node| {
                    node.configuration().map(|configuration| ConfigurationView {
                        nodes: configuration.nodes(),
                        addresses: configuration.addresses.clone(),
                        committed: node.configuration_committed(),
                        leads: node.status().leader == Some(id),
                    })
                })
                .await
            else {
                return;
            };
            let Some(view) = view else {
                return; // This protocol's membership is fixed.
            };
            let mut described = BTreeMap::new();
            for (&peer, address) in &view.addresses {
                if let Some(added) = AddedMember::parse(address)
                    && !initial.contains_key(&peer)
                {
                    described.insert(peer, added.info());
                }
            }
            for &peer in &view.nodes {
                if peer == id || dialed.contains(&peer) {
                    continue;
                }
                let socket = match initial.get(&peer) {
                    Some(&socket) => Ok(socket),
                    None => match described.get(&peer) {
                        Some(member) => url_address(&member.peer_urls[0]),
                        None => continue,
                    },
                };
                match socket {
                    Ok(socket) => {
                        if node.add_peer(peer, socket).await.is_err() {
                            return;
                        }
                        tracing::info!(peer = peer.0, %socket, "dialing a member of the cluster");
                    }
                    Err(error) => {
                        tracing::warn!(peer = peer.0, %error, "cannot dial an added member");
                    }
                }
                dialed.insert(peer);
            }
            if view.committed {
                let removed: Vec<NodeId> = dialed.difference(&view.nodes).copied().collect();
                for peer in removed {
                    if node.remove_peer(peer).await.is_err() {
                        return;
                    }
                    tracing::info!(
                        peer = peer.0,
                        "disconnected from a member removed from the cluster"
                    );
                    dialed.remove(&peer);
                }
            }
            learned.replace(described);
            if let Some(info) = &me
                && view.leads
                && let Some(recorded) = view.addresses.get(&id).and_then(|a| AddedMember::parse(a))
                && (recorded.name != info.name || recorded.client_urls != info.client_urls)
            {
                let complete = AddedMember {
                    name: info.name.clone(),
                    client_urls: info.client_urls.clone(),
                    ..recorded
                };
                let addresses = BTreeMap::from([(id, complete.describe())]);
                let result = node
                    .act(move |node, ctx| {
                        node.change_configuration(
                            &[MembershipChange::Describe(id)],
                            &addresses,
                            ctx,
                        )
                    })
                    .await;
                match result {
                    Ok(Ok(index)) => {
                        tracing::info!(index, "this member's client URLs go into the configuration")
                    }
                    // Not yet (a change in progress, a new term not committed): retried.
                    Ok(Err(error)) => tracing::debug!(%error, "cannot describe this member yet"),
                    Err(_) => return,
                }
            }
            drop(node);
            tokio::time::sleep(FOLLOW_CONFIGURATION_EVERY).await;
        }
    });
}

async fn run_node<N: Consensus>(
    node: N,
    config: MemberConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MemberError> {
    let Listeners {
        peer: peer_listener,
        client: client_listener,
        metrics: metrics_listener,
    } = listeners;
    let membership = membership(&config)?;
    let mut peers = BTreeMap::new();
    for (node_id, member) in &membership.members {
        peers.insert(*node_id, url_address(&member.peer_urls[0])?);
    }
    let initial_peers = peers.clone();
    let client_urls = membership
        .members
        .iter()
        .map(|(node_id, member)| (*node_id, member.client_urls[0].clone()))
        .collect();
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        MemberError::Config(format!(
            "cannot create data directory {}: {error}",
            config.data_dir.display()
        ))
    })?;
    // Records are written with direct I/O, each group commit one write that is durable on
    // return, with zeros written ahead so that most writes need no journal commit for the
    // file's size. Where the file system has no direct I/O, segments are preallocated
    // instead (the next one written full of zeros in the background) for the same reason.
    let (wal, recovered) = Wal::open(
        config.data_dir.join("wal"),
        WalOptions {
            preallocate: true,
            direct_io: true,
            ..WalOptions::default()
        },
    )?;
    if let Some(torn) = &recovered.torn_tail {
        tracing::warn!(
            file = %torn.path.display(),
            offset = torn.offset,
            bytes = torn.discarded_bytes,
            reason = %torn.reason,
            "recovery cut off a torn write at the end of the log"
        );
    }
    if !wal.writes_directly() {
        tracing::info!(
            directory = %config.data_dir.join("wal").display(),
            "the file system refuses direct I/O: the log writes through the page cache and fsyncs"
        );
    }
    let boot = if recovered.records.is_empty() {
        Boot::Fresh
    } else {
        Boot::Recover(recovered.records)
    };
    let (observe, observed) = observer::<N>();
    let handle = NodeHandle::start_observed(
        node,
        NodeConfig {
            id: membership.me,
            peers,
        },
        peer_listener,
        wal,
        boot,
        observe,
    )?;
    let learned = membership.learned.clone();
    // A member that joined describes itself to the others (see `follow_configuration`).
    let joined = config
        .join_existing
        .then(|| membership.members.get(&membership.me).cloned())
        .flatten();
    let me = membership.me;
    let shared = Arc::new(Shared {
        proxy: Proxy::new(Arc::new(handle), observed, membership),
        forwarder: Forwarder::new(client_urls).with_learned(learned.clone()),
        max_request_bytes: config.max_request_bytes,
    });
    follow_configuration(
        Arc::downgrade(shared.proxy.node()),
        me,
        initial_peers,
        learned,
        joined,
    );
    tracing::info!(
        name = %config.name,
        client = %config.client_listen,
        peer = %config.peer_listen,
        "member serving"
    );
    // One shutdown signal for every server this member runs.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    if let Some(listener) = metrics_listener {
        let observed = shared.proxy.subscribe();
        let stopped = until_stopped(stopped.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve_http(listener, observed, stopped).await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
    }
    serve_grpc(
        shared,
        client_listener,
        config.max_request_bytes,
        until_stopped(stopped),
    )
    .await
}

async fn serve_grpc<N: Consensus>(
    shared: Arc<Shared<N>>,
    listener: TcpListener,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MemberError> {
    // Decode up to twice the limit so the handlers can answer moderately oversized
    // requests with etcd's own "request is too large" instead of a transport error.
    let decode_limit = max_request_bytes.saturating_mul(2).max(4 * 1024 * 1024);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = tonic::service::Routes::new(
        pb::kv_server::KvServer::new(KvService(shared.clone()))
            .max_decoding_message_size(decode_limit),
    )
    .add_service(
        pb::lease_server::LeaseServer::new(LeaseService(shared.clone()))
            .max_decoding_message_size(decode_limit),
    )
    .add_service(
        pb::watch_server::WatchServer::new(WatchService(shared.clone()))
            .max_decoding_message_size(decode_limit),
    )
    .add_service(pb::maintenance_server::MaintenanceServer::new(
        MaintenanceService(shared.clone()),
    ))
    .add_service(pb::cluster_server::ClusterServer::new(ClusterService(
        shared.clone(),
    )))
    .add_service(crate::api::v3lockpb::lock_server::LockServer::new(
        crate::etcd::recipes::LockService(shared.clone()),
    ))
    .add_service(
        crate::api::v3electionpb::election_server::ElectionServer::new(
            crate::etcd::recipes::ElectionService(shared.clone()),
        ),
    )
    .add_service(health_service)
    .prepare();
    crate::grpc::serve(
        listener,
        Arc::new(KvService(shared)),
        routes,
        decode_limit,
        shutdown,
    )
    .await;
    Ok(())
}
