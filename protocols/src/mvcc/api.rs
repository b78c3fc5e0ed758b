//! Requests, responses and errors of the MVCC store, shaped after etcd v3's
//! `etcdserverpb` and `mvccpb` messages so the gRPC layer can map them field by field.
//!
//! Revisions, versions, lease ids and TTLs are `i64` as on the wire; `0` means "none"
//! wherever etcd gives it that meaning (no lease, read at the current revision, no limit).

use serde::{Deserialize, Serialize};

/// The header every response carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The store's revision when the request was served (for a read at a past revision,
    /// still the current one).
    pub revision: i64,
}

/// One key as a read or an event shows it (`mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The revision that last created the key (after it was absent).
    pub create_revision: i64,
    /// The revision of the last write to the key.
    pub mod_revision: i64,
    /// Writes since the key was created (1 after the create; 0 for a deletion event).
    pub version: i64,
    /// The value (empty in `keys_only` reads and in deletion events).
    #[serde(with = "crate::bytes::field")]
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 if none.
    pub lease: i64,
}

/// Order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (the store's natural order).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// Reads keys (`RangeRequest`).
///
/// `range_end` follows etcd: empty reads `key` alone, `[0]` reads every key `>= key`
/// (with `key == [0]` too: the whole keyspace), anything else reads `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The end of the range (see the type's doc).
    #[serde(with = "crate::bytes::field")]
    pub range_end: Vec<u8>,
    /// At most this many keys are returned; 0 is no limit.
    pub limit: i64,
    /// Read the keyspace as of this revision; 0 or less reads the current one.
    pub revision: i64,
    /// Result order.
    pub sort_order: SortOrder,
    /// Sort key.
    pub sort_target: SortTarget,
    /// May be served by any replica from its applied state (possibly stale).
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep keys whose mod revision is at least this (0: no bound).
    pub min_mod_revision: i64,
    /// Keep keys whose mod revision is at most this (0: no bound).
    pub max_mod_revision: i64,
    /// Keep keys whose create revision is at least this (0: no bound).
    pub min_create_revision: i64,
    /// Keep keys whose create revision is at most this (0: no bound).
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A linearizable read of one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        }
    }

    /// A linearizable read of `[key, range_end)` (etcd's `range_end` rules apply).
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..RangeRequest::default()
        }
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The header.
    pub header: ResponseHeader,
    /// The keys, in the requested order, at most `limit` of them (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut keys off.
    pub more: bool,
    /// Keys in the range at the read revision, before limit and filters.
    pub count: i64,
}

/// Writes one key (`PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "crate::bytes::field")]
    pub value: Vec<u8>,
    /// Attach the key to this lease (0: none; it is detached from any earlier lease).
    pub lease: i64,
    /// Return the key as it was before the put.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist; `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist; `lease` must be 0).
    pub ignore_lease: bool,
}

impl PutRequest {
    /// A plain put of `value` under `key`.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        }
    }
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PutResponse {
    /// The header (its revision is the one the put created).
    pub header: ResponseHeader,
    /// The key before the put, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Deletes a key or a range (`DeleteRangeRequest`); `range_end` as in [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The first key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The end of the range.
    #[serde(with = "crate::bytes::field")]
    pub range_end: Vec<u8>,
    /// Return the deleted keys.
    pub prev_kv: bool,
}

impl DeleteRangeRequest {
    /// Deletes one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        }
    }
}

/// The answer to a [`DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// The header (unchanged revision when nothing was deleted).
    pub header: ResponseHeader,
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted keys, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the key's field to the operand (`Compare.CompareResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
    /// Not equal.
    NotEqual,
}

/// The field a compare reads and the operand it compares with (etcd's `target` plus
/// `target_union`, which always agree).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version (0 for an absent key).
    Version(i64),
    /// The create revision (0 for an absent key).
    Create(i64),
    /// The mod revision (0 for an absent key).
    Mod(i64),
    /// The value, bytewise (a compare on an absent key's value is false).
    Value(#[serde(with = "crate::bytes::field")] Vec<u8>),
    /// The lease (0 for an absent key or no lease).
    Lease(i64),
}

