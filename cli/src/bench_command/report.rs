//! Turns a run's record into figures: throughput, HDR latency percentiles (overall, per
//! operation kind and per time window), errors, and the members' memory; prints them and
//! writes them as JSON.

use super::driver::{ErrorTally, Record, Sample};
use super::workload::OpKind;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The largest latency a histogram tracks: one hour, in microseconds.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits the histograms keep (0.1% relative error).
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// The narrowest time window of the over-time series.
const WINDOW_MS_MIN: u64 = 100;
/// Long runs use wider windows so the series (and the plot) stays this short.
const WINDOWS_MAX: u64 = 1_200;

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p99_9_us: u64,
    /// Slowest request.
    pub max_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

/// One time window of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Start of the window, in milliseconds after the measurement began.
    pub start_ms: u64,
    /// Width of the window in milliseconds.
    pub width_ms: u64,
    /// Requests that completed in the window.
    pub ops: u64,
    /// Median latency of those requests (0 if none).
    pub p50_us: u64,
    /// 99th percentile latency of those requests (0 if none).
    pub p99_us: u64,
}

impl Window {
    /// Completions per second in this window.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 * 1000.0 / self.width_ms as f64
    }
}

/// The figures of one run against one target.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Which system ("synod", "etcd", "server").
    pub target: String,
    /// Where the clients connected.
    pub endpoints: Vec<String>,
    /// Successful measured requests.
    pub ops: u64,
    /// Failed measured requests by kind.
    pub errors: BTreeMap<String, ErrorTally>,
    /// From the end of the warmup to the last completion.
    pub elapsed: Duration,
    /// Percentiles over every successful request.
    pub latency: Percentiles,
    /// Count and percentiles per operation kind that occurred.
    pub per_kind: Vec<(OpKind, u64, Percentiles)>,
    /// The run cut into equal windows.
    pub windows: Vec<Window>,
    /// Resident memory of each member this program started (bytes), after the run.
    pub member_rss_bytes: Vec<Option<u64>>,
    /// Bytes in each started member's data directory, after the run.
    pub member_data_bytes: Vec<u64>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// CPU time per completed request, while the workload ran.
    pub cpu: CpuPerOp,
}

/// CPU time (user + system) per completed request: the cost of an operation, which unlike
/// throughput does not depend on what else the machine is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPerOp {
    /// The started members together, in microseconds per request (None for a cluster this
    /// program did not start).
    pub members_us: Option<f64>,
    /// This benchmark process (the clients), in microseconds per request.
    pub client_us: Option<f64>,
}

impl CpuPerOp {
    /// Divides the CPU microseconds members and client used (None: unknown) by `requests`.
    pub fn new(members_micros: Option<u64>, client_micros: Option<u64>, requests: u64) -> Self {
        let per_op = |micros: Option<u64>| {
            micros
                .filter(|_| requests > 0)
                .map(|micros| micros as f64 / requests as f64)
        };
        CpuPerOp {
            members_us: per_op(members_micros),
            client_us: per_op(client_micros),
        }
    }
}

