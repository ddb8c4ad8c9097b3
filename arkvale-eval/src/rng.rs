//! A small deterministic random generator (SplitMix64), so that every sweep is reproducible
//! from `--seed` without a dependency.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator derived from `seed` and a case label, independent of the order cases run.
    pub fn for_case(seed: u64, label: &str) -> Self {
        let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in label.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        Rng(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Rng::for_case(7, "passkey/4096/0.5");
        let mut b = Rng::for_case(7, "passkey/4096/0.5");
        for _ in 0..100 {
            let x = a.range(10_000, 100_000);
            assert_eq!(x, b.range(10_000, 100_000));
            assert!((10_000..100_000).contains(&x));
        }
        assert_ne!(
            Rng::for_case(7, "a").next_u64(),
            Rng::for_case(7, "b").next_u64()
        );
    }
}
