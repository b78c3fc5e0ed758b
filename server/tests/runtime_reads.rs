//! [`NodeHandle::try_read`] reads the node on the caller's task between the node task's
//! batches, hands the read back while the task holds the node, and refuses once the node
//! task ended (here: its storage failed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use synod_core::kv::KvCommand;
use synod_core::node::{ClientId, NodeId};
use synod_protocols::kv_state::{KvRequest, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant};
use synod_server::log::{LogError, MemoryLog, RecordLog};
use synod_server::runtime::{Boot, NodeConfig, NodeHandle, RuntimeError};
use tokio::net::TcpListener;

type KvPaxos = PaxosNode<SessionKv>;

/// A memory log whose syncs fail once `fail` is set.
struct FailingLog {
    log: MemoryLog,
    fail: Arc<AtomicBool>,
}

impl RecordLog for FailingLog {
    fn append(&mut self, payload: &[u8], checkpoint: bool) -> Result<(), LogError> {
        self.log.append(payload, checkpoint)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LogError::Other("injected sync failure".into()));
        }
        self.log.sync()
    }
}

/// Polls `check` every 5 ms until it holds, for at most 10 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_run_between_batches_yield_to_a_busy_task_and_stop_with_the_node() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(
        NodeHandle::start(
            KvPaxos::new(
                PaxosVariant::Correct,
                PaxosConfig {
                    heartbeat_interval: Duration::from_millis(10),
                    election_timeout_min: Duration::from_millis(20),
                    election_timeout_max: Duration::from_millis(40),
                },
            ),
            NodeConfig {
                id: NodeId(0),
                peers: BTreeMap::from([(NodeId(0), address)]),
            },
            listener,
            FailingLog {
                log: MemoryLog::default(),
                fail: fail.clone(),
            },
            Boot::Fresh,
        )
        .unwrap(),
    );
    let read = |handle: &NodeHandle<KvPaxos>| handle.try_read(|node| node.store().map().len());

    // Between batches the read runs here.
    until("a read on the caller's task", || {
        matches!(read(&handle), Ok(Ok(0)))
    })
    .await;

    // While the node task is inside a handler, the read is handed back unrun.
    let (entered, entered_rx) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .inspect(move |_| {
                    let _ = entered.send(());
                    let _ = release_rx.recv_timeout(Duration::from_secs(10));
                })
                .await
        }
    });
    entered_rx.await.unwrap();
    assert!(
        matches!(read(&handle), Ok(Err(_))),
        "a read ran while the node task held the node"
    );
    // `read` falls back to the node's task, which answers once the handler is done.
    let through_task = tokio::spawn({
        let handle = handle.clone();
        async move { handle.read(|node| node.store().map().len()).await }
    });
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    assert_eq!(through_task.await.unwrap(), Ok(0));
    until("reads on the caller's task again", || {
        matches!(read(&handle), Ok(Ok(0)))
    })
    .await;

    // Storage fails: the node task ends, and nothing reads the node any more.
    fail.store(true, Ordering::SeqCst);
    let mut sequence = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(read(&handle), Err(RuntimeError::Stopped)) {
        assert!(Instant::now() < deadline, "the node still serves reads");
        sequence += 1;
        let request = KvRequest {
            sequence,
            acknowledged_below: sequence,
            command: KvCommand::Append {
                key: "k".into(),
                value: "v".into(),
            },
        };
        // Any write makes the node sync; the answer does not matter.
        let _ = handle
            .call(ClientId(1), request, Duration::from_millis(20))
            .await;
    }
    assert_eq!(
        handle.read(|node| node.store().map().len()).await,
        Err(RuntimeError::Stopped)
    );
}
