//! A hash that is stable for a given binary: the simulator's trace hash and protocols'
//! execution digests.
//!
//! `std`'s `DefaultHasher` makes no promise about its algorithm, so Synod uses 64-bit
//! FNV-1a, written here because it is ten lines and must never change under us.

use std::hash::Hasher;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
#[derive(Clone, Debug)]
pub struct StableHasher {
    state: u64,
}

impl StableHasher {
    /// A hasher at the FNV offset basis.
    pub fn new() -> Self {
        StableHasher {
            state: FNV_OFFSET_BASIS,
        }
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_vectors() {
        let mut empty = StableHasher::new();
        empty.write(b"");
        assert_eq!(empty.finish(), 0xcbf2_9ce4_8422_2325);
        let mut letter = StableHasher::new();
        letter.write(b"a");
        assert_eq!(letter.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut word = StableHasher::new();
        word.write(b"foobar");
        assert_eq!(word.finish(), 0x8594_4171_f739_67e8);
    }
}
