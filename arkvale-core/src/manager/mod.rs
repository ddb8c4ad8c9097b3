//! The cache manager: drives any [`Device`] through prefill and decode with the ArkVale
//! mechanism, whatever the [`Policy`].
//!
//! # How a decode layer-step runs (`decode_layer`, DESIGN.md §2)
//!
//! For every sequence of the batch and every head group:
//! 1. the token's K/V is appended to the last page (a new page takes a free slot, or — when
//!    `B` pages are resident — the slot of the page leaving the window, which is already
//!    backed up: the reference implementation's rule, kept here as the one rule);
//! 2. a page that is now full gets its digest written and its backup to host started
//!    (asynchronously; the step never waits for it);
//! 3. with more than `B` pages, every candidate page (neither sink nor window) is scored
//!    against the query, the top `K` are selected on the device (ties: lower page index), and
//!    the selection is read back — **the one host synchronization of a step**, needed because
//!    page tables live on the host;
//! 4. evicted top-`K` pages are recalled into the slots of the lowest-ranked resident
//!    candidates outside the top `K` (no write-back: they are backed up); the compute queue
//!    waits for the recall on the device, the host does not;
//! 5. attention runs over the resident pages (or sinks + top-`K` + window).
//!
//! Under **attention feedback** ([`crate::VictimRule::Attention`]) step 5 also asks the
//! device for every attended page's log-sum-exp (same pass, no second read of the keys); the
//! host turns them into page masses at the layer's *next* step, right after that step's
//! selection is read back (the device has long finished by then, so this adds no wait), and
//! step 4 then displaces the resident candidates with the least mass first (ties: the lower
//! digest rank). Under [`crate::PrefillKeep::Attention`] the end of a prompt keeps the pages
//! with the most exact attention mass of the last prompt query: one decode-style pass of that
//! single query over the layer's pages, evicted ones staged back as prefill streams them (a
//! second read of the keys for one query row, once per layer and prompt).
//!
//! A page leaves the device only after its backup completed (the host waits for that copy
//! only if it is still in flight, which needs a page to fill and leave the window within
//! one step). Everything is batched: one append, one summarize, one backup, one estimate,
//! one top-k, one recall per host chunk and one attention launch per layer-step.
//!
//! # Prefill (`prefill_layer`)
//!
//! A prompt is fed in chunks of at most `prefill_chunk_tokens`. A chunk's queries attend
//! exactly to every earlier token: resident pages directly, evicted pages streamed back
//! through a few staging slots and folded into an online-softmax state. After each chunk,
//! budgeted layers keep sinks + window + the top `B - sinks - window` pages scored with the
//! chunk's last query (after the last chunk: the last prompt token's query, as DESIGN.md
//! says). So device memory stays within `B + chunk pages + staging` per (layer, group).
//!
//! # Errors
//!
//! Every failure is an [`Error`] value. A step that fails part-way (an exhausted pool or
//! host tier, a device error) leaves the sequences it touched in an unspecified state:
//! remove them ([`CacheManager::remove_sequence`] frees everything) and retry with more
//! memory. Other sequences are unaffected.

mod decode;
mod fork;
mod prefill;
mod residency;
mod table;
mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::host_store::HostStore;
use crate::policy::{AttendScope, Policy, Residency};
use crate::pool::{DigestStore, SlotPool};
use crate::stats::CacheStats;
use crate::{
    Buffer, CacheConfig, DType, Device, Error, KvLayout, ModelShape, PageBudget, PrefillKeep,
    Result, VictimRule,
};

pub use fork::{PrefillSnapshot, SnapshotOptions};
pub use prefill::PREFILL_STAGING_SLOTS;
use table::{GroupTable, LayerPlan, LayerState, Sequence, TokenState};

/// Identifies a sequence in a [`CacheManager`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId(pub u64);

