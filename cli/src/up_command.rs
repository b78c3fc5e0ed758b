//! `synod up`: a local three-member cluster on 127.0.0.1, one `synod server` process per
//! member, with its data in a fresh directory; stops them all on Ctrl-C or SIGTERM.

use crate::server_command::{init_logging, termination};
use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `synod up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// How many members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub members: u16,
    /// Keep the data here instead of a fresh temporary directory (kept after exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the endpoints and exit once the cluster answers (leaving it running is the
    /// caller's job: the members stop when this process exits).
    #[arg(long, hide = true)]
    pub exit_when_ready: bool,
}

/// A free loopback port, chosen by the OS.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGTERM first so each member shuts down cleanly; then make sure.
            #[cfg(unix)]
            // SAFETY: kill(2) on a child's pid we own; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.0 {
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

/// Waits until `address` accepts TCP connections.
fn wait_listening(address: &str, deadline: Instant) -> Result<()> {
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("member at {address} did not start listening in time")
}

/// Starts the members, prints how to reach them, waits for a signal.
pub fn run(arguments: UpArgs) -> Result<ExitCode> {
    init_logging();
    let (data_dir, _temporary) = match &arguments.data_dir {
        Some(path) => (path.clone(), None),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("synod-up-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            (temporary.path().to_path_buf(), Some(temporary))
        }
    };
    let count = arguments.members as usize;
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    let mut metrics = Vec::new();
    for index in 0..count {
        peers.push(format!("m{}=http://127.0.0.1:{}", index + 1, free_port()?));
        clients.push(format!("m{}=http://127.0.0.1:{}", index + 1, free_port()?));
        metrics.push(format!("http://127.0.0.1:{}", free_port()?));
    }
    let executable = std::env::current_exe().context("cannot find the synod executable")?;
    let mut members = Members(Vec::new());
    for index in 0..count {
        let name = format!("m{}", index + 1);
        let peer = peers[index]
            .split_once('=')
            .map(|(_, url)| url)
            .unwrap_or_default();
        let client = clients[index]
            .split_once('=')
            .map(|(_, url)| url)
            .unwrap_or_default();
        let mut command = Command::new(&executable);
        command
            .arg("server")
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(data_dir.join(&name))
            .args(["--listen-peer-url", peer])
            .args(["--listen-client-url", client])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-clients", &clients.join(",")])
            .args(["--listen-metrics-url", &metrics[index]])
            .stdin(Stdio::null());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to
            // the member if this process dies, so no member outlives `synod up`.
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
        members.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoints: Vec<String> = clients
        .iter()
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(_, url)| url.to_string())
                .unwrap_or_default()
        })
        .collect();
    for endpoint in &endpoints {
        wait_listening(endpoint.trim_start_matches("http://"), deadline)?;
    }
    // etcdctl wants host:port here: given http://host:port, etcdctl 3.4 sends the whole URL
    // as the HTTP/2 :authority of per-endpoint calls (endpoint status), which is invalid
    // HTTP/2 and refused by our server's HTTP/2 stack.
    let joined = endpoints
        .iter()
        .map(|endpoint| endpoint.trim_start_matches("http://"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "Synod is up: {count} members on 127.0.0.1, data in {}",
        data_dir.display()
    );
    for (index, endpoint) in endpoints.iter().enumerate() {
        println!(
            "  m{}  {endpoint}   (metrics: {}/metrics, health: {}/health)",
            index + 1,
            metrics[index],
            metrics[index]
        );
    }
    println!();
    println!("Try it with etcdctl (etcd's own client):");
    println!("  etcdctl --endpoints={joined} put greeting hello");
    println!("  etcdctl --endpoints={joined} get greeting");
    println!("  etcdctl --endpoints={joined} endpoint status -w table");
    println!();
    println!("Press Ctrl-C to stop (the members stop with this process).");
    if arguments.exit_when_ready {
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(termination());
    println!("stopping");
    drop(members);
    Ok(ExitCode::SUCCESS)
}
