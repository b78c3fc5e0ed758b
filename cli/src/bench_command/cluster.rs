//! The systems a benchmark runs against: endpoints given on the command line, a local etcd
//! cluster started for the run, or a local Synod cluster.
//!
//! A [`Launcher`] starts a cluster and returns a [`RunningCluster`], whose drop stops it and
//! removes its data. The Synod side is a launcher too: given endpoints, or a local cluster.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use synod_server::api::etcdserverpb::RangeRequest;
use synod_server::api::etcdserverpb::kv_client::KvClient;

/// A cluster the benchmark may load: where its clients connect, and what to stop afterwards.
pub struct RunningCluster {
    /// Client URLs, one per member (`http://127.0.0.1:PORT`).
    pub endpoints: Vec<String>,
    /// Process ids of members this program started, for reading their memory use; empty for
    /// clusters started by someone else.
    pub member_pids: Vec<u32>,
    /// Data directories of members this program started, for measuring their size.
    pub member_data_dirs: Vec<PathBuf>,
    /// Stops the cluster when dropped.
    _guard: Box<dyn Send>,
}

impl RunningCluster {
    /// A cluster served at `endpoints` that stops when `guard` is dropped: the shape in which
    /// a local Synod cluster plugs in.
    pub fn new(endpoints: Vec<String>, guard: Box<dyn Send>) -> RunningCluster {
        RunningCluster {
            endpoints,
            member_pids: Vec::new(),
            member_data_dirs: Vec::new(),
            _guard: guard,
        }
    }

    /// A cluster someone else runs: nothing to stop.
    pub fn external(endpoints: Vec<String>) -> RunningCluster {
        RunningCluster::new(endpoints, Box::new(()))
    }

    /// Resident memory of each member this program started, in bytes (None if unreadable).
    pub fn member_rss_bytes(&self) -> Vec<Option<u64>> {
        self.member_pids.iter().map(|&pid| rss_bytes(pid)).collect()
    }

    /// CPU time (user + system) the members this program started have used so far, in
    /// microseconds; None when there are none or one cannot be read.
    pub fn member_cpu_micros(&self) -> Option<u64> {
        if self.member_pids.is_empty() {
            return None;
        }
        self.member_pids
            .iter()
            .map(|pid| cpu_micros(&pid.to_string()))
            .sum()
    }

    /// Bytes on disk under each member's data directory.
    pub fn member_data_bytes(&self) -> Vec<u64> {
        self.member_data_dirs
            .iter()
            .map(|directory| directory_bytes(directory))
            .collect()
    }
}

/// Starts a cluster for one benchmark run.
pub trait Launcher {
    /// Starts the cluster and returns once it serves requests.
    fn start(&self) -> Result<RunningCluster>;
}

/// The Synod side of a comparison.
pub enum SynodLauncher {
    /// Endpoints given with `--endpoints`.
    Endpoints(Vec<String>),
    /// A local three-member cluster of `synod server` processes (as `synod up` starts), with
    /// their pids and data directories so memory is reported as for etcd.
    Local,
}

impl Launcher for SynodLauncher {
    fn start(&self) -> Result<RunningCluster> {
        match self {
            SynodLauncher::Endpoints(endpoints) => Ok(RunningCluster::external(endpoints.clone())),
            SynodLauncher::Local => {
                let local = crate::local_cluster::LocalCluster::start(3, None, true)?;
                let endpoints = local.endpoints.clone();
                wait_until_serving(&endpoints)?;
                let pids = local.pids();
                let data_dirs = local.data_dirs.clone();
                let mut cluster = RunningCluster::new(endpoints, Box::new(local));
                cluster.member_pids = pids;
                cluster.member_data_dirs = data_dirs;
                Ok(cluster)
            }
        }
    }
}

/// Starts `members` etcd processes on loopback, on ports the OS picks, with data in a fresh
/// temporary directory.
pub struct EtcdLauncher {
    /// The `etcd` binary.
    pub binary: PathBuf,
    /// How many members (1 or more; 3 for comparisons).
    pub members: usize,
}

/// How long a started etcd cluster may take to serve a linearizable read.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is probed while waiting.
const ETCD_READY_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A port the OS handed out may be taken by someone else before etcd binds it; start again
/// with new ports this many times.
const ETCD_START_ATTEMPTS: usize = 3;
/// How long a member may take to exit after SIGTERM before it is killed.
const ETCD_STOP_GRACE: Duration = Duration::from_secs(5);

