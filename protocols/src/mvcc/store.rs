//! The multi-version keyspace: every write creates a version stamped with a cluster-wide
//! revision, reads see any revision not yet compacted, and leases own keys.
//!
//! # Layout (memory matters)
//!
//! - `keys`: a `BTreeMap` from the key (`Box<[u8]>`, no spare capacity) to that key's
//!   versions, oldest first, each holding its value once (`None` marks a deletion).
//!   Vectors grow by half their length rather than doubling from four, so the common
//!   one-version key costs one 48-byte slot.
//! - `changes`: the key of every written version, in revision order and, inside a
//!   transaction, in operation order, packed into one buffer (16 bytes per entry plus the
//!   key). Watches read events from it without scanning the keyspace, and compaction uses it
//!   to visit only the keys it can shrink.
//!
//! - Snapshots: the index is not encoded. Every record carries its version's revisions,
//!   version and lease, so decoding scans the records and rebuilds `keys`, `changes`, the
//!   leases' key sets and the garbage count; taking a snapshot encodes only a small head
//!   (revisions, leases, counters) and hands out the records as its tail. Reclaiming space
//!   copies the records at or after the compacted revision in change-log order, so that
//!   their order in the records is the change log's.
//!
//! Compaction to revision `c` keeps, per key, every version with `mod_revision >= c` and
//! the newest version below `c` if it is live (it is what reads at `c` see and the previous
//! value of an event at `c`); everything older, and keys left with nothing, are freed.
//!
//! # Invariants
//!
//! - `compacted <= revision`; every version's `mod_revision <= revision`.
//! - A key's versions have strictly increasing `mod_revision`s; a live version has
//!   `version >= 1` and `create_revision <= mod_revision`; a deletion has version 0.
//! - A key is in a lease's key set exactly when its newest version is live and attached to
//!   that lease.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use synod_core::time::Time;

use crate::mvcc::api::{
    CompactionRequest, CompactionResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MvccError, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};
use crate::mvcc::lease::{LEASE_TTL_SECONDS_MAX, LEASE_TTL_SECONDS_MIN, Lease};
use crate::mvcc::records::{DELETION, RecordFile, RecordMeta, Records, RecordsHead, record_bytes};
use crate::mvcc::watch::{EventType, WatchError, WatchEvent, WatchFilter};

/// The default cap on compares, and on operations per branch, in one transaction (etcd's).
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

/// How deeply transactions may nest: the store walks nested transactions recursively, so
/// an unbounded depth would let one request exhaust the stack. (etcd has no such limit;
/// its message size limit bounds the depth instead.)
pub const TXN_DEPTH_MAX: usize = 64;

/// The revision of an empty store (etcd starts at 1; the first write creates revision 2).
pub const INITIAL_REVISION: i64 = 1;

/// One version of a key. Its value lives in the store's records (see
/// [`crate::mvcc::records`]), at `record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Version {
    mod_revision: i64,
    create_revision: i64,
    version: i64,
    lease: i64,
    /// The offset of the record holding the key and value written.
    record: u64,
    /// The value's length; `DELETION`: the key was deleted at `mod_revision`.
    value_len: u32,
}

impl Version {
    fn is_live(&self) -> bool {
        self.value_len != DELETION
    }
}

/// The version of `versions` a read at `revision` sees, if the key was live then.
fn visible(versions: &[Version], revision: i64) -> Option<&Version> {
    let index = versions.partition_point(|version| version.mod_revision <= revision);
    let version = versions.get(index.checked_sub(1)?)?;
    version.is_live().then_some(version)
}

/// The value `version` of `key` points at in the value file.
fn read_value(records: &Records, key: &[u8], version: &Version) -> Result<Vec<u8>, MvccError> {
    let record = records
        .read(version.record, Some(key.len()), Some(version.value_len))
        .map_err(MvccError::Storage)?;
    if record.key != key {
        let error = format!(
            "the value file's record at offset {} holds another key",
            version.record
        );
        return Err(MvccError::Storage(records.fail(error)));
    }
    Ok(record.value.unwrap_or_default())
}

/// Appends without the default growth to four slots: keys usually have one version.
fn push_version(versions: &mut Vec<Version>, version: Version) {
    if versions.len() == versions.capacity() {
        versions.reserve_exact((versions.len() / 2).max(1));
    }
    versions.push(version);
}

/// etcd's `(key, range_end)` as bounds over the keyspace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyRange<'a> {
    start: &'a [u8],
    end: RangeEnd<'a>,
}

