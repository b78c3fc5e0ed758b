//! The replicated MVCC machine: leases (grant, keep-alive, revoke, expiry decided by the
//! leader), client sessions, reads outside the log, and the watch hub.

use proptest::prelude::*;
use std::time::Duration;
use synod_core::node::ClientId;
use synod_core::time::Time;
use synod_protocols::mvcc::api::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MvccError, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use synod_protocols::mvcc::machine::RequestError;
use synod_protocols::mvcc::watch::{
    EventType, WATCH_REVISIONS_PER_RESPONSE_MAX, WatchCreateRequest, WatchEvent,
};
use synod_protocols::mvcc::{
    MvccCommand, MvccMachine, MvccOperation, MvccOutput, MvccRequest, MvccStore, WatchFilter,
    WatchHub,
};
use synod_protocols::replicated::{ReadConsistency, StateMachine};

fn seconds(count: u64) -> Time {
    Time::ZERO + Duration::from_secs(count)
}

/// Client 1's request `sequence` (acknowledging everything before it), proposed at `at`.
fn command(sequence: u64, operation: MvccOperation, at: Time) -> MvccCommand {
    MvccMachine::command(
        ClientId(1),
        MvccRequest {
            sequence,
            acknowledged_below: sequence,
            operation,
        },
        at,
    )
}

fn output(machine: &mut MvccMachine, command: &MvccCommand) -> Result<MvccOutput, RequestError> {
    machine.apply(command).expect("an answer").1.result
}

fn put_with_lease(key: &str, lease: i64) -> MvccOperation {
    MvccOperation::Put(PutRequest {
        lease,
        ..PutRequest::new(key, "v")
    })
}

#[test]
fn lease_ids_are_assigned_or_taken_as_given() {
    let mut store = MvccStore::default();
    let grant = |ttl, id| LeaseGrantRequest { ttl, id };
    let first = store.lease_grant(&grant(5, 0), Time::ZERO).expect("grant");
    let chosen = store.lease_grant(&grant(5, 2), Time::ZERO).expect("grant");
    let next = store.lease_grant(&grant(0, 0), Time::ZERO).expect("grant");
    assert_eq!((first.id, chosen.id, next.id), (1, 2, 3), "2 was taken");
    assert_eq!(next.ttl, 1, "raised to the minimum TTL");
    assert_eq!(
        store.lease_grant(&grant(5, 2), Time::ZERO),
        Err(MvccError::LeaseExists)
    );
    assert_eq!(
        store
            .lease_grant(&grant(9_000_000_001, 0), Time::ZERO)
            .unwrap_err()
            .to_string(),
        "etcdserver: too large lease TTL"
    );
    assert_eq!(store.lease_leases().leases, vec![1, 2, 3]);
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut store = MvccStore::default();
    let lease = store
        .lease_grant(&LeaseGrantRequest { ttl: 10, id: 0 }, Time::ZERO)
        .expect("grant")
        .id;
    for key in ["a", "b", "c"] {
        store
            .put(&PutRequest {
                lease,
                ..PutRequest::new(key, "v")
            })
            .expect("put");
    }
    // "c" moves off the lease; "b" is deleted: neither belongs to it any more.
    store.put(&PutRequest::new("c", "w")).expect("put");
    store
        .delete_range(&DeleteRangeRequest::key("b"))
        .expect("delete");
    store.put(&PutRequest::new("b", "again")).expect("put");
    let live = store.lease_time_to_live(
        &LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        },
        seconds(3),
        Time::ZERO,
    );
    assert_eq!((live.ttl, live.granted_ttl), (7, 10));
    assert_eq!(live.keys, vec![b"a".to_vec()]);
    let before = store.revision();
    let revoked = store
        .lease_revoke(&LeaseRevokeRequest { id: lease })
        .expect("revoke");
    assert_eq!(revoked.header.revision, before + 1);
    let all = store
        .range(&RangeRequest::range(vec![0u8], vec![0u8]))
        .expect("read");
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"b"[..], b"c"]);
    let events = store
        .events(
            &WatchFilter {
                key: vec![0],
                range_end: vec![0],
                prev_kv: true,
                ..WatchFilter::default()
            },
            before + 1,
            i64::MAX,
        )
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventType::Delete);
    assert_eq!(events[0].prev_kv.as_ref().map(|kv| kv.lease), Some(lease));
    // Revoking a lease without keys changes no revision; unknown leases are errors.
    let empty = store
        .lease_grant(&LeaseGrantRequest { ttl: 10, id: 0 }, Time::ZERO)
        .expect("grant")
        .id;
    let revision = store.revision();
    store
        .lease_revoke(&LeaseRevokeRequest { id: empty })
        .expect("revoke");
    assert_eq!(store.revision(), revision);
    assert_eq!(
        store
            .lease_revoke(&LeaseRevokeRequest { id: lease })
            .unwrap_err()
            .to_string(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(
        store.lease_keep_alive(&LeaseKeepAliveRequest { id: lease }, Time::ZERO),
        Err(MvccError::LeaseNotFound)
    );
    let unknown = store.lease_time_to_live(
        &LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        },
        Time::ZERO,
        Time::ZERO,
    );
    assert_eq!(unknown.ttl, -1);
}

