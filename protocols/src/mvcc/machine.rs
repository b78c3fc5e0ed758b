//! The replicated MVCC state machine: the store, client sessions and lease expiry, driven
//! by a log through [`StateMachine`].
//!
//! Clients number their requests; [`MvccMachine`] executes each mutation at most once
//! however often it reaches the log, and answers retries with the recorded result (reads
//! are not recorded: running one twice is harmless). Grants, keep-alives and time-to-live
//! queries are stamped with the proposer's clock when they enter the log, so every replica
//! computes the same lease state. The leader proposes the rest on its own through
//! [`StateMachine::due`]: the revocation of expired leases (see [`crate::mvcc::lease`] for
//! the deadline rule) and a note of when it started leading, which lets time-to-live answers
//! count from the same point the leader's expiry does.

use serde::{Deserialize, Serialize};
use synod_core::node::{ClientId, NodeId};
use synod_core::session::{Admission, SessionError, SessionTable};
use synod_core::time::Time;

use crate::mvcc::api::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, MvccError, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use crate::mvcc::records::RecordFile;
use crate::mvcc::store::MvccStore;
use crate::replicated::{ReadConsistency, StateMachine, Tail};
use std::sync::Arc;

/// Lease revocations one call to [`StateMachine::due`] proposes at most: a burst of
/// expiries is spread over several calls instead of flooding the log at once.
pub const LEASE_EXPIRIES_PER_DUE_MAX: usize = 64;

/// Everything a client can ask of the store (one variant per etcd KV and Lease RPC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MvccOperation {
    /// Read keys.
    Range(RangeRequest),
    /// Write a key.
    Put(PutRequest),
    /// Delete keys.
    DeleteRange(DeleteRangeRequest),
    /// Compare and write atomically.
    Txn(TxnRequest),
    /// Discard history.
    Compact(CompactionRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Revoke a lease and delete its keys.
    LeaseRevoke(LeaseRevokeRequest),
    /// Renew a lease.
    LeaseKeepAlive(LeaseKeepAliveRequest),
    /// Ask how long a lease has left.
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    /// List the leases.
    LeaseLeases,
}

impl MvccOperation {
    /// True if the operation changes nothing (it is not recorded in the session table).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            MvccOperation::Range(_)
                | MvccOperation::LeaseTimeToLive(_)
                | MvccOperation::LeaseLeases
        )
    }
}

/// The answer to an [`MvccOperation`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MvccOutput {
    /// A range's answer.
    Range(RangeResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A transaction's answer.
    Txn(TxnResponse),
    /// A compaction's answer.
    Compact(CompactionResponse),
    /// A grant's answer.
    LeaseGrant(LeaseGrantResponse),
    /// A revocation's answer.
    LeaseRevoke(LeaseRevokeResponse),
    /// A keep-alive's answer.
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// A time-to-live answer.
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    /// The lease list.
    LeaseLeases(LeaseLeasesResponse),
}

/// Why a request was not executed. Every variant means it definitely did not happen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// This node does not lead; `hint` names the leader it believes in, if any.
    #[error("not the leader (try {hint:?})")]
    NotLeader {
        /// The node believed to lead.
        hint: Option<NodeId>,
    },
    /// The session refused the request.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store refused the request.
    #[error(transparent)]
    Store(#[from] MvccError),
    /// A read-only query was asked to run something that is not read-only (a log protocol
    /// bug: send it through the log).
    #[error("not a read-only request; send it through the log")]
    NotReadOnly,
}

/// A client's request (the client id travels in the envelope).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MvccRequest {
    /// The request's sequence number in the client's session.
    pub sequence: u64,
    /// Every sequence number below this one is answered and will never be retried.
    pub acknowledged_below: u64,
    /// What to do.
    pub operation: MvccOperation,
}

