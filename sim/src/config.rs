//! Every knob of a simulated run. One seed plus this configuration decides the whole run.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A kind of fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Messages are lost.
    Drop,
    /// Messages are delivered more than once.
    Duplicate,
    /// Some messages are held back long enough to overtake each other.
    Reorder,
    /// Sets of nodes and clients are cut off from each other, sometimes in one direction.
    Partition,
    /// Nodes crash (losing volatile state and unsynced records) and later restart.
    Crash,
    /// A crash may leave the last unsynced record half written.
    TornWrite,
    /// Nodes freeze and later resume, with their inputs queued meanwhile.
    Pause,
    /// Node clocks jump ahead and drift.
    Clock,
}

impl FaultKind {
    /// Every fault kind.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Drop,
        FaultKind::Duplicate,
        FaultKind::Reorder,
        FaultKind::Partition,
        FaultKind::Crash,
        FaultKind::TornWrite,
        FaultKind::Pause,
        FaultKind::Clock,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Reorder => "reorder",
            FaultKind::Partition => "partition",
            FaultKind::Crash => "crash",
            FaultKind::TornWrite => "torn-write",
            FaultKind::Pause => "pause",
            FaultKind::Clock => "clock",
        }
    }
}

/// A set of fault kinds, written `all`, `none` or a comma-separated list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultSet(BTreeSet<FaultKind>);

impl FaultSet {
    /// No faults.
    pub fn none() -> Self {
        FaultSet::default()
    }

    /// Every fault kind.
    pub fn all() -> Self {
        FaultSet(FaultKind::ALL.into_iter().collect())
    }

    /// True if `kind` is enabled.
    pub fn contains(&self, kind: FaultKind) -> bool {
        self.0.contains(&kind)
    }

    /// Enables `kind`.
    pub fn insert(&mut self, kind: FaultKind) {
        self.0.insert(kind);
    }

    /// The enabled kinds in a fixed order.
    pub fn kinds(&self) -> impl Iterator<Item = FaultKind> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return formatter.write_str("none");
        }
        if *self == FaultSet::all() {
            return formatter.write_str("all");
        }
        let names: Vec<&str> = self.kinds().map(FaultKind::name).collect();
        formatter.write_str(&names.join(","))
    }
}

impl FromStr for FaultSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(FaultSet::all()),
            "none" | "" => return Ok(FaultSet::none()),
            _ => {}
        }
        let mut set = FaultSet::none();
        for word in text.split(',').map(str::trim) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|kind| kind.name() == word)
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                    format!(
                        "unknown fault '{word}': use 'all', 'none' or a comma-separated list of {}",
                        known.join(", ")
                    )
                })?;
            set.insert(kind);
        }
        Ok(set)
    }
}

/// How the simulated network behaves while faults are active.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Shortest one-way delivery delay.
    pub latency_min: Duration,
    /// Longest ordinary one-way delivery delay (uniform between min and max).
    pub latency_max: Duration,
    /// Probability that a message is lost (with [`FaultKind::Drop`]).
    pub drop_probability: f64,
    /// Probability that a message is delivered twice (with [`FaultKind::Duplicate`]).
    pub duplicate_probability: f64,
    /// Probability that a message is held back (with [`FaultKind::Reorder`]).
    pub reorder_probability: f64,
    /// The longest extra delay of a held-back message.
    pub reorder_delay_max: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            latency_min: Duration::from_micros(100),
            latency_max: Duration::from_millis(2),
            drop_probability: 0.05,
            duplicate_probability: 0.05,
            reorder_probability: 0.05,
            reorder_delay_max: Duration::from_millis(30),
        }
    }
}

