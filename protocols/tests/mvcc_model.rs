//! The MVCC store against a naive reference: a vector holding the whole keyspace at every
//! revision. Random puts, deletes, transactions (nested too), compactions and reads at
//! past revisions must give the same answers, errors included, and the same watch events.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use synod_protocols::mvcc::MvccStore;
use synod_protocols::mvcc::api::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, KeyValue, MvccError, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use synod_protocols::mvcc::watch::{EventType, WatchError, WatchEvent, WatchFilter};

type Map = BTreeMap<Vec<u8>, KeyValue>;
type KeySet = BTreeSet<Vec<u8>>;

/// Every revision's whole keyspace; `states[r - 1]` is revision `r`.
struct Reference {
    states: Vec<Map>,
    /// Per revision, the keys written, in write order, and whether each was a put.
    writes: Vec<Vec<(Vec<u8>, bool)>>,
    compacted: i64,
    max_txn_ops: usize,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

impl Reference {
    fn new(max_txn_ops: usize) -> Self {
        Reference {
            states: vec![Map::new()],
            writes: vec![Vec::new()],
            compacted: 0,
            max_txn_ops,
        }
    }

    fn revision(&self) -> i64 {
        self.states.len() as i64
    }

    fn at(&self, revision: i64) -> &Map {
        &self.states[(revision - 1) as usize]
    }

    fn check_revision(&self, revision: i64) -> Result<(), MvccError> {
        if revision > self.revision() {
            Err(MvccError::FutureRevision)
        } else if revision > 0 && revision < self.compacted {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }

    fn read(&self, map: &Map, request: &RangeRequest, header: i64) -> RangeResponse {
        let mut all: Vec<KeyValue> = map
            .values()
            .filter(|kv| in_range(&kv.key, &request.key, &request.range_end))
            .cloned()
            .collect();
        let count = all.len() as i64;
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        let default_ordering = request.sort_order == SortOrder::None
            || (request.sort_order == SortOrder::Ascend && request.sort_target == SortTarget::Key);
        if request.limit > 0 && default_ordering && !filtered {
            // etcd fetches one key past the limit, in key order, before sorting.
            all.truncate(request.limit as usize + 1);
        }
        let keep = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        all.retain(|kv| {
            keep(
                kv.mod_revision,
                request.min_mod_revision,
                request.max_mod_revision,
            ) && keep(
                kv.create_revision,
                request.min_create_revision,
                request.max_create_revision,
            )
        });
        let descend = request.sort_order == SortOrder::Descend;
        match request.sort_target {
            SortTarget::Key => {}
            SortTarget::Version => all.sort_by_key(|kv| kv.version),
            SortTarget::Create => all.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => all.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => all.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if descend {
            // A stable descending sort keeps ties in key order.
            match request.sort_target {
                SortTarget::Key => all.reverse(),
                SortTarget::Version => all.sort_by_key(|kv| std::cmp::Reverse(kv.version)),
                SortTarget::Create => all.sort_by_key(|kv| std::cmp::Reverse(kv.create_revision)),
                SortTarget::Mod => all.sort_by_key(|kv| std::cmp::Reverse(kv.mod_revision)),
                SortTarget::Value => all.sort_by(|a, b| b.value.cmp(&a.value)),
            }
        }
        let mut more = false;
        if request.limit > 0 && all.len() > request.limit as usize {
            all.truncate(request.limit as usize);
            more = true;
        }
        if request.count_only {
            all.clear();
            more = false;
        }
        if request.keys_only {
            for kv in &mut all {
                kv.value.clear();
            }
        }
        RangeResponse {
            header: ResponseHeader { revision: header },
            kvs: all,
            more,
            count,
        }
    }

    fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.check_revision(request.revision)?;
        let at = if request.revision > 0 {
            request.revision
        } else {
            self.revision()
        };
        Ok(self.read(self.at(at), request, self.revision()))
    }

    fn put_into(map: &mut Map, request: &PutRequest, revision: i64) -> PutResponse {
        let previous = map.get(&request.key).cloned();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous.as_ref().map_or(revision, |kv| kv.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |kv| kv.version + 1),
            value: request.value.clone(),
            lease: 0,
        };
        map.insert(request.key.clone(), kv);
        PutResponse {
            header: ResponseHeader { revision },
            prev_kv: previous.filter(|_| request.prev_kv),
        }
    }

