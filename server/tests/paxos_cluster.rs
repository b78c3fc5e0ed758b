//! The unmodified Multi-Paxos node, served by the real runtime: three nodes on loopback
//! ports the OS picks, real timers and TCP, records in memory logs that survive a "crash"
//! (dropping a node with whatever it had not synced). Writes acknowledged before the
//! leader is killed must still be readable after it restarts from its durable records.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{ClientId, NodeId};
use synod_protocols::kv_state::{KvError, KvRequest, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant};
use synod_server::log::MemoryLog;
use synod_server::runtime::{Boot, NodeConfig, NodeHandle};
use tokio::net::TcpListener;

type KvPaxos = PaxosNode<SessionKv>;
type Disk = Arc<Mutex<Vec<Vec<u8>>>>;

fn config() -> PaxosConfig {
    PaxosConfig {
        heartbeat_interval: Duration::from_millis(10),
        election_timeout_min: Duration::from_millis(60),
        election_timeout_max: Duration::from_millis(120),
    }
}

struct Cluster {
    nodes: BTreeMap<NodeId, Option<NodeHandle<KvPaxos>>>,
    disks: BTreeMap<NodeId, Disk>,
    peers: BTreeMap<NodeId, SocketAddr>,
}

impl Cluster {
    async fn start(size: u32) -> Cluster {
        let mut listeners = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for id in 0..size {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            peers.insert(NodeId(id), listener.local_addr().unwrap());
            listeners.insert(NodeId(id), listener);
        }
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            peers,
        };
        for (id, listener) in listeners {
            let disk = Disk::default();
            cluster.disks.insert(id, disk.clone());
            let handle = cluster.launch(id, listener, disk, Boot::Fresh);
            cluster.nodes.insert(id, Some(handle));
        }
        cluster
    }

    fn launch(
        &self,
        id: NodeId,
        listener: TcpListener,
        disk: Disk,
        boot: Boot,
    ) -> NodeHandle<KvPaxos> {
        NodeHandle::start(
            KvPaxos::new(PaxosVariant::Correct, config()),
            NodeConfig {
                id,
                peers: self.peers.clone(),
            },
            listener,
            MemoryLog::new(disk),
            boot,
        )
        .unwrap()
    }

    async fn crash(&mut self, id: NodeId) {
        if let Some(handle) = self.nodes.get_mut(&id).and_then(Option::take) {
            handle.stop().await;
        }
    }

    async fn restart(&mut self, id: NodeId) {
        // The old listener is closed by stop(); the port is free to bind again.
        let listener = TcpListener::bind(self.peers[&id]).await.unwrap();
        let disk = self.disks[&id].clone();
        let records = disk.lock().unwrap().clone();
        let handle = self.launch(id, listener, disk, Boot::Recover(records));
        self.nodes.insert(id, Some(handle));
    }

    /// Runs one command to completion as `client`, following leader hints and retrying the
    /// same sequence number (the session makes retries safe). Returns the output and the
    /// node that answered.
    async fn run(&self, client: ClientId, sequence: u64, command: KvCommand) -> (KvOutput, NodeId) {
        let request = KvRequest {
            sequence,
            acknowledged_below: sequence,
            command,
        };
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut target = ids[0];
        let next = |target: NodeId| {
            ids[(ids.iter().position(|&id| id == target).unwrap() + 1) % ids.len()]
        };
        // Each failed attempt waits 5 ms (an election takes 60-120 ms), so this bounds the
        // wait at about 10 s.
        for _ in 0..2_000 {
            let Some(Some(node)) = self.nodes.get(&target) else {
                target = next(target);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            match node
                .call(client, request.clone(), Duration::from_millis(300))
                .await
            {
                Ok(response) if response.sequence == sequence => match response.result {
                    Ok(output) => return (output, target),
                    Err(KvError::NotLeader { hint: Some(hint) }) if hint != target => {
                        target = hint;
                    }
                    Err(KvError::NotLeader { .. }) => {
                        // No leader known yet: give the election a moment.
                        target = next(target);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("session refused the request: {other}"),
                },
                _ => target = next(target),
            }
        }
        panic!("no answer for {request:?} after 2000 attempts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_leader_crashing_and_restarting() {
    let mut cluster = Cluster::start(3).await;
    let client = ClientId(7);
    let mut sequence = 0;
    let mut leader = NodeId(0);
    for index in 0..20 {
        sequence += 1;
        let (output, answered_by) = cluster
            .run(
                client,
                sequence,
                KvCommand::Append {
                    key: "log".into(),
                    value: format!("{index};"),
                },
            )
            .await;
        assert_eq!(output, KvOutput::Done);
        leader = answered_by;
    }

    // Kill the leader: its unsynced records are gone, but nothing it acknowledged may be.
    cluster.crash(leader).await;
    for index in 20..30 {
        sequence += 1;
        let (_, answered_by) = cluster
            .run(
                client,
                sequence,
                KvCommand::Append {
                    key: "log".into(),
                    value: format!("{index};"),
                },
            )
            .await;
        assert_ne!(answered_by, leader, "a crashed node cannot answer");
    }
    cluster.restart(leader).await;

    let expected: String = (0..30).map(|index| format!("{index};")).collect();
    sequence += 1;
    let (output, _) = cluster
        .run(client, sequence, KvCommand::Get { key: "log".into() })
        .await;
    assert_eq!(output, KvOutput::Value(Some(expected.clone())));

    // The restarted node catches up to the same state (it recovered its promises and
    // accepted values from its records, then learned the rest from the new leader).
    let restarted = cluster.nodes[&leader].as_ref().unwrap();
    let mut caught_up = false;
    for _ in 0..400 {
        let value = restarted
            .inspect(|node| node.store().map().get("log").map(str::to_owned))
            .await
            .unwrap();
        if value.as_deref() == Some(expected.as_str()) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(caught_up, "the restarted node never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_record_that_cannot_be_decoded_is_an_error_not_a_panic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let result = NodeHandle::start(
        KvPaxos::new(PaxosVariant::Correct, config()),
        NodeConfig {
            id: NodeId(0),
            peers: BTreeMap::from([(NodeId(0), address)]),
        },
        listener,
        MemoryLog::default(),
        Boot::Recover(vec![vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]),
    );
    let error = result.err().expect("garbage records must not start a node");
    assert!(error.to_string().contains("record 0"), "{error}");
}