/// When and how the nemesis strikes.
#[derive(Clone, Debug, PartialEq)]
pub struct NemesisConfig {
    /// Shortest pause between two nemesis actions.
    pub interval_min: Duration,
    /// Longest pause between two nemesis actions.
    pub interval_max: Duration,
    /// Shortest time a partition, crash or pause lasts before it is healed.
    pub fault_duration_min: Duration,
    /// Longest time a fault lasts.
    pub fault_duration_max: Duration,
    /// Probability that a crash tears the last unsynced record (with [`FaultKind::TornWrite`]).
    pub torn_write_probability: f64,
    /// Probability that a partition blocks one direction only.
    pub one_way_partition_probability: f64,
    /// Largest clock jump forward.
    pub clock_jump_max: Duration,
    /// Largest clock drift, in parts per million, either way.
    pub clock_drift_max_ppm: u32,
}

impl Default for NemesisConfig {
    fn default() -> Self {
        NemesisConfig {
            interval_min: Duration::from_millis(20),
            interval_max: Duration::from_millis(120),
            fault_duration_min: Duration::from_millis(10),
            fault_duration_max: Duration::from_millis(300),
            torn_write_probability: 0.5,
            one_way_partition_probability: 0.3,
            clock_jump_max: Duration::from_millis(500),
            clock_drift_max_ppm: 1_000,
        }
    }
}

/// The closed-loop client workload.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// Concurrent clients (each keeps one operation outstanding).
    pub clients: u32,
    /// Operations each client performs.
    pub operations_per_client: u32,
    /// Distinct keys.
    pub keys: u32,
    /// Relative weight of gets.
    pub get_weight: u32,
    /// Relative weight of puts.
    pub put_weight: u32,
    /// Relative weight of appends.
    pub append_weight: u32,
    /// Relative weight of deletes.
    pub delete_weight: u32,
    /// Longest pause a client takes between operations.
    pub think_time_max: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 5,
            operations_per_client: 40,
            keys: 3,
            get_weight: 4,
            put_weight: 1,
            append_weight: 4,
            delete_weight: 1,
            think_time_max: Duration::from_millis(5),
        }
    }
}

/// A whole simulated run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The seed that decides everything random.
    pub seed: u64,
    /// Server nodes in the cluster.
    pub nodes: u32,
    /// Enabled fault kinds.
    pub faults: FaultSet,
    /// Network behaviour.
    pub network: NetworkConfig,
    /// Nemesis behaviour.
    pub nemesis: NemesisConfig,
    /// Client workload.
    pub workload: WorkloadConfig,
    /// Shortest simulated fsync.
    pub sync_latency_min: Duration,
    /// Longest simulated fsync.
    pub sync_latency_max: Duration,
    /// Faults stop (and every fault is healed) once this share of operations was invoked.
    pub heal_after_fraction: f64,
    /// After healing, operations invoked later than this must succeed.
    pub liveness_settle: Duration,
    /// After healing, the run must finish within this much simulated time.
    pub liveness_bound: Duration,
    /// A hard cap on processed events, so a livelock cannot hang the simulator.
    pub max_events: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 1,
            faults: FaultSet::all(),
            network: NetworkConfig::default(),
            nemesis: NemesisConfig::default(),
            workload: WorkloadConfig::default(),
            sync_latency_min: Duration::from_micros(200),
            sync_latency_max: Duration::from_millis(2),
            heal_after_fraction: 0.8,
            liveness_settle: Duration::from_secs(1),
            liveness_bound: Duration::from_secs(30),
            max_events: 5_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_parse_and_print() {
        assert_eq!("all".parse::<FaultSet>(), Ok(FaultSet::all()));
        assert_eq!("none".parse::<FaultSet>(), Ok(FaultSet::none()));
        let set: FaultSet = "crash, drop".parse().expect("valid list");
        assert!(set.contains(FaultKind::Crash) && set.contains(FaultKind::Drop));
        assert!(!set.contains(FaultKind::Pause));
        assert_eq!(set.to_string(), "drop,crash");
        let error = "crash,meteor"
            .parse::<FaultSet>()
            .expect_err("unknown kind");
        assert!(
            error.contains("meteor") && error.contains("torn-write"),
            "{error}"
        );
        assert_eq!(FaultSet::all().to_string(), "all");
    }
}
