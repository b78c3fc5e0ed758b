//! The whole MVCC machine is its snapshot: after any sequence of commands (writes,
//! transactions, compactions, leases, sessions, leader notes and expiries), a postcard
//! round trip gives an equal machine that answers every later command the same way.
//! (Lives in the simulator's tests because `synod-protocols` does not depend on postcard.)

use proptest::prelude::*;
use std::time::Duration;
use synod_core::node::ClientId;
use synod_core::time::Time;
use synod_protocols::mvcc::api::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::mvcc::{MvccCommand, MvccMachine, MvccOperation, MvccRequest};
use synod_protocols::replicated::StateMachine;

fn key(index: u8) -> Vec<u8> {
    vec![b'a' + index % 4]
}

fn operation() -> impl Strategy<Value = MvccOperation> {
    prop_oneof![
        4 => (0u8..4, any::<u8>(), 0i64..3).prop_map(|(k, value, lease)| MvccOperation::Put(PutRequest {
            lease,
            ..PutRequest::new(key(k), vec![value])
        })),
        2 => (0u8..4).prop_map(|k| MvccOperation::DeleteRange(DeleteRangeRequest::key(key(k)))),
        2 => (0u8..4, 0u8..4, 0i64..3).prop_map(|(k, other, version)| MvccOperation::Txn(TxnRequest {
            compare: vec![Compare::key(key(k), CompareResult::Equal, CompareTarget::Version(version))],
            success: vec![RequestOp::Put(PutRequest::new(key(k), "s"))],
            failure: vec![RequestOp::DeleteRange(DeleteRangeRequest::key(key(other)))],
        })),
        1 => (0i64..10).prop_map(|revision| MvccOperation::Compact(CompactionRequest { revision, physical: false })),
        1 => (0i64..3).prop_map(|id| MvccOperation::LeaseGrant(LeaseGrantRequest { ttl: 5, id })),
        1 => (0i64..3).prop_map(|id| MvccOperation::LeaseRevoke(LeaseRevokeRequest { id })),
        1 => (0i64..3).prop_map(|id| MvccOperation::LeaseKeepAlive(LeaseKeepAliveRequest { id })),
        1 => (0i64..3).prop_map(|id| MvccOperation::LeaseTimeToLive(LeaseTimeToLiveRequest { id, keys: true })),
        1 => (0u8..4, 0i64..8).prop_map(|(k, revision)| MvccOperation::Range(RangeRequest { revision, ..RangeRequest::key(key(k)) })),
    ]
}

/// A log entry: a client's request (clients retry and acknowledge at random), or one of
/// the leader's own commands.
fn command() -> impl Strategy<Value = MvccCommand> {
    prop_oneof![
        8 => (0u64..3, 0u64..6, 0u64..6, operation(), 0u64..20).prop_map(
            |(client, sequence, acknowledged, operation, second)| {
                MvccMachine::command(
                    ClientId(client),
                    MvccRequest { sequence, acknowledged_below: acknowledged.min(sequence), operation },
                    Time::ZERO + Duration::from_secs(second),
                )
            }
        ),
        1 => (0u64..20).prop_map(|second| MvccCommand::LeaderSince {
            leading_since: Time::ZERO + Duration::from_secs(second),
        }),
        1 => (0i64..3, 0u64..20).prop_map(|(id, second)| MvccCommand::ExpireLease {
            id,
            renewed_at: Time::ZERO + Duration::from_secs(second),
        }),
    ]
}

proptest! {
    #[test]
    fn a_snapshot_round_trips_through_postcard(
        before in prop::collection::vec(command(), 0..40),
        after in prop::collection::vec(command(), 0..20),
    ) {
        let mut machine = MvccMachine::new();
        for command in &before {
            machine.apply(command);
        }
        let bytes = postcard::to_allocvec(&machine).expect("a machine serializes");
        let mut restored: MvccMachine = postcard::from_bytes(&bytes).expect("and deserializes");
        prop_assert_eq!(&restored, &machine);
        for command in &after {
            prop_assert_eq!(restored.apply(command), machine.apply(command));
        }
        prop_assert_eq!(&restored, &machine);
        let now = Time::ZERO + Duration::from_secs(30);
        prop_assert_eq!(restored.due(now, Time::ZERO), machine.due(now, Time::ZERO));
    }
}
