//! Counters and phase timers of the cache manager (the paper's Fig. 9a breakdown).

use std::time::Duration;

/// Host wall time spent in each phase of the cache's work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Scoring digests against queries and the top-k selection (device work + read-back).
    pub estimate: Duration,
    /// Host-side planning: candidates, victims, page lists.
    pub select: Duration,
    /// Issuing recalls and waiting for them (including disk reads of spilled pages).
    pub recall: Duration,
    /// Attention over the chosen pages.
    pub attention: Duration,
    /// Everything else: appends, digests, backups, token-level bookkeeping.
    pub other: Duration,
}

impl PhaseTimes {
    /// The sum of every phase.
    pub fn total(&self) -> Duration {
        self.estimate + self.select + self.recall + self.attention + self.other
    }
}

/// Cumulative statistics of a cache manager. Byte counters count page bytes copied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheStats {
    /// Decode layer-steps (one per `decode_layer` call per sequence).
    pub decode_layer_steps: u64,
    /// Prompt tokens prefilled, summed over layers.
    pub prefill_layer_tokens: u64,
    /// Page digests scored against a query.
    pub pages_scored: u64,
    /// Pages recalled from host backups during decode.
    pub recalls: u64,
    /// Pages streamed back from host backups for exact prefill attention.
    pub prefill_streamed: u64,
    /// Pages evicted from the device.
    pub evictions: u64,
    /// Tokens masked out by token-level policies (H2O, TOVA).
    pub tokens_evicted: u64,
    /// Bytes copied host → device (recalls and prefill streaming).
    pub bytes_h2d: u64,
    /// Bytes copied device → host (backups).
    pub bytes_d2h: u64,
    /// Time per phase.
    pub time: PhaseTimes,
}

impl CacheStats {
    /// Average recalls per decode layer-step.
    pub fn recalls_per_layer_step(&self) -> f64 {
        if self.decode_layer_steps == 0 {
            0.0
        } else {
            self.recalls as f64 / self.decode_layer_steps as f64
        }
    }
}