    fn delete_from(
        map: &mut Map,
        request: &DeleteRangeRequest,
        revision: i64,
        written: &mut Vec<(Vec<u8>, bool)>,
    ) -> DeleteRangeResponse {
        let doomed: Vec<Vec<u8>> = map
            .keys()
            .filter(|key| in_range(key, &request.key, &request.range_end))
            .cloned()
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            let kv = map.remove(key).expect("listed");
            if request.prev_kv {
                prev_kvs.push(kv);
            }
            written.push((key.clone(), false));
        }
        DeleteRangeResponse {
            header: ResponseHeader { revision },
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn commit(&mut self, map: Map, written: Vec<(Vec<u8>, bool)>) {
        self.states.push(map);
        self.writes.push(written);
    }

    fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut map = self.at(self.revision()).clone();
        let response = Self::put_into(&mut map, request, self.revision() + 1);
        self.commit(map, vec![(request.key.clone(), true)]);
        Ok(response)
    }

    fn delete(&mut self, request: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut map = self.at(self.revision()).clone();
        let mut written = Vec::new();
        let mut response = Self::delete_from(&mut map, request, self.revision() + 1, &mut written);
        if response.deleted > 0 {
            self.commit(map, written);
        }
        response.header.revision = self.revision();
        Ok(response)
    }

    fn compare(&self, map: &Map, compare: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = map
            .values()
            .filter(|kv| in_range(&kv.key, &compare.key, &compare.range_end))
            .collect();
        let absent = KeyValue::default();
        let kvs = if kvs.is_empty() {
            if matches!(compare.target, CompareTarget::Value(_)) {
                return false;
            }
            vec![&absent]
        } else {
            kvs
        };
        kvs.iter().all(|kv| {
            let ordering = match &compare.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
            };
            match compare.result {
                CompareResult::Equal => ordering.is_eq(),
                CompareResult::Greater => ordering.is_gt(),
                CompareResult::Less => ordering.is_lt(),
                CompareResult::NotEqual => ordering.is_ne(),
            }
        })
    }

    /// The keys a list of operations puts and deletes, nested branches united; an error
    /// when a key is put twice or put and deleted.
    fn written_keys(
        ops: &[RequestOp],
        universe: &[Vec<u8>],
    ) -> Result<(KeySet, KeySet), MvccError> {
        let mut puts = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        for op in ops {
            match op {
                RequestOp::Put(put) => {
                    if !puts.insert(put.key.clone()) {
                        return Err(MvccError::DuplicateKey);
                    }
                }
                RequestOp::DeleteRange(delete) => {
                    for key in universe {
                        if in_range(key, &delete.key, &delete.range_end) {
                            deleted.insert(key.clone());
                        }
                    }
                }
                RequestOp::Txn(nested) => {
                    let (success_puts, success_deleted) =
                        Self::written_keys(&nested.success, universe)?;
                    let (failure_puts, failure_deleted) =
                        Self::written_keys(&nested.failure, universe)?;
                    for key in success_puts.union(&failure_puts) {
                        if !puts.insert(key.clone()) {
                            return Err(MvccError::DuplicateKey);
                        }
                    }
                    deleted.extend(success_deleted);
                    deleted.extend(failure_deleted);
                }
                RequestOp::Range(_) => {}
            }
        }
        if puts.intersection(&deleted).next().is_some() {
            return Err(MvccError::DuplicateKey);
        }
        Ok((puts, deleted))
    }

    fn check_txn(&self, txn: &TxnRequest) -> Result<(), MvccError> {
        if txn.compare.len() > self.max_txn_ops
            || txn.success.len() > self.max_txn_ops
            || txn.failure.len() > self.max_txn_ops
        {
            return Err(MvccError::TooManyOperations);
        }
        for op in txn.success.iter().chain(&txn.failure) {
            if let RequestOp::Txn(nested) = op {
                self.check_txn(nested)?;
            }
        }
        Ok(())
    }

