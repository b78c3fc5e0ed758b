//! What the benchmark sends: the operation kinds, a weighted mix of them, the keys and values,
//! and the small seeded generator that picks among them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One kind of request the benchmark issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// `Put` of one key.
    Put,
    /// `Range` of one key with `serializable = false`: served only after a quorum confirms the
    /// leader, so it observes every write acknowledged before it started.
    Get,
    /// `Range` of one key with `serializable = true`: any member answers from its own state.
    GetSerializable,
    /// `Txn` comparing one key's mod revision and putting that key when the compare holds.
    Txn,
}

impl OpKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [OpKind; 4] = [
        OpKind::Put,
        OpKind::Get,
        OpKind::GetSerializable,
        OpKind::Txn,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::GetSerializable => "get-serializable",
            OpKind::Txn => "txn",
        }
    }

    /// Position in [`OpKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A weighted choice among operation kinds (`put`, or `mix:put=50,get=40,txn=10`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpMix {
    /// Kinds with a positive weight, each listed once, in [`OpKind::ALL`] order.
    weights: Vec<(OpKind, u32)>,
    weight_total: u32,
}

/// The upper bound on one weight in a mix; keeps the total far from overflowing.
const MIX_WEIGHT_MAX: u32 = 1_000_000;

impl OpMix {
    /// A mix of a single kind.
    pub fn only(kind: OpKind) -> OpMix {
        OpMix {
            weights: vec![(kind, 1)],
            weight_total: 1,
        }
    }

    /// Picks a kind with probability proportional to its weight.
    pub fn pick(&self, rng: &mut SplitMix64) -> OpKind {
        let mut ticket = rng.below(u64::from(self.weight_total)) as u32;
        for &(kind, weight) in &self.weights {
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        unreachable!("the ticket is below the sum of the weights")
    }
}

impl fmt::Display for OpMix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(kind, _)] = self.weights.as_slice() {
            return formatter.write_str(kind.name());
        }
        formatter.write_str("mix:")?;
        for (position, (kind, weight)) in self.weights.iter().enumerate() {
            if position > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{}={weight}", kind.name())?;
        }
        Ok(())
    }
}

const OP_NAMES_HELP: &str = "put, get, get-serializable, txn";

impl FromStr for OpMix {
    type Err = String;

    fn from_str(text: &str) -> Result<OpMix, String> {
        let Some(parts) = text.strip_prefix("mix:") else {
            return OpKind::from_name(text).map(OpMix::only).ok_or_else(|| {
                format!(
                    "unknown operation '{text}': use one of {OP_NAMES_HELP}, or mix:put=50,get=50"
                )
            });
        };
        let mut weights = [0u32; OpKind::ALL.len()];
        for part in parts.split(',') {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!(
                    "mix entry '{part}' is not name=weight (e.g. mix:put=50,get=50)"
                ));
            };
            let kind = OpKind::from_name(name.trim()).ok_or_else(|| {
                format!("unknown operation '{name}' in the mix: use {OP_NAMES_HELP}")
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight '{weight}' of {name} is not a whole number"))?;
            if weight > MIX_WEIGHT_MAX {
                return Err(format!(
                    "weight {weight} of {name} is above {MIX_WEIGHT_MAX}"
                ));
            }
            if weights[kind.index()] != 0 {
                return Err(format!("operation {name} appears twice in the mix"));
            }
            weights[kind.index()] = weight;
        }
        let weights: Vec<(OpKind, u32)> = OpKind::ALL
            .into_iter()
            .zip(weights)
            .filter(|&(_, weight)| weight > 0)
            .collect();
        let weight_total = weights.iter().map(|&(_, weight)| weight).sum();
        if weight_total == 0 {
            return Err("the mix has no operation with a positive weight".to_string());
        }
        Ok(OpMix {
            weights,
            weight_total,
        })
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: use e.g. 10s, 500ms or 2m"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("duration '{text}' must be zero or positive"));
    }
    Duration::try_from_secs_f64(value * unit_seconds)
        .map_err(|_| format!("duration '{text}' is too long"))
}

/// Formats key number `index` as exactly `key_size` bytes: a fixed prefix, then the number
/// zero-padded, so every key of a run has the same length.
pub fn key_bytes(index: u64, key_size: usize) -> Vec<u8> {
    const PREFIX: &str = "bench/";
    let digits = key_size.saturating_sub(PREFIX.len()).max(1);
    let mut key = format!("{PREFIX}{index:0digits$}").into_bytes();
    key.truncate(key_size.max(1));
    key
}

/// The fewest bytes a key may have so that every index of `key_space` stays distinct.
pub fn key_size_min(key_space: u64) -> usize {
    "bench/".len() + key_space.saturating_sub(1).max(1).to_string().len()
}

/// A value of `size` bytes that differs per client (so compression cannot flatter anyone).
pub fn value_bytes(size: usize, rng: &mut SplitMix64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..size)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

/// A small seeded generator (SplitMix64): fast, and reproducible from `--seed`.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator for one client: the run's seed mixed with the client's number.
    pub fn new(seed: u64, stream: u64) -> SplitMix64 {
        let mut generator = SplitMix64 {
            state: seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f),
        };
        generator.next_u64();
        generator
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound` (bound > 0), by multiply-shift; the bias is below 2^-32 for the
    /// bounds used here.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_kinds_and_mixes_parse_and_print_back() {
        assert_eq!("put".parse::<OpMix>().unwrap(), OpMix::only(OpKind::Put));
        assert_eq!(
            "get-serializable".parse::<OpMix>().unwrap().to_string(),
            "get-serializable"
        );
        let mix: OpMix = "mix:txn=10,put=50,get=40".parse().unwrap();
        assert_eq!(mix.to_string(), "mix:put=50,get=40,txn=10");
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        for (text, expected) in [
            ("delete", "unknown operation"),
            ("mix:put", "not name=weight"),
            ("mix:put=x", "not a whole number"),
            ("mix:put=1,put=2", "twice"),
            ("mix:put=0", "no operation with a positive weight"),
            ("mix:scan=3", "unknown operation"),
        ] {
            let error = text.parse::<OpMix>().unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: OpMix = "mix:put=75,get=25".parse().unwrap();
        let mut rng = SplitMix64::new(7, 0);
        let puts = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == OpKind::Put)
            .count();
        assert!((7_200..7_800).contains(&puts), "{puts} puts of 10,000");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn keys_have_the_requested_size_and_stay_distinct() {
        assert_eq!(key_bytes(42, 64).len(), 64);
        assert_eq!(key_bytes(42, 16), b"bench/0000000042");
        assert_ne!(
            key_bytes(99_999, key_size_min(100_000)),
            key_bytes(9_999, key_size_min(100_000))
        );
        assert_eq!(key_size_min(100_000), 11);
    }
}
