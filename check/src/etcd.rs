//! The etcd-like key-value model: `get`, `put`, `delete`, `cas` and leases, with cluster-wide
//! revisions.
//!
//! # The history vocabulary
//!
//! The events are the [history format](crate::history)'s, with extra fields that older readers
//! ignore: [`EtcdEvent`] reads them. Keys and values are strings, and every written value is
//! unique.
//!
//! | `f`            | invoke                                  | `ok`                                                       |
//! |----------------|-----------------------------------------|------------------------------------------------------------|
//! | `put`          | `value`: the value; `lease`: optional   | `revision`: the revision the put created                   |
//! | `get`          | `value`: `null`                         | `value`: read or `null`; `revision`: the header revision; `mod_revision`: the key's (0 if absent) |
//! | `delete`       | `value`: `null`                         | `value`: keys deleted (0 or 1); `revision`: the store's after it |
//! | `cas`          | `value`: `[expected, new]`              | `succeeded`: `true` or `false`; `revision`                 |
//! | `lease-grant`  | no `key`; `value`: the TTL in seconds   | `lease`: the lease's id                                    |
//! | `lease-revoke` | no `key`; `lease`: the id               | optionally `revision`                                      |
//! | `lease-keepalive` | no `key`; `lease`: the id            | `value`: the TTL granted again                             |
//! | `lease-expire` | no `key`; `lease`: the id (the checker adds these, see below) | never completes          |
//!
//! A `cas` is a transaction: if the key holds `expected` (or, when `expected` is `null`, if the
//! key is absent), put `new`; otherwise do nothing. Both answers are real outcomes. A
//! `lease-revoke` deletes every key whose last write attached it to the lease, atomically.
//! Revisions are cluster-wide: every operation that changes something creates the next one, and
//! one that changes nothing (a read, a failed `cas`, a `delete` of an absent key) reports the
//! store's revision at the time. `fail` means the operation did not happen; `info` (or no
//! completion) means it may have happened at any instant after its invoke, or never. An `ok`
//! without a `revision` is accepted; it just constrains less.
//!
//! # How it is checked
//!
//! Two passes, the cheap one first.
//!
//! 1. **Revisions across keys** (no search): over the `ok` operations, writes that changed
//!    something have distinct revisions; if operation A completed before operation B was
//!    invoked, B's revision is at least A's, and above it when B changed something; a `get` that
//!    observed revision `r` and `mod_revision` `m` rules out any write of that key that created a
//!    revision in `(m, r]`, and one that found the key absent at `r` rules out a known put being
//!    its last change by `r`; on a key whose every change has a known revision, a `cas` compared
//!    against the value of its last change before (or, for one that failed, at) its revision.
//! 2. **Linearizability per key** with the crate's search: each key is checked on its own,
//!    except that keys attached to a common lease are checked together with that lease's revokes
//!    (a revoke deletes them in one step). The state is, per key, the write that produced its
//!    value (so a `get` must match both the value and that write's revision) plus the revision of
//!    the partition's latest change, which each later change must exceed and each read must
//!    reach.
//!
//! Either pass's violation comes back as a [`Violation`] naming the operations, their revisions
//! and why they cannot be ordered, so [`crate::html::render_violation`] draws both kinds.
//!
//! Reads are taken to be linearizable ones (etcd's default), whose header revision is at least
//! every revision committed before they began; a serializable read may be older. Not modelled:
//! whether a put names a lease that exists, and what a keep-alive answers (only when it was
//! invoked matters, below).
//!
//! # Lease expiry
//!
//! Expiry is an internal event: no client asks for it, yet it deletes the lease's keys like a
//! revoke. The checker models it as a possible spontaneous revoke: for every lease granted `ok`
//! it adds a `lease-expire` operation that is invoked at the earliest instant the lease may
//! expire and never completes, so the search may place it at any later point, or nowhere. How
//! early that instant is comes from [`LeaseExpiry`]:
//!
//! - [`LeaseExpiry::AfterTtl`] (the default): a renewal (grant or keep-alive) that completed
//!   `ok` was applied before any expiry (else it would have found no lease), so the renewal
//!   the leader judged the lease by was proposed after that renewal's invoke; the leader,
//!   this one or a successor that counts a full TTL from its own promotion, waits a TTL on its
//!   clock. A clock running at most `d` fast and jumping ahead by at most `J` in all makes
//!   that at least `(ttl - J) / (1 + d)` of real time, so the lease cannot expire before
//!   `latest ok renewal's invoke + (ttl - J) / (1 + d)`. The default takes Synod's Raft
//!   assumption: `d` = 1 % ([`LEASE_CLOCK_DRIFT_PPM_DEFAULT`]) and clocks that never jump
//!   (`J` = 0); a simulation passes the jumps its nemesis may have made.
//! - [`LeaseExpiry::AnyTimeAfterGrant`]: for systems whose clocks nothing bounds.
//! - [`LeaseExpiry::Never`]: leases outlive the history; a leased key that vanishes without a
//!   delete or revoke is a violation.
//!
//! A key that vanishes before its lease's earliest expiry is a violation, and so is one read
//! after another key of the same lease was seen deleted by the expiry, since an expiry deletes
//! them all in one revision. Keep-alives (`lease-keepalive`, `lease` on the invoke) change no
//! key; an `ok` one moves its lease's earliest expiry later.
//!
//! # Example
//!
//! ```
//! use synod_check::etcd::{check_etcd_history, read_etcd_jsonl};
//! use synod_check::{Budget, Verdict};
//!
//! // The put created revision 5; a get that started after it reports an older store.
//! let history = r#"
//! {"process":1,"type":"invoke","f":"put","key":"a","value":"x","time":1}
//! {"process":1,"type":"ok","f":"put","key":"a","value":"x","time":2,"revision":5}
//! {"process":2,"type":"invoke","f":"get","key":"b","value":null,"time":3}
//! {"process":2,"type":"ok","f":"get","key":"b","value":null,"time":4,"revision":4,"mod_revision":0}
//! "#;
//! let events = read_etcd_jsonl(history.as_bytes(), "h.jsonl")?;
//! let Verdict::NotLinearizable(violation) = check_etcd_history(&events, Budget::default())? else {
//!     panic!("the revision went backwards");
//! };
//! assert!(violation.refusals[0].contains("observed revision 4, which is below revision 5"));
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::Bound;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::checker::{Budget, Verdict, Violation};
use crate::checker::{CheckOptions, CheckReport, check};
use crate::fast_hash::{FastHashMap, Interner};
use crate::history::pair_operations;
use crate::history::{Event, HistoryError, Operation, Outcome};
use crate::keyed_state::{ABSENT, CellStates, Values};
use crate::model::{Interpretation, Model, SequentialSpecification};

/// The model's name in messages.
const MODEL_NAME: &str = "etcd key-value";

/// The operation names the model has, for error messages.
const SUPPORTED_OPERATIONS: &str =
    "get, put, delete, cas, lease-grant, lease-keepalive, lease-revoke";

/// How many keys (and leases) a lease group's partition name lists before "N more".
const PARTITION_NAME_ITEMS_MAX: usize = 3;

