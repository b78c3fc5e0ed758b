//! Where a node's records go, and the group-commit thread that makes them durable.
//!
//! The node task hands its records to a dedicated storage thread in order, and asks for a
//! sync. The thread drains every job queued before it syncs, so one sync covers all records
//! appended since the previous one (group commit), then tells the node how many records of
//! its current life are durable; the node's [`synod_core::node::OutputGate`] releases the
//! sends and replies that were waiting for them. A small batch that finds the thread idle
//! runs on the node's task instead (see [`Storage`]): a wake-up saved per lone write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Why storage failed. A node whose storage fails stops: it can no longer promise
/// durability, and nothing it acknowledged depends on records that were not synced.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error from the file system.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else the storage engine reports.
    #[error("storage error: {0}")]
    Other(String),
}

/// An append-only record log with group commit; the durable records come back on restart.
pub trait RecordLog: Send + 'static {
    /// Appends one serialized record. A `checkpoint` supersedes every earlier record: once
    /// it is durable, recovery returns only it and the records after it.
    fn append(&mut self, payload: &[u8], checkpoint: bool) -> Result<(), LogError>;
    /// Makes every appended record durable (one fsync for all of them).
    fn sync(&mut self) -> Result<(), LogError>;
    /// Appends a checkpoint whose bytes `write` produces as a stream. The default gathers
    /// them in memory and calls [`RecordLog::append`]; a log that can write a stream
    /// straight to its file never holds the whole record.
    fn append_checkpoint_with(&mut self, write: &mut WriteRecord) -> Result<(), LogError> {
        let mut payload = Vec::new();
        write(&mut payload)?;
        self.append(&payload, true)
    }
    /// Appends a compaction (a checkpoint the earlier records already stand for, see
    /// `synod_core::node::Context::compact`), which a log may write in the background
    /// while later records are appended and synced. The default writes it as a checkpoint.
    fn append_compaction_with(&mut self, mut write: Box<WriteRecord>) -> Result<(), LogError> {
        self.append_checkpoint_with(&mut *write)
    }
}

/// Writes a record's bytes into the given writer.
pub type WriteRecord = dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + Send;

/// An in-memory log for tests: the synced records live in a shared vector that outlives
/// the node, so a test can "crash" a node (drop it with unsynced records) and restart it
/// from exactly what was synced.
#[derive(Debug, Default)]
pub struct MemoryLog {
    durable: Arc<Mutex<Vec<Vec<u8>>>>,
    pending: Vec<(Vec<u8>, bool)>,
}

impl MemoryLog {
    /// A log writing to `durable` (shared with the test that restarts the node).
    pub fn new(durable: Arc<Mutex<Vec<Vec<u8>>>>) -> Self {
        MemoryLog {
            durable,
            pending: Vec::new(),
        }
    }
}

impl RecordLog for MemoryLog {
    fn append(&mut self, payload: &[u8], checkpoint: bool) -> Result<(), LogError> {
        self.pending.push((payload.to_vec(), checkpoint));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let mut durable = self
            .durable
            .lock()
            .map_err(|_| LogError::Other("memory log poisoned".into()))?;
        for (payload, checkpoint) in self.pending.drain(..) {
            if checkpoint {
                durable.clear();
            }
            durable.push(payload);
        }
        Ok(())
    }
}

/// Work for the storage thread, in the order the node produced it.
pub(crate) enum StorageJob {
    Append {
        payload: Vec<u8>,
        checkpoint: bool,
    },
    /// A checkpoint serialized on the storage thread, straight into its file.
    Checkpoint(Box<WriteRecord>),
    /// A compaction, serialized into its file by the log (in the background for the
    /// write-ahead log).
    Compaction(Box<WriteRecord>),
    Sync,
}

/// A batch of jobs runs on the node's task instead of the storage thread when the thread is
/// idle with nothing queued and the batch is small appends and a sync (a follower's copy
/// of one client's write, a leader's own): handing it over costs a wake-up of the thread,
/// 30–120 µs on two busy cores, on the path of every such write. Larger batches, and any
/// batch while the thread is busy, go to the thread, so under load the node's task never
/// waits for the disk and group commit gathers what arrives meanwhile.
const INLINE_MAX_RECORDS: usize = 4;
/// The most record bytes a batch run on the node's task may carry.
const INLINE_MAX_BYTES: usize = 16 * 1024;
/// A batch run on the node's task blocks it (its timers, its peers, its clients) for as long
/// as the disk takes. Once one takes longer than this, the disk is having a bad spell: the
/// node's task stops running batches for [`INLINE_PAUSE`] and the thread takes them all.
const INLINE_SLOW: Duration = Duration::from_millis(20);
const INLINE_PAUSE: Duration = Duration::from_secs(10);

