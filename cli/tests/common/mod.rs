//! A cluster of real `synod server` processes on OS-chosen loopback ports, for tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on now and that this test process has not handed out
/// before. The OS may offer a port again once its probe socket is closed, and a port given
/// to two members makes the second fail to start while clients meant for it talk to the
/// first (a peer port then receives gRPC traffic); so ports are never reused here.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// `size` members named m1.. with data in a temporary directory; killed on drop.
pub struct ProcessCluster {
    members: Vec<Option<Child>>,
    arguments: Vec<Vec<String>>,
    /// Client endpoints as host:port, by member index.
    pub endpoints: Vec<String>,
    /// `name=peerURL` of every member, by index.
    peers: Vec<String>,
    /// `name=clientURL` of every member, by index.
    clients: Vec<String>,
    extra: Vec<String>,
    data: tempfile::TempDir,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            // Keep the members' logs and data for whoever reads the failure.
            let kept = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap()).keep();
            eprintln!(
                "the cluster's data and member logs are kept in {}",
                kept.display()
            );
        }
    }
}

impl ProcessCluster {
    /// Starts the members (they elect a leader on their own).
    pub fn start(size: usize) -> ProcessCluster {
        Self::start_with(size, &[])
    }

    /// Like [`ProcessCluster::start`], passing `extra` flags to every member.
    pub fn start_with(size: usize, extra: &[&str]) -> ProcessCluster {
        let data = tempfile::tempdir().unwrap();
        let names: Vec<String> = (1..=size).map(|index| format!("m{index}")).collect();
        let peers: Vec<String> = names
            .iter()
            .map(|name| format!("{name}=http://127.0.0.1:{}", free_port()))
            .collect();
        let clients: Vec<String> = names
            .iter()
            .map(|name| format!("{name}=http://127.0.0.1:{}", free_port()))
            .collect();
        let url = |entry: &String| entry.split_once('=').unwrap().1.to_string();
        let arguments: Vec<Vec<String>> = names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                vec![
                    "server".into(),
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    data.path().join(name).display().to_string(),
                    "--listen-peer-url".into(),
                    url(&peers[index]),
                    "--listen-client-url".into(),
                    url(&clients[index]),
                    "--initial-cluster".into(),
                    peers.join(","),
                    "--initial-cluster-clients".into(),
                    clients.join(","),
                    "--heartbeat-ms".into(),
                    "20".into(),
                    "--election-timeout-ms".into(),
                    "200".into(),
                ]
                .into_iter()
                .chain(extra.iter().map(|flag| flag.to_string()))
                .collect()
            })
            .collect();
        let mut cluster = ProcessCluster {
            members: Vec::new(),
            arguments,
            endpoints: clients
                .iter()
                .map(|entry| url(entry).trim_start_matches("http://").to_string())
                .collect(),
            peers,
            clients,
            extra: extra.iter().map(|flag| flag.to_string()).collect(),
            data,
        };
        for index in 0..size {
            let child = cluster.spawn(index);
            cluster.members.push(Some(child));
        }
        cluster
    }

    /// A peer URL for a member not started yet (to announce with MemberAdd first).
    pub fn next_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", free_port())
    }

    /// Starts one more member at `peer_url` that joins the running cluster
    /// (`--initial-cluster-state existing`), after a MemberAdd announced it; returns its
    /// index.
    pub fn join(&mut self, peer_url: &str) -> usize {
        let index = self.members.len();
        let name = format!("m{}", index + 1);
        let client_url = format!("http://127.0.0.1:{}", free_port());
        self.peers.push(format!("{name}={peer_url}"));
        self.clients.push(format!("{name}={client_url}"));
        let mut arguments: Vec<String> = vec![
            "server".into(),
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            self.data.path().join(&name).display().to_string(),
            "--listen-peer-url".into(),
            peer_url.into(),
            "--listen-client-url".into(),
            client_url.clone(),
            "--initial-cluster".into(),
            self.peers.join(","),
            "--initial-cluster-clients".into(),
            self.clients.join(","),
            "--initial-cluster-state".into(),
            "existing".into(),
            "--heartbeat-ms".into(),
            "20".into(),
            "--election-timeout-ms".into(),
            "200".into(),
        ];
        arguments.extend(self.extra.iter().cloned());
        self.arguments.push(arguments);
        self.endpoints
            .push(client_url.trim_start_matches("http://").to_string());
        self.members.push(None);
        let child = self.spawn(index);
        self.members[index] = Some(child);
        index
    }

    /// The process id of member `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].as_ref().map(Child::id)
    }

    /// Where member `index` writes its log (stderr), across restarts.
    pub fn log_path(&self, index: usize) -> std::path::PathBuf {
        self.data.path().join(format!("member-{index}.log"))
    }

    /// Whether member `index` runs, and the end of its log: for failure messages.
    pub fn describe(&mut self, index: usize) -> String {
        let state = match self.members[index].as_mut().map(|child| child.try_wait()) {
            None => "killed by the test".to_string(),
            Some(Ok(None)) => "running".to_string(),
            Some(Ok(Some(status))) => format!("exited: {status}"),
            Some(Err(error)) => format!("unknown: {error}"),
        };
        let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("member {index} {state}; log tail:\n{}", tail.join("\n"))
    }

    fn spawn(&self, index: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_synod"))
            .args(&self.arguments[index])
            .env(
                "RUST_LOG",
                std::env::var("SYNOD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL: no shutdown path runs, unsynced data is lost as in a power cut.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again from its data directory.
    pub fn restart(&mut self, index: usize) {
        assert!(self.members[index].is_none(), "member {index} is running");
        let child = self.spawn(index);
        self.members[index] = Some(child);
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        self.data.path()
    }
}

/// How long a test waits for any one condition.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Retries `attempt` every 50 ms until it returns `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