#[derive(Clone, Copy, Debug)]
enum RangeEnd<'a> {
    /// `start` alone.
    Single,
    /// Every key `>= start`.
    Unbounded,
    /// `[start, end)` (empty when `end <= start`).
    Before(&'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Interprets `range_end` as etcd does: empty is one key, `[0]` is open-ended.
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        };
        KeyRange { start: key, end }
    }

    /// True if `key` is in the range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            RangeEnd::Single => key == self.start,
            RangeEnd::Unbounded => key >= self.start,
            RangeEnd::Before(end) => key >= self.start && key < end,
        }
    }

    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        let start = Bound::Included(self.start);
        match self.end {
            RangeEnd::Single => (start, Bound::Included(self.start)),
            RangeEnd::Unbounded => (start, Bound::Unbounded),
            RangeEnd::Before(end) if end > self.start => (start, Bound::Excluded(end)),
            RangeEnd::Before(_) => (start, Bound::Excluded(self.start)),
        }
    }

    /// True if the two ranges share a key.
    fn overlaps(&self, other: &KeyRange<'_>) -> bool {
        let (Bound::Included(left_start), left_end) = self.bounds() else {
            return false;
        };
        let (Bound::Included(right_start), right_end) = other.bounds() else {
            return false;
        };
        let before_end = |key: &[u8], end: Bound<&[u8]>| match end {
            Bound::Included(end) => key <= end,
            Bound::Excluded(end) => key < end,
            Bound::Unbounded => true,
        };
        let empty = |start: &[u8], end: Bound<&[u8]>| !before_end(start, end);
        if empty(left_start, left_end) || empty(right_start, right_end) {
            return false;
        }
        let start = left_start.max(right_start);
        before_end(start, left_end) && before_end(start, right_end)
    }
}

/// The writes of each revision, in the order they happened: entry `i` wrote the record
/// at `records[i]` (which holds the key) at `revisions[i]`. Sixteen bytes per entry, no
/// allocation per entry, and no copy of the key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct ChangeLog {
    revisions: Vec<i64>,
    records: Vec<u64>,
}

impl ChangeLog {
    fn push(&mut self, revision: i64, record: u64) {
        self.records.push(record);
        self.revisions.push(revision);
    }

    /// The index of the first entry at or after `revision`.
    fn first_at(&self, revision: i64) -> usize {
        self.revisions
            .partition_point(|&written| written < revision)
    }

    /// Entries `range`, as (revision, record offset).
    fn entries(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = (i64, u64)> + '_ {
        range.map(|index| (self.revisions[index], self.records[index]))
    }

    /// Forgets the entries before `index`.
    fn drain_before(&mut self, index: usize) {
        self.records.drain(..index);
        self.revisions.drain(..index);
        self.records.shrink_to_fit();
        self.revisions.shrink_to_fit();
    }
}

/// Which branch each transaction in a request tree takes, decided before anything runs.
#[derive(Clone, Debug, Default)]
struct TxnPlan {
    succeeded: bool,
    /// The plans of the nested transactions of the chosen branch, in order.
    nested: Vec<TxnPlan>,
}

/// The keys a list of operations puts and the ranges it deletes (to refuse two writes to
/// one key in a transaction).
#[derive(Default)]
struct WriteSet<'a> {
    puts: BTreeSet<&'a [u8]>,
    deletes: Vec<KeyRange<'a>>,
}

/// The multi-version key-value store with leases (see the module doc).
///
/// Its encoding holds no index: the revisions, the leases (without their key sets) and the
/// records, from which decoding rebuilds the keys, the change log, the lease key sets and
/// the garbage count (every record carries its version's metadata). So a snapshot's head
/// is small whatever the number of keys, and the records follow as its tail.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MvccStore {
    keys: BTreeMap<Box<[u8]>, Vec<Version>>,
    revision: i64,
    compacted: i64,
    changes: ChangeLog,
    leases: BTreeMap<i64, Lease>,
    next_lease_id: i64,
    max_txn_ops: usize,
    /// Keys' and values' bytes. Last, so that a snapshot can stream them after the rest.
    records: Records,
}

impl Default for MvccStore {
    fn default() -> Self {
        MvccStore::new(MAX_TXN_OPS_DEFAULT)
    }
}

impl MvccStore {
    /// An empty store allowing `max_txn_ops` compares and operations per list in a
    /// transaction.
    pub fn new(max_txn_ops: usize) -> Self {
        MvccStore {
            keys: BTreeMap::new(),
            revision: INITIAL_REVISION,
            compacted: 0,
            changes: ChangeLog::default(),
            leases: BTreeMap::new(),
            next_lease_id: 1,
            max_txn_ops,
            records: Records::default(),
        }
    }

    /// Keeps the records (keys' and values' bytes) in `file` from now on: those held so
    /// far move into a fresh generation of it. The server's way to get values off the heap.
    pub fn use_file(&mut self, file: &Arc<dyn RecordFile>) -> Result<(), String> {
        self.records.spill_into(file)
    }

    /// Takes `restored`'s content (decoded from a snapshot, its records in memory) and, if
    /// this store keeps its records in a file, moves them into a fresh generation of it.
    pub fn adopt(&mut self, restored: MvccStore) {
        let file = self.records.file().cloned();
        *self = restored;
        if let Some(file) = file
            && let Err(error) = self.records.spill_into(&file)
        {
            // The records stay in memory, correct but on the heap; say so and stop.
            let _ = self.records.fail(error);
        }
    }

    /// Why the records cannot be read or written, once they failed.
    pub fn failure(&self) -> Option<&str> {
        self.records.failure()
    }

    /// Bytes of records held (live and garbage).
    pub fn record_bytes(&self) -> u64 {
        self.records.len()
    }

    /// Bytes of records no version refers to any more (freed by the next reclaim).
    pub fn garbage_bytes(&self) -> u64 {
        self.records.garbage()
    }