/// Where the node's storage jobs go: a dedicated thread that runs them in order and makes
/// them durable with group commit, or, for a small batch while that thread is idle, the
/// caller itself (see [`INLINE_MAX_RECORDS`]). After each group commit `on_durable(records)`
/// reports how many records of this life are durable.
///
/// The node's task sends one batch per batch of inputs it handled: each send to an idle
/// thread is a wake-up (a futex call and two context switches), and with one send per
/// record the thread woke about five times per fsync under load.
pub(crate) struct Storage {
    core: Arc<StorageCore>,
    /// `None` once closed (or failed): jobs are dropped, and what waits for them stays held.
    sender: Option<mpsc::Sender<Vec<StorageJob>>>,
    /// No batch runs on the caller before this (after a slow one, see [`INLINE_SLOW`]).
    inline_paused_until: Option<Instant>,
    /// [`INLINE_SLOW`], which tests lower to make any write slow.
    inline_slow: Duration,
}

/// What the storage thread and the node's task share.
struct StorageCore {
    state: Mutex<StorageState>,
    /// Batches sent to the thread that it has not finished. The thread lowers it while it
    /// holds `state`, after the batches are done: seen at zero, with `state` free, nothing
    /// is queued or running, so a batch run by the caller keeps the order.
    queued: AtomicUsize,
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
}

struct StorageState {
    log: Box<dyn RecordLog>,
    /// Records appended in this life, and how many of them are durable.
    appended: u64,
    durable: u64,
    /// A job failed: the log's state is unknown, nothing more runs.
    failed: bool,
}

impl StorageCore {
    /// Runs `first` and each batch `more` yields, in order, then syncs once if any asked
    /// for it (group commit) and reports the durable count.
    fn commit(
        &self,
        state: &mut StorageState,
        first: Vec<StorageJob>,
        mut more: impl FnMut() -> Option<Vec<StorageJob>>,
    ) -> Result<(), LogError> {
        if state.failed {
            return Err(LogError::Other("storage failed earlier".into()));
        }
        let result = (|| {
            let mut sync_wanted = state.run(first)?;
            while let Some(jobs) = more() {
                sync_wanted |= state.run(jobs)?;
            }
            if sync_wanted && state.appended > state.durable {
                let started = std::time::Instant::now();
                state.log.sync()?;
                crate::metrics::record_fsync(started.elapsed());
                state.durable = state.appended;
                (self.on_durable)(state.durable);
            } else if sync_wanted {
                // Nothing new: the node may still be waiting on an earlier count.
                (self.on_durable)(state.durable);
            }
            Ok(())
        })();
        state.failed = result.is_err();
        result
    }
}

impl StorageState {
    /// Runs a batch's jobs; says whether it asked for a sync.
    fn run(&mut self, jobs: Vec<StorageJob>) -> Result<bool, LogError> {
        let mut sync_wanted = false;
        for job in jobs {
            match job {
                StorageJob::Append {
                    payload,
                    checkpoint,
                } => {
                    self.log.append(&payload, checkpoint)?;
                    crate::metrics::record_wal_append(payload.len());
                    self.appended += 1;
                }
                StorageJob::Checkpoint(mut write) => {
                    self.log.append_checkpoint_with(&mut *write)?;
                    self.appended += 1;
                }
                StorageJob::Compaction(write) => {
                    self.log.append_compaction_with(write)?;
                    self.appended += 1;
                }
                StorageJob::Sync => sync_wanted = true,
            }
        }
        Ok(sync_wanted)
    }
}

/// Whether `jobs` may run on the caller: a few small plain appends and a sync.
fn runs_inline(jobs: &[StorageJob]) -> bool {
    let mut records = 0;
    let mut bytes = 0;
    let mut sync = false;
    for job in jobs {
        match job {
            StorageJob::Append {
                payload,
                checkpoint: false,
            } => {
                records += 1;
                bytes += payload.len();
            }
            StorageJob::Sync => sync = true,
            _ => return false,
        }
    }
    sync && records <= INLINE_MAX_RECORDS && bytes <= INLINE_MAX_BYTES
}