/// One condition of a transaction (`Compare`); over a range, every key must satisfy it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and operand.
    pub target: CompareTarget,
    /// The key.
    #[serde(with = "crate::bytes::field")]
    pub key: Vec<u8>,
    /// The end of the range (as in [`RangeRequest`]); empty compares `key` alone.
    #[serde(with = "crate::bytes::field")]
    pub range_end: Vec<u8>,
}

impl Compare {
    /// A compare of one key.
    pub fn key(key: impl Into<Vec<u8>>, result: CompareResult, target: CompareTarget) -> Self {
        Compare {
            result,
            target,
            key: key.into(),
            range_end: Vec::new(),
        }
    }
}

/// One operation inside a transaction (`RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`] (`ResponseOp`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResponseOp {
    /// A read's answer.
    Range(RangeResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's answer.
    Txn(TxnResponse),
}

/// Compares, then the success or the failure operations, atomically (`TxnRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Every compare must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The header: the revision after the transaction (one revision for all its writes).
    /// As in etcd, a nested transaction's header is left at 0, and the headers of the
    /// operations inside show the revision each one saw or wrote.
    pub header: ResponseHeader,
    /// True if the compares held.
    pub succeeded: bool,
    /// One answer per operation run.
    pub responses: Vec<ResponseOp>,
}

/// Discards history before a revision (`CompactionRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// Reads below this revision fail afterwards.
    pub revision: i64,
    /// etcd waits for the disk; here compaction is always complete when answered.
    pub physical: bool,
}

/// The answer to a [`CompactionRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompactionResponse {
    /// The header.
    pub header: ResponseHeader,
}

/// Creates a lease (`LeaseGrantRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Seconds the lease lives without a keep-alive.
    pub ttl: i64,
    /// The id to use; 0 lets the store choose.
    pub id: i64,
}

/// The answer to a [`LeaseGrantRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// The header.
    pub header: ResponseHeader,
    /// The lease's id.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
}

/// Revokes a lease, deleting its keys (`LeaseRevokeRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// The lease.
    pub id: i64,
}

/// The answer to a [`LeaseRevokeRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// The header (the revision that deleted the keys, if there were any).
    pub header: ResponseHeader,
}

/// Renews a lease to its full TTL (`LeaseKeepAliveRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseKeepAliveRequest {
    /// The lease.
    pub id: i64,
}

/// The answer to a [`LeaseKeepAliveRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    /// The header.
    pub header: ResponseHeader,
    /// The lease.
    pub id: i64,
    /// The renewed TTL in seconds.
    pub ttl: i64,
}

/// Asks how long a lease has left (`LeaseTimeToLiveRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseTimeToLiveRequest {
    /// The lease.
    pub id: i64,
    /// Also list the keys attached to it.
    pub keys: bool,
}

/// The answer to a [`LeaseTimeToLiveRequest`]; an unknown lease has `ttl == -1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseTimeToLiveResponse {
    /// The header.
    pub header: ResponseHeader,
    /// The lease.
    pub id: i64,
    /// Whole seconds left (-1: no such lease).
    pub ttl: i64,
    /// The TTL the lease was granted with.
    pub granted_ttl: i64,
    /// The attached keys, in key order, if asked for.
    pub keys: Vec<Vec<u8>>,
}

/// The answer to a lease listing (`LeaseLeasesResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseLeasesResponse {
    /// The header.
    pub header: ResponseHeader,
    /// Every live lease id, ascending.
    pub leases: Vec<i64>,
}

/// Why the store refused a request. Every refusal happens before any effect, so a
/// refused request did not happen. The texts are etcd's, because clients match on them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum MvccError {
    /// The revision asked for was compacted away; read at a later revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is beyond the current one.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A transaction writes one key twice (or puts a key it also deletes).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A transaction has more compares or operations in one list than the store allows.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOperations,
    /// No lease has that id.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The requested TTL is larger than [`crate::mvcc::LEASE_TTL_SECONDS_MAX`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// The request names no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// Transactions nest deeper than the store allows ([`crate::mvcc::store::TXN_DEPTH_MAX`]);
    /// flatten the request.
    #[error("etcdserver: transactions nested too deeply (limit {limit}); flatten the request")]
    TxnTooDeep {
        /// The deepest nesting allowed.
        limit: usize,
    },
    /// The value file could not be read (an I/O error or a damaged record): the member
    /// stops; restart it to rebuild the file from its snapshot and log.
    #[error("etcdserver: value storage failed: {0}")]
    Storage(String),
}