    /// The state's encoding without the records' bytes, and the records' file and length
    /// when they live in a file (see [`crate::replicated::StateMachine::snapshot_parts`]).
    /// When they are in memory they are part of the head.
    pub(crate) fn head_serializer(&self) -> StoreHead<'_> {
        StoreHead(self)
    }

    /// The records as a snapshot tail, if they live in a file.
    pub(crate) fn tail(&self) -> Option<crate::replicated::Tail> {
        self.records.tail()
    }

    /// `version` of `key` as a read shows it.
    fn key_value(
        &self,
        key: &[u8],
        version: &Version,
        with_value: bool,
    ) -> Result<KeyValue, MvccError> {
        let value = if with_value && version.is_live() {
            read_value(&self.records, key, version)?
        } else {
            Vec::new()
        };
        Ok(KeyValue {
            key: key.to_vec(),
            create_revision: version.create_revision,
            mod_revision: version.mod_revision,
            version: version.version,
            value,
            lease: version.lease,
        })
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision reads and watches may start at, at the earliest (0: nothing compacted).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// Keys with at least one version held (live or a deletion not yet compacted).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Versions held across all keys.
    pub fn version_count(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.revision,
        }
    }

    fn check_read_revision(&self, revision: i64) -> Result<(), MvccError> {
        if revision > self.revision {
            return Err(MvccError::FutureRevision);
        }
        if revision > 0 && revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(())
    }

    fn live(&self, key: &[u8]) -> Option<&Version> {
        visible(self.keys.get(key)?, self.revision)
    }

    fn range_iter<'a>(
        &'a self,
        range: &KeyRange<'a>,
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Vec<Version>)> + 'a {
        // One key is one lookup; a range walk would descend the tree for both its bounds.
        let (single, walk) = match range.end {
            RangeEnd::Single => (self.keys.get_key_value(range.start), None),
            _ => (None, Some(self.keys.range::<[u8], _>(range.bounds()))),
        };
        single.into_iter().chain(walk.into_iter().flatten())
    }

    /// Reads keys.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range_request(request)?;
        self.check_read_revision(request.revision)?;
        self.range_at(request, self.revision)
    }

    /// A validated read; `default_revision` is what `revision <= 0` means and the
    /// revision the header reports (inside a transaction, the one its writes create).
    fn range_at(
        &self,
        request: &RangeRequest,
        default_revision: i64,
    ) -> Result<RangeResponse, MvccError> {
        let at = if request.revision > 0 {
            request.revision
        } else {
            default_revision
        };
        // An unordered request with a sort target sorts ascending by it.
        let order = match request.sort_order {
            SortOrder::None => SortOrder::Ascend,
            order => order,
        };
        let target = request.sort_target;
        let natural_order = order == SortOrder::Ascend && target == SortTarget::Key;
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        let limit = usize::try_from(request.limit).unwrap_or(0);
        // As etcd does: unless the request asks for an order or filters, collect only one
        // key past the limit (it tells `more`), in key order, before sorting; so an
        // unordered request with a sort target sorts the first `limit + 1` keys. The count
        // still covers the whole range.
        let default_ordering = request.sort_order == SortOrder::None
            || (request.sort_order == SortOrder::Ascend && target == SortTarget::Key);
        let collect_cap = if limit > 0 && default_ordering && !filtered {
            limit + 1
        } else {
            usize::MAX
        };
        // Values are copied only if returned, or needed to sort by.
        let with_values = !request.keys_only || target == SortTarget::Value;
        let mut count = 0i64;
        let mut kvs = Vec::new();
        for (key, versions) in self.range_iter(&KeyRange::new(&request.key, &request.range_end)) {
            let Some(version) = visible(versions, at) else {
                continue;
            };
            count += 1;
            if request.count_only || kvs.len() >= collect_cap || !passes_filters(request, version) {
                continue;
            }
            kvs.push(self.key_value(key, version, with_values)?);
        }
        if !natural_order {
            sort_key_values(&mut kvs, order, target);
        }
        if request.keys_only && with_values {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        let more = limit > 0 && kvs.len() > limit;
        if more {
            kvs.truncate(limit);
        }
        Ok(RangeResponse {
            header: ResponseHeader {
                revision: default_revision,
            },
            kvs,
            more,
            count,
        })
    }

    /// Writes one key at a new revision.
    pub fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        self.check_put(request)?;
        let revision = self.revision + 1;
        let response = self.put_at(request, revision);
        self.revision = revision;
        Ok(response)
    }

    fn check_put(&self, request: &PutRequest) -> Result<(), MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if request.ignore_value && !request.value.is_empty() {
            return Err(MvccError::ValueProvided);
        }
        if request.ignore_lease && request.lease != 0 {
            return Err(MvccError::LeaseProvided);
        }
        if request.lease != 0 && !self.leases.contains_key(&request.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        if (request.ignore_value || request.ignore_lease) && self.live(&request.key).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        Ok(())
    }

    /// A validated put at `revision` (the write revision of the current batch).
    fn put_at(&mut self, request: &PutRequest, revision: i64) -> PutResponse {
        let key: &[u8] = &request.key;
        // One descent of the key index finds both the live version and where the new one
        // goes (a put's largest cost after the value file's append is comparing keys).
        let mut versions = self.keys.get_mut(key);
        let previous = versions
            .as_deref()
            .and_then(|versions| visible(versions, self.revision))
            .copied();
        let (create_revision, version) = match &previous {
            Some(previous) => (previous.create_revision, previous.version + 1),
            None => (revision, 1),
        };
        // A failed read or append marks the records failed, and the driver stops the node
        // before anything this step produced leaves it.
        let kept;
        let value: &[u8] = match (&previous, request.ignore_value) {
            (Some(previous), true) => {
                kept = read_value(&self.records, key, previous).unwrap_or_default();
                &kept
            }
            _ => &request.value,
        };
        let lease = match (&previous, request.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => request.lease,
        };
        let meta = RecordMeta {
            mod_revision: revision,
            create_revision,
            version,
            lease,
        };
        let record = self
            .records
            .append(key, Some(value), meta)
            .unwrap_or(u64::MAX);
        let value_len = u32::try_from(value.len()).unwrap_or(DELETION - 1);
        let old_lease = previous.as_ref().map_or(0, |previous| previous.lease);
        if old_lease != lease {
            if old_lease != 0
                && let Some(attached) = self.leases.get_mut(&old_lease)
            {
                attached.keys.remove(key);
            }
            if let Some(attached) = self.leases.get_mut(&lease) {
                attached.keys.insert(Box::from(key));
            }
        }
        let new = Version {
            mod_revision: revision,
            create_revision,
            version,
            lease,
            record,
            value_len,
        };
        match versions.take() {
            Some(versions) => {
                let last = versions.last().map_or(0, |last| last.mod_revision);
                assert!(last < revision, "a key written twice in one revision");
                push_version(versions, new);
            }
            None => {
                // `vec!` allocates exactly one slot.
                self.keys.insert(Box::from(key), vec![new]);
            }
        }
        self.changes.push(revision, record);
        PutResponse {
            header: ResponseHeader { revision },
            prev_kv: previous
                .filter(|_| request.prev_kv)
                .and_then(|previous| self.key_value(key, &previous, true).ok()),
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease != 0
            && let Some(attached) = self.leases.get_mut(&lease)
        {
            attached.keys.remove(key);
        }
    }

    /// Deletes a key or a range; the revision advances only if something was deleted.
    pub fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let revision = self.revision + 1;
        let mut response = self.delete_at(request, revision);
        if response.deleted > 0 {
            self.revision = revision;
        }
        response.header = self.header();
        Ok(response)
    }

    /// Deletes every live key in the range at `revision`.
    fn delete_at(&mut self, request: &DeleteRangeRequest, revision: i64) -> DeleteRangeResponse {
        let range = KeyRange::new(&request.key, &request.range_end);
        let doomed: Vec<(Box<[u8]>, i64)> = self
            .range_iter(&range)
            .filter_map(|(key, versions)| {
                let last = versions.last()?;
                last.is_live().then(|| (key.clone(), last.lease))
            })
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, lease) in &doomed {
            self.detach(*lease, key);
            if request.prev_kv
                && let Some(last) = self.keys.get(key).and_then(|versions| versions.last())
                && let Ok(kv) = self.key_value(key, last, true)
            {
                prev_kvs.push(kv);
            }
            let meta = RecordMeta {
                mod_revision: revision,
                ..RecordMeta::default()
            };
            let record = self.records.append(key, None, meta).unwrap_or(u64::MAX);
            let versions = self
                .keys
                .get_mut(key)
                .expect("a key found by the scan is still present");
            push_version(
                versions,
                Version {
                    mod_revision: revision,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    record,
                    value_len: DELETION,
                },
            );
            self.changes.push(revision, record);
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision },
            deleted: i64::try_from(doomed.len()).unwrap_or(i64::MAX),
            prev_kvs,
        }
    }

    /// Runs a transaction: compares, then one branch, all at one revision (which advances
    /// only if the branch changed something).
    pub fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.check_txn_shape(request, 1)?;
        check_write_conflicts(request)?;
        let plan = self.plan(request);
        self.check_txn_requests(request, &plan)?;
        let revision = self.revision + 1;
        let mut changed = false;
        let mut response = self.txn_at(request, &plan, revision, &mut changed);
        if changed {
            self.revision = revision;
        }
        response.header.revision = self.revision;
        Ok(response)
    }

    /// Checks limits and keys before anything runs; `depth` is 1 for the outermost
    /// transaction.
    fn check_txn_shape(&self, request: &TxnRequest, depth: usize) -> Result<(), MvccError> {
        if depth > TXN_DEPTH_MAX {
            return Err(MvccError::TxnTooDeep {
                limit: TXN_DEPTH_MAX,
            });
        }
        if request.compare.len() > self.max_txn_ops
            || request.success.len() > self.max_txn_ops
            || request.failure.len() > self.max_txn_ops
        {
            return Err(MvccError::TooManyOperations);
        }
        for compare in &request.compare {
            if compare.key.is_empty() {
                return Err(MvccError::EmptyKey);
            }
        }
        for op in request.success.iter().chain(&request.failure) {
            match op {
                RequestOp::Range(range) => check_range_request(range)?,
                RequestOp::Put(put) if put.key.is_empty() => return Err(MvccError::EmptyKey),
                RequestOp::DeleteRange(delete) if delete.key.is_empty() => {
                    return Err(MvccError::EmptyKey);
                }
                RequestOp::Txn(nested) => self.check_txn_shape(nested, depth + 1)?,
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    /// Decides every branch against the state before the transaction, as etcd does.
    fn plan(&self, request: &TxnRequest) -> TxnPlan {
        let succeeded = request
            .compare
            .iter()
            .all(|compare| self.compare_holds(compare));
        let branch = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let nested = branch
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(nested) => Some(self.plan(nested)),
                _ => None,
            })
            .collect();
        TxnPlan { succeeded, nested }
    }

    fn check_txn_requests(&self, request: &TxnRequest, plan: &TxnPlan) -> Result<(), MvccError> {
        let branch = if plan.succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut nested_plans = plan.nested.iter();
        for op in branch {
            match op {
                RequestOp::Range(range) => self.check_read_revision(range.revision)?,
                RequestOp::Put(put) => self.check_put(put)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(nested) => {
                    let nested_plan = nested_plans.next().expect("one plan per nested txn");
                    self.check_txn_requests(nested, nested_plan)?;
                }
            }
        }
        Ok(())
    }

    fn txn_at(
        &mut self,
        request: &TxnRequest,
        plan: &TxnPlan,
        revision: i64,
        changed: &mut bool,
    ) -> TxnResponse {
        let branch = if plan.succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut nested_plans = plan.nested.iter();
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match op {
                RequestOp::Range(range) => {
                    // Reads inside a transaction see its earlier writes.
                    let current = if *changed { revision } else { self.revision };
                    ResponseOp::Range(self.range_at(range, current).unwrap_or_default())
                }
                RequestOp::Put(put) => {
                    *changed = true;
                    ResponseOp::Put(self.put_at(put, revision))
                }
                RequestOp::DeleteRange(delete) => {
                    let mut response = self.delete_at(delete, revision);
                    *changed |= response.deleted > 0;
                    if !*changed {
                        response.header.revision = self.revision;
                    }
                    ResponseOp::DeleteRange(response)
                }
                RequestOp::Txn(nested) => {
                    let nested_plan = nested_plans.next().expect("one plan per nested txn");
                    let mut response = self.txn_at(nested, nested_plan, revision, changed);
                    // etcd fills in only the outermost transaction's header.
                    response.header.revision = 0;
                    ResponseOp::Txn(response)
                }
            };
            responses.push(response);
        }
        TxnResponse {
            header: ResponseHeader { revision },
            succeeded: plan.succeeded,
            responses,
        }
    }

    /// True if every key in the compare's range satisfies it (an empty range compares
    /// an absent key: zero fields, and a value compare is false).
    fn compare_holds(&self, compare: &Compare) -> bool {
        let range = KeyRange::new(&compare.key, &compare.range_end);
        let mut any = false;
        for (key, versions) in self.range_iter(&range) {
            let Some(version) = visible(versions, self.revision) else {
                continue;
            };
            any = true;
            if !self.compare_version(compare, key, version) {
                return false;
            }
        }
        any || match &compare.target {
            CompareTarget::Value(_) => false,
            target => compare_ints(compare.result, 0, target_operand(target)),
        }
    }

    fn compare_version(&self, compare: &Compare, key: &[u8], version: &Version) -> bool {
        match &compare.target {
            CompareTarget::Value(operand) => {
                // A failed read marks the records failed; the node stops before answering.
                let value = read_value(&self.records, key, version).unwrap_or_default();
                holds(compare.result, value.as_slice().cmp(operand.as_slice()))
            }
            CompareTarget::Version(operand) => {
                compare_ints(compare.result, version.version, *operand)
            }
            CompareTarget::Create(operand) => {
                compare_ints(compare.result, version.create_revision, *operand)
            }
            CompareTarget::Mod(operand) => {
                compare_ints(compare.result, version.mod_revision, *operand)
            }
            CompareTarget::Lease(operand) => compare_ints(compare.result, version.lease, *operand),
        }
    }

    /// Discards history below `request.revision`.
    pub fn compact(
        &mut self,
        request: &CompactionRequest,
    ) -> Result<CompactionResponse, MvccError> {
        let target = request.revision;
        if target <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if target > self.revision {
            return Err(MvccError::FutureRevision);
        }
        let to = self.changes.first_at(target);
        // A key that cannot be read back marks the records failed (the node stops).
        let touched: BTreeSet<Vec<u8>> = self
            .changes
            .entries(0..to)
            .filter_map(|(_, record)| self.records.read_key(record).ok())
            .collect();
        for key in touched {
            let Some(versions) = self.keys.get_mut(key.as_slice()) else {
                continue;
            };
            let drop = compaction_cut(versions, target);
            for dropped in versions.drain(..drop) {
                self.records.forget(key.len(), dropped.value_len);
            }
            if versions.is_empty() {
                self.keys.remove(key.as_slice());
            } else if versions.capacity() > 2 * versions.len() {
                versions.shrink_to_fit();
            }
        }
        self.changes.drain_before(to);
        self.compacted = target;
        if self.records.wants_reclaim() {
            self.reclaim();
        }
        Ok(CompactionResponse {
            header: self.header(),
        })
    }

    /// Grants a lease renewed at `now` (the proposer's clock).
    pub fn lease_grant(
        &mut self,
        request: &LeaseGrantRequest,
        now: Time,
    ) -> Result<LeaseGrantResponse, MvccError> {
        if request.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        let ttl = request.ttl.max(LEASE_TTL_SECONDS_MIN);
        let id = if request.id == 0 {
            while self.leases.contains_key(&self.next_lease_id) || self.next_lease_id == 0 {
                self.next_lease_id = self.next_lease_id.wrapping_add(1);
            }
            let id = self.next_lease_id;
            self.next_lease_id = self.next_lease_id.wrapping_add(1);
            id
        } else if self.leases.contains_key(&request.id) {
            return Err(MvccError::LeaseExists);
        } else {
            request.id
        };
        self.leases.insert(
            id,
            Lease {
                ttl,
                renewed_at: now,
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
        })
    }

    /// Revokes a lease and deletes its keys, all at one revision.
    pub fn lease_revoke(
        &mut self,
        request: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, MvccError> {
        let lease = self
            .leases
            .remove(&request.id)
            .ok_or(MvccError::LeaseNotFound)?;
        let revision = self.revision + 1;
        let mut deleted = false;
        for key in &lease.keys {
            let response = self.delete_at(&DeleteRangeRequest::key(key.to_vec()), revision);
            deleted |= response.deleted > 0;
        }
        if deleted {
            self.revision = revision;
        }
        Ok(LeaseRevokeResponse {
            header: self.header(),
        })
    }

    /// Renews a lease to its full TTL as of `now` (the proposer's clock).
    pub fn lease_keep_alive(
        &mut self,
        request: &LeaseKeepAliveRequest,
        now: Time,
    ) -> Result<LeaseKeepAliveResponse, MvccError> {
        let lease = self
            .leases
            .get_mut(&request.id)
            .ok_or(MvccError::LeaseNotFound)?;
        lease.renewed_at = now;
        let ttl = lease.ttl;
        Ok(LeaseKeepAliveResponse {
            header: self.header(),
            id: request.id,
            ttl,
        })
    }

    /// How long a lease has left at `now` under a leader that has led since
    /// `leading_since`; an unknown lease reports a TTL of -1.
    pub fn lease_time_to_live(
        &self,
        request: &LeaseTimeToLiveRequest,
        now: Time,
        leading_since: Time,
    ) -> LeaseTimeToLiveResponse {
        let Some(lease) = self.leases.get(&request.id) else {
            return LeaseTimeToLiveResponse {
                header: self.header(),
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            };
        };
        LeaseTimeToLiveResponse {
            header: self.header(),
            id: request.id,
            ttl: lease.remaining_seconds(now, leading_since),
            granted_ttl: lease.ttl,
            keys: if request.keys {
                lease.keys.iter().map(|key| key.to_vec()).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Every live lease.
    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: self.header(),
            leases: self.leases.keys().copied().collect(),
        }
    }

    /// The lease with this id, if it exists.
    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Leases past their deadline at `now` for a leader that has led since
    /// `leading_since`, with the renewal stamp each was judged by, at most `limit`.
    pub fn expired_leases(&self, now: Time, leading_since: Time, limit: usize) -> Vec<(i64, Time)> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.deadline(leading_since) <= now)
            .map(|(&id, lease)| (id, lease.renewed_at))
            .take(limit)
            .collect()
    }

    /// Events for the keys `filter` selects at revisions `start..=end` (clamped to the
    /// current revision), in revision order and, within a revision, in write order.
    pub fn events(
        &self,
        filter: &WatchFilter,
        start: i64,
        end: i64,
    ) -> Result<Vec<WatchEvent>, WatchError> {
        if start < self.compacted {
            return Err(WatchError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let end = end.min(self.revision);
        let range = KeyRange::new(&filter.key, &filter.range_end);
        let from = self.changes.first_at(start);
        let to = self.changes.first_at(end.saturating_add(1)).max(from);
        let mut events = Vec::new();
        for (revision, record) in self.changes.entries(from..to) {
            let record = self
                .records
                .read(record, None, None)
                .map_err(WatchError::Storage)?;
            let key = record.key.as_slice();
            if !range.contains(key) {
                continue;
            }
            let Some(versions) = self.keys.get(key) else {
                continue;
            };
            let Ok(index) =
                versions.binary_search_by_key(&revision, |version| version.mod_revision)
            else {
                continue;
            };
            let version = &versions[index];
            let kind = if version.is_live() {
                EventType::Put
            } else {
                EventType::Delete
            };
            if (kind == EventType::Put && filter.no_put)
                || (kind == EventType::Delete && filter.no_delete)
            {
                continue;
            }
            // A deletion's version is all zeros but the revision, as etcd reports it.
            let mut kv = self
                .key_value(key, version, false)
                .map_err(|error| WatchError::Storage(error.to_string()))?;
            kv.value = record.value.unwrap_or_default();
            let prev_kv = match index
                .checked_sub(1)
                .and_then(|previous| versions.get(previous))
                .filter(|previous| filter.prev_kv && previous.is_live())
            {
                Some(previous) => Some(
                    self.key_value(key, previous, true)
                        .map_err(|error| WatchError::Storage(error.to_string()))?,
                ),
                None => None,
            };
            events.push(WatchEvent { kind, kv, prev_kv });
        }
        Ok(events)
    }

    /// Every live key and its value at the current revision, in key order (for tests and
    /// tools; allocates a copy of the whole keyspace). A value that cannot be read is
    /// left out (and marks the records failed).
    pub fn snapshot_map(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.keys
            .iter()
            .filter_map(|(key, versions)| {
                let version = visible(versions, self.revision)?;
                Some((key.to_vec(), read_value(&self.records, key, version).ok()?))
            })
            .collect()
    }

    /// Copies the records still referred to into a fresh sequence (a new file generation)
    /// and points the versions and the change log at the copies. On failure nothing
    /// changes but the failure mark, which stops the node.
    fn reclaim(&mut self) {
        let Ok(mut fresh) = self.records.fresh() else {
            return;
        };
        // The versions below the compacted revision (at most one per key) first, then the
        // rest in change order: the records at or after the compacted revision then lie in
        // the order of the change log, which a snapshot's rebuild relies on.
        let mut moved: BTreeMap<u64, u64> = BTreeMap::new();
        let mut copy = Vec::new();
        for (key, versions) in &self.keys {
            for version in versions {
                if version.mod_revision < self.compacted {
                    copy.push((version.record, record_bytes(key.len(), version.value_len)));
                }
            }
        }
        for &record in &self.changes.records {
            match self.records.record_length(record) {
                Ok(length) => copy.push((record, length)),
                Err(error) => {
                    let _ = self.records.fail(error);
                    return;
                }
            }
        }
        for (record, length) in copy {
            match fresh.copy_from(&self.records, record, length) {
                Ok(at) => {
                    moved.insert(record, at);
                }
                Err(error) => {
                    let _ = self.records.fail(error);
                    return;
                }
            }
        }
        for versions in self.keys.values_mut() {
            for version in versions {
                version.record = moved.get(&version.record).copied().unwrap_or(u64::MAX);
            }
        }
        for record in &mut self.changes.records {
            // Every change at or after the compacted revision belongs to a version kept.
            *record = moved.get(record).copied().unwrap_or(u64::MAX);
        }
        self.records = fresh;
    }
}

/// Serializes a store as its own encoding does but with only the records' garbage count in
/// place of the records (their bytes follow as a snapshot tail). Its size does not depend
/// on the number of keys: this is all the node encodes when it takes a checkpoint.
pub(crate) struct StoreHead<'a>(&'a MvccStore);