/// The answer to an [`MvccRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MvccResponse {
    /// The sequence number of the request answered.
    pub sequence: u64,
    /// The output, or why the request was not executed.
    pub result: Result<MvccOutput, RequestError>,
}

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MvccCommand {
    /// A client's request, stamped with the proposer's clock.
    Client {
        /// The client.
        client: ClientId,
        /// The request's sequence number.
        sequence: u64,
        /// The client's acknowledged low-water mark.
        acknowledged_below: u64,
        /// What to do.
        operation: MvccOperation,
        /// The proposer's clock when the command entered the log.
        proposed_at: Time,
    },
    /// The leader found a lease expired: revoke it unless it was renewed since the renewal
    /// stamp the leader judged it by.
    ExpireLease {
        /// The lease.
        id: i64,
        /// Its renewal stamp when the leader decided.
        renewed_at: Time,
    },
    /// A leader notes when it started leading (on its clock).
    LeaderSince {
        /// The leader's `leading_since`.
        leading_since: Time,
    },
}

/// The recorded result of a mutation.
type Recorded = Result<MvccOutput, RequestError>;

/// The replicated MVCC machine (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MvccMachine {
    sessions: SessionTable<Recorded>,
    /// The latest leader's `leading_since`, as it noted it.
    leader_since: Time,
    /// Last, so that its records (last in it) end the encoding: a snapshot streams them.
    store: MvccStore,
}

impl MvccMachine {
    /// An empty machine.
    pub fn new() -> Self {
        MvccMachine::default()
    }

    /// An empty machine allowing `max_txn_ops` compares and operations per list in a
    /// transaction (etcd's `--max-txn-ops`; the default is
    /// [`crate::mvcc::MAX_TXN_OPS_DEFAULT`]).
    pub fn with_max_txn_ops(max_txn_ops: usize) -> Self {
        MvccMachine {
            store: MvccStore::new(max_txn_ops),
            ..MvccMachine::default()
        }
    }

    /// The store.
    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// Keeps keys' and values' bytes in `file` from now on (see [`MvccStore::use_file`]).
    pub fn use_file(&mut self, file: &Arc<dyn RecordFile>) -> Result<(), String> {
        self.store.use_file(file)
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable<Recorded> {
        &self.sessions
    }

    /// Runs one operation at the proposer's clock reading `now`.
    fn execute(&mut self, operation: &MvccOperation, now: Time) -> Result<MvccOutput, MvccError> {
        let store = &mut self.store;
        Ok(match operation {
            MvccOperation::Range(request) => MvccOutput::Range(store.range(request)?),
            MvccOperation::Put(request) => MvccOutput::Put(store.put(request)?),
            MvccOperation::DeleteRange(request) => {
                MvccOutput::DeleteRange(store.delete_range(request)?)
            }
            MvccOperation::Txn(request) => MvccOutput::Txn(store.txn(request)?),
            MvccOperation::Compact(request) => MvccOutput::Compact(store.compact(request)?),
            MvccOperation::LeaseGrant(request) => {
                MvccOutput::LeaseGrant(store.lease_grant(request, now)?)
            }
            MvccOperation::LeaseRevoke(request) => {
                MvccOutput::LeaseRevoke(store.lease_revoke(request)?)
            }
            MvccOperation::LeaseKeepAlive(request) => {
                MvccOutput::LeaseKeepAlive(store.lease_keep_alive(request, now)?)
            }
            MvccOperation::LeaseTimeToLive(request) => MvccOutput::LeaseTimeToLive(
                store.lease_time_to_live(request, now, self.leader_since),
            ),
            MvccOperation::LeaseLeases => MvccOutput::LeaseLeases(store.lease_leases()),
        })
    }

    fn apply_client(
        &mut self,
        client: ClientId,
        sequence: u64,
        acknowledged_below: u64,
        operation: &MvccOperation,
        now: Time,
    ) -> Option<Recorded> {
        if operation.is_read_only() {
            return Some(self.execute(operation, now).map_err(RequestError::from));
        }
        match self.sessions.admit(client, sequence, acknowledged_below) {
            Ok(Admission::Execute) => {
                let result = self.execute(operation, now).map_err(RequestError::from);
                self.sessions.record(client, sequence, result.clone());
                Some(result)
            }
            Ok(Admission::Duplicate(result)) => Some(result),
            Ok(Admission::Stale) => None,
            Err(error) => Some(Err(RequestError::Session(error))),
        }
    }
}

impl StateMachine for MvccMachine {
    type Request = MvccRequest;
    type Response = MvccResponse;
    type Command = MvccCommand;

