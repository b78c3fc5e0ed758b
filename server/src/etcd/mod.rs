//! The etcd v3 API over a consensus node replicating the MVCC state machine.
//!
//! Every gRPC call becomes an [`MvccOperation`] run by [`Proxy::execute`] on the local node
//! under a session of this server's: a pooled client id with its own sequence numbers, so a
//! request retried after a timeout or a leader change executes at most once. A Raft
//! follower serves calls itself: it passes writes to the leader over the peer channel and
//! answers them once it applied them, and answers linearizable reads after a read index
//! request to the leader. A node that answers "not leader" with a hint (a follower that
//! does not serve, or holds too many requests already; a Paxos replica) has the call
//! forwarded to the leader's client endpoint ([`Forwarder`]), so clients never need to find
//! the leader themselves.

pub mod convert;
pub mod recipes;
pub mod services;

use crate::api::etcdserverpb as pb;
use crate::runtime::{NodeHandle, RuntimeError, RuntimeNode, random_u64};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use synod_core::node::{ClientId, Context, NodeId};
use synod_core::session::SessionError;
use synod_protocols::kv_state::ReplicatedClientConfig;
use synod_protocols::mvcc::api::MvccError;
use synod_protocols::mvcc::machine::{
    MvccMachine, MvccOperation, MvccOutput, MvccRequest, MvccResponse, RequestError,
};
use synod_protocols::paxos::PaxosNode;
use synod_protocols::raft::{
    Membership as RaftMembership, MembershipChange, MembershipError, RaftNode,
};
use synod_protocols::replicated::{ReadConsistency, StateMachine};
use tokio::sync::watch;
use tonic::Status;

/// etcd's text for a call that found no leader in time.
pub const NO_LEADER: &str = "etcdserver: no leader";
/// etcd's text for a call that timed out.
pub const TIMED_OUT: &str = "etcdserver: request timed out";
/// etcd's text for a call to a member that stopped.
pub const SERVER_STOPPED: &str = "etcdserver: server stopped";

/// What the API needs to see of a consensus node, beyond the runtime contract.
pub trait Consensus: RuntimeNode<Request = MvccRequest, Response = MvccResponse> + Sync {
    /// Term (or ballot round), leader, commit and apply progress.
    fn status(&self) -> ConsensusStatus;
    /// The applied state machine.
    fn machine(&self) -> &MvccMachine;
    /// The cluster configuration in effect, if this protocol changes membership at run time.
    fn configuration(&self) -> Option<&RaftMembership> {
        None
    }
    /// Proposes a membership change (leader only); `addresses` describe newcomers.
    fn change_configuration(
        &mut self,
        _changes: &[MembershipChange],
        _addresses: &BTreeMap<NodeId, String>,
        _ctx: &mut Context<Self>,
    ) -> Result<u64, MembershipError> {
        Err(MembershipError::NotLeader { leader: None })
    }
    /// True if this protocol supports membership changes.
    fn reconfigurable(&self) -> bool {
        false
    }
    /// Hands leadership to voter `target` (leader only; etcd's MoveLeader).
    fn hand_over(
        &mut self,
        _target: NodeId,
        _ctx: &mut Context<Self>,
    ) -> Result<(), MembershipError> {
        Err(MembershipError::NotLeader { leader: None })
    }
    /// True while a leadership hand-over this node started is under way.
    fn handing_over(&self) -> bool {
        false
    }
    /// True if the configuration in effect is committed (no change is pending).
    fn configuration_committed(&self) -> bool {
        true
    }
    /// Answers `request` from the applied state alone, exactly as the node would if it
    /// were sent to it, when that answer needs no effect (no message, no log entry, no
    /// wait): Raft's serializable reads. `None` means the request must go to the node.
    fn read_locally(&self, _request: &MvccRequest) -> Option<MvccResponse> {
        None
    }
}

