//! A local cluster of `synod server` processes on free 127.0.0.1 ports, used by `synod up`
//! and by `synod bench` when it starts the Synod side itself.

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port, chosen by the OS.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
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

impl LocalCluster {
    /// Starts `count` members with data under `data_dir` (a fresh temporary directory, removed
    /// on drop, when `None`) and waits until each accepts connections. `quiet` members log
    /// only warnings.
    pub fn start(count: usize, data_dir: Option<PathBuf>, quiet: bool) -> Result<LocalCluster> {
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
        let names: Vec<String> = (1..=count).map(|index| format!("m{index}")).collect();
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        let mut metrics = Vec::new();
        for name in &names {
            peers.push(format!("{name}=http://127.0.0.1:{}", free_port()?));
            clients.push(format!("{name}=http://127.0.0.1:{}", free_port()?));
            metrics.push(format!("http://127.0.0.1:{}", free_port()?));
        }
        let url = |entry: &String| entry.split_once('=').map(|(_, url)| url.to_string());
        let executable = std::env::current_exe().context("cannot find the synod executable")?;
        let mut cluster = LocalCluster {
            members: Vec::new(),
            endpoints: clients.iter().filter_map(url).collect(),
            metrics,
            data_dirs: names.iter().map(|name| data_dir.join(name)).collect(),
            data_dir,
            _temporary: temporary,
        };
        for (index, name) in names.iter().enumerate() {
            let mut command = Command::new(&executable);
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
        let deadline = Instant::now() + Duration::from_secs(10);
        for endpoint in &cluster.endpoints {
            let address = endpoint.trim_start_matches("http://");
            while std::net::TcpStream::connect(address).is_err() {
                if Instant::now() > deadline {
                    bail!("member at {endpoint} did not start listening in time");
                }
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