    fn check_branch(&self, txn: &TxnRequest, start: &Map) -> Result<(), MvccError> {
        let holds = txn.compare.iter().all(|c| self.compare(start, c));
        let branch = if holds { &txn.success } else { &txn.failure };
        for op in branch {
            match op {
                RequestOp::Range(range) => self.check_revision(range.revision)?,
                RequestOp::Txn(nested) => self.check_branch(nested, start)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn run_txn(
        &self,
        txn: &TxnRequest,
        start: &Map,
        working: &mut Map,
        changed: &mut bool,
        written: &mut Vec<(Vec<u8>, bool)>,
    ) -> TxnResponse {
        let revision = self.revision() + 1;
        let holds = txn.compare.iter().all(|c| self.compare(start, c));
        let branch = if holds { &txn.success } else { &txn.failure };
        let mut responses = Vec::new();
        for op in branch {
            responses.push(match op {
                RequestOp::Range(range) => {
                    let map = if range.revision > 0 {
                        self.at(range.revision)
                    } else {
                        &*working
                    };
                    let header = if *changed { revision } else { self.revision() };
                    ResponseOp::Range(self.read(map, range, header))
                }
                RequestOp::Put(put) => {
                    *changed = true;
                    written.push((put.key.clone(), true));
                    ResponseOp::Put(Self::put_into(working, put, revision))
                }
                RequestOp::DeleteRange(delete) => {
                    let mut response = Self::delete_from(working, delete, revision, written);
                    *changed |= response.deleted > 0;
                    if !*changed {
                        response.header.revision = self.revision();
                    }
                    ResponseOp::DeleteRange(response)
                }
                RequestOp::Txn(nested) => {
                    let mut response = self.run_txn(nested, start, working, changed, written);
                    response.header.revision = 0;
                    ResponseOp::Txn(response)
                }
            });
        }
        TxnResponse {
            header: ResponseHeader { revision },
            succeeded: holds,
            responses,
        }
    }

    fn txn(&mut self, txn: &TxnRequest, universe: &[Vec<u8>]) -> Result<TxnResponse, MvccError> {
        self.check_txn(txn)?;
        Self::written_keys(&txn.success, universe)?;
        Self::written_keys(&txn.failure, universe)?;
        let start = self.at(self.revision()).clone();
        self.check_branch(txn, &start)?;
        let mut working = start.clone();
        let mut changed = false;
        let mut written = Vec::new();
        let mut response = self.run_txn(txn, &start, &mut working, &mut changed, &mut written);
        if changed {
            self.commit(working, written);
        }
        response.header.revision = self.revision();
        Ok(response)
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.revision() {
            return Err(MvccError::FutureRevision);
        }
        self.compacted = revision;
        Ok(())
    }

    fn events(&self, filter: &WatchFilter, start: i64) -> Result<Vec<WatchEvent>, WatchError> {
        if start < self.compacted {
            return Err(WatchError::Compacted {
                compact_revision: self.compacted,
            });
        }
        let mut events = Vec::new();
        for revision in start.max(2)..=self.revision() {
            for (key, is_put) in &self.writes[(revision - 1) as usize] {
                if !in_range(key, &filter.key, &filter.range_end)
                    || (*is_put && filter.no_put)
                    || (!*is_put && filter.no_delete)
                {
                    continue;
                }
                let kv = if *is_put {
                    self.at(revision)[key].clone()
                } else {
                    KeyValue {
                        key: key.clone(),
                        mod_revision: revision,
                        ..KeyValue::default()
                    }
                };
                let prev_kv = filter
                    .prev_kv
                    .then(|| self.at(revision - 1).get(key).cloned())
                    .flatten();
                events.push(WatchEvent {
                    kind: if *is_put {
                        EventType::Put
                    } else {
                        EventType::Delete
                    },
                    kv,
                    prev_kv,
                });
            }
        }
        Ok(events)
    }
}

const KEYS: [&str; 5] = ["a", "ab", "b", "c", "d"];

fn universe() -> Vec<Vec<u8>> {
    KEYS.iter().map(|key| key.as_bytes().to_vec()).collect()
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS.to_vec()).prop_map(|key| key.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => Just(vec![0u8]),
        2 => prop::sample::select(vec!["b", "c", "d", "e", "a"]).prop_map(|k| k.as_bytes().to_vec()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'x', b'y', b'z']), 0..3)
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        (key(), range_end(), 0i64..4, -1i64..12),
        (
            prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]),
            prop::sample::select(vec![
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]),
        ),
        (any::<bool>(), any::<bool>(), 0i64..4, 0i64..2),
        (-1i64..8, -1i64..8, -1i64..8, -1i64..8),
    )
        .prop_map(
            |((key, range_end, limit, revision), (order, target), flags, filters)| {
                let (keys_only, count_only, filter_pick, _) = flags;
                let (a, b, c, d) = filters;
                let (min_mod, max_mod, min_create, max_create) = match filter_pick {
                    0 => (a, 0, 0, 0),
                    1 => (0, b, 0, 0),
                    2 => (0, 0, c, d),
                    _ => (0, 0, 0, 0),
                };
                // Plain reads with no sort sometimes, so the natural order path runs.
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: order,
                    sort_target: target,
                    serializable: false,
                    keys_only,
                    count_only: count_only && limit == 3,
                    min_mod_revision: min_mod,
                    max_mod_revision: max_mod,
                    min_create_revision: min_create,
                    max_create_revision: max_create,
                }
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| PutRequest {
        key,
        value,
        prev_kv,
        ..PutRequest::default()
    })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![3 => Just(Vec::new()), 1 => range_end()],
        prop::sample::select(vec![
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ]),
        prop_oneof![
            (0i64..4).prop_map(CompareTarget::Version),
            (0i64..8).prop_map(CompareTarget::Create),
            (0i64..8).prop_map(CompareTarget::Mod),
            value().prop_map(CompareTarget::Value),
            (0i64..2).prop_map(CompareTarget::Lease),
        ],
    )
        .prop_map(|(key, range_end, result, target)| Compare {
            result,
            target,
            key,
            range_end,
        })
}

