//! The store with its keys' and values' bytes in a file (as the server runs it) behaves
//! exactly like the store with them in memory (as the simulator runs it): same answers,
//! same events, through compaction, reclaiming space and a snapshot round trip; and a
//! damaged or short file is reported as a failure, never read as data.

use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use synod_core::node::ClientId;
use synod_core::time::Time;
use synod_protocols::mvcc::api::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::mvcc::records::RecordFile;
use synod_protocols::mvcc::{MvccCommand, MvccMachine, MvccOperation, MvccRequest, WatchFilter};
use synod_protocols::replicated::{SnapshotTail, StateMachine};

/// A record file in memory, behind the same interface as the server's file; `damage`
/// lets a test flip or cut its bytes.
#[derive(Debug, Default)]
struct TestFile {
    bytes: Mutex<Vec<u8>>,
}

impl TestFile {
    fn damage(&self, change: impl FnOnce(&mut Vec<u8>)) {
        change(&mut self.bytes.lock().unwrap());
    }
}

impl SnapshotTail for TestFile {
    fn len(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.bytes.lock().unwrap();
        let start = offset as usize;
        let slice = bytes
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(slice);
        Ok(())
    }
}

/// Every generation made, so a test can reach the current one.
#[derive(Debug, Default)]
struct Generations(Mutex<Vec<Arc<TestFile>>>);

#[derive(Debug)]
struct Generation {
    file: Arc<TestFile>,
    all: Arc<Generations>,
}

impl SnapshotTail for Generation {
    fn len(&self) -> u64 {
        self.file.len()
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read_at(offset, out)
    }
}

impl RecordFile for Generation {
    fn append(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let mut all = self.file.bytes.lock().unwrap();
        let offset = all.len() as u64;
        all.extend_from_slice(bytes);
        Ok(offset)
    }

    fn fresh(&self) -> std::io::Result<Arc<dyn RecordFile>> {
        Ok(new_generation(&self.all))
    }
}

fn new_generation(all: &Arc<Generations>) -> Arc<dyn RecordFile> {
    let file = Arc::new(TestFile::default());
    all.0.lock().unwrap().push(file.clone());
    Arc::new(Generation {
        file,
        all: all.clone(),
    })
}

/// A machine keeping its records in test files; returns the generations too.
fn file_machine() -> (MvccMachine, Arc<Generations>) {
    let all = Arc::new(Generations::default());
    let mut machine = MvccMachine::new();
    machine.use_file(&new_generation(&all)).unwrap();
    (machine, all)
}

fn command(sequence: u64, operation: MvccOperation) -> MvccCommand {
    MvccMachine::command(
        ClientId(1),
        MvccRequest {
            sequence,
            acknowledged_below: sequence,
            operation,
        },
        Time::ZERO,
    )
}

fn key(index: u8) -> Vec<u8> {
    format!("key/{index}").into_bytes()
}

fn everything() -> RangeRequest {
    RangeRequest::range(vec![0u8], vec![0u8])
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>, bool),
    KeepValue(u8),
    Delete(u8, u8),
    SwapIfValue(u8, Vec<u8>, Vec<u8>),
    Compact(u8),
    Read(u8, i64),
    Grant(u8),
    PutLeased(u8, u8),
    Revoke(u8),
    /// Two puts in one transaction, the greater key first.
    PutPair(u8, u8, Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..2048);
    prop_oneof![
        4 => (0..8u8, value.clone(), any::<bool>()).prop_map(|(k, v, p)| Op::Put(k, v, p)),
        1 => (0..8u8).prop_map(Op::KeepValue),
        1 => (0..8u8, 0..8u8).prop_map(|(a, b)| Op::Delete(a, b)),
        1 => (0..8u8, value.clone(), value.clone()).prop_map(|(k, a, b)| Op::SwapIfValue(k, a, b)),
        1 => (0..100u8).prop_map(Op::Compact),
        2 => (0..8u8, -3..1i64).prop_map(|(k, back)| Op::Read(k, back)),
        1 => (1..4u8).prop_map(Op::Grant),
        1 => (0..8u8, 1..4u8).prop_map(|(k, l)| Op::PutLeased(k, l)),
        1 => (1..4u8).prop_map(Op::Revoke),
        2 => (0..8u8, 0..8u8, value.clone()).prop_map(|(a, b, v)| Op::PutPair(a, b, v)),
    ]
}

