//! Helpers the CPU backend's benches share.

use std::time::{Duration, Instant};

/// The median of `reps` timed calls of `f` (after one untimed warm-up call).
pub fn median_time(mut f: impl FnMut(), reps: usize) -> Duration {
    f();
    median(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

/// The median of some timings (not empty).
pub fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}
