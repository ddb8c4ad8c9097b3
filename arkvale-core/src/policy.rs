//! Eviction policies: what a policy decides, and the built-in ones.
//!
//! A [`Policy`] is a small set of decisions; the [`crate::CacheManager`] carries them out with
//! one mechanism for every policy (so a backend never decides which page to evict):
//!
//! * **residency** — keep every page on the device ([`Residency::KeepAll`]) or at most the
//!   budget `B` per (sequence, layer, head group) ([`Residency::Budget`]), optionally
//!   recalling evicted pages from their host backup;
//! * **scoring** — which digest estimates page importance against the current query (none:
//!   no estimation);
//! * **attention scope** — all resident pages, or only sinks + top-k + window;
//! * **window** and **top-k** sizes derived from the budget;
//! * an optional **token rule** for the token-level baselines (H2O, TOVA), carried out as a
//!   keep-mask over otherwise resident pages.
//!
//! Shared mechanism (in the manager, documented there): a new page that needs a slot while `B`
//! pages are resident displaces the page leaving the window; evicted top-k pages are recalled
//! into the slots of the lowest-scored resident candidates outside the top-k; ties in every
//! ranking go to the lower page index. The first `dense_layers` layers of every policy keep and
//! attend every page (paper Fig. 3).

use crate::{
    AttentionMode, CacheConfig, DigestKind, Error, PageBudget, PrefillKeep, Result, VictimRule,
};

/// Where a policy's pages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Every page stays on the device (no memory bound).
    KeepAll,
    /// At most `B` pages per (sequence, layer, group) stay on the device; every filled page is
    /// backed up to host memory (prefill streams evicted pages back for exact attention).
    Budget {
        /// Whether decode recalls evicted top-k pages (ArkVale) or never (StreamingLLM).
        recall: bool,
    },
}

/// Which pages a decode step attends to once a sequence exceeds its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttendScope {
    /// Every resident page.
    Resident,
    /// Sinks + the top-k pages + the window.
    Selected,
}

/// A token-level eviction rule, carried out by the manager as a keep-mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRule {
    /// H2O (Zhang et al., NeurIPS 2023): per KV head, keep the `budget/2` most recent tokens
    /// and the `budget - budget/2` "heavy hitters" with the largest attention accumulated over
    /// every query so far (the prompt's included; summed over the head's query heads). After
    /// each decode step that leaves more than `budget` tokens, the non-recent token with the
    /// smallest accumulated attention is evicted (ties: the earliest position).
    H2O,
    /// TOVA (Oren et al., 2024): per layer, after each decode step that leaves more than
    /// `budget` tokens, evict the token with the lowest attention weight of the current query,
    /// averaged over all query heads (ties: the earliest position). After the prompt, keep the
    /// `budget` tokens the last prompt token attends to most.
    Tova,
}

/// The decisions of an eviction policy. Implement it to add your own page-level policy.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// A short name (`arkvale`, `streaming`, ...).
    fn name(&self) -> String;
    /// Where pages live.
    fn residency(&self) -> Residency;
    /// The digest used to score pages; `None`: no estimation.
    fn digest(&self) -> Option<DigestKind>;
    /// Which pages decode attends once the sequence exceeds its budget.
    fn attend(&self) -> AttendScope;
    /// Window pages (never evicted; the partial page included).
    fn window_pages(&self, budget: &PageBudget) -> usize {
        budget.window
    }
    /// Pages a decode step selects by score (the top-k).
    fn decode_topk(&self, budget: &PageBudget) -> usize {
        budget.topk
    }
    /// The token-level rule, for token-level baselines.
    fn token_rule(&self) -> Option<TokenRule> {
        None
    }
    /// Which resident pages make room for recalled ones.
    fn victims(&self) -> VictimRule {
        VictimRule::Digest
    }
    /// Which pages a budgeted layer keeps at the end of a prompt.
    fn prefill_keep(&self) -> PrefillKeep {
        PrefillKeep::Digest
    }
}