fn flat_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![
        1 => range_request().prop_map(RequestOp::Range),
        3 => put_request().prop_map(RequestOp::Put),
        1 => delete_request().prop_map(RequestOp::DeleteRange),
    ]
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    let flat = (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(flat_op(), 0..3),
        prop::collection::vec(flat_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    flat.prop_recursive(1, 8, 3, |inner| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(
                prop_oneof![3 => flat_op(), 1 => inner.prop_map(RequestOp::Txn)],
                0..5,
            ),
            prop::collection::vec(flat_op(), 0..3),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
    })
}

#[derive(Clone, Debug)]
enum Step {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    Watch(WatchFilter, i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => range_request().prop_map(Step::Range),
        4 => put_request().prop_map(Step::Put),
        2 => delete_request().prop_map(Step::Delete),
        3 => txn_request().prop_map(Step::Txn),
        1 => (0i64..14).prop_map(Step::Compact),
        1 => (key(), range_end(), any::<bool>(), any::<bool>(), any::<bool>(), 0i64..14).prop_map(
            |(key, range_end, no_put, no_delete, prev_kv, start)| {
                Step::Watch(WatchFilter { key, range_end, no_put, no_delete, prev_kv }, start)
            }
        ),
    ]
}

fn full_read(revision: i64) -> RangeRequest {
    RangeRequest {
        revision,
        ..RangeRequest::range(vec![0u8], vec![0u8])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_store_matches_the_reference(steps in prop::collection::vec(step(), 1..40)) {
        let mut store = MvccStore::new(3);
        let mut reference = Reference::new(3);
        let universe = universe();
        for step in &steps {
            match step {
                Step::Range(request) => {
                    prop_assert_eq!(store.range(request), reference.range(request), "{:?}", request);
                }
                Step::Put(request) => {
                    prop_assert_eq!(store.put(request), reference.put(request));
                }
                Step::Delete(request) => {
                    prop_assert_eq!(store.delete_range(request), reference.delete(request));
                }
                Step::Txn(request) => {
                    prop_assert_eq!(store.txn(request), reference.txn(request, &universe), "{:?}", request);
                }
                Step::Compact(revision) => {
                    let ours = store.compact(&CompactionRequest { revision: *revision, physical: false });
                    prop_assert_eq!(ours.map(|_| ()), reference.compact(*revision));
                }
                Step::Watch(filter, start) => {
                    let ours = store.events(filter, *start, i64::MAX);
                    prop_assert_eq!(ours, reference.events(filter, *start), "{:?} from {}", filter, start);
                }
            }
            prop_assert_eq!(store.revision(), reference.revision());
            prop_assert_eq!(store.compacted_revision(), reference.compacted);
        }
        // Every revision still readable reads the same whole keyspace.
        for revision in reference.compacted.max(1)..=reference.revision() {
            let request = full_read(revision);
            prop_assert_eq!(store.range(&request), reference.range(&request));
        }
    }
}

#[test]
fn compaction_frees_history_but_keeps_what_reads_need() {
    let mut store = MvccStore::default();
    for round in 0..100u32 {
        for key in ["a", "b", "c"] {
            store
                .put(&PutRequest::new(key, round.to_string()))
                .expect("put");
        }
    }
    store
        .delete_range(&DeleteRangeRequest::key("c"))
        .expect("delete");
    assert_eq!(store.version_count(), 301);
    let current = store.revision();
    store
        .compact(&CompactionRequest {
            revision: current,
            physical: true,
        })
        .expect("compact");
    // "a" and "b" keep their current version; "c" was deleted at the compaction point,
    // so its deletion and the live version before it stay (the event at `current` needs them).
    assert_eq!(store.version_count(), 4);
    store.put(&PutRequest::new("d", "x")).expect("put");
    store
        .compact(&CompactionRequest {
            revision: store.revision(),
            physical: true,
        })
        .expect("compact");
    assert_eq!(store.key_count(), 3, "the deleted key is gone entirely");
    let read = store
        .range(&RangeRequest::range(vec![0u8], vec![0u8]))
        .expect("read");
    let values: Vec<&[u8]> = read.kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, vec![&b"99"[..], b"99", b"x"]);
}