/// The fields the etcd vocabulary adds to an event; each is absent unless the event has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdFields {
    /// On `ok`: the revision the operation created or observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// On a `get`'s `ok`: the key's mod_revision (0 if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    /// On a `cas`'s `ok`: whether the comparison held and the put happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// A lease id: on a `put`'s invoke, the lease to attach; on `lease-grant`'s `ok`, the lease
    /// granted; on `lease-revoke`, the lease revoked. Compared by its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Value>,
}

/// One event of an etcd-like history: the common fields and the etcd ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdEvent {
    /// The fields every history has.
    #[serde(flatten)]
    pub event: Event,
    /// The etcd vocabulary's fields.
    #[serde(flatten)]
    pub fields: EtcdFields,
}

impl From<Event> for EtcdEvent {
    /// An event without any etcd field.
    fn from(event: Event) -> EtcdEvent {
        EtcdEvent {
            event,
            fields: EtcdFields::default(),
        }
    }
}

/// One event as a JSON line (without the newline): the common fields in the history format's
/// order, then the etcd fields it has.
pub fn to_etcd_jsonl_line(event: &EtcdEvent) -> String {
    serde_json::to_string(event).expect("an event always serializes")
}

/// Reads an etcd-like JSON Lines history, keeping the etcd fields that
/// [`read_jsonl`](crate::history::read_jsonl) drops. Same rules: blank lines are skipped, a line over
/// [`EVENT_LINE_BYTES_MAX`] bytes or one that is not an event is an error naming its line.
pub fn read_etcd_jsonl<R: BufRead>(
    input: R,
    source_name: &str,
) -> Result<Vec<EtcdEvent>, HistoryError> {
    crate::history::read_json_lines(input, source_name)
}

/// Reads only the etcd fields of a JSON Lines history, one per event (blank lines skipped), to
/// go with the events [`read_jsonl`](crate::history::read_jsonl) reads: for
/// [`check_etcd_parts`], without a second copy of every event.
pub fn read_etcd_fields<R: BufRead>(
    input: R,
    source_name: &str,
) -> Result<Vec<EtcdFields>, HistoryError> {
    crate::history::read_json_lines(input, source_name)
}

/// [`read_etcd_fields`] from a file.
pub fn read_etcd_fields_file(path: &Path) -> Result<Vec<EtcdFields>, HistoryError> {
    let file = File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    crate::history::read_json_lines(BufReader::new(file), &path.display().to_string())
}

/// Reads an etcd-like JSON Lines history from a file; an empty one is an error.
pub fn read_etcd_jsonl_file(path: &Path) -> Result<Vec<EtcdEvent>, HistoryError> {
    let file = File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    let source_name = path.display().to_string();
    let events = read_etcd_jsonl(BufReader::new(file), &source_name)?;
    if events.is_empty() {
        return Err(HistoryError::NoEvents { source_name });
    }
    Ok(events)
}

/// Checks whether an etcd-like history is linearizable, key by key (lease groups together) on
/// the calling thread, within `budget`, with the default [`LeaseExpiry`]. Like
/// [`check_kv_history`](crate::kv::check_kv_history), a malformed history is an error rather
/// than a verdict.
pub fn check_etcd_history(events: &[EtcdEvent], budget: Budget) -> Result<Verdict, HistoryError> {
    check_etcd_history_with(
        events,
        &EtcdOptions {
            budget,
            ..EtcdOptions::default()
        },
    )
}

/// [`check_etcd_history`] with every etcd option.
pub fn check_etcd_history_with(
    events: &[EtcdEvent],
    options: &EtcdOptions,
) -> Result<Verdict, HistoryError> {
    let (plain, fields): (Vec<Event>, Vec<EtcdFields>) = events
        .iter()
        .map(|event| (event.event.clone(), event.fields.clone()))
        .unzip();
    let check_options = CheckOptions {
        budget: options.budget,
        ..CheckOptions::default()
    };
    Ok(check_etcd_parts_with(&plain, &fields, &check_options, options.lease_expiry)?.verdict)
}

/// When a lease may expire on its own, as the checker assumes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseExpiry {
    /// Leases never expire: a key attached to one vanishes only by a delete or a revoke.
    Never,
    /// A lease may expire at any instant after its grant was invoked.
    AnyTimeAfterGrant,
    /// A lease may expire only once a TTL has passed since the invoke of its last renewal
    /// (grant or keep-alive) that completed `ok`, measured by a leader clock that runs at
    /// most `drift_ppm` parts per million fast and jumped ahead by at most `clock_jumps`
    /// in all: no earlier than `invoke + (ttl - clock_jumps) / (1 + drift)` on the
    /// history's clock.
    AfterTtl {
        /// How much faster than real time a leader's clock may run, in parts per million.
        drift_ppm: u32,
        /// The most a leader's clock may have jumped ahead in the history, in all.
        clock_jumps: std::time::Duration,
    },
}

/// The clock-drift bound Synod's Raft assumes ([`LeaseExpiry::default`] uses it): 1 %.
pub const LEASE_CLOCK_DRIFT_PPM_DEFAULT: u32 = 10_000;

impl Default for LeaseExpiry {
    /// Expiry after a TTL at Synod's assumed drift bound, with clocks that never jump.
    fn default() -> LeaseExpiry {
        LeaseExpiry::AfterTtl {
            drift_ppm: LEASE_CLOCK_DRIFT_PPM_DEFAULT,
            clock_jumps: std::time::Duration::ZERO,
        }
    }
}

/// How to check an etcd-like history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdOptions {
    /// When to give up.
    pub budget: Budget,
    /// When leases may expire.
    pub lease_expiry: LeaseExpiry,
}

/// The name of the operation the checker adds for a lease's possible expiry.
pub const LEASE_EXPIRE: &str = "lease-expire";

/// The earliest history time at which `lease` may expire under `expiry`, from its `ok`
/// grant (TTL `ttl_seconds`, invoked at `granted_at`) and its latest renewal invoke.
fn earliest_expiry(expiry: LeaseExpiry, granted_at: u64, renewed_at: u64, ttl: u64) -> u64 {
    match expiry {
        LeaseExpiry::Never => u64::MAX,
        LeaseExpiry::AnyTimeAfterGrant => granted_at,
        LeaseExpiry::AfterTtl {
            drift_ppm,
            clock_jumps,
        } => {
            let ttl_nanos = u128::from(ttl) * 1_000_000_000;
            let left = ttl_nanos.saturating_sub(clock_jumps.as_nanos());
            let real = left * 1_000_000 / (1_000_000 + u128::from(drift_ppm));
            renewed_at.saturating_add(u64::try_from(real).unwrap_or(u64::MAX))
        }
    }
}

/// A history's events and, apart, their etcd fields.
type SplitHistory = (Vec<Event>, Vec<EtcdFields>);

