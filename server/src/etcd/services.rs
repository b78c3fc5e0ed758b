//! The gRPC services: KV, Lease, Watch, Maintenance and Cluster.

use super::convert;
use super::{Consensus, LearnedMembers, MemberInfo, NO_LEADER, Outcome, Proxy, store_error};
use crate::api::etcdserverpb as pb;
use crate::api::etcdserverpb::cluster_client::ClusterClient;
use crate::api::etcdserverpb::kv_client::KvClient;
use crate::api::etcdserverpb::lease_client::LeaseClient;
use crate::api::etcdserverpb::maintenance_client::MaintenanceClient;
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_core::node::NodeId;
use synod_protocols::mvcc::api as mvcc;
use synod_protocols::mvcc::machine::{MvccOperation, MvccOutput};
use synod_protocols::mvcc::watch::WatchHub;
use synod_protocols::raft::{Membership as RaftMembership, MembershipChange, MembershipError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// etcd's default limit on one request's encoded size (1.5 MiB).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;
/// etcd's text for a leadership transfer that did not complete.
const LEADER_TRANSFER_TIMED_OUT: &str =
    "etcdserver: request timed out, leader transfer took too long";
/// Marks a call one member forwarded to another, so it is never forwarded twice.
const FORWARDED: &str = "synod-forwarded";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Everything the services share.
pub struct Shared<N: Consensus> {
    /// Runs operations.
    pub proxy: Proxy<N>,
    /// Reaches other members' client endpoints.
    pub forwarder: Forwarder,
    /// The largest request accepted, encoded.
    pub max_request_bytes: usize,
}

impl<N: Consensus> Shared<N> {
    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        Ok(())
    }
}

/// Lazily connected gRPC channels to other members.
pub struct Forwarder {
    client_urls: BTreeMap<NodeId, String>,
    learned: LearnedMembers,
    channels: Mutex<BTreeMap<NodeId, (String, Channel)>>,
}