#[test]
fn errors_have_etcds_texts() {
    let mut store = MvccStore::default();
    store.put(&PutRequest::new("k", "v")).expect("put");
    store.put(&PutRequest::new("k", "w")).expect("put");
    let future = RangeRequest {
        revision: 10,
        ..RangeRequest::key("k")
    };
    assert_eq!(
        store.range(&future).unwrap_err().to_string(),
        "mvcc: required revision is a future revision"
    );
    store
        .compact(&CompactionRequest {
            revision: 3,
            physical: false,
        })
        .expect("compact");
    let old = RangeRequest {
        revision: 2,
        ..RangeRequest::key("k")
    };
    assert_eq!(
        store.range(&old).unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );
    let again = store.compact(&CompactionRequest {
        revision: 3,
        physical: false,
    });
    assert_eq!(
        again.unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );
    let ahead = store.compact(&CompactionRequest {
        revision: 9,
        physical: false,
    });
    assert_eq!(
        ahead.unwrap_err().to_string(),
        "mvcc: required revision is a future revision"
    );
    let twice = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest::new("k", "1")),
            RequestOp::Put(PutRequest::new("k", "2")),
        ],
        ..TxnRequest::default()
    };
    assert_eq!(
        store.txn(&twice).unwrap_err().to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    let put_into_deleted = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                prev_kv: false,
            }),
            RequestOp::Put(PutRequest::new("k", "2")),
        ],
        ..TxnRequest::default()
    };
    assert_eq!(store.txn(&put_into_deleted), Err(MvccError::DuplicateKey));
    let many = TxnRequest {
        success: (0..129)
            .map(|index| RequestOp::Put(PutRequest::new(format!("k{index}"), "v")))
            .collect(),
        ..TxnRequest::default()
    };
    assert_eq!(
        store.txn(&many).unwrap_err().to_string(),
        "etcdserver: too many operations in txn request"
    );
    assert_eq!(store.revision(), 3, "refused requests change nothing");
    let lease = PutRequest {
        lease: 77,
        ..PutRequest::new("k", "v")
    };
    assert_eq!(
        store.put(&lease).unwrap_err().to_string(),
        "etcdserver: requested lease not found"
    );
    let ignore = PutRequest {
        ignore_value: true,
        ..PutRequest::new("absent", "")
    };
    assert_eq!(store.put(&ignore), Err(MvccError::KeyNotFound));
}

#[test]
fn versions_restart_after_a_delete_and_one_txn_is_one_revision() {
    let mut store = MvccStore::default();
    assert_eq!(store.revision(), 1);
    store.put(&PutRequest::new("k", "1")).expect("put");
    store.put(&PutRequest::new("k", "2")).expect("put");
    let nothing = store
        .delete_range(&DeleteRangeRequest::key("other"))
        .expect("delete");
    assert_eq!(
        (nothing.deleted, nothing.header.revision),
        (0, 3),
        "no bump"
    );
    store
        .delete_range(&DeleteRangeRequest::key("k"))
        .expect("delete");
    let txn = TxnRequest {
        compare: vec![Compare::key(
            "k",
            CompareResult::Equal,
            CompareTarget::Create(0),
        )],
        success: vec![
            RequestOp::Put(PutRequest::new("k", "3")),
            RequestOp::Put(PutRequest::new("j", "x")),
            RequestOp::Range(RangeRequest::key("k")),
        ],
        failure: vec![],
    };
    let response = store.txn(&txn).expect("txn");
    assert!(response.succeeded);
    assert_eq!(response.header.revision, 5);
    let ResponseOp::Range(read) = &response.responses[2] else {
        panic!("a range answer expected");
    };
    assert_eq!(
        read.kvs[0],
        KeyValue {
            key: b"k".to_vec(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            value: b"3".to_vec(),
            lease: 0
        },
        "the re-created key starts at version 1 and the txn sees its own write"
    );
    let events = store
        .events(
            &WatchFilter {
                key: vec![0],
                range_end: vec![0],
                ..WatchFilter::default()
            },
            5,
            5,
        )
        .expect("events");
    let keys: Vec<(&[u8], i64)> = events
        .iter()
        .map(|event| (event.kv.key.as_slice(), event.kv.mod_revision))
        .collect();
    assert_eq!(keys, vec![(&b"k"[..], 5), (&b"j"[..], 5)], "in write order");
}