/// A consensus node's progress, as the API reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsensusStatus {
    /// The current term (Raft) or ballot round (Paxos).
    pub term: u64,
    /// The node believed to lead.
    pub leader: Option<NodeId>,
    /// Entries known committed.
    pub commit_index: u64,
    /// Entries applied to the state machine.
    pub applied_index: u64,
}

impl Consensus for PaxosNode<MvccMachine> {
    fn status(&self) -> ConsensusStatus {
        ConsensusStatus {
            term: self.promised().round,
            leader: self.leader_hint(),
            commit_index: self.executed_below(),
            applied_index: self.executed_below(),
        }
    }

    fn machine(&self) -> &MvccMachine {
        self.store()
    }
}

impl Consensus for RaftNode<MvccMachine> {
    fn status(&self) -> ConsensusStatus {
        ConsensusStatus {
            term: self.term(),
            // A leader names itself.
            leader: self.leader(),
            commit_index: self.commit_index(),
            applied_index: self.applied_index(),
        }
    }

    fn machine(&self) -> &MvccMachine {
        self.state()
    }

    fn configuration(&self) -> Option<&RaftMembership> {
        Some(self.membership())
    }

    fn change_configuration(
        &mut self,
        changes: &[MembershipChange],
        addresses: &BTreeMap<NodeId, String>,
        ctx: &mut Context<Self>,
    ) -> Result<u64, MembershipError> {
        self.propose_membership_change_with(changes, addresses, ctx)
    }

    fn reconfigurable(&self) -> bool {
        true
    }

    fn hand_over(
        &mut self,
        target: NodeId,
        ctx: &mut Context<Self>,
    ) -> Result<(), MembershipError> {
        self.transfer_leadership(target, ctx)
    }

    fn handing_over(&self) -> bool {
        self.transfer_target().is_some()
    }

    fn configuration_committed(&self) -> bool {
        self.membership_index() <= self.commit_index()
    }

    fn read_locally(&self, request: &MvccRequest) -> Option<MvccResponse> {
        // The node answers these on any role, straight from its applied state (see
        // `RaftNode::on_client_request`); the session is not involved.
        (MvccMachine::read_consistency(request) == Some(ReadConsistency::Serializable))
            .then(|| self.state().query(LOCAL_READER, request))
    }
}

/// The client id local reads are answered for (queries do not look at it).
const LOCAL_READER: ClientId = ClientId(0);

/// What the node task publishes after every input: cheap numbers for headers, status and
/// waking watchers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Consensus progress.
    pub status: ConsensusStatus,
    /// The store's current revision.
    pub revision: i64,
    /// The store's compacted revision.
    pub compacted: i64,
}

/// Returns the observer to pass to [`NodeHandle::start_observed`] and the receiver the API
/// reads from.
pub fn observer<N: Consensus>() -> (impl FnMut(&N) + Send + 'static, watch::Receiver<Observed>) {
    let (sender, receiver) = watch::channel(Observed::default());
    let observe = move |node: &N| {
        let store = node.machine().store();
        let observed = Observed {
            status: node.status(),
            revision: store.revision(),
            compacted: store.compacted_revision(),
        };
        sender.send_if_modified(|current| {
            if *current == observed {
                false
            } else {
                crate::metrics::metrics().observe(current, &observed);
                *current = observed;
                true
            }
        });
    };
    (observe, receiver)
}

/// Who this member is and who the others are.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The cluster's id (the same on every member).
    pub cluster_id: u64,
    /// Every member this one was started with (its initial cluster), by node id.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// This member.
    pub me: NodeId,
    /// Members added at run time, as the replicated configuration describes them (kept up
    /// to date while the member runs).
    pub learned: LearnedMembers,
}

/// The members the replicated configuration names beyond a member's initial cluster (added
/// with MemberAdd), shared between the task that follows the configuration and the API.
#[derive(Clone, Debug, Default)]
pub struct LearnedMembers(Arc<RwLock<BTreeMap<NodeId, MemberInfo>>>);

