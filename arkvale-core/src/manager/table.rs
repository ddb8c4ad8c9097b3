//! Page tables: the state of every page unit of every (sequence, layer, head group).

use crate::host_store::BackupId;
use crate::policy::{AttendScope, Residency, TokenRule};
use crate::{DigestKind, PageBudget, PrefillKeep, VictimRule};

/// One page unit `(sequence, layer, group, page index)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageEntry {
    /// Device slot while resident.
    pub slot: Option<u32>,
    /// Host backup, once the page filled (budgeted layers only).
    pub backup: Option<BackupId>,
    /// Digest index, once the page filled (scored layers only).
    pub digest: Option<u32>,
    /// Attention mass the page received at the last attention that measured it (maximum over
    /// the group's query heads; 0 when that attention did not read the page). Only kept
    /// under the attention-feedback rules ([`crate::VictimRule::Attention`],
    /// [`crate::PrefillKeep::Attention`]).
    pub mass: f32,
}

/// The pages of one (sequence, layer, head group).
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupTable {
    /// Pages in token order.
    pub pages: Vec<PageEntry>,
    /// Pages with a slot.
    pub resident: usize,
    /// Page indices the last decode attention read (for inspection and tests).
    pub last_attended: Vec<u32>,
}

/// Keep-mask state of a token-level policy for one (sequence, layer).
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenState {
    /// Per KV head, per token: kept (true) or evicted for good.
    pub keep: Vec<Vec<bool>>,
    /// Per KV head: tokens kept.
    pub kept: Vec<usize>,
    /// Per KV head, per token: attention accumulated over every query so far (H2O).
    pub acc: Vec<Vec<f32>>,
}

/// One layer of one sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerState {
    /// Tokens appended to this layer.
    pub len: usize,
    /// One table per head group.
    pub groups: Vec<GroupTable>,
    /// Token-level policy state, if the layer has a token rule.
    pub tokens: Option<TokenState>,
}

/// A sequence in the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sequence {
    /// One state per model layer.
    pub layers: Vec<LayerState>,
}

/// What the policy means for one layer (dense layers keep and attend everything).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerPlan {
    pub residency: Residency,
    pub digest: Option<DigestKind>,
    pub attend: AttendScope,
    pub window: usize,
    pub topk: usize,
    pub token_rule: Option<TokenRule>,
    pub victims: VictimRule,
    pub prefill_keep: PrefillKeep,
}

impl LayerPlan {
    /// Whether pages are evicted and so must be backed up.
    pub fn budgeted(&self) -> bool {
        matches!(self.residency, Residency::Budget { .. })
    }

    /// The candidate pages `[sinks, n_pages - window)` of a group with `n_pages` pages.
    pub fn candidates(&self, budget: &PageBudget, n_pages: usize) -> std::ops::Range<usize> {
        let end = n_pages.saturating_sub(self.window);
        budget.sinks.min(end)..end
    }
}
