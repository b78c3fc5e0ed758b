//! The seeded random number generator every driver hands to nodes.
//!
//! Written by hand rather than taken from `rand` for two reasons: the simulator promises
//! that one seed replays byte-for-byte *across dependency upgrades* (a crate may change its
//! stream in a minor release), and the model checker hashes states that may contain a
//! generator, so it must be `Eq + Hash`. The algorithm is xoshiro256** seeded through
//! SplitMix64 (Blackman and Vigna), which is small, fast and statistically sound for
//! simulation (not for cryptography).

use serde::{Deserialize, Serialize};

/// A deterministic xoshiro256** generator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rng {
    state: [u64; 4],
}

/// One step of SplitMix64, used to expand a 64-bit seed into generator state.
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut mixed = *state;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

impl Rng {
    /// A generator whose whole stream is decided by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut expander = seed;
        let state = [
            split_mix(&mut expander),
            split_mix(&mut expander),
            split_mix(&mut expander),
            split_mix(&mut expander),
        ];
        // SplitMix64 never yields four zero words in a row, and an all-zero state is the
        // one state xoshiro cannot leave.
        assert!(state.iter().any(|&word| word != 0));
        Rng { state }
    }

    /// A generator for a sub-stream (a node, a client, the network) derived from this seed
    /// and a stream number, so adding draws to one stream never shifts another.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut mixer = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng::new(split_mix(&mut mixer))
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below needs a positive bound");
        // Lemire's multiply-shift with rejection: unbiased, and usually one draw.
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "Rng::between needs low <= high");
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `probability` (clamped to `[0, 1]`).
    pub fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        self.unit() < probability
    }

    /// A uniformly chosen element, or `None` for an empty slice.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for upper in (1..items.len()).rev() {
            let pick = self.below(upper as u64 + 1) as usize;
            items.swap(upper, pick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    #[test]
    fn the_stream_is_pinned() {
        // If this changes, every recorded seed and trace hash changes with it.
        let mut rng = Rng::new(42);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        let mut again = Rng::new(42);
        let second: Vec<u64> = (0..3).map(|_| again.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(Rng::new(42).next_u64(), Rng::new(43).next_u64());
        assert_ne!(Rng::derive(42, 1).next_u64(), Rng::derive(42, 2).next_u64());
    }

    #[test]
    fn below_covers_the_range_roughly_evenly() {
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "skewed: {counts:?}");
        }
    }

    #[test]
    fn chance_respects_its_extremes() {
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| !rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
        let hits = (0..10_000).filter(|_| rng.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "hits {hits}");
    }

    proptest! {
        #[test]
        fn between_stays_inside(seed: u64, low in 0u64..1000, width in 0u64..1000) {
            let mut rng = Rng::new(seed);
            for _ in 0..50 {
                let value = rng.between(low, low + width);
                prop_assert!(value >= low && value <= low + width);
            }
        }

        #[test]
        fn shuffle_is_a_permutation(seed: u64, mut items in proptest::collection::vec(0u8..255, 0..40)) {
            let mut rng = Rng::new(seed);
            let mut shuffled = items.clone();
            rng.shuffle(&mut shuffled);
            shuffled.sort_unstable();
            items.sort_unstable();
            prop_assert_eq!(shuffled, items);
        }
    }
}