impl Storage {
    /// Starts the storage thread for `log`. On a failure on the thread `on_error` is called
    /// once and the thread ends.
    pub(crate) fn spawn(
        log: impl RecordLog,
        on_durable: impl Fn(u64) + Send + Sync + 'static,
        on_error: impl FnOnce(LogError) + Send + 'static,
    ) -> Storage {
        let core = Arc::new(StorageCore {
            state: Mutex::new(StorageState {
                log: Box::new(log),
                appended: 0,
                durable: 0,
                failed: false,
            }),
            queued: AtomicUsize::new(0),
            on_durable: Box::new(on_durable),
        });
        let (sender, receiver) = mpsc::channel::<Vec<StorageJob>>();
        let thread_core = core.clone();
        std::thread::Builder::new()
            .name("synod-storage".into())
            .spawn(move || {
                let core = thread_core;
                while let Ok(jobs) = receiver.recv() {
                    let mut state = crate::lock(&core.state);
                    let mut batches = 1;
                    // Group commit: take everything already queued before paying for a sync.
                    let result = core.commit(&mut state, jobs, || {
                        let jobs = receiver.try_recv().ok()?;
                        batches += 1;
                        Some(jobs)
                    });
                    core.queued.fetch_sub(batches, Ordering::Release);
                    drop(state);
                    if let Err(error) = result {
                        on_error(error);
                        return;
                    }
                }
            })
            .expect("the OS can start a thread");
        Storage {
            core,
            sender: Some(sender),
            inline_paused_until: None,
            inline_slow: INLINE_SLOW,
        }
    }

    /// Hands over a batch of jobs, to run after every batch before it. Runs it right here
    /// if it is small and the thread is idle with nothing queued; an error is returned
    /// only from such a run (the node must stop: its storage failed).
    pub(crate) fn submit(&mut self, jobs: Vec<StorageJob>) -> Result<(), LogError> {
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        let now = Instant::now();
        if runs_inline(&jobs)
            && self.inline_paused_until.is_none_or(|until| now >= until)
            && self.core.queued.load(Ordering::Acquire) == 0
            && let Ok(mut state) = self.core.state.try_lock()
        {
            let result = self.core.commit(&mut state, jobs, || None);
            if result.is_err() {
                self.sender = None;
            }
            let took = now.elapsed();
            if took > self.inline_slow {
                tracing::warn!(
                    ?took,
                    "a small write took long: the storage thread takes every write for {INLINE_PAUSE:?}"
                );
                self.inline_paused_until = Some(now + took + INLINE_PAUSE);
            }
            return result;
        }
        self.core.queued.fetch_add(1, Ordering::AcqRel);
        let _ = sender.send(jobs);
        Ok(())
    }