fn operation(op: &Op, machine: &MvccMachine) -> MvccOperation {
    let revision = machine.store().revision();
    match op.clone() {
        Op::Put(k, value, prev_kv) => MvccOperation::Put(PutRequest {
            prev_kv,
            ..PutRequest::new(key(k), value)
        }),
        Op::KeepValue(k) => MvccOperation::Put(PutRequest {
            ignore_value: true,
            ..PutRequest::new(key(k), Vec::new())
        }),
        Op::Delete(a, b) => MvccOperation::DeleteRange(DeleteRangeRequest {
            key: key(a.min(b)),
            range_end: key(a.max(b) + 1),
            prev_kv: true,
        }),
        Op::SwapIfValue(k, expected, new) => MvccOperation::Txn(TxnRequest {
            compare: vec![Compare::key(
                key(k),
                CompareResult::Equal,
                CompareTarget::Value(expected),
            )],
            success: vec![RequestOp::Put(PutRequest::new(key(k), new))],
            failure: vec![RequestOp::Range(RangeRequest::key(key(k)))],
        }),
        Op::Compact(percent) => MvccOperation::Compact(CompactionRequest {
            revision: 1 + (revision - 1) * i64::from(percent) / 100,
            physical: true,
        }),
        Op::Read(k, back) => MvccOperation::Range(RangeRequest {
            revision: (revision + back).max(0),
            ..RangeRequest::key(key(k))
        }),
        Op::Grant(id) => MvccOperation::LeaseGrant(LeaseGrantRequest {
            ttl: 60,
            id: i64::from(id),
        }),
        Op::PutLeased(k, id) => MvccOperation::Put(PutRequest {
            lease: i64::from(id),
            ..PutRequest::new(key(k), vec![id; 16])
        }),
        Op::Revoke(id) => MvccOperation::LeaseRevoke(LeaseRevokeRequest { id: i64::from(id) }),
        Op::PutPair(a, b, value) => MvccOperation::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![
                RequestOp::Put(PutRequest::new(key(a.max(b)), value.clone())),
                RequestOp::Put(PutRequest::new(key(a.min(b)), value)),
            ],
            failure: Vec::new(),
        }),
    }
}

/// The whole visible history of a machine: every key now and every event still held.
fn observe(machine: &MvccMachine) -> (String, String) {
    let store = machine.store();
    let now = format!("{:?}", store.range(&everything()));
    let filter = WatchFilter {
        key: vec![0],
        range_end: vec![0],
        prev_kv: true,
        ..WatchFilter::default()
    };
    let start = store.compacted_revision().max(1);
    let events = format!("{:?}", store.events(&filter, start, store.revision()));
    (now, events)
}

/// The state's full encoding from its snapshot parts, as a snapshot file holds it.
fn encoded(machine: &MvccMachine) -> Vec<u8> {
    let (bytes, tail) = machine.snapshot_parts().unwrap();
    join(bytes, tail)
}

