//! Generated etcd-like histories: clients run against a reference store, each operation taking
//! effect at one instant inside its interval, so every history is linearizable; one mutated `ok`
//! result in a sequential history must then be rejected.
//!
//! `SYNOD_ETCD_BENCH_OPS=100000 cargo test --release -p synod-check --test etcd_generated -- \
//! --nocapture timing` times the checker on a history of that many operations (and writes it to
//! `SYNOD_ETCD_BENCH_OUT` if set, for `synod check --model etcd`); without it, the same test
//! runs on 2,000 operations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Value, json};
use synod_check::etcd::{EtcdEvent, EtcdFields, check_etcd, to_etcd_jsonl_line};
use synod_check::history::{Event, EventKind};
use synod_check::{Budget, CheckOptions, Verdict};

/// A small deterministic generator (xorshift64*), so a seed names a history.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One key in the reference store.
#[derive(Debug, Clone)]
struct Stored {
    value: String,
    mod_revision: u64,
    lease: Option<u64>,
}

/// The reference store: what a correct etcd does, one operation at a time.
#[derive(Debug, Default)]
struct Store {
    keys: BTreeMap<String, Stored>,
    revision: u64,
    leases: BTreeSet<u64>,
    next_lease: u64,
}

/// An operation a client asks for.
#[derive(Debug, Clone)]
enum Call {
    Get(String),
    Put(String, String, Option<u64>),
    Delete(String),
    Cas(String, Option<String>, String),
    Grant,
    Revoke(u64),
}

impl Store {
    /// Performs `call`: its `ok` value and fields, or `None` if etcd would refuse it (a lease
    /// that no longer exists).
    fn apply(&mut self, call: &Call) -> Option<(Value, EtcdFields)> {
        let mut fields = EtcdFields::default();
        let value = match call {
            Call::Get(key) => {
                let stored = self.keys.get(key);
                fields.mod_revision = Some(stored.map_or(0, |stored| stored.mod_revision));
                stored.map_or(Value::Null, |stored| json!(stored.value))
            }
            Call::Put(key, value, lease) => {
                if lease.is_some_and(|lease| !self.leases.contains(&lease)) {
                    return None;
                }
                self.revision += 1;
                self.keys.insert(
                    key.clone(),
                    Stored {
                        value: value.clone(),
                        mod_revision: self.revision,
                        lease: *lease,
                    },
                );
                json!(value)
            }
            Call::Delete(key) => {
                if self.keys.remove(key).is_some() {
                    self.revision += 1;
                    json!(1)
                } else {
                    json!(0)
                }
            }
            Call::Cas(key, expected, new) => {
                let current = self.keys.get(key).map(|stored| &stored.value);
                let holds = current == expected.as_ref();
                if holds {
                    self.revision += 1;
                    self.keys.insert(
                        key.clone(),
                        Stored {
                            value: new.clone(),
                            mod_revision: self.revision,
                            lease: None,
                        },
                    );
                }
                fields.succeeded = Some(holds);
                json!([expected, new])
            }
            Call::Grant => {
                self.next_lease += 1;
                self.leases.insert(self.next_lease);
                fields.lease = Some(json!(self.next_lease));
                return Some((json!(60), fields));
            }
            Call::Revoke(lease) => {
                if !self.leases.remove(lease) {
                    return None;
                }
                let before = self.keys.len();
                self.keys.retain(|_, stored| stored.lease != Some(*lease));
                if self.keys.len() != before {
                    self.revision += 1;
                }
                fields.lease = Some(json!(lease));
                Value::Null
            }
        };
        fields.revision = Some(self.revision);
        Some((value, fields))
    }
}

/// What a generated history looks like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    processes: u64,
    operations: usize,
    keys: u64,
    /// Keys `k0` up to this one may be attached to leases; the others never are.
    leased_keys: u64,
    /// Percent of calls that grant or revoke a lease (half each, while few leases are live).
    lease_percent: u64,
    fail_percent: u64,
    info_percent: u64,
}

/// At most this many leases are live at once in a generated history.
const LIVE_LEASES_MAX: usize = 3;

/// How a generated operation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Fail,
    InfoApplied,
    InfoNotApplied,
}

/// Where a client is.
enum Client {
    Idle,
    Invoked(Call, Fate),
    Applied(Call, Fate, Option<(Value, EtcdFields)>),
}