impl Forwarder {
    /// A forwarder to the members' first client URLs.
    pub fn new(client_urls: BTreeMap<NodeId, String>) -> Self {
        Forwarder {
            client_urls,
            learned: LearnedMembers::default(),
            channels: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same forwarder, also reaching members added at run time once `learned`
    /// describes their client URLs.
    pub fn with_learned(mut self, learned: LearnedMembers) -> Self {
        self.learned = learned;
        self
    }

    pub(crate) fn channel(&self, node: NodeId) -> Result<Channel, Status> {
        let url = match self.client_urls.get(&node) {
            Some(url) => url.clone(),
            None => self
                .learned
                .get(node)
                .and_then(|member| member.client_urls.first().cloned())
                .ok_or_else(|| Status::unavailable(NO_LEADER))?,
        };
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| Status::internal("forwarder lock poisoned"))?;
        if let Some((known, channel)) = channels.get(&node)
            && *known == url
        {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|error| Status::internal(format!("bad client URL {url}: {error}")))?
            .connect_lazy();
        channels.insert(node, (url, channel.clone()));
        Ok(channel)
    }
}

/// Refuses to forward a call that was already forwarded once (no loops between members
/// that disagree about the leader); the caller retries.
pub(crate) fn forward_request<T>(
    incoming: &tonic::metadata::MetadataMap,
    message: T,
) -> Result<Request<T>, Status> {
    if incoming.contains_key(FORWARDED) {
        return Err(Status::unavailable(NO_LEADER));
    }
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    Ok(request)
}

fn unexpected(output: MvccOutput) -> Status {
    Status::internal(format!(
        "the state machine answered with the wrong kind: {output:?}"
    ))
}

/// The KV service.
pub struct KvService<N: Consensus>(pub Arc<Shared<N>>);

#[tonic::async_trait]
impl<N: Consensus> pb::kv_server::Kv for KvService<N> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.check_size(&message)?;
        let operation = MvccOperation::Range(convert::range_request(message.clone())?);
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::Range(output), header) => {
                Ok(Response::new(convert::range_response(output, header)))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                KvClient::new(self.0.forwarder.channel(leader)?)
                    .range(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.check_size(&message)?;
        let operation = MvccOperation::Put(convert::put_request(message.clone()));
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::Put(output), header) => {
                Ok(Response::new(convert::put_response(output, header)))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                KvClient::new(self.0.forwarder.channel(leader)?)
                    .put(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.check_size(&message)?;
        let operation = MvccOperation::DeleteRange(convert::delete_request(message.clone()));
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::DeleteRange(output), header) => {
                Ok(Response::new(convert::delete_response(output, header)))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                KvClient::new(self.0.forwarder.channel(leader)?)
                    .delete_range(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.check_size(&message)?;
        let operation = MvccOperation::Txn(convert::txn_request(message.clone())?);
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::Txn(output), header) => {
                Ok(Response::new(convert::txn_response(output, header)))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                KvClient::new(self.0.forwarder.channel(leader)?)
                    .txn(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let operation = MvccOperation::Compact(mvcc::CompactionRequest {
            revision: message.revision,
            physical: message.physical,
        });
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::Compact(_), header) => {
                Ok(Response::new(pb::CompactionResponse {
                    header: Some(header),
                }))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                KvClient::new(self.0.forwarder.channel(leader)?)
                    .compact(forward_request(&metadata, message)?)
                    .await
            }
        }
    }
}

/// The Lease service.
pub struct LeaseService<N: Consensus>(pub Arc<Shared<N>>);

impl<N: Consensus> LeaseService<N> {
    /// Renews `id`; `Ok(None)` means "forward to this leader".
    async fn keep_alive_once(
        shared: &Shared<N>,
        id: i64,
    ) -> Result<Result<pb::LeaseKeepAliveResponse, NodeId>, Status> {
        let operation = MvccOperation::LeaseKeepAlive(mvcc::LeaseKeepAliveRequest { id });
        match shared.proxy.execute(operation).await {
            Ok(Outcome::Done(MvccOutput::LeaseKeepAlive(output), header)) => {
                Ok(Ok(pb::LeaseKeepAliveResponse {
                    header: Some(header),
                    id: output.id,
                    ttl: output.ttl,
                }))
            }
            Ok(Outcome::Done(other, _)) => Err(unexpected(other)),
            Ok(Outcome::Redirect(leader)) => Ok(Err(leader)),
            // etcd answers a keep-alive for an unknown lease with TTL 0, not an error.
            Err(status) if status.code() == tonic::Code::NotFound => {
                Ok(Ok(pb::LeaseKeepAliveResponse {
                    header: Some(shared.proxy.header(0)),
                    id,
                    ttl: 0,
                }))
            }
            Err(status) => Err(status),
        }
    }
}

#[tonic::async_trait]
impl<N: Consensus> pb::lease_server::Lease for LeaseService<N> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let operation = MvccOperation::LeaseGrant(mvcc::LeaseGrantRequest {
            ttl: message.ttl,
            id: message.id,
        });
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::LeaseGrant(output), header) => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(header),
                    id: output.id,
                    ttl: output.ttl,
                    error: String::new(),
                }))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                LeaseClient::new(self.0.forwarder.channel(leader)?)
                    .lease_grant(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let operation = MvccOperation::LeaseRevoke(mvcc::LeaseRevokeRequest { id: message.id });
        match self.0.proxy.execute(operation).await? {
            Outcome::Done(MvccOutput::LeaseRevoke(_), header) => {
                Ok(Response::new(pb::LeaseRevokeResponse {
                    header: Some(header),
                }))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                LeaseClient::new(self.0.forwarder.channel(leader)?)
                    .lease_revoke(forward_request(&metadata, message)?)
                    .await
            }
        }
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let shared = self.0.clone();
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(keep_alive)) = incoming.next().await {
                let answer = match Self::keep_alive_once(&shared, keep_alive.id).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(leader)) => {
                        // Forward this one renewal as a unary-like stream to the leader.
                        forward_keep_alive(&shared, leader, keep_alive.id).await
                    }
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let operation = MvccOperation::LeaseTimeToLive(mvcc::LeaseTimeToLiveRequest {
            id: message.id,
            keys: message.keys,
        });
        match self.0.proxy.execute(operation).await {
            Ok(Outcome::Done(MvccOutput::LeaseTimeToLive(output), header)) => {
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: Some(header),
                    id: output.id,
                    ttl: output.ttl,
                    granted_ttl: output.granted_ttl,
                    keys: output.keys,
                }))
            }
            Ok(Outcome::Done(other, _)) => Err(unexpected(other)),
            Ok(Outcome::Redirect(leader)) => {
                LeaseClient::new(self.0.forwarder.channel(leader)?)
                    .lease_time_to_live(forward_request(&metadata, message)?)
                    .await
            }
            // etcd reports an unknown lease as TTL -1.
            Err(status) if status.code() == tonic::Code::NotFound => {
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: Some(self.0.proxy.header(0)),
                    id: message.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                }))
            }
            Err(status) => Err(status),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        match self.0.proxy.execute(MvccOperation::LeaseLeases).await? {
            Outcome::Done(MvccOutput::LeaseLeases(output), header) => {
                Ok(Response::new(pb::LeaseLeasesResponse {
                    header: Some(header),
                    leases: output
                        .leases
                        .into_iter()
                        .map(|id| pb::LeaseStatus { id })
                        .collect(),
                }))
            }
            Outcome::Done(other, _) => Err(unexpected(other)),
            Outcome::Redirect(leader) => {
                LeaseClient::new(self.0.forwarder.channel(leader)?)
                    .lease_leases(forward_request(&metadata, message)?)
                    .await
            }
        }
    }
}

