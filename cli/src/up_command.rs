//! `synod up`: a local three-member cluster on 127.0.0.1, one `synod server` process per
//! member, with its data in a fresh directory; stops them all on Ctrl-C or SIGTERM.

use crate::local_cluster::LocalCluster;
use crate::server_command::{init_logging, termination};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `synod up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// How many members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub members: u16,
    /// Keep the data here instead of a fresh temporary directory (kept after exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Starts the members, prints how to reach them, waits for a signal.
pub fn run(arguments: UpArgs) -> Result<ExitCode> {
    init_logging();
    let cluster = LocalCluster::start(arguments.members as usize, arguments.data_dir, false)?;
    // etcdctl wants host:port here: given http://host:port, etcdctl 3.4 sends the whole URL
    // as the HTTP/2 :authority of per-endpoint calls (endpoint status), which is invalid
    // HTTP/2 and refused by our server's HTTP/2 stack.
    let joined = cluster
        .endpoints
        .iter()
        .map(|endpoint| endpoint.trim_start_matches("http://"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "Synod is up: {} members on 127.0.0.1, data in {}",
        cluster.endpoints.len(),
        cluster.data_dir.display()
    );
    for (index, endpoint) in cluster.endpoints.iter().enumerate() {
        let metrics = &cluster.metrics[index];
        println!(
            "  m{}  {endpoint}   (metrics: {metrics}/metrics, health: {metrics}/health)",
            index + 1
        );
    }
    println!();
    println!("Try it with etcdctl (etcd's own client; scripts/get-etcd.sh installs it):");
    println!("  etcdctl --endpoints={joined} put greeting hello");
    println!("  etcdctl --endpoints={joined} get greeting");
    println!("  etcdctl --endpoints={joined} endpoint status -w table");
    println!(
        "or load it: synod bench --endpoints {}",
        cluster.endpoints.join(",")
    );
    println!();
    println!("Press Ctrl-C to stop (the members stop with this process).");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(termination());
    println!("stopping");
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
