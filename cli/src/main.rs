//! `synod`: the one binary. Today it simulates protocols under faults (`synod sim`); the
//! checker, the model checker and the server arrive as further subcommands.
//!
//! Exit codes: 0 success, 1 a violation was found, 2 bad arguments or input.

mod registry;
mod sim_command;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Synod: a strongly consistent key-value store whose protocols run unchanged in a
/// deterministic simulator and (soon) in a real server speaking the etcd v3 API.
#[derive(Parser, Debug)]
#[command(name = "synod", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a protocol in the deterministic simulator under injected faults, record every
    /// client operation and check the history for linearizability.
    ///
    /// Examples:
    ///   synod sim                                   # amo-kv, seeds 1..1000, every fault
    ///   synod sim --variant no-dedup --seeds 1..50  # watch the checker catch a bug
    ///   synod sim --seed 17 --trace seed17.trace    # replay one seed with a full trace
    #[command(verbatim_doc_comment)]
    Sim(sim_command::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(arguments) => sim_command::run(arguments),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