/// ArkVale: budgeted residency, digest scoring, recall of evicted top-k pages.
#[derive(Debug, Clone, Copy)]
pub struct ArkVale {
    /// Digest used for estimation.
    pub digest: DigestKind,
    /// Attention over all resident pages or only the selected ones.
    pub attention: AttentionMode,
    /// Which resident pages make room for recalled ones.
    pub victims: VictimRule,
    /// Which pages a budgeted layer keeps at the end of a prompt.
    pub prefill_keep: PrefillKeep,
}

impl Policy for ArkVale {
    fn name(&self) -> String {
        "arkvale".into()
    }
    fn residency(&self) -> Residency {
        Residency::Budget { recall: true }
    }
    fn digest(&self) -> Option<DigestKind> {
        Some(self.digest)
    }
    fn attend(&self) -> AttendScope {
        match self.attention {
            AttentionMode::Resident => AttendScope::Resident,
            AttentionMode::Sparse => AttendScope::Selected,
        }
    }
    fn victims(&self) -> VictimRule {
        self.victims
    }
    fn prefill_keep(&self) -> PrefillKeep {
        self.prefill_keep
    }
}

/// No eviction: every page resident and attended (the accuracy reference).
#[derive(Debug, Clone, Copy)]
pub struct Full;

impl Policy for Full {
    fn name(&self) -> String {
        "full".into()
    }
    fn residency(&self) -> Residency {
        Residency::KeepAll
    }
    fn digest(&self) -> Option<DigestKind> {
        None
    }
    fn attend(&self) -> AttendScope {
        AttendScope::Resident
    }
}

/// StreamingLLM (Xiao et al., ICLR 2024) at page granularity: the sink pages plus the most
/// recent `B - sinks` pages; evicted pages never come back.
#[derive(Debug, Clone, Copy)]
pub struct Streaming;

impl Policy for Streaming {
    fn name(&self) -> String {
        "streaming".into()
    }
    fn residency(&self) -> Residency {
        Residency::Budget { recall: false }
    }
    fn digest(&self) -> Option<DigestKind> {
        None
    }
    fn attend(&self) -> AttendScope {
        AttendScope::Resident
    }
    fn window_pages(&self, budget: &PageBudget) -> usize {
        budget.pages - budget.sinks
    }
    fn decode_topk(&self, _budget: &PageBudget) -> usize {
        0
    }
}

/// Quest (Tang et al., ICML 2024): every page stays resident; each step attends the sinks,
/// the window and the `B - sinks - window` pages with the largest cuboid-max bound.
#[derive(Debug, Clone, Copy)]
pub struct Quest;

impl Policy for Quest {
    fn name(&self) -> String {
        "quest".into()
    }
    fn residency(&self) -> Residency {
        Residency::KeepAll
    }
    fn digest(&self) -> Option<DigestKind> {
        Some(DigestKind::CuboidMax)
    }
    fn attend(&self) -> AttendScope {
        AttendScope::Selected
    }
    fn decode_topk(&self, budget: &PageBudget) -> usize {
        budget.pages - budget.sinks - budget.window
    }
}

/// H2O heavy hitters + recent tokens, at token granularity (see [`TokenRule::H2O`]).
#[derive(Debug, Clone, Copy)]
pub struct H2O;

impl Policy for H2O {
    fn name(&self) -> String {
        "h2o".into()
    }
    fn residency(&self) -> Residency {
        Residency::KeepAll
    }
    fn digest(&self) -> Option<DigestKind> {
        None
    }
    fn attend(&self) -> AttendScope {
        AttendScope::Resident
    }
    fn token_rule(&self) -> Option<TokenRule> {
        Some(TokenRule::H2O)
    }
}

/// TOVA token omission via attention, at token granularity (see [`TokenRule::Tova`]).
#[derive(Debug, Clone, Copy)]
pub struct Tova;