/// Where one page unit is, for inspection and invariant checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// Page index in the sequence.
    pub index: usize,
    /// Valid tokens in the page.
    pub len: usize,
    /// Device slot, if resident.
    pub slot: Option<u32>,
    /// Whether a host backup exists and has completed.
    pub backed_up: bool,
    /// Whether a digest was written.
    pub has_digest: bool,
}

/// Device-side resources shared by every sequence.
pub(crate) struct Resources {
    pub dev: Arc<dyn Device>,
    pub layout: KvLayout,
    pub pool: Buffer,
    pub slots: SlotPool,
    pub digests: Option<DigestStore>,
    pub host: HostStore,
    pub masks: Option<Buffer>,
    pub stats: CacheStats,
    pub scratch_scores: Option<Buffer>,
    pub scratch_picks: Option<Buffer>,
    pub scratch_weights: Option<Buffer>,
    /// Page log-sum-exps of decode attention / the prefill mass pass.
    pub scratch_lse: Option<Buffer>,
    /// Output of the prefill mass pass (`[1, H, d]`, discarded).
    pub scratch_row: Option<Buffer>,
    /// Per layer: the page log-sum-exps the layer's last decode attention wrote, not yet
    /// turned into page masses (attention-feedback eviction reads them at the next step).
    pub pending_mass: Vec<decode::LayerMass>,
}

/// Makes `slot` hold a buffer of at least `len` elements of `dtype` (reallocating when short).
pub(crate) fn grow(
    dev: &dyn Device,
    slot: &mut Option<Buffer>,
    dtype: DType,
    len: usize,
) -> Result<()> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = Some(dev.alloc(dtype, len.next_power_of_two())?);
    }
    Ok(())
}

/// Drives a [`Device`] through prefill and decode for many sequences, keeping at most the
/// budget of pages per (sequence, layer, group) resident under the chosen [`Policy`].
pub struct CacheManager {
    shape: ModelShape,
    config: CacheConfig,
    budget: PageBudget,
    policy: Box<dyn Policy>,
    res: Resources,
    seqs: BTreeMap<SeqId, Sequence>,
    next_id: u64,
    scale: f32,
    /// Sequences whose prefill is being recorded (see `fork`).
    captures: BTreeMap<SeqId, fork::Capture>,
}

impl CacheManager {
    /// Creates a manager: validates the configuration, allocates the KV pool of
    /// `device_bytes` (whole slots) on the device, and prepares the host tier (allocated lazily).
    pub fn new(
        dev: Arc<dyn Device>,
        shape: ModelShape,
        config: CacheConfig,
        policy: Box<dyn Policy>,
    ) -> Result<Self> {
        let budget = config.resolve(&shape)?;
        let layout = KvLayout {
            kv_dtype: config.kv_dtype,
            heads_per_group: config.heads_per_group(&shape),
            gqa: shape.gqa(),
            page_size: config.page_size,
            head_dim: shape.head_dim,
            groups: config.head_groups,
        };
        let window = policy.window_pages(&budget);
        if window < 2 || budget.sinks + window > budget.pages {
            return Err(Error::config(format!(
                "policy '{}' needs {window} window pages, which the budget of {} pages with {} \
                 sinks cannot hold (at least 2 needed)",
                policy.name(),
                budget.pages,
                budget.sinks
            )));
        }
        let slot_bytes = layout.slot_bytes();
        let capacity = config.device_bytes / slot_bytes;
        let pool = dev.alloc(config.kv_dtype.dtype(), capacity * layout.slot_elems())?;
        let digests = match policy.digest() {
            Some(kind) => Some(DigestStore::new(
                dev.as_ref(),
                layout.heads_per_group * kind.len(shape.head_dim),
            )?),
            None => None,
        };
        let masks = match policy.token_rule() {
            Some(_) => Some(dev.alloc(DType::U8, capacity * layout.tokens_per_slot())?),
            None => None,
        };
        let host = HostStore::new(slot_bytes, config.host_bytes, config.spill_dir.as_deref())?;
        Ok(CacheManager {
            shape,
            budget,
            policy,
            res: Resources {
                dev,
                layout,
                pool,
                slots: SlotPool::new(capacity, slot_bytes),
                digests,
                host,
                masks,
                stats: CacheStats::default(),
                scratch_scores: None,
                scratch_picks: None,
                scratch_weights: None,
                scratch_lse: None,
                scratch_row: None,
                pending_mass: (0..shape.layers).map(|_| Default::default()).collect(),
            },
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            config,
            seqs: BTreeMap::new(),
            next_id: 0,
            captures: BTreeMap::new(),
        })
    }

