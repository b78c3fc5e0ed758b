//! `synod check`: decides whether recorded histories are linearizable, explains a violation, and
//! can draw it as an HTML page.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use synod_check::etcd::{EtcdFields, check_etcd_parts, read_etcd_fields_file};
use synod_check::format::{Format, History, read_history_file};
use synod_check::{
    Budget, CheckOptions, CheckReport, KvModel, RegisterModel, Verdict, check, html,
};

/// Exit code: every history is linearizable.
const EXIT_LINEARIZABLE: u8 = 0;

/// Exit code: some history is not linearizable (and none is bad or undecided).
const EXIT_NOT_LINEARIZABLE: u8 = 1;

/// Exit code: some history is malformed, or its check ran out of budget.
const EXIT_BAD_INPUT_OR_UNKNOWN: u8 = 2;

/// Arguments of `synod check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// History files to check, each on its own.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The data type the histories are checked against: `register` (read, write, cas), `kv`
    /// (get, put, append, delete) or `etcd` (get, put, delete, cas, leases, with revisions);
    /// `auto` picks etcd for JSON Lines with etcd fields or lease operations, else goes by the
    /// first operation.
    #[arg(long, value_enum, default_value_t = ModelChoice::Auto)]
    model: ModelChoice,
    /// The files' format: `jsonl` (Synod's), `jepsen` (Jepsen's log) or `edn` (EDN maps, one
    /// per line); `auto` tells them apart by their first line.
    #[arg(long, value_enum, default_value_t = FormatChoice::Auto)]
    format: FormatChoice,
    /// On a violation, write an HTML page drawing it to this file (one FILE only).
    #[arg(long, value_name = "OUT")]
    html: Option<PathBuf>,
    /// Check the history as a whole instead of key by key (slower; for comparisons).
    #[arg(long)]
    no_partition: bool,
    /// The most configurations one key's search may explore before the verdict is unknown.
    #[arg(long, value_name = "N", default_value_t = Budget::default().max_states_per_partition)]
    budget: u64,
    /// Keys searched at once (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// `--model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModelChoice {
    /// Chosen from the history: JSON Lines with etcd fields are etcd, Jepsen logs and
    /// read/write/cas operations a register, get/put/append/delete a key-value map.
    Auto,
    /// A compare-and-set register.
    Register,
    /// A key-value map.
    Kv,
    /// The etcd-like key-value store: revisions, cas outcomes, leases.
    Etcd,
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FormatChoice {
    /// Detected from the first non-blank line.
    Auto,
    /// Synod's JSON Lines history.
    Jsonl,
    /// Jepsen's log lines.
    Jepsen,
    /// EDN maps, one per line.
    Edn,
}

impl FormatChoice {
    /// The format to insist on, if any.
    fn format(self) -> Option<Format> {
        match self {
            FormatChoice::Auto => None,
            FormatChoice::Jsonl => Some(Format::Jsonl),
            FormatChoice::Jepsen => Some(Format::Jepsen),
            FormatChoice::Edn => Some(Format::Edn),
        }
    }
}

/// What became of one file.
enum FileOutcome {
    /// It was checked.
    Checked {
        /// The model used.
        model: &'static str,
        /// The format read.
        format: Format,
        /// The verdict and its cost.
        report: Box<CheckReport>,
    },
    /// It could not be read or checked.
    BadInput(String),
}

/// Runs `synod check`.
pub fn run(arguments: CheckArgs) -> anyhow::Result<ExitCode> {
    if arguments.html.is_some() && arguments.files.len() > 1 {
        bail!("--html draws one history: give one FILE");
    }
    if arguments.budget == 0 {
        bail!("--budget must be at least 1");
    }
    let threads = match arguments.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(threads) => threads,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let options = CheckOptions {
        budget: Budget {
            max_states_per_partition: arguments.budget,
            ..Budget::default()
        },
        partition: !arguments.no_partition,
        threads,
    };
    let started = Instant::now();
    let single = arguments.files.len() == 1;
    let mut counts = [0usize; 3];
    let mut exit = EXIT_LINEARIZABLE;
    for path in &arguments.files {
        let file_started = Instant::now();
        let outcome = check_file(path, &arguments, &options);
        let elapsed = file_started.elapsed();
        let code = match &outcome {
            FileOutcome::Checked { report, .. } => match report.verdict {
                Verdict::Linearizable => EXIT_LINEARIZABLE,
                Verdict::NotLinearizable(_) => EXIT_NOT_LINEARIZABLE,
                Verdict::Unknown { .. } => EXIT_BAD_INPUT_OR_UNKNOWN,
            },
            FileOutcome::BadInput(_) => EXIT_BAD_INPUT_OR_UNKNOWN,
        };
        counts[usize::from(code)] += 1;
        exit = exit.max(code);
        print_outcome(path, &outcome, elapsed, single);
        if let (Some(out), FileOutcome::Checked { report, .. }) = (&arguments.html, &outcome) {
            write_html(out, path, &report.verdict)?;
        }
    }
    if !single {
        println!(
            "checked {} files: {} linearizable, {} not linearizable, {} bad input or unknown",
            arguments.files.len(),
            counts[usize::from(EXIT_LINEARIZABLE)],
            counts[usize::from(EXIT_NOT_LINEARIZABLE)],
            counts[usize::from(EXIT_BAD_INPUT_OR_UNKNOWN)],
        );
    }
    println!(
        "elapsed: {}, peak memory: {}",
        format_duration(started.elapsed()),
        peak_memory().unwrap_or_else(|| "unknown (no /proc/self/status)".to_owned())
    );
    Ok(ExitCode::from(exit))
}

