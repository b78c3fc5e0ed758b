//! `synod`: the one binary. It simulates protocols under faults (`synod sim`), checks
//! histories for linearizability (`synod check`) and model-checks protocol models
//! (`synod mc`), and serves the etcd v3 API (`synod server`, `synod up`).
//!
//! Exit codes: 0 success, 1 a violation was found, 2 bad arguments or input (for `check`, also
//! a verdict the budget did not allow).

/// mimalloc instead of glibc's malloc: the server allocates and frees small buffers per
/// request on several threads, where glibc's allocator took about a sixth of the CPU under a
/// put load (perf, 64 clients); the simulator and checkers allocate much the same way.
/// Built without transparent huge pages (the `no_thp` feature): with them, mimalloc asked
/// the kernel for 2 MiB pages, and zeroing a fresh one each time mimalloc reused memory it
/// had returned took 5% of a member's CPU under puts (`clear_page_erms` in perf); small
/// pages also keep the resident size closer to what is in use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h of the
/// mimalloc 3 that `libmimalloc-sys` 0.1 builds; the crate names no constant for it). A
/// test checks that it still reads that build's default, 1,000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the system at once rather than a second later. mimalloc purges only
/// when the heap that owns the memory is used again, so a member that went quiet right
/// after a burst (a snapshot's encoding, say) kept its peak: after loading 1M keys one
/// member held 459 MB against 261 MB for another. Purging at once keeps every member near
/// what it uses (272-277 MB in the same run) with no measurable CPU cost.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets an allocator option, which mimalloc allows at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

mod bench_command;
mod check_command;
mod local_cluster;
mod mc_command;
mod registry;
mod server_command;
mod sim_command;
mod up_command;

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
    /// Check recorded histories for linearizability against a register or key-value model,
    /// explain any violation, and optionally draw it as an HTML page.
    ///
    /// Reads Synod's JSON Lines histories, Jepsen logs and EDN maps (detected from the first
    /// line). Exit codes: 0 linearizable, 1 not linearizable, 2 bad input or unknown (the
    /// search budget ran out: never a pass). With several files, the worst outcome wins.
    ///
    /// Examples:
    ///   synod check history.jsonl                             # a simulator or real-run history
    ///   synod check check/testdata/histories/jepsen/etcd_000.log --html etcd.html
    ///   synod check check/testdata/histories/jepsen/*.log     # one line per file
    ///   synod check --no-partition check/testdata/histories/kv/c10-ok.txt
    #[command(verbatim_doc_comment)]
    Check(check_command::CheckArgs),
    /// Model-check a protocol model: explore every reachable state (or random walks),
    /// check invariants in each and goals somewhere, print states/s, unique states, the
    /// verdict and any counterexample as a minimized numbered trace.
    ///
    /// Exit codes: 0 no invariant broke, 1 a violation was found, 2 bad arguments.
    ///
    /// Examples:
    ///   synod mc --model 2pc --rms 7                    # depth first, 2 threads
    ///   synod mc --rms 3 --variant commit-early --bfs   # a shortest counterexample
    ///   synod mc --rms 10 --time-limit 30s              # bounded run with a progress line
    #[command(verbatim_doc_comment)]
    Mc(mc_command::McArgs),
    /// Load an etcd v3 API endpoint (Synod or etcd) with a closed-loop workload and report
    /// throughput and latency percentiles; optionally run the same load against a local
    /// etcd side by side and print ratios.
    #[command(verbatim_doc_comment)]
    Bench(bench_command::BenchArgs),
    /// Run one cluster member serving the etcd v3 gRPC API (etcdctl and etcd client
    /// libraries work unchanged). Settings: flags, then SYNOD_* environment variables, then
    /// a TOML file (--config), then defaults (a one-member cluster on 127.0.0.1:2379).
    ///
    /// Examples:
    ///   synod server                                   # one member, data in default.synod
    ///   synod server --name m1 --data-dir /var/lib/synod/m1 \
    ///     --listen-peer-url http://10.0.0.1:2380 --listen-client-url http://10.0.0.1:2379 \
    ///     --initial-cluster m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380 \
    ///     --initial-cluster-clients m1=http://10.0.0.1:2379,m2=http://10.0.0.2:2379,m3=http://10.0.0.3:2379
    ///
    /// Stops cleanly on SIGTERM or Ctrl-C; logs go to stderr (RUST_LOG=debug for more).
    #[command(verbatim_doc_comment)]
    Server(server_command::ServerArgs),
    /// Start a local cluster (three `synod server` processes on free 127.0.0.1 ports, data
    /// in a fresh temporary directory), print its endpoints and an etcdctl example, and run
    /// until Ctrl-C.
    ///
    /// Examples:
    ///   synod up
    ///   synod up --members 5 --data-dir ./cluster-data
    #[command(verbatim_doc_comment)]
    Up(up_command::UpArgs),
}

/// Restores the default SIGPIPE action so `synod sim ... | head` ends quietly like other
/// Unix tools; Rust ignores SIGPIPE by default, which turns a closed pipe into a panic in
/// `println!`. Only for the commands that write reports: a server or a load generator must
/// keep ignoring it, or writing to a socket whose peer just died (a killed member, a
/// client gone) kills the whole process.
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Sim(_) | Command::Mc(_) | Command::Check(_)
    ) {
        die_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Sim(arguments) => sim_command::run(arguments),
        Command::Mc(arguments) => mc_command::run(arguments),
        Command::Check(arguments) => check_command::run(arguments),
        Command::Bench(arguments) => bench_command::run(arguments),
        Command::Server(arguments) => server_command::run(arguments),
        Command::Up(arguments) => up_command::run(arguments),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads an allocator option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "mimalloc 3's default purge delay, in ms");
        return_freed_memory_promptly();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            0
        );
    }
}