    /// Adds an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let token_rule = self.policy.token_rule();
        let layer = |l: usize| LayerState {
            len: 0,
            groups: vec![GroupTable::default(); self.config.head_groups],
            tokens: (token_rule.is_some() && l >= self.config.dense_layers).then(|| TokenState {
                keep: vec![Vec::new(); self.shape.kv_heads],
                kept: vec![0; self.shape.kv_heads],
                acc: vec![Vec::new(); self.shape.kv_heads],
            }),
        };
        let seq = Sequence {
            layers: (0..self.shape.layers).map(layer).collect(),
        };
        self.seqs.insert(id, seq);
        id
    }

    /// Removes a sequence and frees its slots, digests and host backups.
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<()> {
        let seq = self.seqs.remove(&id).ok_or(Error::UnknownSequence(id.0))?;
        self.captures.remove(&id);
        let mut first_error = None;
        for layer in seq.layers {
            for group in layer.groups {
                for page in group.pages {
                    if let Err(e) = self.res.release_page(page) {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sets the attention softmax scale (default `1 / sqrt(head_dim)`).
    pub fn set_attention_scale(&mut self, scale: f32) {
        self.scale = scale;
    }

    /// Sequences in the cache.
    pub fn sequences(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Tokens of a sequence in `layer` (the same for every layer between steps).
    pub fn seq_len(&self, id: SeqId, layer: usize) -> Result<usize> {
        Ok(self.seq(id)?.layers.get(layer).map_or(0, |l| l.len))
    }

    /// The model shape.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The budget in pages.
    pub fn budget(&self) -> &PageBudget {
        &self.budget
    }

    /// The policy.
    pub fn policy(&self) -> &dyn Policy {
        self.policy.as_ref()
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.res.dev
    }

    /// The KV pool geometry.
    pub fn layout(&self) -> &KvLayout {
        &self.res.layout
    }

    /// Cumulative statistics.
    pub fn stats(&self) -> &CacheStats {
        &self.res.stats
    }

    /// Returns the statistics gathered so far and starts counting afresh.
    pub fn take_stats(&mut self) -> CacheStats {
        std::mem::take(&mut self.res.stats)
    }

    /// Host-tier statistics (pages in host memory / on disk, bytes spilled).
    pub fn host_stats(&self) -> crate::host_store::HostStoreStats {
        self.res.host.stats()
    }

    /// Bytes of KV pages resident on the device now.
    pub fn resident_bytes(&self) -> usize {
        self.res.slots.used() * self.res.layout.slot_bytes()
    }

    /// Bytes a full cache would hold for the same sequences (every page of every layer).
    pub fn full_bytes(&self) -> usize {
        let pages: usize = self
            .seqs
            .values()
            .flat_map(|s| &s.layers)
            .flat_map(|l| &l.groups)
            .map(|g| g.pages.len())
            .sum();
        pages * self.res.layout.slot_bytes()
    }

    /// Slots in the device pool.
    pub fn pool_capacity(&self) -> usize {
        self.res.slots.capacity()
    }

    /// The state of every page of (sequence, layer, group).
    pub fn pages(&self, id: SeqId, layer: usize, group: usize) -> Result<Vec<PageInfo>> {
        let ls = self.layer_state(id, layer)?;
        let table = ls.groups.get(group).ok_or_else(|| {
            Error::InvalidRequest(format!("group {group} out of {}", ls.groups.len()))
        })?;
        let p = self.budget.page_size;
        let mut out = Vec::with_capacity(table.pages.len());
        for (index, page) in table.pages.iter().enumerate() {
            let backed_up = match page.backup {
                Some(b) => self.res.host.is_complete(b)?,
                None => false,
            };
            out.push(PageInfo {
                index,
                len: (ls.len - index * p).min(p),
                slot: page.slot,
                backed_up,
                has_digest: page.digest.is_some(),
            });
        }
        Ok(out)
    }

    /// Page indices the last decode attention of (sequence, layer, group) read.
    pub fn last_attended(&self, id: SeqId, layer: usize, group: usize) -> Result<Vec<u32>> {
        let ls = self.layer_state(id, layer)?;
        Ok(ls
            .groups
            .get(group)
            .map(|g| g.last_attended.clone())
            .unwrap_or_default())
    }

    /// The keep-mask of a token-level policy for (sequence, layer, KV head), one flag per
    /// token; `None` for page-level policies and dense layers.
    pub fn keep_mask(&self, id: SeqId, layer: usize, kv_head: usize) -> Result<Option<Vec<bool>>> {
        let ls = self.layer_state(id, layer)?;
        Ok(ls
            .tokens
            .as_ref()
            .and_then(|t| t.keep.get(kv_head).cloned()))
    }

    /// The stored bytes of a resident page (K then V of its slot), for tests and debugging.
    pub fn resident_page_bytes(
        &self,
        id: SeqId,
        layer: usize,
        group: usize,
        page: usize,
    ) -> Result<Option<Vec<u8>>> {
        let ls = self.layer_state(id, layer)?;
        let Some(slot) = ls
            .groups
            .get(group)
            .and_then(|g| g.pages.get(page))
            .and_then(|p| p.slot)
        else {
            return Ok(None);
        };
        let layout = &self.res.layout;
        let mut bytes = vec![0u8; layout.slot_bytes()];
        self.res.dev.read(
            &self.res.pool,
            slot as usize * layout.slot_elems(),
            &mut bytes,
        )?;
        Ok(Some(bytes))
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence> {
        self.seqs.get(&id).ok_or(Error::UnknownSequence(id.0))
    }

    fn layer_state(&self, id: SeqId, layer: usize) -> Result<&LayerState> {
        self.seq(id)?.layers.get(layer).ok_or_else(|| {
            Error::InvalidRequest(format!("layer {layer} out of {}", self.shape.layers))
        })
    }

    /// What the policy means for `layer`.
    fn plan(&self, layer: usize) -> LayerPlan {
        if layer < self.config.dense_layers {
            return LayerPlan {
                residency: Residency::KeepAll,
                digest: None,
                attend: AttendScope::Resident,
                window: self.budget.window,
                topk: 0,
                token_rule: None,
                victims: VictimRule::Digest,
                prefill_keep: PrefillKeep::Digest,
            };
        }
        LayerPlan {
            residency: self.policy.residency(),
            digest: self.policy.digest(),
            attend: self.policy.attend(),
            window: self.policy.window_pages(&self.budget),
            topk: self.policy.decode_topk(&self.budget),
            token_rule: self.policy.token_rule(),
            victims: self.policy.victims(),
            prefill_keep: self.policy.prefill_keep(),
        }
    }

    /// Checks that `buf` is an f32 buffer holding at least `rows` rows of `heads * d`.
    fn check_rows(&self, name: &str, buf: &Buffer, rows: usize, heads: usize) -> Result<()> {
        let need = rows * heads * self.shape.head_dim;
        if buf.dtype() != DType::F32 || buf.len() < need {
            return Err(Error::shape(format!(
                "{name} must be f32 [{rows}, {heads}, {}] ({need} values), got {buf:?}",
                self.shape.head_dim
            )));
        }
        Ok(())
    }
}