impl Serialize for StoreHead<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let store = self.0;
        (
            store.revision,
            store.compacted,
            &store.leases,
            store.next_lease_id,
            store.max_txn_ops,
            RecordsHead(&store.records),
        )
            .serialize(serializer)
    }
}

impl Serialize for MvccStore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            self.revision,
            self.compacted,
            &self.leases,
            self.next_lease_id,
            self.max_txn_ops,
            &self.records,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MvccStore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        type Encoded = (i64, i64, BTreeMap<i64, Lease>, i64, usize, Records);
        let (revision, compacted, leases, next_lease_id, max_txn_ops, records): Encoded =
            Deserialize::deserialize(deserializer)?;
        let mut store = MvccStore {
            keys: BTreeMap::new(),
            revision,
            compacted,
            changes: ChangeLog::default(),
            leases,
            next_lease_id,
            max_txn_ops,
            records,
        };
        store.rebuild().map_err(serde::de::Error::custom)?;
        Ok(store)
    }
}

impl MvccStore {
    /// Rebuilds the index (keys, change log, lease key sets, garbage count) from the
    /// records, which hold every version written since the records' generation began:
    /// versions dropped by compaction are dropped again by the same rule.
    fn rebuild(&mut self) -> Result<(), String> {
        let (revision, compacted) = (self.revision, self.compacted);
        let mut keys: BTreeMap<Box<[u8]>, Vec<Version>> = BTreeMap::new();
        let mut changes = ChangeLog::default();
        let mut inconsistent: Option<String> = None;
        self.records.scan(|offset, key, value_len, meta| {
            let out_of_order = meta.mod_revision > revision
                || (meta.mod_revision >= compacted
                    && changes
                        .revisions
                        .last()
                        .is_some_and(|&last| last > meta.mod_revision));
            let version = Version {
                mod_revision: meta.mod_revision,
                create_revision: meta.create_revision,
                version: meta.version,
                lease: meta.lease,
                record: offset,
                value_len,
            };
            if meta.mod_revision >= compacted {
                changes.push(meta.mod_revision, offset);
            }
            let repeated = match keys.get_mut(key) {
                Some(versions) => {
                    let repeated = versions
                        .last()
                        .is_some_and(|last| last.mod_revision >= meta.mod_revision);
                    push_version(versions, version);
                    repeated
                }
                None => {
                    keys.insert(Box::from(key), vec![version]);
                    false
                }
            };
            if (out_of_order || repeated) && inconsistent.is_none() {
                inconsistent = Some(format!(
                    "the snapshot's record at offset {offset} (revision {}) is out of order; \
                     take the snapshot again from a healthy member",
                    meta.mod_revision
                ));
            }
        })?;
        if let Some(error) = inconsistent {
            return Err(error);
        }
        let mut garbage = 0u64;
        keys.retain(|key, versions| {
            let drop = compaction_cut(versions, compacted);
            for dropped in versions.drain(..drop) {
                garbage += record_bytes(key.len(), dropped.value_len) as u64;
            }
            if versions.capacity() > versions.len() {
                versions.shrink_to_fit();
            }
            !versions.is_empty()
        });
        for lease in self.leases.values_mut() {
            lease.keys.clear();
        }
        for (key, versions) in &keys {
            let Some(newest) = versions.last() else {
                continue;
            };
            if !newest.is_live() || newest.lease == 0 {
                continue;
            }
            let Some(lease) = self.leases.get_mut(&newest.lease) else {
                return Err(format!(
                    "the snapshot's key {key:?} is attached to lease {} which it does not hold",
                    newest.lease
                ));
            };
            lease.keys.insert(key.clone());
        }
        changes.records.shrink_to_fit();
        changes.revisions.shrink_to_fit();
        self.keys = keys;
        self.changes = changes;
        self.records.set_garbage(garbage);
        Ok(())
    }
}

