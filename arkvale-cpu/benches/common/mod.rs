//! Helpers the CPU backend's benches share.

use std::time::{Duration, Instant};

/// The median of `reps` timed calls of `f` (after one untimed warm-up call).
pub fn median_time(mut f: impl FnMut(), reps: usize) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t[reps / 2]
}

/// The next value of a xorshift64 generator (`state` must not be 0).
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `n` values uniform in `[-1, 1)` from the xorshift generator `state`.
#[allow(dead_code)] // each bench compiles this module; the quantized one draws its own ranges
pub fn rand_vec(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (xorshift(state) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect()
}