impl Summary {
    /// Computes the figures of `record`.
    pub fn new(target: &str, endpoints: &[String], record: Record) -> Summary {
        let latency = percentiles(record.samples.iter());
        let per_kind = OpKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let count = record
                    .samples
                    .iter()
                    .filter(|sample| sample.kind == kind)
                    .count();
                (count > 0).then(|| {
                    let of_kind = record.samples.iter().filter(|sample| sample.kind == kind);
                    (kind, count as u64, percentiles(of_kind))
                })
            })
            .collect();
        Summary {
            target: target.to_string(),
            endpoints: endpoints.to_vec(),
            ops: record.samples.len() as u64,
            windows: windows(&record.samples, record.elapsed),
            errors: record.errors,
            elapsed: record.elapsed,
            latency,
            per_kind,
            member_rss_bytes: Vec::new(),
            member_data_bytes: Vec::new(),
            interrupted: record.interrupted,
            cpu: CpuPerOp::default(),
        }
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ops as f64 / seconds
        } else {
            0.0
        }
    }

    /// Failed requests of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|tally| tally.count).sum()
    }

    /// The report's text block.
    pub fn to_text(&self) -> String {
        let mut text = format!("{} ({})\n", self.target, self.endpoints.join(","));
        text += &format!(
            "  throughput  {} ops in {:.2} s = {} ops/s{}\n",
            group_digits(self.ops),
            self.elapsed.as_secs_f64(),
            group_digits(self.throughput().round() as u64),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
        );
        text += &format!("  latency     {}\n", percentiles_text(&self.latency));
        if self.per_kind.len() > 1 {
            for (kind, count, latency) in &self.per_kind {
                text += &format!(
                    "  {:<16} {} ops, {}\n",
                    kind.name(),
                    group_digits(*count),
                    percentiles_text(latency)
                );
            }
        }
        if self.errors.is_empty() {
            text += "  errors      none\n";
        } else {
            for (kind, tally) in &self.errors {
                text += &format!(
                    "  errors      {kind}: {} (e.g. \"{}\")\n",
                    group_digits(tally.count),
                    tally.example
                );
            }
        }
        let cpu: Vec<String> = [
            ("members", self.cpu.members_us),
            ("client", self.cpu.client_us),
        ]
        .into_iter()
        .filter_map(|(who, micros)| micros.map(|micros| format!("{who} {micros:.1} µs/op")))
        .collect();
        if !cpu.is_empty() {
            text += &format!("  cpu         {}\n", cpu.join(", "));
        }
        if !self.member_rss_bytes.is_empty() {
            let rss: Vec<String> = self
                .member_rss_bytes
                .iter()
                .map(|rss| rss.map_or("?".to_string(), megabytes))
                .collect();
            let data: Vec<String> = self
                .member_data_bytes
                .iter()
                .map(|&bytes| megabytes(bytes))
                .collect();
            text += &format!(
                "  memory      RSS per member {}; data dir {}\n",
                rss.join(", "),
                data.join(", ")
            );
        }
        text
    }

    /// The run as a JSON object.
    pub fn to_json(&self) -> Value {
        let errors: serde_json::Map<String, Value> = self
            .errors
            .iter()
            .map(|(kind, tally)| {
                (
                    kind.clone(),
                    json!({"count": tally.count, "example": tally.example}),
                )
            })
            .collect();
        let per_kind: serde_json::Map<String, Value> = self
            .per_kind
            .iter()
            .map(|(kind, count, latency)| {
                (
                    kind.name().to_string(),
                    json!({"ops": count, "latency_us": percentiles_json(latency)}),
                )
            })
            .collect();
        let windows: Vec<Value> = self
            .windows
            .iter()
            .map(|window| {
                json!({
                    "start_ms": window.start_ms,
                    "width_ms": window.width_ms,
                    "ops": window.ops,
                    "p50_us": window.p50_us,
                    "p99_us": window.p99_us,
                })
            })
            .collect();
        json!({
            "target": self.target,
            "endpoints": self.endpoints,
            "ops": self.ops,
            "errors_total": self.error_count(),
            "errors": errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_ops_per_s": self.throughput(),
            "latency_us": percentiles_json(&self.latency),
            "per_op": per_kind,
            "windows": windows,
            "member_rss_bytes": self.member_rss_bytes,
            "member_data_bytes": self.member_data_bytes,
            "member_cpu_us_per_op": self.cpu.members_us,
            "client_cpu_us_per_op": self.cpu.client_us,
            "interrupted": self.interrupted,
        })
    }
}

/// Synod against etcd: throughput ratio (higher is better for Synod) and p99 ratio (lower is
/// better for Synod).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratios {
    /// Synod's throughput divided by etcd's.
    pub throughput: f64,
    /// Synod's p99 latency divided by etcd's.
    pub p99: f64,
    /// Synod's members' CPU per request divided by etcd's (lower is better), when both
    /// clusters were started here.
    pub member_cpu: Option<f64>,
}

impl Ratios {
    /// The ratios of `synod` to `etcd`; infinite or NaN figures become None.
    pub fn new(synod: &Summary, etcd: &Summary) -> Option<Ratios> {
        let throughput = synod.throughput() / etcd.throughput();
        let p99 = synod.latency.p99_us as f64 / etcd.latency.p99_us as f64;
        let member_cpu = synod
            .cpu
            .members_us
            .zip(etcd.cpu.members_us)
            .map(|(synod, etcd)| synod / etcd)
            .filter(|ratio| ratio.is_finite());
        (throughput.is_finite() && p99.is_finite()).then_some(Ratios {
            throughput,
            p99,
            member_cpu,
        })
    }