async fn forward_keep_alive<N: Consensus>(
    shared: &Shared<N>,
    leader: NodeId,
    id: i64,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let mut client = LeaseClient::new(shared.forwarder.channel(leader)?);
    let outgoing = tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]);
    let mut request = Request::new(outgoing);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    let mut answers = client.lease_keep_alive(request).await?.into_inner();
    match answers.next().await {
        Some(answer) => answer,
        None => Err(Status::unavailable(NO_LEADER)),
    }
}

/// The Watch service: each stream keeps its own watchers, advanced whenever the local
/// store's revision moves.
pub struct WatchService<N: Consensus>(pub Arc<Shared<N>>);

#[tonic::async_trait]
impl<N: Consensus> pb::watch_server::Watch for WatchService<N> {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shared = self.0.clone();
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel::<Result<pb::WatchResponse, Status>>(256);
        tokio::spawn(async move {
            let mut hub = WatchHub::new();
            let mut changes = shared.proxy.subscribe();
            loop {
                tokio::select! {
                    message = incoming.next() => {
                        let Some(Ok(message)) = message else { return };
                        let Some(union) = message.request_union else { continue };
                        let (next_hub, answers) = match handle_watch_request(&shared, hub, union).await {
                            Ok(result) => result,
                            Err(status) => {
                                let _ = sender.send(Err(status)).await;
                                return;
                            }
                        };
                        hub = next_hub;
                        for answer in answers {
                            if sender.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return; // The node stopped.
                        }
                        if hub.is_empty() {
                            continue;
                        }
                        let Ok((next_hub, responses)) = shared
                            .proxy
                            .node()
                            .read(move |node| {
                                let responses = hub.poll(node.machine().store());
                                (hub, responses)
                            })
                            .await
                        else {
                            return;
                        };
                        hub = next_hub;
                        for response in responses {
                            let answer = watch_response(&shared, response);
                            if sender.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn watch_response<N: Consensus>(
    shared: &Shared<N>,
    response: synod_protocols::mvcc::watch::WatchResponse,
) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(shared.proxy.header(response.header.revision)),
        watch_id: response.watch_id,
        created: response.created,
        canceled: response.canceled,
        compact_revision: response.compact_revision,
        cancel_reason: if response.compact_revision > 0 {
            "etcdserver: mvcc: required revision has been compacted".into()
        } else {
            String::new()
        },
        fragment: false,
        events: response
            .events
            .into_iter()
            .map(convert::watch_event)
            .collect(),
    }
}

async fn handle_watch_request<N: Consensus>(
    shared: &Arc<Shared<N>>,
    hub: WatchHub,
    union: pb::watch_request::RequestUnion,
) -> Result<(WatchHub, Vec<pb::WatchResponse>), Status> {
    use pb::watch_request::RequestUnion;
    let node = shared.proxy.node();
    let stopped = |_| Status::unavailable("etcdserver: server stopped");
    match union {
        RequestUnion::CreateRequest(create) => {
            let create = convert::watch_create(create)?;
            let (hub, responses) = node
                .read(move |node| {
                    let mut hub = hub;
                    let store = node.machine().store();
                    // Creation is answered first, then any history the watch asked for.
                    let mut responses = vec![hub.create(create, store)];
                    responses.extend(hub.poll(store));
                    (hub, responses)
                })
                .await
                .map_err(stopped)?;
            let answers = responses
                .into_iter()
                .map(|response| watch_response(shared, response))
                .collect();
            Ok((hub, answers))
        }
        RequestUnion::CancelRequest(cancel) => {
            let (hub, response) = node
                .read(move |node| {
                    let mut hub = hub;
                    let response = hub.cancel(cancel.watch_id, node.machine().store());
                    (hub, response)
                })
                .await
                .map_err(stopped)?;
            let answers = response
                .into_iter()
                .map(|response| watch_response(shared, response))
                .collect();
            Ok((hub, answers))
        }
        RequestUnion::ProgressRequest(_) => {
            // Deliver everything pending first, so the progress revision is a promise:
            // every later event on this stream has a higher revision.
            let (hub, mut responses, revision) = node
                .read(move |node| {
                    let mut hub = hub;
                    let store = node.machine().store();
                    let responses = hub.poll(store);
                    (hub, responses, store.revision())
                })
                .await
                .map_err(stopped)?;
            let mut answers: Vec<pb::WatchResponse> = responses
                .drain(..)
                .map(|response| watch_response(shared, response))
                .collect();
            answers.push(pb::WatchResponse {
                header: Some(shared.proxy.header(revision)),
                watch_id: -1,
                ..pb::WatchResponse::default()
            });
            Ok((hub, answers))
        }
    }
}

/// The Maintenance service.
pub struct MaintenanceService<N: Consensus>(pub Arc<Shared<N>>);

/// Bytes per Snapshot stream message.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

#[tonic::async_trait]
impl<N: Consensus> pb::maintenance_server::Maintenance for MaintenanceService<N> {
    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // No alarms are raised yet (no space quota, no corruption checks).
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.proxy.header(0)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let observed = self.0.proxy.observed();
        let membership = self.0.proxy.membership();
        let size = self
            .0
            .proxy
            .node()
            .read(|node| node.machine().store().version_count() as i64)
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let mut errors = Vec::new();
        if observed.status.leader.is_none() {
            errors.push(NO_LEADER.to_string());
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.0.proxy.header(0)),
            version: "3.5.0".into(),
            db_size: size,
            leader: membership.member_id_of(observed.status.leader),
            raft_index: observed.status.commit_index,
            raft_term: observed.status.term,
            raft_applied_index: observed.status.applied_index,
            errors,
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // The store lives in memory and compaction frees history at once: nothing to do.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.0.proxy.header(0)),
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        // A hash reads every key: on the node's task, not holding the node from a gRPC
        // task (which would stall the node's task on its thread meanwhile).
        let (result, compacted) = self
            .0
            .proxy
            .node()
            .inspect(move |node| {
                let store = node.machine().store();
                let mut all = mvcc::RangeRequest::range(vec![0u8], vec![0u8]);
                all.revision = revision;
                let result = store.range(&all).map(|response| {
                    let mut hash = crc32c::crc32c(&[]);
                    for kv in &response.kvs {
                        hash = crc32c::crc32c_append(hash, &kv.key);
                        hash = crc32c::crc32c_append(hash, &kv.value);
                        for number in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                            hash = crc32c::crc32c_append(hash, &number.to_le_bytes());
                        }
                    }
                    (hash, response.header.revision)
                });
                (result, store.compacted_revision())
            })
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let (hash, hash_revision) = result.map_err(store_error)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.0.proxy.header(0)),
            hash,
            compact_revision: compacted,
            hash_revision,
        }))
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // Encoding the whole state takes long: on the node's task (see `hash_kv`).
        let encoded = self
            .0
            .proxy
            .node()
            .inspect(|node| postcard::to_stdvec(node.machine()))
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?
            .map_err(|error| Status::internal(format!("cannot encode the snapshot: {error}")))?;
        let data = snapshot_bytes(encoded);
        let header = self.0.proxy.header(0);
        let total = data.len();
        let messages: Vec<Result<pb::SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: "3.5.0".into(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let proxy = &self.0.proxy;
        let configuration = proxy
            .node()
            .read(|node| node.configuration().cloned())
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?
            .ok_or_else(|| Status::unimplemented(NO_RECONFIGURATION))?;
        let target = node_of(proxy.membership(), &configuration, message.target_id)
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))?;
        let result = proxy
            .node()
            .act(move |node, ctx| node.hand_over(target, ctx))
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        match result {
            Ok(()) => {}
            Err(MembershipError::NotLeader {
                leader: Some(leader),
            }) => {
                return MaintenanceClient::new(self.0.forwarder.channel(leader)?)
                    .move_leader(forward_request(&metadata, message)?)
                    .await;
            }
            Err(MembershipError::NotLeader { leader: None }) => {
                return Err(Status::unavailable(NO_LEADER));
            }
            Err(error @ MembershipError::TargetNotVoter(_)) => {
                return Err(Status::failed_precondition(format!(
                    "etcdserver: the target is not a voter ({error})"
                )));
            }
            Err(error) => return Err(Status::unavailable(format!("etcdserver: {error}"))),
        }
        // Like etcd, answer once the target leads, or fail once the leader gave up.
        let me = proxy.membership().me;
        let deadline = tokio::time::Instant::now() + proxy.request_timeout;
        let mut changes = proxy.subscribe();
        loop {
            let (leader, handing_over) = proxy
                .node()
                .read(|node| (node.status().leader, node.handing_over()))
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
            if leader == Some(target) {
                return Ok(Response::new(pb::MoveLeaderResponse {
                    header: Some(proxy.header(0)),
                }));
            }
            let abandoned = leader == Some(me) && !handing_over;
            if abandoned || tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(LEADER_TRANSFER_TIMED_OUT));
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
        }
    }
}