/// The history with an `info` [`LEASE_EXPIRE`] operation added for every lease granted `ok`,
/// invoked at the earliest instant `expiry` allows (a lease that may never expire gets none):
/// the expiry is an internal event that may happen at any point after that, or never, which
/// is exactly what an operation without completion means. `None` if nothing was added.
fn with_expiries(
    plain: &[Event],
    fields: &[EtcdFields],
    expiry: LeaseExpiry,
) -> Result<Option<SplitHistory>, HistoryError> {
    if expiry == LeaseExpiry::Never {
        return Ok(None);
    }
    let operations = pair_operations(plain)?;
    let fields_of = |index: usize| fields.get(index).unwrap_or(&NO_FIELDS);
    // Per lease (its JSON text): the lease value, the grant's invoke time and TTL, and the
    // latest invoke of an `ok` renewal.
    let mut leases: BTreeMap<String, (Value, u64, u64, u64)> = BTreeMap::new();
    for operation in &operations {
        if operation.outcome != Outcome::Ok {
            continue;
        }
        let Some(complete) = operation.complete_index else {
            continue;
        };
        let lease = fields_of(complete)
            .lease
            .clone()
            .or_else(|| fields_of(operation.invoke_index).lease.clone())
            .filter(|lease| !lease.is_null());
        let Some(lease) = lease else { continue };
        let text = lease.to_string();
        match operation.f.as_str() {
            "lease-grant" => {
                // A TTL the history does not give as a number counts as none at all.
                let ttl = operation.input.as_u64().unwrap_or(0);
                let entry = leases.entry(text).or_insert((
                    lease,
                    operation.invoke_time,
                    operation.invoke_time,
                    ttl,
                ));
                entry.1 = operation.invoke_time;
                entry.2 = entry.2.max(operation.invoke_time);
                entry.3 = ttl;
            }
            "lease-keepalive" => {
                if let Some(entry) = leases.get_mut(&text) {
                    entry.2 = entry.2.max(operation.invoke_time);
                }
            }
            _ => {}
        }
    }
    if leases.is_empty() {
        return Ok(None);
    }
    let mut expiries: Vec<(u64, Value)> = leases
        .into_values()
        .map(|(lease, granted_at, renewed_at, ttl)| {
            (earliest_expiry(expiry, granted_at, renewed_at, ttl), lease)
        })
        .filter(|(at, _)| *at != u64::MAX)
        .collect();
    expiries.sort_by_key(|(at, _)| *at);
    let first_process = plain
        .iter()
        .map(|event| event.process)
        .max()
        .map_or(0, |process| process.saturating_add(1));
    let mut events = Vec::with_capacity(plain.len() + expiries.len());
    let mut all_fields = Vec::with_capacity(plain.len() + expiries.len());
    let mut pending = expiries.into_iter().enumerate().peekable();
    for (index, event) in plain.iter().enumerate() {
        // An expiry goes before the first event at or after its earliest instant: operations
        // that completed before that instant come before it in real time.
        while let Some((number, (at, lease))) = pending.next_if(|(_, (at, _))| *at <= event.time) {
            events.push(expiry_event(first_process + number as u64, at));
            all_fields.push(EtcdFields {
                lease: Some(lease),
                ..EtcdFields::default()
            });
        }
        events.push(event.clone());
        all_fields.push(fields_of(index).clone());
    }
    // Expiries after the last event could only come after every operation: they explain
    // nothing, so they are left out.
    Ok(Some((events, all_fields)))
}

/// The invoke of a possible lease expiry at `time`.
fn expiry_event(process: u64, time: u64) -> Event {
    Event {
        process,
        kind: crate::history::EventKind::Invoke,
        f: LEASE_EXPIRE.to_owned(),
        key: None,
        value: Value::Null,
        time,
    }
}

/// Checks an etcd-like history: the revision pass, then (if it finds nothing) the search of each
/// partition, as [`check`] does for the other models.
pub fn check_etcd(
    events: &[EtcdEvent],
    options: &CheckOptions,
) -> Result<CheckReport, HistoryError> {
    let (plain, fields): (Vec<Event>, Vec<EtcdFields>) = events
        .iter()
        .map(|event| (event.event.clone(), event.fields.clone()))
        .unzip();
    check_etcd_parts(&plain, &fields, options)
}

/// [`check_etcd`] for a history held as its events and, apart, their etcd fields: `fields[i]`
/// belongs to `events[i]`, and a missing entry counts as no etcd field.
pub fn check_etcd_parts(
    plain: &[Event],
    fields: &[EtcdFields],
    options: &CheckOptions,
) -> Result<CheckReport, HistoryError> {
    check_etcd_parts_with(plain, fields, options, LeaseExpiry::default())
}

/// [`check_etcd_parts`] with leases expiring as `lease_expiry` says.
pub fn check_etcd_parts_with(
    plain: &[Event],
    fields: &[EtcdFields],
    options: &CheckOptions,
    lease_expiry: LeaseExpiry,
) -> Result<CheckReport, HistoryError> {
    let augmented = with_expiries(plain, fields, lease_expiry)?;
    let (plain, fields) = match &augmented {
        Some((events, fields)) => (events.as_slice(), fields.as_slice()),
        None => (plain, fields),
    };
    let (model, operations) = EtcdModel::build(plain, fields)?;
    if let Some(violation) = revision_violation(&operations, &model.commands) {
        return Ok(CheckReport {
            verdict: Verdict::NotLinearizable(violation),
            operations: operations.len(),
            partitions: if options.partition {
                model.partition_names.len()
            } else {
                1
            },
            states_explored: 0,
        });
    }
    // The search pairs the events again; one copy of the operations at a time is enough.
    drop(operations);
    check(&model, plain, options)
}

/// One etcd operation as the model reads it; `None` revisions and outcomes are unknown (the
/// operation ended `info`, or its `ok` did not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdCommand {
    /// A read of `key` that found `read` (`None`: absent).
    Get {
        /// The key.
        key: String,
        /// The value read.
        read: Option<String>,
        /// The key's mod_revision as reported.
        mod_revision: Option<u64>,
        /// The store revision the read observed.
        revision: Option<u64>,
    },
    /// Sets `key` to `value`, attached to `lease` if any.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The lease's JSON text, if the put attaches one.
        lease: Option<String>,
        /// The revision the put created.
        revision: Option<u64>,
    },
    /// Deletes `key`.
    Delete {
        /// The key.
        key: String,
        /// Whether it deleted the key (`ok` value 1) or found nothing (0).
        deleted: Option<bool>,
        /// The store revision after it.
        revision: Option<u64>,
    },
    /// If `key` holds `expected` (absent when `None`), sets it to `new`.
    Cas {
        /// The key.
        key: String,
        /// The value compared with; `None` requires the key to be absent.
        expected: Option<String>,
        /// The value put when the comparison holds.
        new: String,
        /// Whether the comparison held.
        succeeded: Option<bool>,
        /// The revision created (succeeded) or observed (not).
        revision: Option<u64>,
    },
    /// Deletes every key attached to `lease`, atomically.
    Revoke {
        /// The lease's JSON text.
        lease: String,
        /// The revision after it, if reported.
        revision: Option<u64>,
    },
}

impl EtcdCommand {
    /// The key it acts on (none for a revoke).
    fn key(&self) -> Option<&str> {
        match self {
            EtcdCommand::Get { key, .. }
            | EtcdCommand::Put { key, .. }
            | EtcdCommand::Delete { key, .. }
            | EtcdCommand::Cas { key, .. } => Some(key),
            EtcdCommand::Revoke { .. } => None,
        }
    }

    /// Its revision, if known.
    fn revision(&self) -> Option<u64> {
        match self {
            EtcdCommand::Get { revision, .. }
            | EtcdCommand::Put { revision, .. }
            | EtcdCommand::Delete { revision, .. }
            | EtcdCommand::Cas { revision, .. }
            | EtcdCommand::Revoke { revision, .. } => *revision,
        }
    }