#[test]
fn the_leader_expires_leases_and_a_new_leader_grants_a_full_ttl() {
    let mut machine = MvccMachine::new();
    let grant = command(
        0,
        MvccOperation::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 0 }),
        seconds(0),
    );
    let Ok(MvccOutput::LeaseGrant(granted)) = output(&mut machine, &grant) else {
        panic!("grant failed");
    };
    let lease = granted.id;
    output(
        &mut machine,
        &command(1, put_with_lease("k", lease), seconds(1)),
    )
    .expect("put");
    assert!(machine.due(seconds(9), Time::ZERO).is_empty());
    // A leader since t=5 counts ten seconds from its promotion.
    let new_leader = machine.due(seconds(12), seconds(5));
    assert_eq!(
        new_leader,
        vec![MvccCommand::LeaderSince {
            leading_since: seconds(5)
        }]
    );
    let expired = machine.due(seconds(10), Time::ZERO);
    assert_eq!(
        expired,
        vec![MvccCommand::ExpireLease {
            id: lease,
            renewed_at: seconds(0)
        }]
    );
    // A keep-alive ordered before the expiry wins: the stale expiry is ignored.
    let keep_alive = command(
        2,
        MvccOperation::LeaseKeepAlive(LeaseKeepAliveRequest { id: lease }),
        seconds(9),
    );
    output(&mut machine, &keep_alive).expect("keep-alive");
    assert_eq!(machine.apply(&expired[0]), None);
    assert!(machine.store().lease(lease).is_some());
    let ttl = command(
        3,
        MvccOperation::LeaseTimeToLive(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        }),
        seconds(12),
    );
    let Ok(MvccOutput::LeaseTimeToLive(left)) = output(&mut machine, &ttl) else {
        panic!("time-to-live failed");
    };
    assert_eq!((left.ttl, left.keys.clone()), (7, vec![b"k".to_vec()]));
    // The expiry the leader proposes now revokes the lease and deletes its key.
    let due = machine.due(seconds(19), Time::ZERO);
    assert_eq!(due.len(), 1);
    let revision = machine.store().revision();
    assert_eq!(machine.apply(&due[0]), None);
    assert!(machine.store().lease(lease).is_none());
    assert_eq!(machine.store().revision(), revision + 1);
    assert!(machine.store().snapshot_map().is_empty());
    // A leader note changes when time-to-live counts from.
    machine.apply(&MvccCommand::LeaderSince {
        leading_since: seconds(5),
    });
    assert!(machine.due(seconds(5), seconds(5)).is_empty());
}

