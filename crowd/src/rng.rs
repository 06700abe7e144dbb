//! A small seeded random number generator (SplitMix64).
//!
//! The run must be repeatable from its seed: the same shoppers make the same
//! choices, and the chaos schedule kills the same instances at the same
//! moments, whatever the version of any random-number crate. SplitMix64 is
//! ten lines, fast, and good enough for choosing SKUs (it is *not* for
//! secrets: session ids come from the OS, see `shop::ids`).

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for one participant (shopper `n`, the chaos
    /// schedule), derived from the run's seed.
    pub fn fork(seed: u64, stream: u64) -> Self {
        let mut mixer = Self(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into a slice of length `len` (> 0).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let a: Vec<u64> = (0..5).map(|_| Rng::fork(42, 7).below(100)).collect();
        let mut one = Rng::fork(42, 7);
        let mut two = Rng::fork(42, 7);
        assert_eq!(
            (0..20).map(|_| one.next_u64()).collect::<Vec<_>>(),
            (0..20).map(|_| two.next_u64()).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|&v| v < 100));
        assert_ne!(Rng::fork(42, 1).next_u64(), Rng::fork(42, 2).next_u64());
    }
}