    /// Drops every later job: the outputs waiting for them stay held forever.
    pub(crate) fn close(&mut self) {
        self.sender = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_log_keeps_only_synced_records_and_honours_checkpoints() {
        let durable = Arc::new(Mutex::new(Vec::new()));
        let mut log = MemoryLog::new(durable.clone());
        log.append(b"a", false).unwrap();
        log.append(b"b", false).unwrap();
        log.sync().unwrap();
        log.append(b"c", false).unwrap();
        assert_eq!(*durable.lock().unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        log.append(b"snap", true).unwrap();
        log.append(b"d", false).unwrap();
        log.sync().unwrap();
        assert_eq!(
            *durable.lock().unwrap(),
            vec![b"snap".to_vec(), b"d".to_vec()]
        );
    }

    #[test]
    fn storage_thread_reports_every_record_durable_after_sync() {
        let durable = Arc::new(Mutex::new(Vec::new()));
        let (mut storage, reports) = reporting(MemoryLog::new(durable.clone()));
        for payload in [b"x", b"y", b"z"] {
            storage
                .submit(vec![StorageJob::Append {
                    payload: payload.to_vec(),
                    checkpoint: false,
                }])
                .unwrap();
        }
        storage.submit(vec![StorageJob::Sync]).unwrap();
        assert_eq!(reports.recv().unwrap(), 3);
        assert_eq!(durable.lock().unwrap().len(), 3);
        // A batch is written in order and synced once.
        storage
            .submit(vec![
                StorageJob::Append {
                    payload: b"snap".to_vec(),
                    checkpoint: true,
                },
                StorageJob::Append {
                    payload: b"w".to_vec(),
                    checkpoint: false,
                },
                StorageJob::Sync,
            ])
            .unwrap();
        assert_eq!(reports.recv().unwrap(), 5);
        assert_eq!(
            *durable.lock().unwrap(),
            vec![b"snap".to_vec(), b"w".to_vec()]
        );
    }

    /// Storage for `log` that sends each durable count it reports to the receiver.
    fn reporting(log: impl RecordLog) -> (Storage, mpsc::Receiver<u64>) {
        let (report, reports) = mpsc::channel();
        let report = Mutex::new(report);
        let storage = Storage::spawn(
            log,
            move |count| report.lock().unwrap().send(count).unwrap(),
            |error| panic!("{error}"),
        );
        (storage, reports)
    }

    /// Storage over a [`WitnessLog`] (failing every append if `fail`) for tests in which no
    /// job may become durable and the storage thread may not fail.
    fn never_durable(appended: &Witnessed, fail: bool) -> Storage {
        Storage::spawn(
            WitnessLog {
                appended: appended.clone(),
                gate: None,
                fail,
            },
            |_| panic!("nothing becomes durable"),
            |error| panic!("the storage thread failed: {error}"),
        )
    }

    /// Each record appended, with the thread that appended it.
    type Witnessed = Arc<Mutex<Vec<(Vec<u8>, std::thread::ThreadId)>>>;

    /// A log that notes which thread appended each record, and whose syncs wait for a
    /// permit while `gate` is set (to keep the storage thread busy).
    struct WitnessLog {
        appended: Witnessed,
        gate: Option<mpsc::Receiver<()>>,
        fail: bool,
    }

    impl RecordLog for WitnessLog {
        fn append(&mut self, payload: &[u8], _checkpoint: bool) -> Result<(), LogError> {
            let thread = std::thread::current().id();
            self.appended
                .lock()
                .unwrap()
                .push((payload.to_vec(), thread));
            Ok(())
        }

        fn sync(&mut self) -> Result<(), LogError> {
            if let Some(gate) = &self.gate {
                gate.recv().unwrap();
            }
            if self.fail {
                return Err(LogError::Other("the disk is gone".into()));
            }
            Ok(())
        }
    }

    fn appends(payloads: &[&[u8]]) -> Vec<StorageJob> {
        let mut jobs: Vec<StorageJob> = payloads
            .iter()
            .map(|payload| StorageJob::Append {
                payload: payload.to_vec(),
                checkpoint: false,
            })
            .collect();
        jobs.push(StorageJob::Sync);
        jobs
    }

    #[test]
    fn a_small_batch_runs_on_the_caller_only_while_the_thread_is_idle() {
        let appended = Arc::new(Mutex::new(Vec::new()));
        let (permit, gate) = mpsc::channel();
        let (mut storage, reports) = reporting(WitnessLog {
            appended: appended.clone(),
            gate: Some(gate),
            fail: false,
        });
        let caller = std::thread::current().id();
        // Five records are too many for the caller: the thread takes them and waits in
        // its sync for a permit.
        storage
            .submit(appends(&[b"1", b"2", b"3", b"4", b"5"]))
            .unwrap();
        // A small batch now must queue behind them, not run beside them.
        storage.submit(appends(&[b"6"])).unwrap();
        permit.send(()).unwrap();
        permit.send(()).unwrap();
        let mut counts = vec![reports.recv().unwrap()];
        if counts[0] != 6 {
            counts.push(reports.recv().unwrap());
        }
        assert_eq!(counts.last(), Some(&6));
        // Holding the state lock once means the thread finished its batches.
        drop(crate::lock(&storage.core.state));
        // The thread is idle with nothing queued: a small batch runs here, durable (and
        // reported) before `submit` returns.
        permit.send(()).unwrap();
        storage.submit(appends(&[b"7"])).unwrap();
        assert_eq!(reports.try_recv(), Ok(7));
        let appended = appended.lock().unwrap();
        let order: Vec<&[u8]> = appended.iter().map(|(payload, _)| &payload[..]).collect();
        assert_eq!(order, [b"1", b"2", b"3", b"4", b"5", b"6", b"7"]);
        assert!(appended[..6].iter().all(|(_, thread)| *thread != caller));
        assert_eq!(appended[6].1, caller);
    }

    #[test]
    fn checkpoints_and_batches_without_a_sync_go_to_the_thread() {
        let payload = |bytes: usize| StorageJob::Append {
            payload: vec![1; bytes],
            checkpoint: false,
        };
        assert!(runs_inline(&[payload(10), StorageJob::Sync]));
        assert!(!runs_inline(&[payload(10)]), "no sync");
        assert!(!runs_inline(&[
            payload(INLINE_MAX_BYTES + 1),
            StorageJob::Sync
        ]));
        assert!(!runs_inline(&[
            StorageJob::Append {
                payload: vec![1],
                checkpoint: true,
            },
            StorageJob::Sync,
        ]));
    }

    #[test]
    fn a_failure_on_the_caller_is_returned_and_later_jobs_are_dropped() {
        let appended = Arc::new(Mutex::new(Vec::new()));
        let mut storage = never_durable(&appended, true);
        let error = storage.submit(appends(&[b"a"])).unwrap_err();
        assert!(error.to_string().contains("the disk is gone"), "{error}");
        storage.submit(appends(&[b"b"])).unwrap();
        storage.submit(appends(&[b"c".as_slice(); 8])).unwrap();
        drop(storage);
        let order: Vec<Vec<u8>> = appended
            .lock()
            .unwrap()
            .iter()
            .map(|(payload, _)| payload.clone())
            .collect();
        assert_eq!(order, [b"a".to_vec()]);
    }

    #[test]
    fn after_a_slow_write_on_the_caller_the_thread_takes_every_batch() {
        let appended = Witnessed::default();
        let (mut storage, reports) = reporting(WitnessLog {
            appended: appended.clone(),
            gate: None,
            fail: false,
        });
        // Every write counts as slow.
        storage.inline_slow = Duration::ZERO;
        storage.submit(appends(&[b"slow"])).unwrap();
        assert_eq!(reports.try_recv(), Ok(1), "ran on the caller");
        storage.submit(appends(&[b"next"])).unwrap();
        assert_eq!(reports.recv(), Ok(2));
        let caller = std::thread::current().id();
        let threads: Vec<bool> = appended
            .lock()
            .unwrap()
            .iter()
            .map(|(_, thread)| *thread == caller)
            .collect();
        assert_eq!(threads, [true, false]);
    }

    #[test]
    fn a_group_commit_syncs_and_reports_only_when_asked() {
        let (report, reports) = mpsc::channel();
        let report = Mutex::new(report);
        let durable = Arc::new(Mutex::new(Vec::new()));
        let core = StorageCore {
            state: Mutex::new(StorageState {
                log: Box::new(MemoryLog::new(durable.clone())),
                appended: 0,
                durable: 0,
                failed: false,
            }),
            queued: AtomicUsize::new(0),
            on_durable: Box::new(move |count| report.lock().unwrap().send(count).unwrap()),
        };
        let mut state = crate::lock(&core.state);
        let mut jobs = appends(&[b"a", b"b"]);
        jobs.pop(); // no sync
        core.commit(&mut state, jobs, || None).unwrap();
        assert!(
            reports.try_recv().is_err(),
            "nothing reported without a sync"
        );
        assert!(durable.lock().unwrap().is_empty(), "nothing synced");
        let mut more = vec![appends(&[b"c"])];
        core.commit(&mut state, vec![StorageJob::Sync], || more.pop())
            .unwrap();
        assert_eq!(reports.try_recv(), Ok(3), "one sync for the three");
        assert_eq!(durable.lock().unwrap().len(), 3);
        // A sync with nothing new still answers (the node may wait on the count).
        core.commit(&mut state, vec![StorageJob::Sync], || None)
            .unwrap();
        assert_eq!(reports.try_recv(), Ok(3));
    }

    #[test]
    fn checkpoints_and_compactions_count_as_records() {
        let durable = Arc::new(Mutex::new(Vec::new()));
        let (mut storage, reports) = reporting(MemoryLog::new(durable.clone()));
        let writer = |bytes: &'static [u8]| -> Box<WriteRecord> {
            Box::new(move |out: &mut dyn std::io::Write| out.write_all(bytes))
        };
        storage
            .submit(vec![
                StorageJob::Checkpoint(writer(b"state")),
                StorageJob::Append {
                    payload: b"e".to_vec(),
                    checkpoint: false,
                },
                StorageJob::Compaction(writer(b"compacted")),
                StorageJob::Sync,
            ])
            .unwrap();
        assert_eq!(reports.recv(), Ok(3));
        assert_eq!(*durable.lock().unwrap(), [b"compacted".to_vec()]);
    }

    #[test]
    fn a_closed_storage_drops_every_later_job() {
        let appended = Witnessed::default();
        let mut storage = never_durable(&appended, false);
        storage.close();
        storage.submit(appends(&[b"small"])).unwrap();
        storage.submit(appends(&[b"x".as_slice(); 8])).unwrap();
        drop(storage);
        assert!(appended.lock().unwrap().is_empty());
    }
}