/// The snapshot file: a length-prefixed postcard image of the state machine, zero-padded
/// to a multiple of 512 bytes, then the SHA-256 of everything before it. etcd clients
/// recognise the trailing hash by the total size being 32 more than a multiple of 512.
pub fn snapshot_bytes(encoded: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let mut data = Vec::with_capacity(encoded.len() + 512 + 32 + 16);
    data.extend_from_slice(b"SYNODSNP");
    data.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    data.extend_from_slice(&encoded);
    let padded = data.len().div_ceil(512) * 512;
    data.resize(padded, 0);
    let digest = sha2::Sha256::digest(&data);
    data.extend_from_slice(&digest);
    data
}

/// The Cluster service. With Raft, members come from the replicated configuration:
/// MemberAdd adds a learner or a voter (its peer URL travels in the configuration, so every
/// member dials it), MemberPromote makes an in-sync learner a voter, MemberRemove removes a
/// member; each runs on the leader (a follower forwards the call) as one configuration
/// change. A member added at run time is listed without a name or client URLs until it
/// is given them at start (etcd does the same until the member publishes them).
pub struct ClusterService<N: Consensus>(pub Arc<Shared<N>>);

/// A member added through the API, as the replicated configuration describes it: its etcd
/// id and peer URL from MemberAdd, then, once the member has started and made them known,
/// its name and client URLs. Written as tab-separated fields (client URLs comma-separated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedMember {
    /// The etcd member id MemberAdd gave it.
    pub member_id: u64,
    /// Where peers reach it.
    pub peer_url: String,
    /// Its name; empty until it has started.
    pub name: String,
    /// Where clients reach it; empty until it has started.
    pub client_urls: Vec<String>,
}