/// A snapshot's head, then its tail's length and bytes (read now).
fn join(mut bytes: Vec<u8>, tail: Option<synod_protocols::replicated::Tail>) -> Vec<u8> {
    if let Some((tail, length)) = tail {
        bytes.extend_from_slice(&postcard::to_allocvec(&length).unwrap());
        let start = bytes.len();
        bytes.resize(start + length as usize, 0);
        tail.read_at(0, &mut bytes[start..]).unwrap();
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_store_in_a_file_answers_as_one_in_memory(
        ops in prop::collection::vec(op(), 1..160),
        snapshot_at in any::<prop::sample::Index>(),
    ) {
        let mut memory = MvccMachine::new();
        let (mut file, _generations) = file_machine();
        // A checkpoint's parts taken part way, written only after the rest was applied
        // (compactions and reclaims included), as the server's storage thread may.
        let snapshot_at = snapshot_at.index(ops.len() + 1);
        let mut checkpoint = None;
        for (sequence, op) in ops.iter().enumerate() {
            if sequence == snapshot_at {
                checkpoint = Some((file.snapshot_parts().unwrap(), memory.clone()));
            }
            let operation = operation(op, &memory);
            let command = command(sequence as u64 + 1, operation);
            prop_assert_eq!(memory.apply(&command), file.apply(&command), "{:?}", op);
            prop_assert_eq!(file.failure(), None);
        }
        if let Some(((head, tail), then)) = checkpoint {
            let decoded: MvccMachine = postcard::from_bytes(&join(head, tail)).unwrap();
            // Exactly the state at the checkpoint: the index rebuilt from the records
            // equals the one kept in memory, field for field.
            prop_assert_eq!(&decoded, &then);
        }
        // Decoding rebuilds exactly the index the machine holds.
        let decoded: MvccMachine = postcard::from_bytes(&encoded(&memory)).unwrap();
        prop_assert_eq!(&decoded, &memory);
        prop_assert_eq!(observe(&memory), observe(&file));
        prop_assert_eq!(memory.store().record_bytes(), file.store().record_bytes());

        // Both encode to the same bytes, and either decodes into a machine with a file.
        prop_assert_eq!(encoded(&memory), encoded(&file));
        let decoded: MvccMachine = postcard::from_bytes(&encoded(&file)).unwrap();
        let (mut restored, _) = file_machine();
        restored.adopt(decoded);
        prop_assert_eq!(restored.failure(), None);
        prop_assert_eq!(observe(&restored), observe(&memory));
        prop_assert_eq!(encoded(&restored), encoded(&memory));
        // And the restored machine keeps going like the original.
        let next = command(ops.len() as u64 + 1, MvccOperation::Put(PutRequest::new(key(0), "after")));
        prop_assert_eq!(restored.apply(&next), memory.apply(&next));
        prop_assert_eq!(observe(&restored), observe(&memory));
    }
}

#[test]
fn compaction_reclaims_the_space_of_overwritten_values() {
    let (mut machine, generations) = file_machine();
    let value = vec![7u8; 4096];
    for sequence in 1..=100 {
        let put = MvccOperation::Put(PutRequest::new(key(0), value.clone()));
        machine.apply(&command(sequence, put));
    }
    let before = machine.store().record_bytes();
    let revision = machine.store().revision();
    let compact = MvccOperation::Compact(CompactionRequest {
        revision,
        physical: true,
    });
    machine.apply(&command(101, compact));
    let after = machine.store().record_bytes();
    assert!(after * 40 < before, "{after} bytes left of {before}");
    assert_eq!(machine.store().garbage_bytes(), 0);
    assert!(
        generations.0.lock().unwrap().len() >= 2,
        "no new generation"
    );
    let read = machine.store().range(&RangeRequest::key(key(0))).unwrap();
    assert_eq!(read.kvs[0].value, value);
}

/// Transactions writing several keys, greater first, then a compaction that reclaims the
/// space: the records of the revisions kept must stay in the change log's order (not key
/// order), or a decoded snapshot would report a transaction's events in another order.
#[test]
fn a_snapshot_after_a_reclaim_keeps_each_transactions_order() {
    let (mut machine, generations) = file_machine();
    let mut memory = MvccMachine::new();
    let value = vec![3u8; 2048];
    let mut sequence = 0;
    for _ in 0..60 {
        sequence += 1;
        let txn = MvccOperation::Txn(TxnRequest {
            compare: Vec::new(),
            success: [7, 3, 5]
                .into_iter()
                .map(|k| RequestOp::Put(PutRequest::new(key(k), value.clone())))
                .collect(),
            failure: Vec::new(),
        });
        machine.apply(&command(sequence, txn.clone()));
        memory.apply(&command(sequence, txn));
    }
    sequence += 1;
    let compact = MvccOperation::Compact(CompactionRequest {
        revision: machine.store().revision() - 10,
        physical: true,
    });
    machine.apply(&command(sequence, compact.clone()));
    memory.apply(&command(sequence, compact));
    assert!(generations.0.lock().unwrap().len() >= 2, "no reclaim");
    for state in [&machine, &memory] {
        let decoded: MvccMachine = postcard::from_bytes(&encoded(state)).unwrap();
        assert_eq!(observe(&decoded), observe(&memory));
        assert_eq!(decoded, memory);
    }
}

fn damaged(change: impl FnOnce(&mut Vec<u8>)) -> String {
    let (mut machine, generations) = file_machine();
    for (sequence, value) in ["one", "two"].into_iter().enumerate() {
        let put = MvccOperation::Put(PutRequest::new(key(sequence as u8), value));
        machine.apply(&command(sequence as u64 + 1, put));
    }
    generations.0.lock().unwrap().last().unwrap().damage(change);
    let read = machine.store().range(&everything());
    let error = read.expect_err("a damaged file was read as data");
    // The failure sticks: the node halts, and nothing more is written.
    let failure = machine.failure().expect("the failure is reported");
    let put = MvccOperation::Put(PutRequest::new(key(3), "three"));
    machine.apply(&command(3, put));
    assert!(machine.failure().is_some());
    format!("{error} / {failure}")
}

#[test]
fn a_flipped_bit_in_the_value_file_is_a_failure_not_data() {
    let message = damaged(|bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
    });
    assert!(message.contains("damaged"), "{message}");
}