#[test]
fn a_mutation_logged_twice_executes_once_and_reads_skip_the_session() {
    let mut machine = MvccMachine::new();
    let put = command(0, MvccOperation::Put(PutRequest::new("k", "v")), Time::ZERO);
    let first = machine.apply(&put);
    let again = machine.apply(&put);
    assert_eq!(first, again);
    assert_eq!(machine.store().revision(), 2);
    let refused = command(
        1,
        MvccOperation::Put(PutRequest {
            lease: 5,
            ..PutRequest::new("k", "w")
        }),
        Time::ZERO,
    );
    assert_eq!(
        output(&mut machine, &refused),
        Err(RequestError::Store(MvccError::LeaseNotFound))
    );
    assert_eq!(
        output(&mut machine, &refused),
        Err(RequestError::Store(MvccError::LeaseNotFound)),
        "a retried refusal gets the recorded refusal"
    );
    // The client moved on: a delayed copy of request 0 is stale and not answered.
    let read = command(2, MvccOperation::Range(RangeRequest::key("k")), Time::ZERO);
    output(&mut machine, &read).expect("read");
    let next = command(3, MvccOperation::Put(PutRequest::new("k", "x")), Time::ZERO);
    output(&mut machine, &next).expect("put");
    assert_eq!(machine.apply(&put), None);
    assert_eq!(machine.store().revision(), 3);
    assert_eq!(machine.sessions().result_count(), 1);
    // Reads may bypass the log; their consistency follows the serializable flag.
    let linearizable = MvccRequest {
        sequence: 9,
        acknowledged_below: 0,
        operation: MvccOperation::Range(RangeRequest::key("k")),
    };
    assert_eq!(
        MvccMachine::read_consistency(&linearizable),
        Some(ReadConsistency::Linearizable)
    );
    let mut serializable = linearizable.clone();
    serializable.operation = MvccOperation::Range(RangeRequest {
        serializable: true,
        ..RangeRequest::key("k")
    });
    assert_eq!(
        MvccMachine::read_consistency(&serializable),
        Some(ReadConsistency::Serializable)
    );
    let Ok(MvccOutput::Range(answer)) = machine.query(ClientId(4), &serializable).result else {
        panic!("query failed");
    };
    assert_eq!(answer.kvs[0].value, b"x");
    let write = MvccRequest {
        sequence: 9,
        acknowledged_below: 0,
        operation: MvccOperation::Put(PutRequest::new("k", "y")),
    };
    assert_eq!(MvccMachine::read_consistency(&write), None);
    assert_eq!(
        machine.query(ClientId(4), &write).result,
        Err(RequestError::NotReadOnly)
    );
}

#[test]
fn a_far_behind_watcher_catches_up_in_bounded_responses() {
    let mut store = MvccStore::default();
    let mut hub = WatchHub::new();
    let created = hub.create(
        WatchCreateRequest {
            filter: WatchFilter {
                key: b"k".to_vec(),
                ..WatchFilter::default()
            },
            start_revision: 1,
        },
        &store,
    );
    assert!(created.created);
    let total = 2 * WATCH_REVISIONS_PER_RESPONSE_MAX + 500;
    for index in 0..total {
        store
            .put(&PutRequest::new("k", index.to_string()))
            .expect("put");
    }
    let sizes: Vec<usize> = (0..4)
        .flat_map(|_| hub.poll(&store))
        .map(|response| response.events.len())
        .collect();
    let full = WATCH_REVISIONS_PER_RESPONSE_MAX as usize;
    assert_eq!(sizes, vec![full - 1, full, 501]);
    assert_eq!(hub.progress(&store).len(), 1, "caught up");
    let backwards = store.events(&WatchFilter::default(), 50, 10);
    assert_eq!(backwards, Ok(Vec::new()), "an empty interval has no events");
    // Compaction past a lagging watcher cancels it with the compact revision.
    let lagging = hub.create(
        WatchCreateRequest {
            filter: WatchFilter {
                key: b"k".to_vec(),
                ..WatchFilter::default()
            },
            start_revision: 5,
        },
        &store,
    );
    store
        .compact(&CompactionRequest {
            revision: 100,
            physical: false,
        })
        .expect("compact");
    let responses = hub.poll(&store);
    assert_eq!(responses.len(), 1);
    assert!(responses[0].canceled);
    assert_eq!(responses[0].watch_id, lagging.watch_id);
    assert_eq!(responses[0].compact_revision, 100);
    assert_eq!(hub.len(), 1);
}

#[derive(Clone, Debug)]
enum HubStep {
    Put(u8, u8),
    Delete(u8),
    /// A transaction putting one key and deleting another.
    Txn(u8, u8),
    Poll,
    Watch(u8, bool, bool, i64),
    Compact,
}

fn hub_step() -> impl Strategy<Value = HubStep> {
    prop_oneof![
        4 => (0u8..4, any::<u8>()).prop_map(|(key, value)| HubStep::Put(key, value)),
        2 => (0u8..4).prop_map(HubStep::Delete),
        2 => (0u8..4, 0u8..4).prop_map(|(put, delete)| HubStep::Txn(put, delete)),
        3 => Just(HubStep::Poll),
        1 => (0u8..5, any::<bool>(), any::<bool>(), 0i64..12)
            .prop_map(|(key, no_put, no_delete, start)| HubStep::Watch(key, no_put, no_delete, start)),
        1 => Just(HubStep::Compact),
    ]
}

/// A watcher's id, filter, first revision and the events it received.
type Watched = (i64, WatchFilter, i64, Vec<WatchEvent>);

fn key(index: u8) -> Vec<u8> {
    vec![b'a' + index]
}