impl Launcher for EtcdLauncher {
    fn start(&self) -> Result<RunningCluster> {
        let mut last_error = None;
        for _ in 0..ETCD_START_ATTEMPTS {
            match self.start_once() {
                Ok(cluster) => return Ok(cluster),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }
}

impl EtcdLauncher {
    fn start_once(&self) -> Result<RunningCluster> {
        if self.members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let ports = crate::local_cluster::free_loopback_ports(2 * self.members)?;
        let run_directory = unique_temp_dir("synod-bench-etcd")?;
        let mut cluster = EtcdProcesses {
            children: Vec::new(),
            run_directory,
        };
        let names: Vec<String> = (0..self.members)
            .map(|member| format!("m{member}"))
            .collect();
        let client_urls: Vec<String> = ports[..self.members]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let peer_urls: Vec<String> = ports[self.members..]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = cluster
            .run_directory
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        for member in 0..self.members {
            let log_path = cluster.run_directory.join(format!("{}.log", names[member]));
            let log = fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let child = Command::new(&self.binary)
                // The same share of the cores as the Synod members get (`synod up`).
                .env(
                    "GOMAXPROCS",
                    crate::local_cluster::share_of_cores(self.members).to_string(),
                )
                .arg("--name")
                .arg(&names[member])
                .arg("--data-dir")
                .arg(cluster.run_directory.join(&names[member]))
                .arg("--listen-client-urls")
                .arg(&client_urls[member])
                .arg("--advertise-client-urls")
                .arg(&client_urls[member])
                .arg("--listen-peer-urls")
                .arg(&peer_urls[member])
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_urls[member])
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(&token)
                // 1M keys of 256 B take about 0.8 GB; the default 2 GB quota leaves little
                // room for history, so allow 8 GB.
                .arg("--quota-backend-bytes")
                .arg("8589934592")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot run {}", self.binary.display()))?;
            cluster.children.push(child);
        }
        cluster.wait_until_ready(&client_urls)?;
        let member_pids = cluster.children.iter().map(Child::id).collect();
        let member_data_dirs = names
            .iter()
            .map(|name| cluster.run_directory.join(name))
            .collect();
        Ok(RunningCluster {
            endpoints: client_urls,
            member_pids,
            member_data_dirs,
            _guard: Box::new(cluster),
        })
    }
}

/// The etcd processes of one cluster; dropping stops them and removes their data.
struct EtcdProcesses {
    children: Vec<Child>,
    run_directory: PathBuf,
}

impl EtcdProcesses {
    /// Waits until every member answers a linearizable read (which needs an elected leader and
    /// a quorum), or a member exits, or the timeout passes.
    fn wait_until_ready(&mut self, client_urls: &[String]) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")?;
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        let mut ready = vec![false; client_urls.len()];
        loop {
            for (member, child) in self.children.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "etcd member m{member} exited ({status}) while starting; its log:\n{}",
                        self.log_tail(member)
                    );
                }
            }
            for (member, url) in client_urls.iter().enumerate() {
                if !ready[member] {
                    ready[member] = runtime.block_on(linearizable_read_succeeds(url));
                }
            }
            if ready.iter().all(|&member_ready| member_ready) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let member = ready
                    .iter()
                    .position(|&member_ready| !member_ready)
                    .unwrap_or(0);
                bail!(
                    "etcd did not serve reads within {ETCD_READY_TIMEOUT:?}; log of m{member}:\n{}",
                    self.log_tail(member)
                );
            }
            std::thread::sleep(ETCD_READY_PROBE_INTERVAL);
        }
    }

    fn log_tail(&self, member: usize) -> String {
        const LOG_TAIL_LINES: usize = 20;
        let text = fs::read_to_string(self.run_directory.join(format!("m{member}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for EtcdProcesses {
    fn drop(&mut self) {
        for child in &self.children {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with a pid of our own child that we have not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + ETCD_STOP_GRACE;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.run_directory);
    }
}

async fn linearizable_read_succeeds(url: &str) -> bool {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
    let probe = async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .ok()?;
        let request = RangeRequest {
            key: b"synod-bench/ready".to_vec(),
            ..Default::default()
        };
        KvClient::new(channel).range(request).await.ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}

fn unique_temp_dir(prefix: &str) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|time| time.as_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

/// Reads a process's resident set size from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) process `pid` (a number, or `self`) has used, in microseconds,
/// from `/proc/PID/stat`.
pub fn cpu_micros(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_micros_of_stat(&stat, clock_ticks_per_second()?)
}

/// utime + stime of a `/proc/PID/stat` line, in microseconds. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its closing parenthesis:
/// state is the first after it, utime the 12th and stime the 13th.
fn cpu_micros_of_stat(stat: &str, ticks_per_second: u64) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) * 1_000_000 / ticks_per_second.max(1))
}

fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&ticks| ticks > 0)
}

/// The total size of the files under `directory` (0 if it cannot be read).
fn directory_bytes(directory: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(directory) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Finds an `etcd` binary: `$SYNOD_ETCD_BIN`, then `etcd` on `PATH`, then where
/// `scripts/get-etcd.sh` installs it (`.tools/etcd/usr/bin/etcd` in the repository).
pub fn find_etcd() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SYNOD_ETCD_BIN") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "SYNOD_ETCD_BIN={} is not an executable file",
            path.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|directory| directory.join("etcd"));
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let installed = [repository, PathBuf::from(".")]
        .into_iter()
        .map(|root| root.join(".tools/etcd/usr/bin/etcd"));
    on_path.chain(installed).find(|path| is_executable(path)).ok_or_else(|| {
        anyhow::anyhow!(
            "no etcd binary found: run scripts/get-etcd.sh (it unpacks Debian's etcd-server into \
             .tools/etcd without starting a service), put etcd on PATH, or set SYNOD_ETCD_BIN"
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Waits until every endpoint answers a linearizable read (a leader is elected and a
/// quorum answers), for at most [`ETCD_READY_TIMEOUT`].
fn wait_until_serving(endpoints: &[String]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    for url in endpoints {
        while !runtime.block_on(linearizable_read_succeeds(url)) {
            if Instant::now() >= deadline {
                bail!(
                    "the local Synod cluster did not serve reads within {ETCD_READY_TIMEOUT:?} ({url})"
                );
            }
            std::thread::sleep(ETCD_READY_PROBE_INTERVAL);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A name with a space and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "4242 (synod (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_micros_of_stat(stat, 100), Some(3_000_000));
        assert_eq!(cpu_micros_of_stat("4242 (synod) S 1 2", 100), None);
        assert!(cpu_micros("self").is_some());
    }
}