impl LearnedMembers {
    /// Member `node`, if the configuration describes it.
    pub fn get(&self, node: NodeId) -> Option<MemberInfo> {
        self.0.read().ok()?.get(&node).cloned()
    }

    /// Replaces what is known with `members` (the configuration's current description).
    pub fn replace(&self, members: BTreeMap<NodeId, MemberInfo>) {
        if let Ok(mut learned) = self.0.write() {
            *learned = members;
        }
    }
}

/// One member as the Cluster API lists it.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// etcd-style 64-bit member id.
    pub member_id: u64,
    /// Human-readable name.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
}

impl Membership {
    /// This member's etcd id.
    pub fn member_id(&self) -> u64 {
        self.members
            .get(&self.me)
            .map_or(0, |member| member.member_id)
    }

    /// Member `node`: one of the initial cluster, or one added at run time.
    pub fn member(&self, node: NodeId) -> Option<MemberInfo> {
        self.members
            .get(&node)
            .cloned()
            .or_else(|| self.learned.get(node))
    }

    /// The etcd id of `node`, or 0 if unknown.
    pub fn member_id_of(&self, node: Option<NodeId>) -> u64 {
        node.and_then(|node| self.member(node))
            .map_or(0, |member| member.member_id)
    }

    /// Where clients (and forwarding members) reach `node`, if known yet: a member added at
    /// run time makes its client URL known once it has started.
    pub fn client_url(&self, node: NodeId) -> Option<String> {
        self.member(node)?.client_urls.first().cloned()
    }
}

/// Where a call ended up.
pub enum Outcome {
    /// Executed here (or by the leader through this node).
    Done(MvccOutput, pb::ResponseHeader),
    /// Another node leads: forward the original call there.
    Redirect(NodeId),
}

/// A session this server uses on behalf of gRPC callers.
struct Session {
    client: ClientId,
    next_sequence: u64,
}

/// Runs operations on the local node with exactly-once sessions.
pub struct Proxy<N: Consensus> {
    node: Arc<NodeHandle<N>>,
    observed: watch::Receiver<Observed>,
    membership: Membership,
    idle: Mutex<Vec<Session>>,
    client_base: u64,
    next_client: AtomicU64,
    /// How long one call may wait in all (elections, retries) before giving up.
    pub request_timeout: Duration,
    /// How long one attempt waits for the node before retrying the same request.
    pub attempt_timeout: Duration,
}

impl<N: Consensus> Proxy<N> {
    /// A proxy for `node`.
    pub fn new(
        node: Arc<NodeHandle<N>>,
        observed: watch::Receiver<Observed>,
        membership: Membership,
    ) -> Self {
        // Client ids must never repeat across restarts of this server (a reused id would
        // meet its old session's sequence numbers): take 40 random bits per process.
        let client_base = random_u64() << 24;
        Proxy {
            node,
            observed,
            membership,
            idle: Mutex::new(Vec::new()),
            client_base,
            next_client: AtomicU64::new(0),
            request_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_millis(
                ReplicatedClientConfig::default().give_up_after.as_millis() as u64,
            ),
        }
    }

    /// The node.
    pub fn node(&self) -> &Arc<NodeHandle<N>> {
        &self.node
    }

    /// The latest published numbers.
    pub fn observed(&self) -> Observed {
        *self.observed.borrow()
    }

    /// A receiver that wakes when the published numbers change.
    pub fn subscribe(&self) -> watch::Receiver<Observed> {
        self.observed.clone()
    }

