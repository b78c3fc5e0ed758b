//! Where a node's records go, and the group-commit thread that makes them durable.
//!
//! The node task never blocks on a disk: it hands each record to a dedicated storage thread
//! in order, and asks for a sync. The thread drains every job queued before it fsyncs, so
//! one fsync covers all records appended since the previous one (group commit), then tells
//! the node how many records of its current life are durable; the node's
//! [`synod_core::node::OutputGate`] releases the sends and replies that were waiting for them.

use std::sync::{Arc, Mutex, mpsc};

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

/// Runs `log` on its own thread. Jobs arrive on the returned sender in batches, in order;
/// after each group commit `on_durable(records)` reports how many records of this life are
/// durable, and on failure `on_error` is called once and the thread ends.
///
/// The node's task sends one batch per batch of inputs it handled: each send to an idle
/// thread is a wake-up (a futex call and two context switches), and with one send per
/// record the thread woke about five times per fsync under load.
pub(crate) fn spawn_storage_thread<L: RecordLog>(
    mut log: L,
    on_durable: impl Fn(u64) + Send + 'static,
    on_error: impl FnOnce(LogError) + Send + 'static,
) -> mpsc::Sender<Vec<StorageJob>> {
    let (sender, receiver) = mpsc::channel::<Vec<StorageJob>>();
    std::thread::Builder::new()
        .name("synod-storage".into())
        .spawn(move || {
            let mut appended = 0u64;
            let mut durable = 0u64;
            let run_one =
                |log: &mut L, job: StorageJob, appended: &mut u64| -> Result<bool, LogError> {
                    match job {
                        StorageJob::Append {
                            payload,
                            checkpoint,
                        } => {
                            log.append(&payload, checkpoint)?;
                            crate::metrics::record_wal_append(payload.len());
                            *appended += 1;
                            Ok(false)
                        }
                        StorageJob::Checkpoint(mut write) => {
                            log.append_checkpoint_with(&mut *write)?;
                            *appended += 1;
                            Ok(false)
                        }
                        StorageJob::Compaction(write) => {
                            log.append_compaction_with(write)?;
                            *appended += 1;
                            Ok(false)
                        }
                        StorageJob::Sync => Ok(true),
                    }
                };
            let run = |log: &mut L, jobs: Vec<StorageJob>, appended: &mut u64| {
                let mut sync_wanted = false;
                for job in jobs {
                    sync_wanted |= run_one(log, job, appended)?;
                }
                Ok::<bool, LogError>(sync_wanted)
            };
            while let Ok(jobs) = receiver.recv() {
                let result = (|| {
                    let mut sync_wanted = run(&mut log, jobs, &mut appended)?;
                    // Group commit: take everything already queued before paying for an fsync.
                    while let Ok(jobs) = receiver.try_recv() {
                        sync_wanted |= run(&mut log, jobs, &mut appended)?;
                    }
                    if sync_wanted && appended > durable {
                        let started = std::time::Instant::now();
                        log.sync()?;
                        crate::metrics::record_fsync(started.elapsed());
                        durable = appended;
                        on_durable(durable);
                    } else if sync_wanted {
                        // Nothing new: the node may still be waiting on an earlier count.
                        on_durable(durable);
                    }
                    Ok(())
                })();
                if let Err(error) = result {
                    on_error(error);
                    return;
                }
            }
        })
        .expect("the OS can start a thread");
    sender
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
        let (report, reports) = mpsc::channel();
        let jobs = spawn_storage_thread(
            MemoryLog::new(durable.clone()),
            move |count| report.send(count).unwrap(),
            |error| panic!("{error}"),
        );
        for payload in [b"x", b"y", b"z"] {
            jobs.send(vec![StorageJob::Append {
                payload: payload.to_vec(),
                checkpoint: false,
            }])
            .unwrap();
        }
        jobs.send(vec![StorageJob::Sync]).unwrap();
        assert_eq!(reports.recv().unwrap(), 3);
        assert_eq!(durable.lock().unwrap().len(), 3);
        // A batch is written in order and synced once.
        jobs.send(vec![
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
}