impl AddedMember {
    /// The description stored in the configuration.
    pub fn describe(&self) -> String {
        if self.name.is_empty() && self.client_urls.is_empty() {
            return format!("{}\t{}", self.member_id, self.peer_url);
        }
        format!(
            "{}\t{}\t{}\t{}",
            self.member_id,
            self.peer_url,
            self.name,
            self.client_urls.join(",")
        )
    }

    /// Reads a description written by [`AddedMember::describe`].
    pub fn parse(address: &str) -> Option<AddedMember> {
        let mut fields = address.split('\t');
        let member_id = fields.next()?.parse().ok()?;
        let peer_url = fields.next()?.to_string();
        let name = fields.next().unwrap_or_default().to_string();
        let client_urls = fields
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|url| !url.is_empty())
            .map(str::to_string)
            .collect();
        Some(AddedMember {
            member_id,
            peer_url,
            name,
            client_urls,
        })
    }

    /// The member as the API lists it.
    pub fn info(&self) -> MemberInfo {
        MemberInfo {
            member_id: self.member_id,
            name: self.name.clone(),
            peer_urls: vec![self.peer_url.clone()],
            client_urls: self.client_urls.clone(),
        }
    }
}

/// The node of etcd member `member_id` among the nodes `configuration` names.
fn node_of(
    membership: &super::Membership,
    configuration: &RaftMembership,
    member_id: u64,
) -> Option<NodeId> {
    configuration.nodes().into_iter().find(|node| {
        membership.members.get(node).map(|member| member.member_id) == Some(member_id)
            || configuration
                .addresses
                .get(node)
                .and_then(|address| AddedMember::parse(address))
                .is_some_and(|added| added.member_id == member_id)
    })
}