    /// Membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// A response header for `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        let observed = self.observed();
        pb::ResponseHeader {
            cluster_id: self.membership.cluster_id,
            member_id: self.membership.member_id(),
            revision: if revision > 0 {
                revision
            } else {
                observed.revision
            },
            raft_term: observed.status.term,
        }
    }

    fn take_session(&self) -> Session {
        if let Some(session) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return session;
        }
        let index = self.next_client.fetch_add(1, Ordering::Relaxed);
        Session {
            client: ClientId(self.client_base | (index & 0xff_ffff)),
            next_sequence: 1,
        }
    }

    fn return_session(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }

    /// Runs `operation` on the local node under a session, retrying the same request
    /// through timeouts and elections until it is answered or `request_timeout` passes.
    /// A read the node answers from its applied state alone
    /// ([`Consensus::read_locally`], e.g. a serializable range) is answered here, off the
    /// node's task and without a session, unless the node's task holds the node right now.
    pub async fn execute(&self, operation: MvccOperation) -> Result<Outcome, Status> {
        let operation = match operation {
            MvccOperation::Range(range) if range.serializable => {
                match self
                    .read_locally(MvccRequest {
                        sequence: 0,
                        acknowledged_below: 0,
                        operation: MvccOperation::Range(range),
                    })
                    .await
                {
                    Ok(outcome) => return outcome,
                    Err(request) => request.operation,
                }
            }
            operation => operation,
        };
        let mut session = self.take_session();
        let sequence = session.next_sequence;
        let request = MvccRequest {
            sequence,
            acknowledged_below: sequence,
            operation,
        };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let result = loop {
            let answer = self
                .node
                .call(session.client, request.clone(), self.attempt_timeout)
                .await;
            match answer {
                Ok(MvccResponse {
                    sequence: answered,
                    result,
                }) if answered == sequence => match result {
                    Ok(output) => {
                        let revision = revision_of(&output);
                        break Ok(Outcome::Done(output, self.header(revision)));
                    }
                    Err(RequestError::NotLeader { hint: Some(leader) })
                        if leader != self.membership.me
                            && self.membership.client_url(leader).is_some() =>
                    {
                        break Ok(Outcome::Redirect(leader));
                    }
                    Err(RequestError::NotLeader { .. }) => {
                        if tokio::time::Instant::now() >= deadline {
                            break Err(Status::unavailable(NO_LEADER));
                        }
                        // Wait for the node's state to change (an election), at most 20 ms.
                        let mut changes = self.observed.clone();
                        let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed())
                            .await;
                    }
                    Err(error) => break Err(request_error(error)),
                },
                Ok(_) | Err(RuntimeError::Timeout(_)) | Err(RuntimeError::Superseded) => {
                    if tokio::time::Instant::now() >= deadline {
                        break Err(Status::deadline_exceeded(TIMED_OUT));
                    }
                }
                Err(RuntimeError::Stopped) => {
                    break Err(Status::unavailable(SERVER_STOPPED));
                }
            }
        };
        // Whatever happened, this sequence number is finished with: the next request of
        // the session acknowledges it (a late execution is answered to nobody).
        session.next_sequence = sequence + 1;
        self.return_session(session);
        result
    }
}

/// What a local read saw: the node's answer, and the term and revision it read at.
type LocalRead = (MvccResponse, u64, i64);

/// Answers `request` from `node`'s applied state on the calling thread; `Ok(None)` if the
/// node must handle it (its task holds the node, or the protocol does not read locally).
fn read_applied<N: Consensus>(
    node: &NodeHandle<N>,
    request: &MvccRequest,
) -> Result<Option<LocalRead>, RuntimeError> {
    let read = node.try_read(|node| {
        let response = node.read_locally(request)?;
        // The header describes the state the read saw, not the last one published.
        Some((
            response,
            node.status().term,
            node.machine().store().revision(),
        ))
    })?;
    Ok(read.unwrap_or(None))
}