    /// Whether it is known to have changed something (and so to have created its revision).
    fn changed(&self) -> bool {
        match self {
            EtcdCommand::Put { .. } => true,
            EtcdCommand::Delete { deleted, .. } => *deleted == Some(true),
            EtcdCommand::Cas { succeeded, .. } => *succeeded == Some(true),
            EtcdCommand::Get { .. } | EtcdCommand::Revoke { .. } => false,
        }
    }
}

/// The etcd-like model for one history: it knows each operation's etcd fields and which keys
/// share a lease, so it is built from the history it checks ([`check_etcd`] does that).
#[derive(Debug)]
pub struct EtcdModel {
    /// Each operation's command (`None`: it constrains nothing), in invoke order.
    commands: Vec<Option<EtcdCommand>>,
    /// Each operation's partition, as an index into `partition_names`.
    partition_of: Vec<u32>,
    /// The partitions' names.
    partition_names: Vec<String>,
    /// Each operation's process and completion index, to recognize it.
    identities: Vec<(u64, Option<usize>)>,
    /// For each event index, the position of the operation invoked there (`u32::MAX`: none).
    invoked_at: Vec<u32>,
}

impl EtcdModel {
    /// Reads and validates a history's operations and groups keys by lease.
    pub fn new(events: &[EtcdEvent]) -> Result<EtcdModel, HistoryError> {
        let (plain, fields): (Vec<Event>, Vec<EtcdFields>) = events
            .iter()
            .map(|event| (event.event.clone(), event.fields.clone()))
            .unzip();
        Ok(EtcdModel::build(&plain, &fields)?.0)
    }

    /// The model and the history's operations, from its events and their etcd fields.
    fn build(
        plain: &[Event],
        fields: &[EtcdFields],
    ) -> Result<(EtcdModel, Vec<Operation>), HistoryError> {
        let operations = pair_operations(plain)?;
        let fields_of = |index: usize| fields.get(index).unwrap_or(&NO_FIELDS);
        let mut commands = Vec::with_capacity(operations.len());
        for operation in &operations {
            commands.push(read_command(
                operation,
                fields_of(operation.invoke_index),
                operation.complete_index.map(fields_of),
            )?);
        }
        let (partition_of, partition_names) = lease_groups(&operations, &fields_of);
        let mut invoked_at = vec![u32::MAX; plain.len()];
        for (position, operation) in operations.iter().enumerate() {
            invoked_at[operation.invoke_index] =
                u32::try_from(position).expect("fewer than 2^32 operations");
        }
        let identities = operations
            .iter()
            .map(|operation| (operation.process, operation.complete_index))
            .collect();
        let model = EtcdModel {
            commands,
            partition_of,
            partition_names,
            identities,
            invoked_at,
        };
        Ok((model, operations))
    }
}

/// Reads one operation: its command, or `None` if it constrains nothing.
fn read_command(
    operation: &Operation,
    invoke_fields: &EtcdFields,
    completion_fields: Option<&EtcdFields>,
) -> Result<Option<EtcdCommand>, HistoryError> {
    let index = operation.invoke_index;
    let complete_index = operation.complete_index.unwrap_or(index);
    let invalid = |index, message: String| HistoryError::InvalidValue {
        index,
        f: operation.f.clone(),
        message,
    };
    let ok = operation.outcome == Outcome::Ok;
    let done = completion_fields.filter(|_| ok);
    let revision = done.and_then(|fields| fields.revision);
    let key = || {
        operation
            .key
            .clone()
            .ok_or_else(|| HistoryError::MissingKey {
                index,
                f: operation.f.clone(),
            })
    };
    let command = match operation.f.as_str() {
        "get" => {
            let key = key()?;
            let Some(output) = &operation.output else {
                return Ok(None);
            };
            let read = match output {
                Value::Null => None,
                Value::String(read) => Some(read.clone()),
                other => {
                    return Err(invalid(
                        complete_index,
                        format!("result must be the string read or null, found {other}"),
                    ));
                }
            };
            EtcdCommand::Get {
                key,
                read,
                mod_revision: done.and_then(|fields| fields.mod_revision),
                revision,
            }
        }
        "put" => {
            let key = key()?;
            let Value::String(value) = &operation.input else {
                return Err(invalid(
                    index,
                    format!(
                        "argument must be the string to put, found {}",
                        operation.input
                    ),
                ));
            };
            EtcdCommand::Put {
                key,
                value: value.clone(),
                lease: lease_text(invoke_fields.lease.as_ref()),
                revision,
            }
        }
        "delete" => {
            let key = key()?;
            let deleted = match &operation.output {
                None => None,
                Some(count) => match count.as_u64() {
                    Some(0) => Some(false),
                    Some(1) => Some(true),
                    _ => {
                        return Err(invalid(
                            complete_index,
                            format!(
                                "result must be the number of keys deleted, 0 or 1, found {count}"
                            ),
                        ));
                    }
                },
            };
            EtcdCommand::Delete {
                key,
                deleted,
                revision,
            }
        }
        "cas" => {
            let key = key()?;
            let (expected, new) = match operation.input.as_array().map(Vec::as_slice) {
                Some(
                    [
                        expected @ (Value::Null | Value::String(_)),
                        Value::String(new),
                    ],
                ) => (expected.as_str().map(str::to_owned), new.clone()),
                _ => {
                    return Err(invalid(
                        index,
                        format!(
                            "argument must be [expected, new] with expected a string or null and \
                             new a string, found {}",
                            operation.input
                        ),
                    ));
                }
            };
            let succeeded = match done {
                None => None,
                Some(fields) => Some(fields.succeeded.ok_or_else(|| {
                    invalid(
                        complete_index,
                        "ok needs \"succeeded\": true or false (both are real outcomes)".to_owned(),
                    )
                })?),
            };
            EtcdCommand::Cas {
                key,
                expected,
                new,
                succeeded,
                revision,
            }
        }
        // A grant creates nothing a read can see, and a renewal changes no key.
        "lease-grant" | "lease-keepalive" => return Ok(None),
        "lease-revoke" | LEASE_EXPIRE => {
            let lease = lease_text(invoke_fields.lease.as_ref())
                .or_else(|| lease_text(completion_fields.and_then(|f| f.lease.as_ref())))
                .ok_or_else(|| invalid(index, "needs the \"lease\" it revokes".to_owned()))?;
            EtcdCommand::Revoke { lease, revision }
        }
        _ => {
            return Err(HistoryError::UnsupportedOperation {
                index,
                model: MODEL_NAME,
                f: operation.f.clone(),
                supported: SUPPORTED_OPERATIONS,
            });
        }
    };
    // A failed operation never happened, so it constrains nothing.
    Ok(Some(command).filter(|_| operation.outcome != Outcome::Fail))
}

/// A lease id's JSON text, or `None` for none (absent or `null`).
fn lease_text(lease: Option<&Value>) -> Option<String> {
    lease
        .filter(|lease| !lease.is_null())
        .map(|lease| lease.to_string())
}

