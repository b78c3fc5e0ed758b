//! `synod bench`: closed-loop load over the etcd v3 API.

use anyhow::{Result, bail};
use std::process::ExitCode;

/// Arguments of `synod bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs the benchmark.
pub fn run(_arguments: BenchArgs) -> Result<ExitCode> {
    bail!("synod bench is not built yet")
}
