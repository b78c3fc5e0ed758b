//! The closed loop: `clients` tasks, each with exactly one request outstanding, spread over
//! `connections` gRPC channels, recording when each measured request completed and how long
//! it took.

use super::connection::Connection;
use super::workload::{OpKind, OpMix, SplitMix64, key_bytes, value_bytes};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use synod_server::api::etcdserverpb::{
    Compare, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, compare, request_op,
};

/// The etcd KV methods the benchmark calls.
const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";

/// How keys are chosen.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// Uniformly at random from `0..space`, until the stop condition.
    Random {
        /// The number of distinct keys.
        space: u64,
    },
    /// Each key of `0..count` exactly once (clients take the next number), then stop: loading
    /// and prefilling.
    EachOnce {
        /// The number of keys to write.
        count: u64,
    },
}

/// When measured requests stop being issued.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this long past the warmup.
    After(Duration),
    /// After this many measured requests (successful or not).
    Ops(u64),
    /// When [`Keys::EachOnce`] runs out of keys.
    KeysExhausted,
}

/// One benchmark run's workload: the same value drives every target of a comparison.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The operation kinds and their weights.
    pub mix: OpMix,
    /// Closed-loop clients (each has one request outstanding).
    pub clients: usize,
    /// gRPC channels (one HTTP/2 connection each), shared out among the clients ([`Turns`]).
    pub connections: usize,
    /// Bytes per value written.
    pub value_size: usize,
    /// Bytes per key.
    pub key_size: usize,
    /// Which keys requests name.
    pub keys: Keys,
    /// When to stop.
    pub stop: Stop,
    /// Requests in this first period are issued but not recorded.
    pub warmup: Duration,
    /// Seeds the key, value and operation choices (each client mixes in its number).
    pub seed: u64,
    /// A request not answered within this long counts as a `timeout` error.
    pub request_timeout: Duration,
}

/// One measured request that succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it completed, in microseconds after the measurement began.
    pub completed_at_us: u64,
    /// How long it took, in microseconds.
    pub latency_us: u64,
    /// What it was.
    pub kind: OpKind,
}

/// How often one kind of error happened, with one message as an example.
#[derive(Clone, Debug, Default)]
pub struct ErrorTally {
    /// How many measured requests failed this way.
    pub count: u64,
    /// The first message seen.
    pub example: String,
}

/// What a run recorded.
#[derive(Debug, Default)]
pub struct Record {
    /// Every successful measured request.
    pub samples: Vec<Sample>,
    /// Failed measured requests, by kind of error (the gRPC status code, or `timeout`).
    pub errors: BTreeMap<String, ErrorTally>,
    /// From the end of the warmup until the last measured request completed.
    pub elapsed: Duration,
    /// Whether the run was cut short by Ctrl-C.
    pub interrupted: bool,
    /// Every request that completed, warmup included, successful or not: what the CPU the
    /// run used is divided by.
    pub completed_all: u64,
}

/// After a failed request a client pauses this long, so a dead endpoint is not hammered at
/// the speed of refused connections.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How long connecting one channel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// State the clients share.
struct Shared {
    measure_start: Instant,
    deadline: Option<Instant>,
    tickets: AtomicU64,
    ticket_limit: Option<u64>,
    completed: AtomicU64,
    completed_all: AtomicU64,
    interrupted: AtomicBool,
}

/// What one client recorded.
#[derive(Default)]
struct ClientRecord {
    samples: Vec<Sample>,
    errors: BTreeMap<String, ErrorTally>,
    last_completion: Option<Instant>,
}

/// Opens `connections` HTTP/2 connections to `endpoints`, round-robin.
pub async fn connect(endpoints: &[String], connections: usize) -> Result<Vec<Connection>> {
    let mut opened = Vec::with_capacity(connections);
    for connection in 0..connections {
        let url = &endpoints[connection % endpoints.len()];
        opened.push(Connection::open(url, CONNECT_TIMEOUT).await?);
    }
    Ok(opened)
}