    /// The median of each ratio over `rounds` (None if there are none); the member CPU
    /// ratio over the rounds that have one.
    pub fn median(rounds: &[Ratios]) -> Option<Ratios> {
        let median = |mut values: Vec<f64>| -> Option<f64> {
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            match values.len() {
                0 => None,
                length if length % 2 == 1 => Some(values[middle]),
                _ => Some((values[middle - 1] + values[middle]) / 2.0),
            }
        };
        Some(Ratios {
            throughput: median(rounds.iter().map(|ratios| ratios.throughput).collect())?,
            p99: median(rounds.iter().map(|ratios| ratios.p99).collect())?,
            member_cpu: median(
                rounds
                    .iter()
                    .filter_map(|ratios| ratios.member_cpu)
                    .collect(),
            ),
        })
    }

    /// Every round's ratios, one line per kind.
    pub fn rounds_text(rounds: &[Ratios]) -> String {
        let list = |values: Vec<f64>| {
            values
                .iter()
                .map(|value| format!("{value:.2}x"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "rounds: throughput {}; p99 {}",
            list(rounds.iter().map(|ratios| ratios.throughput).collect()),
            list(rounds.iter().map(|ratios| ratios.p99).collect())
        );
        let member_cpu: Vec<f64> = rounds
            .iter()
            .filter_map(|ratios| ratios.member_cpu)
            .collect();
        if !member_cpu.is_empty() {
            text += &format!("; member CPU per op {}", list(member_cpu));
        }
        text + "\n"
    }

    /// One line for the report.
    pub fn to_text(self) -> String {
        let mut text = format!(
            "synod/etcd: throughput {:.2}x (higher is better), p99 {:.2}x (lower is better)",
            self.throughput, self.p99
        );
        if let Some(member_cpu) = self.member_cpu {
            text += &format!(", member CPU per op {member_cpu:.2}x (lower is better)");
        }
        text + "\n"
    }

    /// As a JSON object.
    pub fn to_json(self) -> Value {
        json!({"throughput": self.throughput, "p99": self.p99, "member_cpu_per_op": self.member_cpu})
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("the bounds are constants that hdrhistogram accepts")
}

fn percentiles<'a>(samples: impl Iterator<Item = &'a Sample>) -> Percentiles {
    let mut histogram = new_histogram();
    for sample in samples {
        histogram.saturating_record(sample.latency_us.max(1));
    }
    percentiles_of(&histogram)
}

fn percentiles_of(histogram: &Histogram<u64>) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p99_9_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        mean_us: histogram.mean(),
    }
}

/// Cuts the run into windows of at least [`WINDOW_MS_MIN`] (the last one up to twice that,
/// or the whole run if shorter), at most [`WINDOWS_MAX`] of them; `samples` are sorted by
/// completion time.
fn windows(samples: &[Sample], elapsed: Duration) -> Vec<Window> {
    let elapsed_ms = u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let width_ms =
        WINDOW_MS_MIN.max(elapsed_ms.div_ceil(WINDOWS_MAX).div_ceil(WINDOW_MS_MIN) * WINDOW_MS_MIN);
    // A short tail joins the last window: a window of a few milliseconds holding a few
    // completions would show a spike of throughput that never happened.
    let count = (elapsed_ms / width_ms).max(1);
    let mut windows = Vec::new();
    let mut rest = samples;
    for index in 0..count {
        let end_us = (index + 1) * width_ms * 1000;
        let split = if index + 1 == count {
            rest.len()
        } else {
            rest.partition_point(|sample| sample.completed_at_us < end_us)
        };
        let (inside, after) = rest.split_at(split);
        rest = after;
        let latency = percentiles(inside.iter());
        let start_ms = index * width_ms;
        windows.push(Window {
            start_ms,
            width_ms: if index + 1 == count {
                elapsed_ms - start_ms
            } else {
                width_ms
            },
            ops: inside.len() as u64,
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
        });
    }
    windows
}

fn percentiles_text(latency: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        milliseconds(latency.p50_us),
        milliseconds(latency.p90_us),
        milliseconds(latency.p99_us),
        milliseconds(latency.p99_9_us),
        milliseconds(latency.max_us),
    )
}

fn percentiles_json(latency: &Percentiles) -> Value {
    json!({
        "p50": latency.p50_us,
        "p90": latency.p90_us,
        "p99": latency.p99_us,
        "p99.9": latency.p99_9_us,
        "max": latency.max_us,
        "mean": latency.mean_us,
    })
}