/// Each operation's partition: its key, except that keys attached to a common lease (and that
/// lease's grants and revokes) share one.
fn lease_groups<'a>(
    operations: &[Operation],
    fields_of: &impl Fn(usize) -> &'a EtcdFields,
) -> (Vec<u32>, Vec<String>) {
    /// Union-find over keys and leases.
    #[derive(Default)]
    struct Groups<'a> {
        keys: HashMap<&'a str, usize>,
        leases: HashMap<String, usize>,
        parent: Vec<usize>,
    }
    impl Groups<'_> {
        fn root(&mut self, mut node: usize) -> usize {
            while self.parent[node] != node {
                self.parent[node] = self.parent[self.parent[node]];
                node = self.parent[node];
            }
            node
        }
    }
    fn fresh(parent: &mut Vec<usize>) -> usize {
        parent.push(parent.len());
        parent.len() - 1
    }
    let mut groups = Groups::default();
    let mut node_of_operation = Vec::with_capacity(operations.len());
    for operation in operations {
        let key_node = operation.key.as_deref().map(|key| {
            *groups
                .keys
                .entry(key)
                .or_insert_with(|| fresh(&mut groups.parent))
        });
        let invoke = fields_of(operation.invoke_index);
        let completion = operation.complete_index.map(fields_of);
        let lease = lease_text(invoke.lease.as_ref())
            .or_else(|| lease_text(completion.and_then(|fields| fields.lease.as_ref())));
        let lease_node = lease.map(|lease| {
            *groups
                .leases
                .entry(lease)
                .or_insert_with(|| fresh(&mut groups.parent))
        });
        if let (Some(key_node), Some(lease_node)) = (key_node, lease_node) {
            let (a, b) = (groups.root(key_node), groups.root(lease_node));
            groups.parent[a] = b;
        }
        node_of_operation.push(key_node.or(lease_node));
    }
    // Name each group after its keys, in order.
    let mut members: BTreeMap<usize, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    let keys: Vec<(&str, usize)> = groups.keys.iter().map(|(&key, &id)| (key, id)).collect();
    for (key, id) in keys {
        let root = groups.root(id);
        members.entry(root).or_default().0.push(key);
    }
    let leases: Vec<(String, usize)> = groups
        .leases
        .iter()
        .map(|(lease, &id)| (lease.clone(), id))
        .collect();
    for (lease, id) in &leases {
        let root = groups.root(*id);
        members.entry(root).or_default().1.push(lease);
    }
    // Each group's name, and an id per distinct name (lease-less groups share the empty one).
    let mut names: Vec<String> = Vec::new();
    let mut id_of_name: BTreeMap<String, u32> = BTreeMap::new();
    let mut id_of_name_mut = |name: String| {
        *id_of_name.entry(name).or_insert_with_key(|name| {
            names.push(name.clone());
            (names.len() - 1) as u32
        })
    };
    let group_ids: BTreeMap<usize, u32> = members
        .into_iter()
        .map(|(group, (mut keys, mut leases))| {
            keys.sort_unstable();
            leases.sort_unstable();
            (group, id_of_name_mut(partition_name(&keys, &leases)))
        })
        .collect();
    let partition_of = node_of_operation
        .into_iter()
        .map(|node| match node {
            Some(node) => group_ids[&groups.root(node)],
            // Neither key nor lease: a grant whose answer never came; it constrains nothing.
            None => id_of_name_mut(String::new()),
        })
        .collect();
    (partition_of, names)
}

/// A partition's name: its one key, or its keys and the leases joining them (a few of each).
fn partition_name(keys: &[&str], leases: &[&str]) -> String {
    /// The first few names, then how many more there are.
    fn some_of(names: impl Iterator<Item = String>, count: usize) -> String {
        let mut shown: Vec<String> = names.take(PARTITION_NAME_ITEMS_MAX).collect();
        if count > PARTITION_NAME_ITEMS_MAX {
            shown.push(format!("{} more", count - PARTITION_NAME_ITEMS_MAX));
        }
        shown.join(", ")
    }
    match keys {
        [key] => (*key).to_owned(),
        // Grants and revokes of leases no key was attached to: they constrain nothing, and one
        // shared partition keeps them from multiplying the partitions.
        [] => String::new(),
        keys => format!(
            "{} (lease {})",
            some_of(keys.iter().map(|key| (*key).to_owned()), keys.len()),
            some_of(leases.iter().map(|lease| (*lease).to_owned()), leases.len())
        ),
    }
}

impl Model for EtcdModel {
    type Command = EtcdCommand;
    type Specification = EtcdSpecification;

    fn name(&self) -> &'static str {
        MODEL_NAME
    }

    fn interpret(
        &self,
        operation: &Operation,
    ) -> Result<Interpretation<EtcdCommand>, HistoryError> {
        let position = self
            .invoked_at
            .get(operation.invoke_index)
            .map(|&position| position as usize)
            .filter(|&position| {
                self.identities.get(position)
                    == Some(&(operation.process, operation.complete_index))
            })
            .ok_or_else(|| HistoryError::InvalidValue {
                index: operation.invoke_index,
                f: operation.f.clone(),
                message: "is not an operation of the history this model was built from".to_owned(),
            })?;
        Ok(Interpretation {
            partition: self.partition_names[self.partition_of[position] as usize].clone(),
            command: self.commands[position].clone(),
        })
    }

    fn specification(&self, commands: &[&EtcdCommand]) -> (EtcdSpecification, Vec<EtcdInput>) {
        let mut cells: FastHashMap<&str, u32> = FastHashMap::default();
        let mut keys = Vec::new();
        let mut values = Values::default();
        let mut leases = Interner::default();
        // Writer 0 stands for "absent".
        let mut writers = vec![Writer {
            value: ABSENT,
            revision: Some(0),
            lease: NO_LEASE,
        }];
        let mut lease_id = |lease: &Option<String>| {
            lease
                .as_deref()
                .map_or(NO_LEASE, |lease| leases.intern(lease) + 1)
        };
        let mut inputs = Vec::with_capacity(commands.len());
        for command in commands {
            let cell = command.key().map(|key| {
                *cells.entry(key).or_insert_with(|| {
                    keys.push(key.to_owned());
                    (keys.len() - 1) as u32
                })
            });
            let cell = cell.unwrap_or(0);
            let mut writer = |value: u32, revision, lease| {
                writers.push(Writer {
                    value,
                    revision,
                    lease,
                });
                (writers.len() - 1) as u32
            };
            inputs.push(match command {
                EtcdCommand::Get {
                    read,
                    mod_revision,
                    revision,
                    ..
                } => EtcdInput::Get {
                    cell,
                    value: read.as_deref().map_or(ABSENT, |read| values.intern(read)),
                    mod_revision: *mod_revision,
                    revision: *revision,
                },
                EtcdCommand::Put {
                    value,
                    lease,
                    revision,
                    ..
                } => {
                    let lease = lease_id(lease);
                    EtcdInput::Put {
                        cell,
                        writer: writer(values.intern(value), *revision, lease),
                        revision: *revision,
                    }
                }
                EtcdCommand::Delete {
                    deleted, revision, ..
                } => EtcdInput::Delete {
                    cell,
                    deleted: *deleted,
                    revision: *revision,
                },
                EtcdCommand::Cas {
                    expected,
                    new,
                    succeeded,
                    revision,
                    ..
                } => {
                    // A cas that did not succeed writes nothing, so its writer is never stored.
                    let new_revision = revision.filter(|_| *succeeded == Some(true));
                    let expected = expected
                        .as_deref()
                        .map_or(ABSENT, |expected| values.intern(expected));
                    let new = values.intern(new);
                    EtcdInput::Cas {
                        cell,
                        expected,
                        writer: writer(new, new_revision, NO_LEASE),
                        succeeded: *succeeded,
                        revision: *revision,
                    }
                }
                EtcdCommand::Revoke { lease, revision } => EtcdInput::Revoke {
                    lease: lease_id(&Some(lease.clone())),
                    revision: *revision,
                },
            });
        }
        let specification = EtcdSpecification {
            states: CellStates::new(keys.len()),
            keys,
            values,
            writers,
        };
        (specification, inputs)
    }
}