proptest! {
    /// Every watcher receives exactly the events the uncompacted history holds from its
    /// start, in order, none lost and none twice, however polls, writes and compactions
    /// (never past a live watcher's position) interleave.
    #[test]
    fn the_hub_delivers_every_event_once(steps in prop::collection::vec(hub_step(), 1..60)) {
        let mut store = MvccStore::default();
        let mut shadow = MvccStore::default();
        let mut hub = WatchHub::new();
        let mut watchers: Vec<Watched> = Vec::new();
        let deliver = |hub: &mut WatchHub, store: &MvccStore, watchers: &mut Vec<Watched>| {
            for response in hub.poll(store) {
                assert!(!response.canceled, "compaction never passes a watcher here");
                let watcher = watchers.iter_mut().find(|w| w.0 == response.watch_id).expect("known");
                watcher.3.extend(response.events);
            }
        };
        for step in steps {
            match step {
                HubStep::Put(k, value) => {
                    let request = PutRequest { prev_kv: true, ..PutRequest::new(key(k), vec![value]) };
                    store.put(&request).expect("put");
                    shadow.put(&request).expect("put");
                }
                HubStep::Delete(k) => {
                    let request = DeleteRangeRequest::key(key(k));
                    store.delete_range(&request).expect("delete");
                    shadow.delete_range(&request).expect("delete");
                }
                HubStep::Txn(put, delete) => {
                    let request = TxnRequest {
                        success: vec![
                            RequestOp::Put(PutRequest::new(key(put), "t")),
                            RequestOp::DeleteRange(DeleteRangeRequest::key(key(delete))),
                        ],
                        ..TxnRequest::default()
                    };
                    let ours = store.txn(&request);
                    prop_assert_eq!(ours.is_ok(), put != delete);
                    let _ = shadow.txn(&request);
                }
                HubStep::Poll => deliver(&mut hub, &store, &mut watchers),
                HubStep::Watch(k, no_put, no_delete, start) => {
                    let filter = WatchFilter {
                        key: if k == 4 { vec![0] } else { key(k) },
                        range_end: if k == 4 { vec![0] } else { Vec::new() },
                        no_put,
                        no_delete,
                        prev_kv: true,
                    };
                    let start = start.max(store.compacted_revision());
                    let created = hub.create(WatchCreateRequest { filter: filter.clone(), start_revision: start }, &store);
                    let first = if start > 0 { start } else { store.revision() + 1 };
                    watchers.push((created.watch_id, filter, first, Vec::new()));
                }
                HubStep::Compact => {
                    let oldest = watchers
                        .iter()
                        .map(|w| hub.next_revision(w.0).expect("live"))
                        .min()
                        .unwrap_or(i64::MAX)
                        .min(store.revision());
                    if oldest > store.compacted_revision() {
                        store.compact(&CompactionRequest { revision: oldest, physical: false }).expect("compact");
                    }
                }
            }
        }
        deliver(&mut hub, &store, &mut watchers);
        prop_assert_eq!(hub.progress(&store).len(), watchers.len());
        for (_, filter, first, received) in &watchers {
            let expected = shadow.events(filter, *first, i64::MAX).expect("uncompacted");
            prop_assert_eq!(received, &expected);
        }
    }
}

#[test]
fn the_transaction_size_limit_is_configurable() {
    let mut machine = MvccMachine::with_max_txn_ops(2);
    let puts = |count: usize| {
        MvccOperation::Txn(TxnRequest {
            success: (0..count)
                .map(|index| RequestOp::Put(PutRequest::new(format!("k{index}"), "v")))
                .collect(),
            ..TxnRequest::default()
        })
    };
    output(&mut machine, &command(0, puts(2), Time::ZERO)).expect("two puts fit");
    assert_eq!(
        output(&mut machine, &command(1, puts(3), Time::ZERO)),
        Err(RequestError::Store(MvccError::TooManyOperations))
    );
    assert_eq!(machine.store().revision(), 2);
}

#[test]
fn deeply_nested_transactions_are_refused_before_they_exhaust_the_stack() {
    let nest = |depth: usize| {
        let mut txn = TxnRequest {
            success: vec![RequestOp::Put(PutRequest::new("k", "v"))],
            ..TxnRequest::default()
        };
        for _ in 1..depth {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..TxnRequest::default()
            };
        }
        txn
    };
    let mut store = MvccStore::default();
    assert!(store.txn(&nest(64)).is_ok());
    let refused = store.txn(&nest(1_000));
    assert_eq!(refused, Err(MvccError::TxnTooDeep { limit: 64 }));
    assert_eq!(store.revision(), 2);
}