impl<N: Consensus> Proxy<N> {
    /// Answers `request` from the node's applied state, off the node's task; hands it back
    /// if the node must handle it (its task holds the node, or the protocol does not read
    /// locally).
    ///
    /// The read runs on a short task of its own rather than inline in the gRPC call:
    /// answered inline, every call completes in its first poll and wakes its connection,
    /// which tokio then runs at once (the woken task goes first), so each response leaves in
    /// its own write (measured: 1.6 `writev` per read instead of 0.85, and more CPU per read
    /// than through the node). One hop lets the calls that arrived together finish before
    /// the connection writes their responses in one go.
    async fn read_locally(
        &self,
        request: MvccRequest,
    ) -> Result<Result<Outcome, Status>, MvccRequest> {
        let node = self.node.clone();
        let read = tokio::spawn(async move {
            let seen = read_applied(&node, &request);
            (seen, request)
        })
        .await;
        let Ok((seen, request)) = read else {
            return Ok(Err(Status::unavailable(SERVER_STOPPED))); // The runtime shuts down.
        };
        let (response, term, revision) = match seen {
            Ok(Some(seen)) => seen,
            Ok(None) => {
                crate::metrics::metrics().reads_through_node.inc();
                return Err(request);
            }
            Err(_) => return Ok(Err(Status::unavailable(SERVER_STOPPED))),
        };
        crate::metrics::metrics().reads_local.inc();
        Ok(match response.result {
            Ok(output) => {
                let answered = revision_of(&output);
                let header = pb::ResponseHeader {
                    cluster_id: self.membership.cluster_id,
                    member_id: self.membership.member_id(),
                    revision: if answered > 0 { answered } else { revision },
                    raft_term: term,
                };
                Ok(Outcome::Done(output, header))
            }
            Err(error) => Err(request_error(error)),
        })
    }
}

/// The header revision an output reports.
fn revision_of(output: &MvccOutput) -> i64 {
    match output {
        MvccOutput::Range(response) => response.header.revision,
        MvccOutput::Put(response) => response.header.revision,
        MvccOutput::DeleteRange(response) => response.header.revision,
        MvccOutput::Txn(response) => response.header.revision,
        MvccOutput::Compact(response) => response.header.revision,
        MvccOutput::LeaseGrant(response) => response.header.revision,
        MvccOutput::LeaseRevoke(response) => response.header.revision,
        MvccOutput::LeaseKeepAlive(response) => response.header.revision,
        MvccOutput::LeaseTimeToLive(response) => response.header.revision,
        MvccOutput::LeaseLeases(response) => response.header.revision,
    }
}

/// A gRPC status with etcd's code and text for a refused request.
pub fn request_error(error: RequestError) -> Status {
    match error {
        RequestError::NotLeader { .. } => Status::unavailable(NO_LEADER),
        RequestError::Session(error @ SessionError::TooManySessions { .. })
        | RequestError::Session(error @ SessionError::TooManyUnacknowledged { .. }) => {
            Status::resource_exhausted(format!("etcdserver: {error}"))
        }
        RequestError::Store(error) => store_error(error),
        RequestError::NotReadOnly => Status::internal(error.to_string()),
    }
}

/// etcd's codes and texts for store errors.
pub fn store_error(error: MvccError) -> Status {
    match error {
        MvccError::Compacted | MvccError::FutureRevision => {
            Status::out_of_range(format!("etcdserver: {error}"))
        }
        MvccError::LeaseNotFound => Status::not_found(error.to_string()),
        MvccError::LeaseExists => Status::failed_precondition(error.to_string()),
        // The request was fine; the member's own storage failed.
        MvccError::Storage(_) => Status::internal(error.to_string()),
        _ => Status::invalid_argument(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_get_etcds_codes_and_a_storage_failure_is_internal() {
        let code = |error: MvccError| store_error(error).code();
        assert_eq!(code(MvccError::Compacted), tonic::Code::OutOfRange);
        assert_eq!(code(MvccError::LeaseNotFound), tonic::Code::NotFound);
        assert_eq!(code(MvccError::EmptyKey), tonic::Code::InvalidArgument);
        let failed = store_error(MvccError::Storage("read failed at 42".into()));
        assert_eq!(failed.code(), tonic::Code::Internal);
        assert!(failed.message().contains("read failed at 42"));
    }
}