/// Runs `workload` over `channels` and returns what it recorded. `label` names the run on the
/// progress bar.
pub async fn run(channels: &[Connection], workload: &Workload, label: &str) -> Result<Record> {
    let start = Instant::now();
    let measure_start = start + workload.warmup;
    let ticket_limit = match (workload.stop, workload.keys) {
        (Stop::Ops(count), _) => Some(count),
        (_, Keys::EachOnce { count }) => Some(count),
        _ => None,
    };
    let deadline = match workload.stop {
        Stop::After(duration) => Some(measure_start + duration),
        _ => None,
    };
    let shared = Arc::new(Shared {
        measure_start,
        deadline,
        tickets: AtomicU64::new(0),
        ticket_limit,
        completed: AtomicU64::new(0),
        completed_all: AtomicU64::new(0),
        interrupted: AtomicBool::new(false),
    });

    let progress = progress_bar(workload, label, ticket_limit);
    let ticker = tokio::spawn(show_progress(
        Arc::clone(&shared),
        progress.clone(),
        ticket_limit,
    ));
    let interrupt_watch = tokio::spawn(watch_for_interrupt(Arc::clone(&shared)));

    let channels: Arc<[Connection]> = channels.into();
    let mut tasks = Vec::with_capacity(workload.clients);
    for client in 0..workload.clients {
        tasks.push(tokio::spawn(run_client(
            Arc::clone(&channels),
            workload.clone(),
            client as u64,
            Arc::clone(&shared),
        )));
    }
    let mut record = Record::default();
    let mut last_completion = None;
    for task in tasks {
        let client = task.await.context("a benchmark client task failed")?;
        record.samples.extend(client.samples);
        for (kind, tally) in client.errors {
            let total = record.errors.entry(kind).or_default();
            if total.example.is_empty() {
                total.example = tally.example;
            }
            total.count += tally.count;
        }
        last_completion = last_completion.max(client.last_completion);
    }
    ticker.abort();
    interrupt_watch.abort();
    progress.finish_and_clear();
    record.samples.sort_by_key(|sample| sample.completed_at_us);
    record.elapsed = last_completion
        .map(|last| last.saturating_duration_since(measure_start))
        .unwrap_or_default();
    record.interrupted = shared.interrupted.load(Ordering::Relaxed);
    record.completed_all = shared.completed_all.load(Ordering::Relaxed);
    Ok(record)
}

/// One closed-loop client, sending on the connections [`Turns`] gives it. One client over
/// connections to every member reaches the leader a third of the time, rather than always or
/// never as the last election happened to decide.
async fn run_client(
    channels: Arc<[Connection]>,
    workload: Workload,
    client: u64,
    shared: Arc<Shared>,
) -> ClientRecord {
    let mut turns = Turns::of_client(client as usize, workload.clients, channels.len());
    let mut rng = SplitMix64::new(workload.seed, client);
    let value = value_bytes(workload.value_size, &mut rng);
    let mut record = ClientRecord::default();
    loop {
        if shared.interrupted.load(Ordering::Relaxed) {
            break;
        }
        let issued_at = Instant::now();
        let measured = issued_at >= shared.measure_start;
        if measured
            && shared
                .deadline
                .is_some_and(|deadline| issued_at >= deadline)
        {
            break;
        }
        let ticket = if measured || matches!(workload.keys, Keys::EachOnce { .. }) {
            let ticket = shared.tickets.fetch_add(1, Ordering::Relaxed);
            if shared.ticket_limit.is_some_and(|limit| ticket >= limit) {
                break;
            }
            ticket
        } else {
            0
        };
        let (kind, key_index) = match workload.keys {
            Keys::Random { space } => (workload.mix.pick(&mut rng), rng.below(space)),
            Keys::EachOnce { .. } => (OpKind::Put, ticket),
        };
        let key = key_bytes(key_index, workload.key_size);
        let kv = &channels[turns.next_index()];
        let outcome =
            tokio::time::timeout(workload.request_timeout, issue(kv, kind, key, &value)).await;
        let completed_at = Instant::now();
        shared.completed_all.fetch_add(1, Ordering::Relaxed);
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some((
                "timeout".to_string(),
                format!("{kind:?} not answered in time"),
            )),
        };
        if measured {
            shared.completed.fetch_add(1, Ordering::Relaxed);
            record.last_completion = Some(completed_at);
            match &failure {
                None => record.samples.push(Sample {
                    completed_at_us: micros(
                        completed_at.saturating_duration_since(shared.measure_start),
                    ),
                    latency_us: micros(completed_at.saturating_duration_since(issued_at)),
                    kind,
                }),
                Some((error_kind, message)) => {
                    let tally = record.errors.entry(error_kind.clone()).or_default();
                    if tally.example.is_empty() {
                        tally.example = message.clone();
                    }
                    tally.count += 1;
                }
            }
        }
        if failure.is_some() {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    record
}

/// Which connection a client sends its next request on. With at least as many clients as
/// connections, client `c` keeps connection `c mod connections`; with fewer, the connections
/// are dealt out among the clients (client `c` gets `c`, `c + clients`, ...) and each client
/// takes its own in turn, as etcd's clients balance requests over their endpoints.
struct Turns {
    /// The connection of the next request.
    next: usize,
    /// The client's first connection.
    first: usize,
    /// Between one of the client's connections and its next (0: it has one).
    step: usize,
    connections: usize,
}

impl Turns {
    fn of_client(client: usize, clients: usize, connections: usize) -> Turns {
        let first = client % connections;
        let step = if clients < connections { clients } else { 0 };
        Turns {
            next: first,
            first,
            step,
            connections,
        }
    }

    fn next_index(&mut self) -> usize {
        let index = self.next;
        self.next = index + self.step;
        if self.next >= self.connections {
            self.next = self.first;
        }
        index
    }
}

/// Sends one request; an error is (kind, message).
async fn issue(
    kv: &Connection,
    kind: OpKind,
    key: Vec<u8>,
    value: &[u8],
) -> Result<(), (String, String)> {
    let status_error =
        |status: tonic::Status| (format!("{:?}", status.code()), status.message().to_string());
    match kind {
        OpKind::Put => {
            let request = PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            };
            let _: PutResponse = kv.unary(PUT, &request).await.map_err(status_error)?;
        }
        OpKind::Get | OpKind::GetSerializable => {
            let request = RangeRequest {
                key,
                serializable: kind == OpKind::GetSerializable,
                ..Default::default()
            };
            let _: RangeResponse = kv.unary(RANGE, &request).await.map_err(status_error)?;
        }
        OpKind::Txn => {
            // Compare-and-put: the compare (mod revision below the largest revision) always
            // holds, but the server must still read the key to evaluate it before the put.
            let compare = Compare {
                result: compare::CompareResult::Less as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(i64::MAX)),
                range_end: Vec::new(),
            };
            let put = PutRequest {
                key,
                value: value.to_vec(),
                ..Default::default()
            };
            let request = TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put)),
                }],
                failure: Vec::new(),
            };
            let response: TxnResponse = kv.unary(TXN, &request).await.map_err(status_error)?;
            if !response.succeeded {
                return Err((
                    "txn compare failed".to_string(),
                    "a compare that always holds was reported as failed".to_string(),
                ));
            }
        }
    }
    Ok(())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn progress_bar(workload: &Workload, label: &str, ticket_limit: Option<u64>) -> ProgressBar {
    let (length, template) = match ticket_limit {
        Some(count) => (
            count,
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        ),
        None => (
            micros(workload.warmup + stop_duration(workload)) / 1000,
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        ),
    };
    let bar = ProgressBar::new(length);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}

