//! Sizing the KV cache's device pool and host tier from the model shape and the request.
//!
//! # The rule
//!
//! With `T = prompt + max_tokens` tokens (capped at the model's context length) the sequence
//! needs `P = ceil(T / page_size)` pages per (layer, head group) with a full cache. A layer
//! whose pages all stay resident (policies `full`, `quest`, `h2o`, `tova`, and the
//! `--dense-layers` leading layers of the budgeted ones) needs `P` slots; a budgeted layer
//! (`arkvale`, `streaming`) needs at most `min(P, B + C + 1)` — the `B` budget pages, the `C`
//! pages of a prefill chunk appended before eviction, and the open page. On top come
//! [`STAGING_SLACK`] slots: the [`PREFILL_STAGING_SLOTS`] that prefill borrows to stream
//! evicted pages back, and as many again as a margin. The device pool
//! is that many slots, and at least `B + 1` (what the cache manager requires); the host tier
//! (allocated lazily, only for backups of budgeted layers) is sized for every page of every
//! layer.

use arkvale_core::{CacheConfig, ModelShape, PREFILL_STAGING_SLOTS, policy::Residency};

/// Slots kept free for the pages prefill streams back from host backups (the cache manager
/// borrows up to [`PREFILL_STAGING_SLOTS`]) plus as many again as a margin.
pub const STAGING_SLACK: usize = 2 * PREFILL_STAGING_SLOTS;

/// Device and host byte budgets for one sequence of `total_tokens` under `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Bytes of the device KV pool.
    pub device_bytes: usize,
    /// Bytes of host memory for page backups.
    pub host_bytes: usize,
}

/// The device slots one sequence of `total_tokens` can ever hold under `config` and a policy
/// with `residency` (the module rule without the shared [`STAGING_SLACK`]).
pub fn sequence_slots(
    shape: &ModelShape,
    config: &CacheConfig,
    residency: Residency,
    total_tokens: usize,
) -> usize {
    let p = config.page_size.max(1);
    let groups = config.head_groups.max(1);
    let pages = total_tokens.div_ceil(p);
    let budgeted_layer = match residency {
        Residency::KeepAll => pages,
        Residency::Budget { .. } => {
            let chunk = config.prefill_chunk_tokens.div_ceil(p);
            pages.min(config.budget_tokens / p + chunk + 1)
        }
    };
    let dense = config.dense_layers.min(shape.layers);
    groups * (dense * pages + (shape.layers - dense) * budgeted_layer)
}

/// The pool sizes of the module rule for `config` (its page size, budget, dense layers,
/// head groups, prefill chunk and KV type) and a policy with `residency`.
pub fn size_cache(
    shape: &ModelShape,
    config: &CacheConfig,
    residency: Residency,
    total_tokens: usize,
) -> Sizing {
    let p = config.page_size.max(1);
    let slot = config.slot_bytes(shape);
    let groups = config.head_groups.max(1);
    let pages = total_tokens.div_ceil(p);
    let slots = sequence_slots(shape, config, residency, total_tokens) + STAGING_SLACK;
    // The cache manager insists on room for one whole budget (+1) whatever the request.
    let slots = slots.max(config.budget_tokens / p + 1);
    let full_slots = groups * shape.layers * pages + 1;
    Sizing {
        device_bytes: slots * slot,
        host_bytes: full_slots * slot,
    }
}

/// Bytes of K and V for `tokens` tokens (whole pages) in every layer: a full cache.
pub fn full_kv_bytes(shape: &ModelShape, config: &CacheConfig, tokens: usize) -> usize {
    let pages = tokens.div_ceil(config.page_size.max(1));
    config.head_groups.max(1) * shape.layers * pages * config.slot_bytes(shape)
}

/// Bytes of K and V resident on the device for `tokens` tokens with the budget of `config`
/// (dense leading layers keep every page); digests (a few percent more) not counted.
pub fn budget_kv_bytes(shape: &ModelShape, config: &CacheConfig, tokens: usize) -> usize {
    let p = config.page_size.max(1);
    let pages = tokens.div_ceil(p);
    let budgeted = pages.min(config.budget_tokens / p);
    let dense = config.dense_layers.min(shape.layers);
    config.head_groups.max(1)
        * (dense * pages + (shape.layers - dense) * budgeted)
        * config.slot_bytes(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arkvale_core::KvDtype;

    fn shape() -> ModelShape {
        ModelShape {
            layers: 30,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
        }
    }

    #[test]
    fn full_cache_holds_every_page_and_budget_caps_it() {
        let config = CacheConfig {
            budget_tokens: 512,
            kv_dtype: KvDtype::F16,
            ..Default::default()
        };
        let slot = config.slot_bytes(&shape());
        assert_eq!(slot, 2 * 3 * 32 * 64 * 2);
        let full = size_cache(&shape(), &config, Residency::KeepAll, 8192);
        assert_eq!(full.device_bytes, (30 * 256 + STAGING_SLACK) * slot);
        let ark = size_cache(&shape(), &config, Residency::Budget { recall: true }, 8192);
        assert_eq!(
            ark.device_bytes,
            (2 * 256 + 28 * (16 + 32 + 1) + STAGING_SLACK) * slot
        );
        assert!(ark.host_bytes >= full_kv_bytes(&shape(), &config, 8192));
        // A short request never needs more than its own pages.
        let short = size_cache(&shape(), &config, Residency::Budget { recall: true }, 100);
        assert_eq!(short.device_bytes, (30 * 4 + STAGING_SLACK) * slot);
        assert_eq!(full_kv_bytes(&shape(), &config, 8192), 30 * 256 * slot);
        assert_eq!(
            budget_kv_bytes(&shape(), &config, 8192),
            (2 * 256 + 28 * 16) * slot
        );
        // Every size resolves.
        let c = CacheConfig {
            device_bytes: ark.device_bytes,
            host_bytes: ark.host_bytes,
            ..config
        };
        c.resolve(&shape()).unwrap();
    }
}