/// The fields of an event that has none.
static NO_FIELDS: EtcdFields = EtcdFields {
    revision: None,
    mod_revision: None,
    succeeded: None,
    lease: None,
};

/// The lease id of a write that attached none.
const NO_LEASE: u32 = 0;

/// A write that can be a key's current value.
#[derive(Debug, Clone, Copy)]
struct Writer {
    /// The value id it wrote.
    value: u32,
    /// The revision it created, if known.
    revision: Option<u64>,
    /// The lease it attached the key to ([`NO_LEASE`] if none).
    lease: u32,
}

/// An etcd command compiled for the search: keys are cells, values and writes are ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdInput {
    /// Reads `value` with `mod_revision` from `cell` at store revision `revision`.
    Get {
        /// The key's cell.
        cell: u32,
        /// The value id read.
        value: u32,
        /// The key's mod_revision as reported.
        mod_revision: Option<u64>,
        /// The store revision observed.
        revision: Option<u64>,
    },
    /// Makes `writer` the cell's current write.
    Put {
        /// The key's cell.
        cell: u32,
        /// The write's id.
        writer: u32,
        /// The revision created.
        revision: Option<u64>,
    },
    /// Empties the cell.
    Delete {
        /// The key's cell.
        cell: u32,
        /// Whether it found the key (`None`: unknown, as for `info`).
        deleted: Option<bool>,
        /// The store revision after it.
        revision: Option<u64>,
    },
    /// Makes `writer` current if the cell holds `expected`.
    Cas {
        /// The key's cell.
        cell: u32,
        /// The value id compared with (the absent value, id 0: the key must be absent).
        expected: u32,
        /// The write's id, current if the comparison holds.
        writer: u32,
        /// Whether the comparison held (`None`: unknown).
        succeeded: Option<bool>,
        /// The revision created or observed.
        revision: Option<u64>,
    },
    /// Empties every cell whose write attached `lease`.
    Revoke {
        /// The lease id.
        lease: u32,
        /// The revision after it.
        revision: Option<u64>,
    },
}

/// The state of one partition: its keys' current writes and the revision of its latest change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EtcdState {
    /// The [`CellStates`] id of the cells' writer ids.
    cells: u32,
    /// The largest revision created by a change linearized so far (0 before any). Nearly a
    /// function of the set of linearized operations (only whether a revoke deleted anything
    /// depends on the order), so it hardly multiplies the configurations.
    revision: u64,
}

/// The sequential etcd store over one partition's keys.
#[derive(Debug)]
pub struct EtcdSpecification {
    /// The key of each cell.
    keys: Vec<String>,
    /// Interned values.
    values: Values,
    /// Every write, by id; 0 is "absent".
    writers: Vec<Writer>,
    /// The cells' states, over writer ids.
    states: CellStates,
}

/// Why a step is refused, or `None` if it fits; shared by `step` and `explain_refusal`.
enum Refusal {
    /// A read saw another value.
    Value,
    /// A read saw another mod_revision.
    ModRevision,
    /// A change's revision is not above the partition's latest change.
    ChangeRevision,
    /// A read's revision is below the partition's latest change.
    ReadRevision,
    /// A cas reported the comparison's wrong outcome.
    Comparison,
    /// A delete reported the wrong count.
    DeleteCount,
}

impl EtcdSpecification {
    /// The writer current in `cell`.
    fn writer(&self, state: &EtcdState, cell: u32) -> Writer {
        self.writers[self.states.get(state.cells, cell) as usize]
    }

    /// A value id as JSON, `null` for absent.
    fn value_json(&self, value: u32) -> String {
        self.values
            .resolve(value)
            .map_or_else(|| "null".to_owned(), |text| Value::from(text).to_string())
    }

    /// A cell's current contents for people: `"x" (mod_revision 5)` or `absent`.
    fn describe_cell(&self, state: &EtcdState, cell: u32) -> String {
        let writer = self.writer(state, cell);
        match (self.values.resolve(writer.value), writer.revision) {
            (None, _) => "absent".to_owned(),
            (Some(text), Some(revision)) => {
                format!("{} (mod_revision {revision})", Value::from(text))
            }
            (Some(text), None) => format!("{} (mod_revision unknown)", Value::from(text)),
        }
    }

    /// Why `input` cannot come next in `state`, or `None` if it can.
    fn refusal(&self, state: &EtcdState, input: &EtcdInput) -> Option<Refusal> {
        // A change must create a revision above every change before it; anything else must
        // observe at least the latest.
        let change = |revision: Option<u64>| {
            revision
                .filter(|&revision| revision <= state.revision)
                .map(|_| Refusal::ChangeRevision)
        };
        let observe = |revision: Option<u64>| {
            revision
                .filter(|&revision| revision < state.revision)
                .map(|_| Refusal::ReadRevision)
        };
        match *input {
            EtcdInput::Get {
                cell,
                value,
                mod_revision,
                revision,
            } => {
                let writer = self.writer(state, cell);
                if writer.value != value {
                    return Some(Refusal::Value);
                }
                let mod_matches = match (mod_revision, writer.revision) {
                    (Some(reported), Some(actual)) => reported == actual,
                    // A value whose write's revision is unknown was still written: not 0.
                    (Some(reported), None) => reported != 0,
                    (None, _) => true,
                };
                if !mod_matches {
                    return Some(Refusal::ModRevision);
                }
                observe(revision)
            }
            EtcdInput::Put { revision, .. } => change(revision),
            EtcdInput::Delete {
                cell,
                deleted,
                revision,
            } => {
                let present = self.writer(state, cell).value != ABSENT;
                match deleted {
                    Some(deleted) if deleted != present => Some(Refusal::DeleteCount),
                    Some(true) => change(revision),
                    Some(false) => observe(revision),
                    None => None,
                }
            }
            EtcdInput::Cas {
                cell,
                expected,
                succeeded,
                revision,
                ..
            } => {
                let holds = self.writer(state, cell).value == expected;
                match succeeded {
                    Some(succeeded) if succeeded != holds => Some(Refusal::Comparison),
                    Some(true) => change(revision),
                    Some(false) => observe(revision),
                    None => None,
                }
            }
            EtcdInput::Revoke { lease, revision } => {
                if self.attached_cells(state, lease).next().is_some() {
                    change(revision)
                } else {
                    observe(revision)
                }
            }
        }
    }

    /// The cells holding a write that attached `lease`.
    fn attached_cells(&self, state: &EtcdState, lease: u32) -> impl Iterator<Item = u32> {
        let state = *state;
        (0..self.states.cell_count() as u32).filter(move |&cell| {
            let writer = self.writer(&state, cell);
            writer.value != ABSENT && writer.lease == lease
        })
    }

