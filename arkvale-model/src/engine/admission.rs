//! How many device slots a request reserves (see the module docs of `engine`).

use arkvale_core::{CacheConfig, ModelShape, policy::Residency};

use crate::memory::{STAGING_SLACK, sequence_slots};

/// The reservation rule of one engine: [`sequence_slots`] for its shape, cache configuration
/// and policy.
#[derive(Debug, Clone)]
pub struct Admission {
    shape: ModelShape,
    config: CacheConfig,
    residency: Residency,
}

impl Admission {
    /// The rule for a cache of `shape` and `config` under a policy with `residency`.
    pub fn new(shape: ModelShape, config: &CacheConfig, residency: Residency) -> Self {
        Admission {
            shape,
            config: config.clone(),
            residency,
        }
    }

    /// Slots a sequence of at most `total_tokens` tokens reserves.
    pub fn slots(&self, total_tokens: usize) -> usize {
        sequence_slots(&self.shape, &self.config, self.residency, total_tokens)
    }

    /// Slots of a pool of `capacity` that sequences may reserve (the rest is the staging
    /// slack prefill borrows).
    pub fn usable(&self, capacity: usize) -> usize {
        capacity.saturating_sub(STAGING_SLACK)
    }

    /// Bytes of one slot.
    pub fn slot_bytes(&self) -> usize {
        self.config.slot_bytes(&self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arkvale_core::KvDtype;

    #[test]
    fn arkvale_reserves_its_budget_and_full_its_context() {
        let shape = ModelShape {
            layers: 30,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
        };
        let config = CacheConfig {
            budget_tokens: 512,
            prefill_chunk_tokens: 512,
            kv_dtype: KvDtype::F16,
            ..Default::default()
        };
        let full = Admission::new(shape, &config, Residency::KeepAll);
        let ark = Admission::new(shape, &config, Residency::Budget { recall: true });
        assert_eq!(full.slots(4096), 30 * 128);
        assert_eq!(ark.slots(4096), 2 * 128 + 28 * (16 + 16 + 1));
        assert_eq!(ark.slots(64), 30 * 2);
        assert_eq!(full.usable(100), 100 - STAGING_SLACK);
        assert_eq!(full.usable(3), 0);
    }
}