/// A history of `shape` from `seed`: random clients taking turns to invoke, take effect and
/// complete.
fn generate(shape: Shape, seed: u64) -> Vec<EtcdEvent> {
    let mut rng = Rng::new(seed);
    let mut store = Store::default();
    let mut clients: Vec<Client> = (0..shape.processes).map(|_| Client::Idle).collect();
    let mut events = Vec::new();
    let mut invoked = 0;
    let mut serial = 0u64;
    let event = |events: &Vec<EtcdEvent>, process, kind, call: &Call, value, fields| EtcdEvent {
        event: Event {
            process,
            kind,
            f: name(call).to_owned(),
            key: key(call).map(str::to_owned),
            value,
            time: events.len() as u64 * 10,
        },
        fields,
    };
    loop {
        let busy = clients.iter().any(|client| !matches!(client, Client::Idle));
        if invoked >= shape.operations && !busy {
            return events;
        }
        let process = rng.below(shape.processes);
        let client = &mut clients[process as usize];
        match std::mem::replace(client, Client::Idle) {
            Client::Idle if invoked < shape.operations => {
                invoked += 1;
                serial += 1;
                let call = choose_call(&mut rng, &store, shape, process, serial);
                let fate = if rng.percent(shape.fail_percent) {
                    Fate::Fail
                } else if rng.percent(shape.info_percent) {
                    if rng.percent(50) {
                        Fate::InfoApplied
                    } else {
                        Fate::InfoNotApplied
                    }
                } else {
                    Fate::Ok
                };
                let mut fields = EtcdFields::default();
                let value = match &call {
                    Call::Get(_) | Call::Delete(_) => Value::Null,
                    Call::Put(_, value, lease) => {
                        fields.lease = lease.map(|lease| json!(lease));
                        json!(value)
                    }
                    Call::Cas(_, expected, new) => json!([expected, new]),
                    Call::Grant => json!(60),
                    Call::Revoke(lease) => {
                        fields.lease = Some(json!(lease));
                        Value::Null
                    }
                };
                events.push(event(
                    &events,
                    process,
                    EventKind::Invoke,
                    &call,
                    value,
                    fields,
                ));
                *client = Client::Invoked(call, fate);
            }
            Client::Idle => {}
            Client::Invoked(call, fate) => {
                let result = match fate {
                    Fate::Ok | Fate::InfoApplied => store.apply(&call),
                    Fate::Fail | Fate::InfoNotApplied => None,
                };
                *client = Client::Applied(call, fate, result);
            }
            Client::Applied(call, fate, result) => {
                let (kind, value, fields) = match (fate, result) {
                    (Fate::Ok, Some((value, fields))) => (EventKind::Ok, value, fields),
                    // Refused by the store, or never tried: it did not happen.
                    (Fate::Ok | Fate::Fail, _) => {
                        (EventKind::Fail, Value::Null, EtcdFields::default())
                    }
                    (Fate::InfoApplied | Fate::InfoNotApplied, _) => {
                        (EventKind::Info, Value::Null, EtcdFields::default())
                    }
                };
                events.push(event(&events, process, kind, &call, value, fields));
            }
        }
    }
}

/// A random call, with unique values and, for a cas, an expectation that often holds.
fn choose_call(rng: &mut Rng, store: &Store, shape: Shape, process: u64, serial: u64) -> Call {
    let key_number = rng.below(shape.keys);
    let key = format!("k{key_number}");
    let value = format!("{process}.{serial}");
    let leases: Vec<u64> = store.leases.iter().copied().collect();
    if shape.leased_keys > 0 && rng.percent(shape.lease_percent) {
        if leases.len() < LIVE_LEASES_MAX && (leases.is_empty() || rng.percent(50)) {
            return Call::Grant;
        }
        return Call::Revoke(leases[rng.below(leases.len() as u64) as usize]);
    }
    match rng.below(90) {
        0..35 => Call::Get(key),
        35..60 => {
            let lease = (key_number < shape.leased_keys && !leases.is_empty() && rng.percent(50))
                .then(|| leases[rng.below(leases.len() as u64) as usize]);
            Call::Put(key, value, lease)
        }
        60..70 => Call::Delete(key),
        _ => {
            let expected = match rng.below(3) {
                0 => None,
                1 => Some("never written".to_owned()),
                _ => store.keys.get(&key).map(|stored| stored.value.clone()),
            };
            Call::Cas(key, expected, value)
        }
    }
}

fn name(call: &Call) -> &'static str {
    match call {
        Call::Get(_) => "get",
        Call::Put(..) => "put",
        Call::Delete(_) => "delete",
        Call::Cas(..) => "cas",
        Call::Grant => "lease-grant",
        Call::Revoke(_) => "lease-revoke",
    }
}

fn key(call: &Call) -> Option<&str> {
    match call {
        Call::Get(key) | Call::Put(key, ..) | Call::Delete(key) | Call::Cas(key, ..) => Some(key),
        Call::Grant | Call::Revoke(_) => None,
    }
}

fn verdict(events: &[EtcdEvent], partition: bool) -> Verdict {
    let options = CheckOptions {
        partition,
        ..CheckOptions::default()
    };
    check_etcd(events, &options)
        .expect("generated histories are well-formed")
        .verdict
}

/// One way to make a sequential history's `ok` result wrong that the checker can always see.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    /// A get reads a value nobody wrote.
    UnwrittenValue,
    /// A get reports the wrong mod_revision.
    ModRevision,
    /// A cas reports the other outcome.
    CasOutcome,
    /// A delete reports the other count.
    DeleteCount,
    /// A change reports the revision an earlier operation already reached.
    StaleRevision,
}