/// `1234` µs as `1.23 ms`.
pub fn milliseconds(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// `1234567` as `1,234,567`.
pub fn group_digits(number: u64) -> String {
    let digits = number.to_string();
    let mut grouped = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(completed_at_ms: u64, latency_us: u64) -> Sample {
        Sample {
            completed_at_us: completed_at_ms * 1000,
            latency_us,
            kind: OpKind::Put,
        }
    }

    #[test]
    fn percentiles_come_from_the_latencies() {
        let samples: Vec<Sample> = (1..=1000).map(|latency| sample(0, latency)).collect();
        let latency = percentiles(samples.iter());
        assert_eq!(latency.p50_us, 500);
        assert_eq!(latency.p99_us, 990);
        assert_eq!(latency.p99_9_us, 999);
        assert_eq!(latency.max_us, 1000);
    }

    #[test]
    fn windows_split_by_completion_time() {
        let samples = vec![
            sample(10, 5),
            sample(90, 7),
            sample(150, 100),
            sample(299, 3),
        ];
        let windows = windows(&samples, Duration::from_millis(300));
        let ops: Vec<u64> = windows.iter().map(|window| window.ops).collect();
        assert_eq!(ops, [2, 1, 1]);
        assert_eq!(windows[2].width_ms, 100);
        assert_eq!(windows[1].p99_us, 100);
        assert!((windows[0].throughput() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn long_runs_get_wider_windows() {
        let windows = windows(&[], Duration::from_secs(1000));
        assert!(windows.len() as u64 <= WINDOWS_MAX);
        assert_eq!(windows[0].width_ms % WINDOW_MS_MIN, 0);
        let ragged = super::windows(&[sample(1, 5), sample(240, 5)], Duration::from_millis(250));
        assert_eq!(ragged.len(), 2, "the 50 ms tail joins the last window");
        assert_eq!(ragged[1].width_ms, 150);
        assert_eq!(ragged[1].ops, 1);
        let short = super::windows(&[sample(1, 5)], Duration::from_millis(30));
        assert_eq!((short.len(), short[0].width_ms), (1, 30));
    }

    #[test]
    fn cpu_per_op_divides_by_every_completed_request() {
        let cpu = CpuPerOp::new(Some(3_000_000), Some(1_000_000), 100_000);
        assert_eq!(cpu.members_us, Some(30.0));
        assert_eq!(cpu.client_us, Some(10.0));
        assert_eq!(CpuPerOp::new(None, Some(5), 0), CpuPerOp::default());
        let mut synod = Summary::new("synod", &[], Record::default());
        let mut etcd = Summary::new("etcd", &[], Record::default());
        (synod.ops, etcd.ops) = (200, 100);
        (synod.elapsed, etcd.elapsed) = (Duration::from_secs(1), Duration::from_secs(1));
        (synod.latency.p99_us, etcd.latency.p99_us) = (5, 10);
        synod.cpu = CpuPerOp::new(Some(30), None, 1);
        etcd.cpu = CpuPerOp::new(Some(90), None, 1);
        let ratios = Ratios::new(&synod, &etcd).expect("finite");
        assert_eq!((ratios.throughput, ratios.p99), (2.0, 0.5));
        assert!((ratios.member_cpu.expect("both started here") - 1.0 / 3.0).abs() < 1e-9);
        assert!(ratios.to_text().contains("member CPU per op 0.33x"));
        assert!(synod.to_text().contains("cpu         members 30.0 µs/op"));
    }

    #[test]
    fn rounds_are_summarized_by_their_median() {
        let round = |throughput, p99, member_cpu| Ratios {
            throughput,
            p99,
            member_cpu,
        };
        let rounds = [
            round(1.5, 0.6, Some(0.5)),
            round(2.1, 0.4, None),
            round(1.8, 0.9, Some(0.3)),
        ];
        let median = Ratios::median(&rounds).expect("three rounds");
        assert_eq!((median.throughput, median.p99), (1.8, 0.6));
        assert_eq!(median.member_cpu, Some(0.4), "the two rounds that have one");
        assert_eq!(Ratios::median(&[]), None);
        assert_eq!(
            Ratios::rounds_text(&rounds),
            "rounds: throughput 1.50x, 2.10x, 1.80x; p99 0.60x, 0.40x, 0.90x; \
             member CPU per op 0.50x, 0.30x\n"
        );
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_234_567), "1,234,567");
    }
}