    fn command(client: ClientId, request: MvccRequest, now: Time) -> MvccCommand {
        MvccCommand::Client {
            client,
            sequence: request.sequence,
            acknowledged_below: request.acknowledged_below,
            operation: request.operation,
            proposed_at: now,
        }
    }

    fn apply(&mut self, command: &MvccCommand) -> Option<(ClientId, MvccResponse)> {
        match command {
            MvccCommand::Client {
                client,
                sequence,
                acknowledged_below,
                operation,
                proposed_at,
            } => {
                let result = self.apply_client(
                    *client,
                    *sequence,
                    *acknowledged_below,
                    operation,
                    *proposed_at,
                )?;
                Some((
                    *client,
                    MvccResponse {
                        sequence: *sequence,
                        result,
                    },
                ))
            }
            MvccCommand::ExpireLease { id, renewed_at } => {
                let unrenewed = self
                    .store
                    .lease(*id)
                    .is_some_and(|lease| lease.renewed_at == *renewed_at);
                if unrenewed {
                    // The lease exists, so the revocation cannot fail.
                    let revoked = self.store.lease_revoke(&LeaseRevokeRequest { id: *id });
                    assert!(revoked.is_ok(), "revoking an existing lease failed");
                }
                None
            }
            MvccCommand::LeaderSince { leading_since } => {
                self.leader_since = *leading_since;
                None
            }
        }
    }

    fn redirect(request: &MvccRequest, leader: Option<NodeId>) -> MvccResponse {
        MvccResponse {
            sequence: request.sequence,
            result: Err(RequestError::NotLeader { hint: leader }),
        }
    }

    fn read_consistency(request: &MvccRequest) -> Option<ReadConsistency> {
        match &request.operation {
            MvccOperation::Range(range) if range.serializable => {
                Some(ReadConsistency::Serializable)
            }
            MvccOperation::Range(_) | MvccOperation::LeaseLeases => {
                Some(ReadConsistency::Linearizable)
            }
            _ => None,
        }
    }

    fn query(&self, _client: ClientId, request: &MvccRequest) -> MvccResponse {
        let result = match &request.operation {
            MvccOperation::Range(range) => self
                .store
                .range(range)
                .map(MvccOutput::Range)
                .map_err(RequestError::from),
            MvccOperation::LeaseLeases => Ok(MvccOutput::LeaseLeases(self.store.lease_leases())),
            _ => Err(RequestError::NotReadOnly),
        };
        MvccResponse {
            sequence: request.sequence,
            result,
        }
    }

    fn snapshot_parts(&self) -> Result<(Vec<u8>, Option<Tail>), String> {
        let encoded = match self.store.tail() {
            // The records live in a file: encode the rest; they follow as the tail.
            Some(tail) => crate::replicated::encode_exactly(&(
                &self.sessions,
                self.leader_since,
                self.store.head_serializer(),
            ))
            .map(|head| (head, Some(tail))),
            None => crate::replicated::encode_exactly(self).map(|head| (head, None)),
        };
        encoded.map_err(|error| format!("the state does not encode: {error}"))
    }

    fn adopt(&mut self, restored: Self) {
        let MvccMachine {
            sessions,
            leader_since,
            store,
        } = restored;
        self.sessions = sessions;
        self.leader_since = leader_since;
        self.store.adopt(store);
    }

    fn failure(&self) -> Option<String> {
        self.store.failure().map(str::to_string)
    }

    fn due(&self, now: Time, leading_since: Time) -> Vec<MvccCommand> {
        let mut commands = Vec::new();
        if self.leader_since != leading_since {
            commands.push(MvccCommand::LeaderSince { leading_since });
        }
        commands.extend(
            self.store
                .expired_leases(now, leading_since, LEASE_EXPIRIES_PER_DUE_MAX)
                .into_iter()
                .map(|(id, renewed_at)| MvccCommand::ExpireLease { id, renewed_at }),
        );
        commands
    }
}