/// The etcd member id MemberAdd gives the member at `peer_url` that becomes node `node`
/// (a member joining with `--initial-cluster-state existing` takes the same id).
pub fn added_member_id(peer_url: &str, node: NodeId) -> u64 {
    use std::hash::Hasher;
    let mut hasher = synod_core::hash::StableHasher::new();
    hasher.write(peer_url.as_bytes());
    hasher.write_u32(node.0);
    hasher.finish() | 1
}

impl<N: Consensus> ClusterService<N> {
    async fn configuration(&self) -> Result<Option<RaftMembership>, Status> {
        self.0
            .proxy
            .node()
            .read(|node| node.configuration().cloned())
            .await
            .map_err(|error| Status::unavailable(error.to_string()))
    }

    async fn members(&self) -> Result<Vec<pb::Member>, Status> {
        let known = &self.0.proxy.membership().members;
        let Some(configuration) = self.configuration().await? else {
            return Ok(known
                .values()
                .map(|member| pb::Member {
                    id: member.member_id,
                    name: member.name.clone(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: member.client_urls.clone(),
                    is_learner: false,
                })
                .collect());
        };
        // The configuration being moved to: while joint, voters on their way out are
        // no longer listed.
        let mut members = Vec::new();
        let listed = configuration
            .voters
            .iter()
            .chain(configuration.learners.iter());
        for &node in listed {
            let is_learner = configuration.is_learner(node);
            if let Some(member) = known.get(&node) {
                members.push(pb::Member {
                    id: member.member_id,
                    name: member.name.clone(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: member.client_urls.clone(),
                    is_learner,
                });
            } else if let Some(added) = configuration
                .addresses
                .get(&node)
                .and_then(|address| AddedMember::parse(address))
            {
                members.push(pb::Member {
                    id: added.member_id,
                    name: added.name,
                    peer_ur_ls: vec![added.peer_url],
                    client_ur_ls: added.client_urls,
                    is_learner,
                });
            }
        }
        Ok(members)
    }

    /// The node id of etcd member `member_id` in `configuration`.
    fn node_of(&self, configuration: &RaftMembership, member_id: u64) -> Option<NodeId> {
        node_of(self.0.proxy.membership(), configuration, member_id)
    }

    /// Runs `changes` on the local node; `Ok(None)` if another member leads (forward).
    async fn change(
        &self,
        changes: Vec<MembershipChange>,
        addresses: BTreeMap<NodeId, String>,
    ) -> Result<Option<NodeId>, Status> {
        let result = self
            .0
            .proxy
            .node()
            .act(move |node, ctx| node.change_configuration(&changes, &addresses, ctx))
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        match result {
            Ok(_) => Ok(None),
            Err(MembershipError::NotLeader {
                leader: Some(leader),
            }) => Ok(Some(leader)),
            Err(MembershipError::NotLeader { leader: None }) => Err(Status::unavailable(NO_LEADER)),
            Err(error @ MembershipError::LearnerBehind { .. }) => {
                Err(Status::failed_precondition(format!(
                    "etcdserver: can only promote a learner member which is in sync with leader ({error})"
                )))
            }
            Err(error @ MembershipError::NotLearner(_)) => Err(Status::failed_precondition(
                format!("etcdserver: can only promote a learner member ({error})"),
            )),
            Err(error @ MembershipError::NotMember(_)) => Err(Status::not_found(format!(
                "etcdserver: member not found ({error})"
            ))),
            Err(
                error @ (MembershipError::ChangeInProgress { .. }
                | MembershipError::LeaderNotReady
                | MembershipError::TransferInProgress(_)),
            ) => Err(Status::unavailable(format!("etcdserver: {error}"))),
            Err(error) => Err(Status::failed_precondition(format!("etcdserver: {error}"))),
        }
    }

    /// Applies `change` to the node behind etcd member `member_id`; `Some(leader)` when the
    /// call must be forwarded there instead.
    async fn change_member(
        &self,
        member_id: u64,
        change: impl FnOnce(NodeId) -> MembershipChange,
    ) -> Result<Option<NodeId>, Status> {
        let configuration = self.reconfigurable().await?;
        let node = self
            .node_of(&configuration, member_id)
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))?;
        self.change(vec![change(node)], BTreeMap::new()).await
    }