    /// The state after `input`, which `refusal` accepts in `state`.
    fn effect(&mut self, state: &EtcdState, input: &EtcdInput) -> EtcdState {
        // The revision after a change: its own if known (above the latest, as `refusal`
        // checked), else the latest (an `info` change's revision is unknown).
        let changed = |cells, revision: Option<u64>| EtcdState {
            cells,
            revision: revision.unwrap_or(state.revision),
        };
        match *input {
            EtcdInput::Get { .. }
            | EtcdInput::Delete {
                deleted: Some(false),
                ..
            }
            | EtcdInput::Cas {
                succeeded: Some(false),
                ..
            } => *state,
            EtcdInput::Put {
                cell,
                writer,
                revision,
            } => changed(self.states.set(state.cells, cell, writer), revision),
            EtcdInput::Delete { cell, revision, .. } => {
                changed(self.states.set(state.cells, cell, ABSENT), revision)
            }
            EtcdInput::Cas {
                cell,
                expected,
                writer,
                revision,
                ..
            } => {
                if self.writer(state, cell).value != expected {
                    return *state;
                }
                changed(self.states.set(state.cells, cell, writer), revision)
            }
            EtcdInput::Revoke { lease, revision } => {
                let attached: Vec<u32> = self.attached_cells(state, lease).collect();
                if attached.is_empty() {
                    return *state;
                }
                let mut cells = state.cells;
                for cell in attached {
                    cells = self.states.set(cells, cell, ABSENT);
                }
                changed(cells, revision)
            }
        }
    }

    /// `key "a"` when the partition has several keys, else nothing.
    fn which_key(&self, cell: u32) -> String {
        if self.states.cell_count() > 1 {
            format!(" of key {:?}", self.keys[cell as usize])
        } else {
            String::new()
        }
    }
}

impl SequentialSpecification for EtcdSpecification {
    type State = EtcdState;
    type Input = EtcdInput;

    fn initial_state(&mut self) -> EtcdState {
        EtcdState {
            cells: self.states.initial(),
            revision: 0,
        }
    }

    fn step(&mut self, state: &EtcdState, input: &EtcdInput) -> Option<EtcdState> {
        if self.refusal(state, input).is_some() {
            return None;
        }
        Some(self.effect(state, input))
    }

    fn is_read_only(&self, input: &EtcdInput) -> bool {
        // These never change the state (not even its revision), so the search may place one
        // as soon as it fits.
        matches!(
            input,
            EtcdInput::Get { .. }
                | EtcdInput::Delete {
                    deleted: Some(false),
                    ..
                }
                | EtcdInput::Cas {
                    succeeded: Some(false),
                    ..
                }
        )
    }

    fn describe_state(&self, state: &EtcdState) -> String {
        let contents = if self.states.cell_count() == 1 {
            format!("the key {}", self.describe_cell(state, 0))
        } else {
            let cells: Vec<String> = self
                .keys
                .iter()
                .enumerate()
                .map(|(cell, key)| format!("{key:?}: {}", self.describe_cell(state, cell as u32)))
                .collect();
            format!("the keys {{{}}}", cells.join(", "))
        };
        if state.revision == 0 {
            contents
        } else {
            format!("{contents}, last changed at revision {}", state.revision)
        }
    }

    fn explain_refusal(&self, state: &EtcdState, input: &EtcdInput) -> String {
        let Some(refusal) = self.refusal(state, input) else {
            return "cannot come next".to_owned();
        };
        let latest = state.revision;
        let revision = |revision: Option<u64>| revision.map_or(0, |revision| revision);
        match (refusal, *input) {
            (Refusal::Value, EtcdInput::Get { cell, .. }) => format!(
                "would read {}{}",
                self.value_json(self.writer(state, cell).value),
                self.which_key(cell)
            ),
            (Refusal::ModRevision, EtcdInput::Get { cell, .. }) => {
                let writer = self.writer(state, cell);
                match writer.revision {
                    Some(actual) => format!(
                        "would read mod_revision {actual}{}, the revision of the write of that \
                         value",
                        self.which_key(cell)
                    ),
                    None => "reports mod_revision 0 for a value that was written".to_owned(),
                }
            }
            (Refusal::ReadRevision, input) => format!(
                "observed revision {}, below revision {latest} of the partition's latest change",
                revision(input_revision(&input))
            ),
            (Refusal::ChangeRevision, input) => format!(
                "created revision {}, not above revision {latest} of the partition's latest change",
                revision(input_revision(&input))
            ),
            (
                Refusal::Comparison,
                EtcdInput::Cas {
                    cell,
                    expected,
                    succeeded,
                    ..
                },
            ) => {
                let holds = self.value_json(self.writer(state, cell).value);
                if succeeded == Some(true) {
                    format!(
                        "would fail: the key{} holds {holds}, not {}",
                        self.which_key(cell),
                        self.value_json(expected)
                    )
                } else {
                    format!(
                        "would succeed: the key{} holds {holds}",
                        self.which_key(cell)
                    )
                }
            }
            (Refusal::DeleteCount, EtcdInput::Delete { cell, deleted, .. }) => {
                if deleted == Some(true) {
                    format!(
                        "would delete nothing: the key{} is absent",
                        self.which_key(cell)
                    )
                } else {
                    format!(
                        "would delete {}{}",
                        self.value_json(self.writer(state, cell).value),
                        self.which_key(cell)
                    )
                }
            }
            _ => "cannot come next".to_owned(),
        }
    }
}

/// The revision an input reports, if any.
fn input_revision(input: &EtcdInput) -> Option<u64> {
    match *input {
        EtcdInput::Get { revision, .. }
        | EtcdInput::Put { revision, .. }
        | EtcdInput::Delete { revision, .. }
        | EtcdInput::Cas { revision, .. }
        | EtcdInput::Revoke { revision, .. } => revision,
    }
}