/// Any bytes, including none, and a mix of small and extreme numbers.
fn wild_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), any::<u8>()],
        0..3,
    )
}

fn wild_number() -> impl Strategy<Value = i64> {
    prop_oneof![-3i64..6, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
}

fn wild_operation() -> impl Strategy<Value = MvccOperation> {
    use synod_protocols::mvcc::api::{
        Compare, CompareResult, CompareTarget, SortOrder, SortTarget,
    };
    let range = (
        (wild_bytes(), wild_bytes(), wild_number(), wild_number()),
        (0usize..3, 0usize..5, any::<bool>(), any::<bool>()),
        (wild_number(), wild_number(), wild_number(), wild_number()),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision),
                (order, target, keys_only, count_only),
                (a, b, c, d),
            )| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][order],
                    sort_target: [
                        SortTarget::Key,
                        SortTarget::Version,
                        SortTarget::Create,
                        SortTarget::Mod,
                        SortTarget::Value,
                    ][target],
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: a,
                    max_mod_revision: b,
                    min_create_revision: c,
                    max_create_revision: d,
                }
            },
        )
        .boxed();
    let put = (
        wild_bytes(),
        wild_bytes(),
        wild_number(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
        .boxed();
    let delete = (wild_bytes(), wild_bytes(), any::<bool>())
        .prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        })
        .boxed();
    let compare = (
        wild_bytes(),
        wild_bytes(),
        0usize..4,
        wild_number(),
        wild_bytes(),
    )
        .prop_map(|(key, range_end, result, number, value)| Compare {
            result: [
                CompareResult::Equal,
                CompareResult::Greater,
                CompareResult::Less,
                CompareResult::NotEqual,
            ][result],
            target: match number.rem_euclid(5) {
                0 => CompareTarget::Version(number),
                1 => CompareTarget::Create(number),
                2 => CompareTarget::Mod(number),
                3 => CompareTarget::Lease(number),
                _ => CompareTarget::Value(value),
            },
            key,
            range_end,
        });
    let flat = prop_oneof![
        range.clone().prop_map(RequestOp::Range),
        put.clone().prop_map(RequestOp::Put),
        delete.clone().prop_map(RequestOp::DeleteRange),
    ];
    let txn = (
        prop::collection::vec(compare, 0..3),
        prop::collection::vec(flat.clone(), 0..4),
        prop::collection::vec(flat, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        });
    prop_oneof![
        range.prop_map(MvccOperation::Range),
        put.prop_map(MvccOperation::Put),
        delete.prop_map(MvccOperation::DeleteRange),
        txn.prop_map(MvccOperation::Txn),
        wild_number().prop_map(|revision| MvccOperation::Compact(CompactionRequest {
            revision,
            physical: false
        })),
        (wild_number(), wild_number())
            .prop_map(|(ttl, id)| MvccOperation::LeaseGrant(LeaseGrantRequest { ttl, id })),
        wild_number().prop_map(|id| MvccOperation::LeaseRevoke(LeaseRevokeRequest { id })),
        wild_number().prop_map(|id| MvccOperation::LeaseKeepAlive(LeaseKeepAliveRequest { id })),
        (wild_number(), any::<bool>()).prop_map(|(id, keys)| MvccOperation::LeaseTimeToLive(
            LeaseTimeToLiveRequest { id, keys }
        )),
        Just(MvccOperation::LeaseLeases),
    ]
}

proptest! {
    /// Whatever clients send, the machine answers (or refuses) without panicking, its
    /// revision never goes back, and the leader's housekeeping stays computable.
    #[test]
    fn arbitrary_requests_never_panic(
        requests in prop::collection::vec(
            (0u64..3, 0u64..8, 0u64..8, wild_operation(), any::<u64>()),
            1..40,
        ),
        now in any::<u64>(),
        leading_since in any::<u64>(),
    ) {
        let mut machine = MvccMachine::new();
        let mut revision = machine.store().revision();
        for (client, sequence, acknowledged_below, operation, at) in requests {
            let request = MvccRequest { sequence, acknowledged_below, operation };
            let _ = machine.query(ClientId(client), &request);
            machine.apply(&MvccMachine::command(ClientId(client), request, Time(at)));
            prop_assert!(machine.store().revision() >= revision);
            revision = machine.store().revision();
        }
        for command in machine.due(Time(now), Time(leading_since)) {
            machine.apply(&command);
        }
    }
}
