//! The seeded generator of test inputs.

/// A xorshift64 generator (shifts 13, 7, 17): tiny, fast and deterministic, so a test's
/// inputs replay from its seed. The state must not be 0 ([`XorShift::new`] makes sure);
/// `XorShift(state)` uses a state as given.
///
/// ```
/// use arkvale_testkit::XorShift;
/// let mut a = XorShift::new(7);
/// let mut b = XorShift::new(7);
/// assert_eq!(a.vec(4, 1.0), b.vec(4, 1.0));
/// assert!((-1.0..1.0).contains(&a.unit()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorShift(pub u64);

impl XorShift {
    /// A generator from `seed` (forced odd, so never the stuck state 0).
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[-1, 1)`, from the top 24 bits of the next draw.
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `len` values of [`unit`](Self::unit) times `scale`.
    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.unit() * scale).collect()
    }

    /// `len` RMSNorm weights in `[0.8, 1.2)`.
    pub fn norm(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| 1.0 + 0.2 * self.unit()).collect()
    }

    /// Uniform in `0..n` (0 when `n` is 0), by the remainder of the next draw.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Non-zero: magnitude in `[0.05, 1]`, random sign (two draws), so that a kernel that
    /// skips an element cannot pass by reading a zero.
    pub fn value(&mut self) -> f32 {
        let m = 0.05 + 0.95 * (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        if self.next_u64() & 1 == 0 { m } else { -m }
    }

    /// `n` values of [`value`](Self::value).
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_xorshift64_sequence() {
        // xorshift64 (13, 7, 17) from state 1, computed independently.
        let mut r = XorShift(1);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [0x4082_2041, 0x1000_4106_0c01_1441, 0x9b1e_842f_6e86_2629]
        );
        assert_eq!(XorShift::new(0), XorShift(1));
    }

    #[test]
    fn draws_stay_in_their_ranges_and_cover_them() {
        let mut r = XorShift::new(42);
        let u = r.vec(4096, 1.0);
        assert!(u.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(u.iter().any(|&x| x < -0.9) && u.iter().any(|&x| x > 0.9));
        let v = r.values(4096);
        assert!(v.iter().all(|x| (0.05..=1.0).contains(&x.abs())));
        assert!(v.iter().any(|&x| x < 0.0) && v.iter().any(|&x| x > 0.0));
        assert!(r.norm(256).iter().all(|x| (0.8..1.2).contains(x)));
        let b: Vec<usize> = (0..512).map(|_| r.below(5)).collect();
        assert!(b.iter().all(|&x| x < 5) && (0..5).all(|k| b.contains(&k)));
        assert_eq!(r.below(0), 0);
    }
}