    async fn reconfigurable(&self) -> Result<RaftMembership, Status> {
        self.configuration()
            .await?
            .ok_or_else(|| Status::unimplemented(NO_RECONFIGURATION))
    }
}

const NO_RECONFIGURATION: &str = "synod: membership changes need Raft; this cluster runs a protocol whose membership is fixed at start";

#[tonic::async_trait]
impl<N: Consensus> pb::cluster_server::Cluster for ClusterService<N> {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let configuration = self.reconfigurable().await?;
        let Some(peer_url) = message.peer_ur_ls.first().cloned() else {
            return Err(Status::invalid_argument(
                "etcdserver: a new member needs at least one peer URL",
            ));
        };
        let known = &self.0.proxy.membership().members;
        let taken = known
            .iter()
            .filter(|(node, _)| configuration.nodes().contains(node))
            .any(|(_, member)| member.peer_urls.contains(&peer_url))
            || configuration
                .addresses
                .values()
                .filter_map(|address| AddedMember::parse(address))
                .any(|added| added.peer_url == peer_url);
        if taken {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        // A fresh node id: past every member this server or the configuration knows.
        let node = known
            .keys()
            .chain(configuration.nodes().iter())
            .map(|node| node.0 + 1)
            .max()
            .map_or(NodeId(0), NodeId);
        let member_id = added_member_id(&peer_url, node);
        let change = if message.is_learner {
            MembershipChange::AddLearner(node)
        } else {
            MembershipChange::AddVoter(node)
        };
        let description = AddedMember {
            member_id,
            peer_url: peer_url.clone(),
            name: String::new(),
            client_urls: Vec::new(),
        };
        let addresses = BTreeMap::from([(node, description.describe())]);
        if let Some(leader) = self.change(vec![change], addresses).await? {
            return ClusterClient::new(self.0.forwarder.channel(leader)?)
                .member_add(forward_request(&metadata, message)?)
                .await;
        }
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.0.proxy.header(0)),
            member: Some(pb::Member {
                id: member_id,
                name: String::new(),
                peer_ur_ls: vec![peer_url],
                client_ur_ls: Vec::new(),
                is_learner: message.is_learner,
            }),
            members: self.members().await?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        if let Some(leader) = self
            .change_member(message.id, MembershipChange::Remove)
            .await?
        {
            return ClusterClient::new(self.0.forwarder.channel(leader)?)
                .member_remove(forward_request(&metadata, message)?)
                .await;
        }
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.0.proxy.header(0)),
            members: self.members().await?,
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.0.proxy.header(0)),
            members: self.members().await?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        if let Some(leader) = self
            .change_member(message.id, MembershipChange::Promote)
            .await?
        {
            return ClusterClient::new(self.0.forwarder.channel(leader)?)
                .member_promote(forward_request(&metadata, message)?)
                .await;
        }
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.0.proxy.header(0)),
            members: self.members().await?,
        }))
    }
}