/// How many of a key's oldest `versions` compaction to `target` drops: every version
/// below the target but the newest, and that one too unless it is live (a read at the
/// target sees it).
fn compaction_cut(versions: &[Version], target: i64) -> usize {
    let below = versions.partition_point(|version| version.mod_revision < target);
    let mut drop = below.saturating_sub(1);
    if versions
        .get(drop)
        .is_some_and(|version| version.mod_revision < target && !version.is_live())
    {
        drop += 1;
    }
    drop
}

fn check_range_request(request: &RangeRequest) -> Result<(), MvccError> {
    if request.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

fn passes_filters(request: &RangeRequest, version: &Version) -> bool {
    // A bound of 0 is no bound; any other, even negative, applies (as in etcd).
    let above = |value: i64, bound: i64| bound == 0 || value >= bound;
    let below = |value: i64, bound: i64| bound == 0 || value <= bound;
    above(version.mod_revision, request.min_mod_revision)
        && below(version.mod_revision, request.max_mod_revision)
        && above(version.create_revision, request.min_create_revision)
        && below(version.create_revision, request.max_create_revision)
}

/// Sorts stably by `target` (ties stay in key order).
pub(crate) fn sort_key_values(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    kvs.sort_by(|left, right| {
        let ordering = match target {
            SortTarget::Key => left.key.cmp(&right.key),
            SortTarget::Version => left.version.cmp(&right.version),
            SortTarget::Create => left.create_revision.cmp(&right.create_revision),
            SortTarget::Mod => left.mod_revision.cmp(&right.mod_revision),
            SortTarget::Value => left.value.cmp(&right.value),
        };
        if order == SortOrder::Descend {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

fn target_operand(target: &CompareTarget) -> i64 {
    match target {
        CompareTarget::Version(operand)
        | CompareTarget::Create(operand)
        | CompareTarget::Mod(operand)
        | CompareTarget::Lease(operand) => *operand,
        CompareTarget::Value(_) => 0,
    }
}

fn compare_ints(result: CompareResult, field: i64, operand: i64) -> bool {
    holds(result, field.cmp(&operand))
}

fn holds(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering;
    match result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

/// Refuses a transaction that could write one key twice: two puts of a key in one list, or
/// a put inside a range the same list deletes. The two branches of a nested transaction
/// are alternatives, so only their union meets the enclosing list.
fn check_write_conflicts(request: &TxnRequest) -> Result<(), MvccError> {
    write_set(&request.success)?;
    write_set(&request.failure)?;
    Ok(())
}

fn write_set(ops: &[RequestOp]) -> Result<WriteSet<'_>, MvccError> {
    let mut set = WriteSet::default();
    for op in ops {
        if let RequestOp::DeleteRange(delete) = op {
            set.deletes
                .push(KeyRange::new(&delete.key, &delete.range_end));
        }
    }
    for op in ops {
        match op {
            RequestOp::Put(put) => {
                if !set.puts.insert(&put.key) {
                    return Err(MvccError::DuplicateKey);
                }
            }
            RequestOp::Txn(nested) => {
                let success = write_set(&nested.success)?;
                let failure = write_set(&nested.failure)?;
                let nested_puts: BTreeSet<&[u8]> =
                    success.puts.union(&failure.puts).copied().collect();
                for key in nested_puts {
                    if !set.puts.insert(key) {
                        return Err(MvccError::DuplicateKey);
                    }
                }
                set.deletes.extend(success.deletes);
                set.deletes.extend(failure.deletes);
            }
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => {}
        }
    }
    for key in &set.puts {
        let single = KeyRange::new(key, &[]);
        if set.deletes.iter().any(|delete| delete.overlaps(&single)) {
            return Err(MvccError::DuplicateKey);
        }
    }
    Ok(set)
}