/// Reads and checks one file.
fn check_file(path: &Path, arguments: &CheckArgs, options: &CheckOptions) -> FileOutcome {
    let source_name = path.display().to_string();
    let history = match read_history_file(path, arguments.format.format()) {
        Ok(history) => history,
        Err(error) => return FileOutcome::BadInput(error.to_string()),
    };
    // The etcd fields, which the common reader drops: only JSON Lines have them.
    let etcd_fields = || -> Result<Vec<EtcdFields>, String> {
        if history.format == Format::Jsonl {
            read_etcd_fields_file(path).map_err(|error| error.to_string())
        } else {
            Ok(Vec::new())
        }
    };
    let mut fields = None;
    let model = match arguments.model {
        ModelChoice::Auto if history.format == Format::Jsonl => {
            let read = match etcd_fields() {
                Ok(read) => read,
                Err(message) => return FileOutcome::BadInput(message),
            };
            let model = if looks_like_etcd(&history, &read) {
                Some(ModelChoice::Etcd)
            } else {
                guess_model(&history)
            };
            fields = Some(read);
            model
        }
        ModelChoice::Auto => guess_model(&history),
        chosen => Some(chosen),
    };
    let Some(model) = model else {
        return FileOutcome::BadInput(format!(
            "{source_name}: cannot tell the model from operation {:?}; choose one with --model \
             register|kv|etcd",
            history.events[0].f
        ));
    };
    if model == ModelChoice::Etcd && fields.is_none() {
        match etcd_fields() {
            Ok(read) => fields = Some(read),
            Err(message) => return FileOutcome::BadInput(message),
        }
    }
    let checked = match model {
        ModelChoice::Etcd => check_etcd_parts(
            &history.events,
            fields.as_deref().unwrap_or_default(),
            options,
        )
        .map(|report| ("etcd key-value", report)),
        ModelChoice::Register => check(&RegisterModel, &history.events, options)
            .map(|report| ("compare-and-set register", report)),
        ModelChoice::Kv | ModelChoice::Auto => {
            check(&KvModel, &history.events, options).map(|report| ("key-value", report))
        }
    };
    match checked {
        Ok((model, report)) => FileOutcome::Checked {
            model,
            format: history.format,
            report: Box::new(report),
        },
        Err(error) => FileOutcome::BadInput(history.locate(&source_name, &error)),
    }
}

/// The model a history's operations suggest: Jepsen logs and `read`/`write`/`cas` are a register,
/// `get`/`put`/`append`/`delete` a key-value map.
fn guess_model(history: &History) -> Option<ModelChoice> {
    if history.format == Format::Jepsen {
        return Some(ModelChoice::Register);
    }
    match history.events.first()?.f.as_str() {
        "read" | "write" | "cas" => Some(ModelChoice::Register),
        "get" | "put" | "append" | "delete" => Some(ModelChoice::Kv),
        _ => None,
    }
}

/// Whether a history uses the etcd vocabulary: a revision, a cas outcome, a lease.
fn looks_like_etcd(history: &History, fields: &[EtcdFields]) -> bool {
    fields.iter().any(|fields| *fields != EtcdFields::default())
        || history
            .events
            .iter()
            .any(|event| event.f.starts_with("lease-"))
}

/// Prints one file's verdict: in full for a single file, one line each for several.
fn print_outcome(path: &Path, outcome: &FileOutcome, elapsed: Duration, detailed: bool) {
    let name = path.display();
    let (model, format, report) = match outcome {
        FileOutcome::BadInput(message) => {
            println!("{name}: bad input");
            eprintln!("error: {message}");
            return;
        }
        FileOutcome::Checked {
            model,
            format,
            report,
        } => (model, format, report),
    };
    let verdict = match &report.verdict {
        Verdict::Linearizable => "linearizable",
        Verdict::NotLinearizable(_) => "NOT linearizable",
        Verdict::Unknown { .. } => "unknown (budget exceeded)",
    };
    let partitions = match report.partitions {
        1 => "1 partition".to_owned(),
        count => format!("{count} partitions"),
    };
    println!(
        "{name}: {verdict} ({model} model, {format} format, {} operations, {partitions}, {} states \
         explored, {})",
        report.operations,
        report.states_explored,
        format_duration(elapsed)
    );
    match &report.verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable(violation) if detailed => {
            for line in violation.to_string().lines() {
                println!("  {line}");
            }
        }
        Verdict::NotLinearizable(_) => {}
        Verdict::Unknown { reason, .. } => {
            // More states only help a search that ran out of states, not of memory.
            if reason.contains("memory budget") {
                println!("  no verdict: {reason}");
            } else {
                println!("  no verdict: {reason}; raise --budget to search further");
            }
        }
    }
}

/// Writes the HTML page for a violation, or says why there is none.
fn write_html(out: &Path, source: &Path, verdict: &Verdict) -> anyhow::Result<()> {
    let Verdict::NotLinearizable(violation) = verdict else {
        println!("html: no violation to draw; {} not written", out.display());
        return Ok(());
    };
    let page = html::render_violation(violation, &source.display().to_string());
    fs::write(out, page).with_context(|| format!("cannot write {}", out.display()))?;
    println!("html: wrote {}", out.display());
    Ok(())
}

/// "12.3 ms", "1.24 s".
fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

/// The process's peak resident memory (VmHWM), as "12.3 MiB".
fn peak_memory() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kibibytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MiB", kibibytes / 1024.0))
}