/// The first contradiction among the `ok` operations' revisions, found without any search (see
/// the module docs), or `None`.
fn revision_violation(
    operations: &[Operation],
    commands: &[Option<EtcdCommand>],
) -> Option<Violation> {
    // The `ok` operations that report a revision, with it.
    let known: Vec<(usize, &EtcdCommand, u64)> = operations
        .iter()
        .zip(commands)
        .enumerate()
        .filter(|(_, (operation, _))| operation.outcome == Outcome::Ok)
        .filter_map(|(position, (_, command))| {
            let command = command.as_ref()?;
            Some((position, command, command.revision()?))
        })
        .collect();

    // Two changes never share a revision.
    let mut creator: HashMap<u64, usize> = HashMap::new();
    for &(position, command, revision) in &known {
        if !command.changed() {
            continue;
        }
        if let Some(&first) = creator.get(&revision) {
            return Some(pair_violation(
                operations,
                first,
                position,
                format!("the cluster at revision {revision}"),
                format!(
                    "also reports creating revision {revision}: two changes cannot share a \
                     revision"
                ),
            ));
        }
        creator.insert(revision, position);
    }

    // Real time: an operation invoked after another completed reports at least its revision,
    // and more if it changed something.
    let mut moments: Vec<(usize, bool, usize)> = Vec::with_capacity(known.len() * 2);
    for (slot, &(position, _, _)) in known.iter().enumerate() {
        let operation = &operations[position];
        moments.push((operation.invoke_index, false, slot));
        if let Some(complete) = operation.complete_index {
            moments.push((complete, true, slot));
        }
    }
    moments.sort_unstable();
    let mut highest_completed: Option<(u64, usize)> = None;
    for (_, is_completion, slot) in moments {
        let (position, command, revision) = known[slot];
        if is_completion {
            if highest_completed.is_none_or(|(highest, _)| revision > highest) {
                highest_completed = Some((revision, position));
            }
            continue;
        }
        let Some((highest, before)) = highest_completed else {
            continue;
        };
        let changed = command.changed();
        if revision < highest || (changed && revision == highest) {
            let what = if changed { "created" } else { "observed" };
            let relation = if revision < highest {
                "is below"
            } else {
                "is not above"
            };
            return Some(pair_violation(
                operations,
                before,
                position,
                format!("the cluster at revision {highest} or later"),
                format!(
                    "{what} revision {revision}, which {relation} revision {highest} of process \
                     {}'s {}, completed before this was invoked",
                    operations[before].process, operations[before].f
                ),
            ));
        }
    }

    // A read that observed revision r and mod_revision m: no change of its key created a
    // revision in (m, r].
    let mut changes_by_key: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
    for &(position, command, revision) in &known {
        if let (true, Some(key)) = (command.changed(), command.key()) {
            changes_by_key
                .entry(key)
                .or_default()
                .insert(revision, position);
        }
    }
    // Keys that may lose their value at an unknown revision: deleted by an operation whose
    // revision is unknown, or attached to a lease (a revoke deletes without naming them).
    let mut may_vanish: BTreeSet<&str> = BTreeSet::new();
    for (operation, command) in operations.iter().zip(commands) {
        match command {
            Some(EtcdCommand::Delete { key, revision, .. })
                if operation.outcome != Outcome::Ok || revision.is_none() =>
            {
                may_vanish.insert(key);
            }
            Some(EtcdCommand::Put {
                key,
                lease: Some(_),
                ..
            }) => {
                may_vanish.insert(key);
            }
            _ => {}
        }
    }
    // A cas whose key's every change has a known revision: the value it compared against is
    // the last change's before its revision (for one that succeeded) or at it (one that failed).
    let mut changes_unseen: BTreeSet<&str> = BTreeSet::new();
    for (operation, command) in operations.iter().zip(commands) {
        let Some(command) = command else { continue };
        let unseen = match command {
            EtcdCommand::Put { lease, .. } => {
                lease.is_some() || operation.outcome != Outcome::Ok || command.revision().is_none()
            }
            EtcdCommand::Delete { .. } | EtcdCommand::Cas { .. } => {
                operation.outcome != Outcome::Ok || command.revision().is_none()
            }
            EtcdCommand::Get { .. } | EtcdCommand::Revoke { .. } => false,
        };
        if let (true, Some(key)) = (unseen, command.key()) {
            changes_unseen.insert(key);
        }
    }
    for &(position, command, revision) in &known {
        let EtcdCommand::Cas {
            key,
            expected,
            succeeded: Some(succeeded),
            ..
        } = command
        else {
            continue;
        };
        if changes_unseen.contains(key.as_str()) {
            continue;
        }
        let compared = changes_by_key.get(key.as_str()).and_then(|changes| {
            if *succeeded {
                changes.range(..revision).next_back()
            } else {
                changes.range(..=revision).next_back()
            }
        });
        let (value, setter) = match compared {
            Some((&at, &change)) => (written_value(commands[change].as_ref()), Some((at, change))),
            None => (None, None),
        };
        if (value == expected.as_deref()) == *succeeded {
            continue;
        }
        let held = value.map_or_else(|| "nothing".to_owned(), |value| format!("{value:?}"));
        let origin = match setter {
            Some((at, change)) => format!(
                " (process {}'s {} at revision {at})",
                operations[change].process, operations[change].f
            ),
            None => String::new(),
        };
        let refusal = if *succeeded {
            format!("succeeded at revision {revision}, but the key held {held} before it{origin}")
        } else {
            format!(
                "failed at revision {revision}, but the key held {held} then{origin}, as expected"
            )
        };
        return Some(pair_violation(
            operations,
            setter.map_or(position, |(_, change)| change),
            position,
            format!("key {key:?} holding {held}"),
            refusal,
        ));
    }
    for &(position, command, revision) in &known {
        let EtcdCommand::Get {
            key,
            read,
            mod_revision,
            ..
        } = command
        else {
            continue;
        };
        let changes = changes_by_key.get(key.as_str());
        if let Some(mod_revision) = mod_revision
            && *mod_revision > revision
        {
            return Some(pair_violation(
                operations,
                position,
                position,
                format!("key {key:?} at revision {revision}"),
                format!(
                    "reports mod_revision {mod_revision}, above the revision {revision} it observed"
                ),
            ));
        }
        if read.is_none() {
            // Absent at revision r: the key's last known change by r must have deleted it,
            // unless something may have deleted it unseen.
            if may_vanish.contains(key.as_str()) {
                continue;
            }
            let last_change = changes.and_then(|changes| changes.range(..=revision).next_back());
            if let Some((&changed_at, &change)) = last_change
                && !matches!(commands[change], Some(EtcdCommand::Delete { .. }))
            {
                return Some(pair_violation(
                    operations,
                    change,
                    position,
                    format!("key {key:?} set at revision {changed_at}"),
                    format!(
                        "observed revision {revision} with the key absent, but process {}'s {} \
                         set it at revision {changed_at} and nothing deleted it by then",
                        operations[change].process, operations[change].f
                    ),
                ));
            }
            continue;
        }
        let Some(mod_revision) = mod_revision else {
            continue;
        };
        let later_change = changes.and_then(|changes| {
            changes
                .range((Bound::Excluded(*mod_revision), Bound::Included(revision)))
                .next()
        });
        if let Some((&changed_at, &change)) = later_change {
            return Some(pair_violation(
                operations,
                change,
                position,
                format!("key {key:?} changed at revision {changed_at}"),
                format!(
                    "observed revision {revision} with the key last changed at {mod_revision}, \
                     but process {}'s {} changed it at revision {changed_at}",
                    operations[change].process, operations[change].f
                ),
            ));
        }
    }
    None
}

/// The value a change left its key with (`None`: absent).
fn written_value(command: Option<&EtcdCommand>) -> Option<&str> {
    match command? {
        EtcdCommand::Put { value, .. } => Some(value),
        EtcdCommand::Cas { new, .. } => Some(new),
        EtcdCommand::Delete { .. } | EtcdCommand::Get { .. } | EtcdCommand::Revoke { .. } => None,
    }
}

/// A violation between two operations: `first` fits, then `second` cannot (one operation when
/// they are the same).
fn pair_violation(
    operations: &[Operation],
    first: usize,
    second: usize,
    state_after_first: String,
    refusal: String,
) -> Violation {
    let mut involved = vec![first, second];
    involved.sort_by_key(|&position| operations[position].invoke_index);
    involved.dedup();
    let index_of = |position| {
        involved
            .iter()
            .position(|&other| other == position)
            .expect("both operations are involved")
    };
    let longest_prefix = if first == second {
        Vec::new()
    } else {
        vec![index_of(first)]
    };
    Violation {
        model: MODEL_NAME,
        key: String::new(),
        partitioned: false,
        operations: involved
            .iter()
            .map(|&position| operations[position].clone())
            .collect(),
        longest_prefix,
        state_after_prefix: state_after_first,
        stuck: vec![index_of(second)],
        refusals: vec![refusal],
        failing: index_of(second),
    }
}
