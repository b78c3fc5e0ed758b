//! A local cluster of `synod server` processes on free 127.0.0.1 ports, used by `synod up`
//! and by `synod bench` when it starts the Synod side itself.

use anyhow::{Context, Result, bail};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Asks the OS for `count` distinct free loopback ports: binds them all at once (so none
/// repeats), then releases them for the members to bind.
pub fn free_loopback_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot bind a loopback port")?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// Running members; dropping this stops them (SIGTERM, then SIGKILL after 5 s).
pub struct LocalCluster {
    members: Vec<Child>,
    /// Client URLs (`http://127.0.0.1:PORT`), by member.
    pub endpoints: Vec<String>,
    /// Metrics and health base URLs, by member.
    pub metrics: Vec<String>,
    /// Data directories, by member.
    pub data_dirs: Vec<PathBuf>,
    /// The directory holding every member's data.
    pub data_dir: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

/// A port probed free here may be taken by another process (an outgoing connection's
/// ephemeral port, say) before its member binds it; a cluster in a fresh directory starts
/// again on new ports this many times.
const START_ATTEMPTS: usize = 3;
/// How long a started member may take to accept connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one attempt to start the members failed.
enum Failure {
    /// A member exited before it accepted connections (a port taken, usually).
    MemberExited(String),
    /// Anything else: starting again would not help.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::Other(error)
    }
}

impl LocalCluster {
    /// Starts `count` members with data under `data_dir` (a fresh temporary directory, removed
    /// on drop, when `None`) and waits until each accepts connections. `quiet` members log
    /// only warnings.
    pub fn start(count: usize, data_dir: Option<PathBuf>, quiet: bool) -> Result<LocalCluster> {
        let executable = std::env::current_exe().context("cannot find the synod executable")?;
        Self::start_using(&executable, count, data_dir, quiet, LISTEN_TIMEOUT)
    }

    /// [`LocalCluster::start`] with `executable server ...` as each member's command.
    fn start_using(
        executable: &Path,
        count: usize,
        data_dir: Option<PathBuf>,
        quiet: bool,
        listen_timeout: Duration,
    ) -> Result<LocalCluster> {
        // Members that fail in a directory that held data before may have changed it; only a
        // fresh one is emptied and tried again.
        let fresh = data_dir.as_ref().is_none_or(|path| !path.exists());
        let (data_dir, temporary) = match data_dir {
            Some(path) => (path, None),
            None => {
                let temporary = tempfile::Builder::new()
                    .prefix("synod-up-")
                    .tempdir()
                    .context("cannot create a temporary data directory")?;
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        let mut attempt = 1;
        loop {
            match Self::launch(executable, count, &data_dir, quiet, listen_timeout) {
                Ok(mut cluster) => {
                    cluster._temporary = temporary;
                    return Ok(cluster);
                }
                Err(Failure::MemberExited(why)) if fresh && attempt < START_ATTEMPTS => {
                    eprintln!("{why}; starting the cluster again on new ports");
                    for entry in fs::read_dir(&data_dir).into_iter().flatten().flatten() {
                        fs::remove_dir_all(entry.path()).with_context(|| {
                            format!("cannot clear {} to start again", entry.path().display())
                        })?;
                    }
                    attempt += 1;
                }
                Err(Failure::MemberExited(why)) if fresh => {
                    bail!("{why}, on each of {attempt} attempts with new ports")
                }
                Err(Failure::MemberExited(why)) => {
                    bail!(
                        "{why}; its data directory {} held data before",
                        data_dir.display()
                    )
                }
                Err(Failure::Other(error)) => return Err(error),
            }
        }
    }

    /// One attempt: new ports, `count` members started, each waited for until it listens.
    /// Dropping the result on failure stops the members already started.
    fn launch(
        executable: &Path,
        count: usize,
        data_dir: &Path,
        quiet: bool,
        listen_timeout: Duration,
    ) -> Result<LocalCluster, Failure> {
        let names: Vec<String> = (1..=count).map(|index| format!("m{index}")).collect();
        let ports = free_loopback_ports(3 * count)?;
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        let mut metrics = Vec::new();
        for (name, ports) in names.iter().zip(ports.chunks(3)) {
            peers.push(format!("{name}=http://127.0.0.1:{}", ports[0]));
            clients.push(format!("{name}=http://127.0.0.1:{}", ports[1]));
            metrics.push(format!("http://127.0.0.1:{}", ports[2]));
        }
        let url = |entry: &String| entry.split_once('=').map(|(_, url)| url.to_string());
        let mut cluster = LocalCluster {
            members: Vec::new(),
            endpoints: clients.iter().filter_map(url).collect(),
            metrics,
            data_dirs: names.iter().map(|name| data_dir.join(name)).collect(),
            data_dir: data_dir.to_path_buf(),
            _temporary: None,
        };
        for (index, name) in names.iter().enumerate() {
            let mut command = Command::new(executable);
            command
                .arg("server")
                .args(["--name", name])
                .arg("--data-dir")
                .arg(&cluster.data_dirs[index])
                .args(["--listen-peer-url", &url(&peers[index]).unwrap_or_default()])
                .args(["--listen-client-url", &cluster.endpoints[index]])
                .args(["--initial-cluster", &peers.join(",")])
                .args(["--initial-cluster-clients", &clients.join(",")])
                .args(["--listen-metrics-url", &cluster.metrics[index]])
                .args(["--worker-threads", &share_of_cores(count).to_string()])
                .stdin(Stdio::null());
            if quiet {
                command.env("RUST_LOG", "warn");
            }
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM
                // to the member if this process dies, so no member outlives its parent.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
            }
            let child = command
                .spawn()
                .with_context(|| format!("cannot start member {name}"))?;
            cluster.members.push(child);
        }
        let deadline = Instant::now() + listen_timeout;
        let mut waiting: Vec<usize> = (0..count).collect();
        // A member that listens may still exit on a later port (metrics), so every member
        // is checked on every round, and once more after all of them listen.
        loop {
            for (index, member) in cluster.members.iter_mut().enumerate() {
                if let Some(status) = member.try_wait().context("cannot check on a member")? {
                    return Err(Failure::MemberExited(format!(
                        "member {} exited ({status}) while starting",
                        names[index]
                    )));
                }
            }
            if waiting.is_empty() {
                break;
            }
            waiting.retain(|&index| {
                let address = cluster.endpoints[index].trim_start_matches("http://");
                std::net::TcpStream::connect(address).is_err()
            });
            if let Some(&index) = waiting.first()
                && Instant::now() > deadline
            {
                return Err(Failure::Other(anyhow::anyhow!(
                    "member at {} did not start listening in time",
                    cluster.endpoints[index]
                )));
            }
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(cluster)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.members {
            // SIGTERM first so each member shuts down cleanly; then make sure.
            #[cfg(unix)]
            // SAFETY: kill(2) on a child's pid we own; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.members {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The worker threads each of `members` processes sharing this machine gets: an equal share
/// of its cores, at least one. More threads than cores only add context switches between
/// members: on 2 cores, 3 members at one thread each used 17% less CPU per serializable
/// read than at two (21.5 against 25.8-27.0 µs, cpu per op over 5 s runs).
pub fn share_of_cores(members: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / members.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::{LISTEN_TIMEOUT, LocalCluster};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// A stand-in for the server, run as `member.sh server --name N --data-dir D ...`. It
    /// appends its cluster (`--initial-cluster`, new ports each attempt) to `log`, and
    /// `stale` first if its data directory still holds what an earlier run left there; then
    /// it runs `then`.
    fn stand_in(directory: &Path, log: &Path, then: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = directory.join("member.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ -e \"$5/left\" ] && echo stale >> {log}\nmkdir -p \"$5\" && touch \"$5/left\"\necho \"${{11}}\" >> {log}\n{then}\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// The distinct clusters the stand-ins logged: one per attempt (the member whose exit
    /// ended an attempt always got as far as logging).
    fn attempts(log: &Path) -> usize {
        let runs = std::fs::read_to_string(log).unwrap();
        let clusters: std::collections::BTreeSet<&str> =
            runs.lines().filter(|line| *line != "stale").collect();
        clusters.len()
    }

    /// Starts `count` stand-in members in `data_dir`, which must fail; returns the error.
    fn failed_start(member: &Path, count: usize, data_dir: PathBuf, timeout: Duration) -> String {
        let error = LocalCluster::start_using(member, count, Some(data_dir), true, timeout)
            .err()
            .expect("the stand-in members make no cluster");
        format!("{error:#}")
    }

    #[test]
    fn members_that_exit_in_a_fresh_directory_are_started_again_on_new_ports() {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("log");
        // A member whose port was taken exits at once.
        let member = stand_in(scratch.path(), &log, "exit 1");
        let message = failed_start(&member, 3, scratch.path().join("cluster"), LISTEN_TIMEOUT);
        assert!(message.contains("exited"), "{message}");
        assert!(message.contains("on each of 3 attempts"), "{message}");
        assert_eq!(attempts(&log), 3);
        let runs = std::fs::read_to_string(&log).unwrap();
        assert!(
            !runs.contains("stale"),
            "each attempt starts on cleared directories"
        );
    }

    #[test]
    fn a_directory_that_held_data_is_not_cleared_for_another_attempt() {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("log");
        let member = stand_in(scratch.path(), &log, "exit 1");
        let data_dir = scratch.path().join("cluster");
        let kept = data_dir.join("m1").join("kept");
        std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
        std::fs::write(&kept, b"data").unwrap();
        let message = failed_start(&member, 3, data_dir, LISTEN_TIMEOUT);
        assert!(message.contains("held data before"), "{message}");
        assert!(kept.exists(), "the data is left alone");
        assert_eq!(attempts(&log), 1);
    }

    #[test]
    fn a_member_that_never_listens_fails_the_start_after_the_timeout() {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("log");
        let member = stand_in(scratch.path(), &log, "exec sleep 30");
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        let message = failed_start(&member, 1, scratch.path().join("cluster"), timeout);
        assert!(
            message.contains("did not start listening in time"),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the timeout holds"
        );
        assert_eq!(attempts(&log), 1, "a timeout is not retried");
    }
}