/// The mutations that apply to each `ok` event of a sequential history, as (event position,
/// mutation).
fn mutations(events: &[EtcdEvent]) -> Vec<(usize, Mutation)> {
    let mut found = Vec::new();
    let mut reached: Option<u64> = None;
    for (position, event) in events.iter().enumerate() {
        if event.event.kind != EventKind::Ok {
            continue;
        }
        let changed = match event.event.f.as_str() {
            "get" => {
                found.push((position, Mutation::UnwrittenValue));
                found.push((position, Mutation::ModRevision));
                false
            }
            "cas" => {
                found.push((position, Mutation::CasOutcome));
                event.fields.succeeded == Some(true)
            }
            "delete" => {
                found.push((position, Mutation::DeleteCount));
                event.event.value == json!(1)
            }
            "put" => true,
            _ => false,
        };
        if changed && reached.is_some() {
            found.push((position, Mutation::StaleRevision));
        }
        if let Some(revision) = event.fields.revision {
            reached = Some(reached.map_or(revision, |reached| reached.max(revision)));
        }
    }
    found
}

fn mutate(events: &mut [EtcdEvent], position: usize, mutation: Mutation) {
    let earlier = events[..position]
        .iter()
        .filter_map(|event| event.fields.revision)
        .max();
    let event = &mut events[position];
    match mutation {
        Mutation::UnwrittenValue => event.event.value = json!("#"),
        Mutation::ModRevision => {
            event.fields.mod_revision = event.fields.mod_revision.map(|revision| revision + 1);
        }
        Mutation::CasOutcome => event.fields.succeeded = event.fields.succeeded.map(|ok| !ok),
        Mutation::DeleteCount => {
            event.event.value = json!(1 - event.event.value.as_u64().unwrap_or(0));
        }
        Mutation::StaleRevision => event.fields.revision = earlier,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_histories_are_linearizable(
        seed in any::<u64>(),
        processes in 1..=5u64,
        keys in 1..=4u64,
        operations in 1..80usize,
    ) {
        let shape = Shape {
            processes,
            operations,
            keys,
            leased_keys: 2,
            lease_percent: 10,
            fail_percent: 10,
            info_percent: 15,
        };
        let events = generate(shape, seed);
        prop_assert_eq!(verdict(&events, true), Verdict::Linearizable);
        prop_assert_eq!(verdict(&events, false), Verdict::Linearizable);
    }

    #[test]
    fn one_wrong_result_in_a_sequential_history_is_rejected(
        seed in any::<u64>(),
        keys in 1..=3u64,
        operations in 1..60usize,
        choice in any::<prop::sample::Index>(),
    ) {
        let shape = Shape {
            processes: 1,
            operations,
            keys,
            leased_keys: 2,
            lease_percent: 10,
            fail_percent: 10,
            info_percent: 0,
        };
        let mut events = generate(shape, seed);
        prop_assert_eq!(verdict(&events, true), Verdict::Linearizable);
        let candidates = mutations(&events);
        prop_assume!(!candidates.is_empty());
        let (position, mutation) = candidates[choice.index(candidates.len())];
        mutate(&mut events, position, mutation);
        let by_key = verdict(&events, true);
        prop_assert!(
            matches!(by_key, Verdict::NotLinearizable(_)),
            "{:?} at event {} passed: {:?}", mutation, position, by_key
        );
        prop_assert!(matches!(verdict(&events, false), Verdict::NotLinearizable(_)));
    }
}

#[test]
fn timing() {
    let operations = std::env::var("SYNOD_ETCD_BENCH_OPS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(2_000);
    let shape = Shape {
        processes: 16,
        operations,
        keys: 100,
        leased_keys: 4,
        lease_percent: 1,
        fail_percent: 2,
        info_percent: 2,
    };
    let started = Instant::now();
    let events = generate(shape, 42);
    let generated = started.elapsed();
    if let Ok(path) = std::env::var("SYNOD_ETCD_BENCH_OUT") {
        let text: String = events
            .iter()
            .map(|event| to_etcd_jsonl_line(event) + "\n")
            .collect();
        std::fs::write(&path, text).expect("the output file is writable");
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    for threads in [1, threads] {
        let options = CheckOptions {
            threads,
            budget: Budget::default(),
            ..CheckOptions::default()
        };
        let started = Instant::now();
        let report = check_etcd(&events, &options).expect("well-formed");
        println!(
            "{operations} operations ({} events, generated in {generated:?}): {:?} in {:?} on {threads} \
             thread(s), {} partitions, {} states",
            events.len(),
            report.verdict,
            started.elapsed(),
            report.partitions,
            report.states_explored
        );
        assert_eq!(report.verdict, Verdict::Linearizable);
    }
}