fn stop_duration(workload: &Workload) -> Duration {
    match workload.stop {
        Stop::After(duration) => duration,
        _ => Duration::ZERO,
    }
}

async fn show_progress(shared: Arc<Shared>, bar: ProgressBar, ticket_limit: Option<u64>) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        interval.tick().await;
        let completed = shared.completed.load(Ordering::Relaxed);
        let now = Instant::now();
        match ticket_limit {
            Some(_) => bar.set_position(completed),
            None => bar.set_position(micros(now.saturating_duration_since(started)) / 1000),
        }
        let measured_for = now
            .saturating_duration_since(shared.measure_start)
            .as_secs_f64();
        if measured_for > 0.0 {
            bar.set_message(format!("{:.0} ops/s", completed as f64 / measured_for));
        } else {
            bar.set_message("warming up");
        }
    }
}

async fn watch_for_interrupt(shared: Arc<Shared>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        shared.interrupted.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Turns;

    fn first(client: usize, clients: usize, connections: usize, count: usize) -> Vec<usize> {
        let mut turns = Turns::of_client(client, clients, connections);
        (0..count).map(|_| turns.next_index()).collect()
    }

    #[test]
    fn one_client_takes_every_connection_in_turn() {
        assert_eq!(first(0, 1, 3, 7), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(first(0, 1, 1, 3), [0, 0, 0]);
    }

    #[test]
    fn fewer_clients_than_connections_share_them_out() {
        assert_eq!(first(0, 2, 5, 4), [0, 2, 4, 0]);
        assert_eq!(first(1, 2, 5, 4), [1, 3, 1, 3]);
    }

    #[test]
    fn with_as_many_clients_as_connections_a_client_keeps_one() {
        assert_eq!(first(0, 3, 3, 3), [0, 0, 0]);
        assert_eq!(first(63, 64, 8, 3), [7, 7, 7]);
        assert_eq!(first(9, 64, 8, 2), [1, 1]);
    }
}
