//! A cluster of real `synod server` processes on OS-chosen loopback ports, for tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `size` members named m1.. with data in a temporary directory; killed on drop.
pub struct ProcessCluster {
    members: Vec<Option<Child>>,
    arguments: Vec<Vec<String>>,
    /// Client endpoints as host:port, by member index.
    pub endpoints: Vec<String>,
    data: tempfile::TempDir,
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

impl ProcessCluster {
    /// Starts the members (they elect a leader on their own).
    pub fn start(size: usize) -> ProcessCluster {
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
            })
            .collect();
        let mut cluster = ProcessCluster {
            members: Vec::new(),
            arguments,
            endpoints: clients
                .iter()
                .map(|entry| url(entry).trim_start_matches("http://").to_string())
                .collect(),
            data,
        };
        for index in 0..size {
            let child = cluster.spawn(index);
            cluster.members.push(Some(child));
        }
        cluster
    }

    fn spawn(&self, index: usize) -> Child {
        Command::new(env!("CARGO_BIN_EXE_synod"))
            .args(&self.arguments[index])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