impl Policy for Tova {
    fn name(&self) -> String {
        "tova".into()
    }
    fn residency(&self) -> Residency {
        Residency::KeepAll
    }
    fn digest(&self) -> Option<DigestKind> {
        None
    }
    fn attend(&self) -> AttendScope {
        AttendScope::Resident
    }
    fn token_rule(&self) -> Option<TokenRule> {
        Some(TokenRule::Tova)
    }
}

/// Names accepted by [`policy_by_name`].
pub const POLICY_NAMES: [&str; 6] = ["full", "arkvale", "streaming", "quest", "h2o", "tova"];

/// Builds a built-in policy by name, taking its digest and attention mode from `config`.
pub fn policy_by_name(name: &str, config: &CacheConfig) -> Result<Box<dyn Policy>> {
    Ok(match name {
        "full" => Box::new(Full),
        "arkvale" => Box::new(ArkVale {
            digest: config.digest,
            attention: config.attention,
            victims: config.victims,
            prefill_keep: config.prefill_keep,
        }),
        "streaming" => Box::new(Streaming),
        "quest" => Box::new(Quest),
        "h2o" => Box::new(H2O),
        "tova" => Box::new(Tova),
        other => {
            return Err(Error::config(format!(
                "unknown policy '{other}', expected one of {}",
                POLICY_NAMES.join(", ")
            )));
        }
    })
}

/// A policy spec `NAME` or `NAME:key=value+...` ([`crate::apply_overrides`] lists the keys),
/// e.g. `arkvale:preset=paper` or `arkvale:victims=attention+groups=kv`: the cache
/// configuration `config` with the overrides applied (for a model of `kv_heads` KV heads) and
/// the policy built from it.
pub fn policy_from_spec(
    spec: &str,
    config: &CacheConfig,
    kv_heads: usize,
) -> Result<(Box<dyn Policy>, CacheConfig)> {
    let (name, overrides) = spec.split_once(':').unwrap_or((spec, ""));
    let mut c = config.clone();
    crate::apply_overrides(&mut c, overrides, kv_heads)?;
    Ok((policy_by_name(name.trim(), &c)?, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_and_reports_itself() {
        let cfg = CacheConfig::default();
        for n in POLICY_NAMES {
            assert_eq!(policy_by_name(n, &cfg).unwrap().name(), n);
        }
        assert!(
            policy_by_name("lru", &cfg)
                .unwrap_err()
                .to_string()
                .contains("lru")
        );
    }

    #[test]
    fn specs_name_a_policy_and_override_its_config() {
        let base = CacheConfig::default();
        let (p, c) = policy_from_spec("arkvale:victims=attention+agg=max", &base, 4).unwrap();
        assert_eq!(p.name(), "arkvale");
        assert_eq!(p.victims(), VictimRule::Attention);
        assert_eq!(c.score_agg, crate::ScoreAgg::Max);
        let (p, c) = policy_from_spec("streaming", &base, 4).unwrap();
        assert_eq!((p.name(), c), ("streaming".to_string(), base.clone()));
        assert!(policy_from_spec("arkvale:victims", &base, 4).is_err());
        assert!(policy_from_spec("lru:agg=max", &base, 4).is_err());
    }

    #[test]
    fn streaming_window_covers_the_non_sink_budget() {
        let b = PageBudget {
            page_size: 16,
            pages: 10,
            topk: 4,
            sinks: 1,
            window: 2,
        };
        assert_eq!(Streaming.window_pages(&b), 9);
        assert_eq!(Quest.decode_topk(&b), 7);
        assert_eq!(
            ArkVale {
                digest: DigestKind::CuboidMean,
                attention: AttentionMode::Resident,
                victims: VictimRule::Digest,
                prefill_keep: PrefillKeep::Digest,
            }
            .decode_topk(&b),
            4
        );
    }
}