#[test]
fn a_short_value_file_is_a_failure_not_data() {
    let message = damaged(|bytes| {
        let keep = bytes.len() - 2;
        bytes.truncate(keep);
    });
    assert!(
        message.contains("short") || message.contains("past the end"),
        "{message}"
    );
}

/// What the node encodes when it takes a checkpoint: the head, whose size must not depend
/// on the number of keys (the index is rebuilt from the records on restore), so the node
/// does no per-key work. Fails if the index (or a lease's key set) is put back in the head.
#[test]
fn a_checkpoints_head_does_not_grow_with_the_keys() {
    let head_after = |keys: u32| {
        let (mut machine, _generations) = file_machine();
        let grant = MvccOperation::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 1 });
        machine.apply(&command(1, grant));
        for index in 0..keys {
            let put = PutRequest {
                lease: 1,
                ..PutRequest::new(format!("key/{index:08}"), vec![1u8; 32])
            };
            machine.apply(&command(u64::from(index) + 2, MvccOperation::Put(put)));
        }
        let (head, tail) = machine.snapshot_parts().unwrap();
        let (_, tail_length) = tail.expect("records in a file make a tail");
        assert_eq!(tail_length, machine.store().record_bytes());
        let decoded: MvccMachine = postcard::from_bytes(&encoded(&machine)).unwrap();
        assert_eq!(observe(&decoded), observe(&machine));
        assert_eq!(decoded.store().key_count(), keys as usize);
        head.len()
    };
    let small = head_after(10);
    let large = head_after(20_000);
    // Only the varints of the revision and of the session's sequence numbers grow.
    assert!(
        large <= small + 8,
        "the head grew from {small} to {large} bytes with the keys"
    );
}

/// A snapshot whose records were damaged in transit or on disk does not decode (the index
/// is rebuilt from them, so a flipped bit must not become a wrong key or revision).
#[test]
fn a_damaged_record_in_a_snapshot_is_a_decode_error() {
    let (mut machine, _generations) = file_machine();
    for index in 0..20u8 {
        let put = MvccOperation::Put(PutRequest::new(key(index), vec![index; 40]));
        machine.apply(&command(u64::from(index) + 1, put));
    }
    let bytes = encoded(&machine);
    assert!(postcard::from_bytes::<MvccMachine>(&bytes).is_ok());
    // A byte of the last record's value (only its checksum tells), of its revision, then
    // a truncation.
    let last = bytes.len() - (44 + key(19).len() + 40);
    for at in [bytes.len() - 20, last + 12] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        assert!(
            postcard::from_bytes::<MvccMachine>(&flipped).is_err(),
            "{at}"
        );
    }
    let short = &bytes[..bytes.len() - 1];
    assert!(postcard::from_bytes::<MvccMachine>(short).is_err());
}
