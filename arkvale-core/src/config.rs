//! Cache configuration, its validation, and the budget it resolves to in pages.

use std::path::PathBuf;

use crate::{Error, KvDtype, ModelShape, Result};

/// How a page's digest bounds its keys (paper §5.2, plus the centroid baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestKind {
    /// Bounding box with the radius `max |c - k|` (a true upper bound of `max q.k`).
    CuboidMax,
    /// Bounding box with the radius `(min |c - k| + max |c - k|) / 2`.
    CuboidCenter,
    /// Bounding box with the radius `mean |c - k|` — the paper's best and our default.
    #[default]
    CuboidMean,
    /// Sphere around `c` with radius `max ||c - k||`.
    SphereMax,
    /// Sphere around `c` with radius `(min ||c - k|| + max ||c - k||) / 2`.
    SphereCenter,
    /// Sphere around `c` with radius `mean ||c - k||`.
    SphereMean,
    /// The mean key (baseline).
    Centroid,
}

impl DigestKind {
    /// Every digest kind, in a fixed order.
    pub const ALL: [DigestKind; 7] = [
        DigestKind::CuboidMax,
        DigestKind::CuboidCenter,
        DigestKind::CuboidMean,
        DigestKind::SphereMax,
        DigestKind::SphereCenter,
        DigestKind::SphereMean,
        DigestKind::Centroid,
    ];

    /// The kebab-case name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DigestKind::CuboidMax => "cuboid-max",
            DigestKind::CuboidCenter => "cuboid-center",
            DigestKind::CuboidMean => "cuboid-mean",
            DigestKind::SphereMax => "sphere-max",
            DigestKind::SphereCenter => "sphere-center",
            DigestKind::SphereMean => "sphere-mean",
            DigestKind::Centroid => "centroid",
        }
    }

    /// Parses a name as written by [`DigestKind::name`].
    pub fn parse(s: &str) -> Result<Self> {
        parse_named(&Self::ALL, s, "digest", Self::name)
    }

    /// f32 values stored per KV head for a head dimension `d`.
    pub fn len(self, d: usize) -> usize {
        match self {
            DigestKind::CuboidMax | DigestKind::CuboidCenter | DigestKind::CuboidMean => 2 * d,
            DigestKind::SphereMax | DigestKind::SphereCenter | DigestKind::SphereMean => d + 1,
            DigestKind::Centroid => d,
        }
    }
}

/// How the scores of a group's query heads combine into one page score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScoreAgg {
    /// Mean over the group's query heads (the paper's default).
    #[default]
    Mean,
    /// Maximum over the group's query heads.
    Max,
}

impl ScoreAgg {
    /// Every aggregation, in a fixed order.
    pub const ALL: [ScoreAgg; 2] = [ScoreAgg::Mean, ScoreAgg::Max];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ScoreAgg::Mean => "mean",
            ScoreAgg::Max => "max",
        }
    }

    /// Parses a name as written by [`ScoreAgg::name`].
    pub fn parse(s: &str) -> Result<Self> {
        parse_named(&Self::ALL, s, "score aggregation", Self::name)
    }
}

/// Which resident pages make room when an ArkVale decode step recalls evicted top-k pages.
///
/// The victims are always resident candidates (neither sink nor window) outside the step's
/// top-k; this decides their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VictimRule {
    /// The lowest digest scores against the current query go first (the paper's rule).
    #[default]
    Digest,
    /// **Attention feedback**: the least attention mass observed at the layer's previous
    /// decode step goes first (softmax weight summed over the page's tokens, maximum over
    /// the group's query heads; a page that step did not attend counts as 0); ties go to
    /// the lower digest score. The mass comes from the previous attention of the same layer
    /// ([`crate::Device::decode_attention`]'s `page_lse`), so it costs no extra pass.
    Attention,
}

impl VictimRule {
    /// Every rule, in a fixed order.
    pub const ALL: [VictimRule; 2] = [VictimRule::Digest, VictimRule::Attention];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VictimRule::Digest => "digest",
            VictimRule::Attention => "attention",
        }
    }

    /// Parses a name as written by [`VictimRule::name`].
    pub fn parse(s: &str) -> Result<Self> {
        parse_named(&Self::ALL, s, "victim rule", Self::name)
    }
}

/// Which pages a budgeted layer keeps at the end of a prompt that exceeds the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PrefillKeep {
    /// The best digest scores against the last prompt token's query (the paper's rule).
    #[default]
    Digest,
    /// The largest exact attention mass of the last prompt token's query (maximum over the
    /// group's query heads), from one extra decode-style attention pass of that single query
    /// over the layer's pages (evicted pages staged back for it). Chunks before the prompt's
    /// last keep their pages by digest as before: only the final selection is by mass.
    Attention,
}

impl PrefillKeep {
    /// Every rule, in a fixed order.
    pub const ALL: [PrefillKeep; 2] = [PrefillKeep::Digest, PrefillKeep::Attention];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PrefillKeep::Digest => "digest",
            PrefillKeep::Attention => "attention",
        }
    }

    /// Parses a name as written by [`PrefillKeep::name`].
    pub fn parse(s: &str) -> Result<Self> {
        parse_named(&Self::ALL, s, "prefill keep rule", Self::name)
    }
}

/// A named starting point for the `arkvale` policy's selection rules; explicit options
/// override its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preset {
    /// The paper's exact rules: pages of 32 tokens, 1 sink page, 2 window pages, one head
    /// group per layer, page scores averaged over the query heads, recall victims and the
    /// prefill's kept pages ranked by digest. Reproduces the paper and round 1.
    #[default]
    Paper,
    /// Selection informed by attention the step computes anyway (DESIGN §2 "beyond the
    /// paper"): pages of 16 tokens (2 sink and 4 window pages: the paper's tokens), one head
    /// group per KV head, scores maxed over a group's query heads, attention-feedback victims
    /// and attention-mass prefill selection.
    Recommended,
}

impl Preset {
    /// Every preset, in a fixed order.
    pub const ALL: [Preset; 2] = [Preset::Paper, Preset::Recommended];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Recommended => "recommended",
        }
    }

    /// Parses a name as written by [`Preset::name`].
    pub fn parse(s: &str) -> Result<Self> {
        parse_named(&Self::ALL, s, "preset", Self::name)
    }

    /// Sets the fields this preset decides (page size, sinks, window, head groups, score
    /// aggregation, victim and prefill rules) for a model with `kv_heads` KV heads; budget,
    /// top-k, digest, memory and the rest are left as they are.
    pub fn apply(self, c: &mut CacheConfig, kv_heads: usize) {
        match self {
            Preset::Paper => {
                c.page_size = 32;
                c.sink_pages = 1;
                c.window_pages = 2;
                c.head_groups = 1;
                c.score_agg = ScoreAgg::Mean;
                c.victims = VictimRule::Digest;
                c.prefill_keep = PrefillKeep::Digest;
            }
            Preset::Recommended => {
                c.page_size = 16;
                c.sink_pages = 2;
                c.window_pages = 4;
                c.head_groups = kv_heads.max(1);
                c.score_agg = ScoreAgg::Max;
                c.victims = VictimRule::Attention;
                c.prefill_keep = PrefillKeep::Attention;
            }
        }
        c.round_prefill_chunk();
    }
}

/// Applies `key=value` overrides of a policy spec (`arkvale:victims=attention+page=16`), joined
/// by `+` (so that specs fit in comma-separated lists), to
/// `c` for a model with `kv_heads` KV heads. Keys: `preset` (applied first, whatever its
/// place), `victims`, `prefill`, `groups` (a number or `kv`), `agg`, `page`, `digest`.
pub fn apply_overrides(c: &mut CacheConfig, overrides: &str, kv_heads: usize) -> Result<()> {
    let pairs: Vec<(&str, &str)> = overrides
        .split('+')
        .filter(|s| !s.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| Error::config(format!("policy option '{kv}' is not key=value")))
        })
        .collect::<Result<_>>()?;
    for &(k, v) in &pairs {
        if k == "preset" {
            Preset::parse(v)?.apply(c, kv_heads);
        }
    }
    for (k, v) in pairs {
        match k {
            "preset" => {}
            "victims" => c.victims = VictimRule::parse(v)?,
            "prefill" => c.prefill_keep = PrefillKeep::parse(v)?,
            "agg" => c.score_agg = ScoreAgg::parse(v)?,
            "digest" => c.digest = DigestKind::parse(v)?,
            "groups" => {
                c.head_groups = if v == "kv" {
                    kv_heads
                } else {
                    v.parse().map_err(|_| {
                        Error::config(format!("groups must be a number or 'kv', got '{v}'"))
                    })?
                }
            }
            "page" => {
                let old = c.page_size;
                c.page_size = v
                    .parse()
                    .map_err(|_| Error::config(format!("page must be a number, got '{v}'")))?;
                // Keep sinks and window at the same tokens where they divide evenly.
                if c.page_size > 0 && old % c.page_size == 0 {
                    c.sink_pages *= old / c.page_size;
                    c.window_pages *= old / c.page_size;
                } else if c.page_size > 0 && c.page_size % old == 0 {
                    c.sink_pages = (c.sink_pages * old / c.page_size).max(1);
                    c.window_pages = (c.window_pages * old / c.page_size).max(2);
                }
                c.round_prefill_chunk();
            }
            other => {
                return Err(Error::config(format!(
                    "unknown policy option '{other}' (expected preset, victims, prefill, \
                     groups, agg, page or digest)"
                )));
            }
        }
    }
    Ok(())
}

/// Finds the value of `all` whose `name` is `s`, or a config error listing the names.
fn parse_named<T: Copy>(all: &[T], s: &str, what: &str, name: fn(T) -> &'static str) -> Result<T> {
    all.iter().copied().find(|&v| name(v) == s).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|&v| name(v)).collect();
        Error::config(format!(
            "unknown {what} '{s}', expected one of {}",
            names.join(", ")
        ))
    })
}

/// Which pages a decode step attends to once a sequence exceeds its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttentionMode {
    /// Every resident page (the paper's default).
    #[default]
    Resident,
    /// Only sinks + top-k + window.
    Sparse,
}

/// Everything that shapes an ArkVale cache. Budgets are in tokens; [`CacheConfig::resolve`]
/// turns them into pages and checks every constraint with a message naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Tokens per page: 8, 16, 32 or 64.
    pub page_size: usize,
    /// Resident tokens per (sequence, layer, head group); a multiple of `page_size`.
    pub budget_tokens: usize,
    /// Tokens that must take part in each attention (top-k). `None`: the paper's
    /// `min(1280, budget / 2)`.
    pub topk_tokens: Option<usize>,
    /// Leading pages that are never evicted (attention sinks).
    pub sink_pages: usize,
    /// Trailing pages that are never evicted, the partial page included (>= 2).
    pub window_pages: usize,
    /// Leading layers that keep every page (paper Fig. 3).
    pub dense_layers: usize,
    /// Digest used to estimate page importance.
    pub digest: DigestKind,
    /// Head groups per layer: pages are kept, scored and recalled per group.
    pub head_groups: usize,
    /// How query-head scores combine into a page score.
    pub score_agg: ScoreAgg,
    /// Which resident pages make room for recalled ones (ArkVale).
    pub victims: VictimRule,
    /// Which pages a budgeted layer keeps at the end of a prompt (ArkVale).
    pub prefill_keep: PrefillKeep,
    /// Which pages attention reads once a sequence exceeds its budget.
    pub attention: AttentionMode,
    /// Storage type of the KV pool and the host backups.
    pub kv_dtype: KvDtype,
    /// Bytes of device memory for the KV pool (resident pages of every sequence).
    pub device_bytes: usize,
    /// Bytes of host memory for page backups.
    pub host_bytes: usize,
    /// Where backups go when host memory is full; `None`: fail with a clear error instead.
    pub spill_dir: Option<PathBuf>,
    /// Prompt tokens per prefill chunk; a multiple of `page_size`.
    pub prefill_chunk_tokens: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            page_size: 32,
            budget_tokens: 2048,
            topk_tokens: None,
            sink_pages: 1,
            window_pages: 2,
            dense_layers: 2,
            digest: DigestKind::default(),
            head_groups: 1,
            score_agg: ScoreAgg::default(),
            victims: VictimRule::default(),
            prefill_keep: PrefillKeep::default(),
            attention: AttentionMode::default(),
            kv_dtype: KvDtype::default(),
            device_bytes: 2 << 30,
            host_bytes: 16 << 30,
            spill_dir: None,
            prefill_chunk_tokens: 1024,
        }
    }
}

/// The budget of one (sequence, layer, head group), in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    /// Tokens per page.
    pub page_size: usize,
    /// Resident pages `B`.
    pub pages: usize,
    /// Pages that must take part in attention each step, `K`.
    pub topk: usize,
    /// Sink pages.
    pub sinks: usize,
    /// Window pages.
    pub window: usize,
}

impl CacheConfig {
    /// The top-k in tokens, with the paper's default applied when unset:
    /// `min(1280, budget / 2)` rounded down to whole pages (DESIGN: `K = min(1280, budget/2) / p`
    /// pages).
    pub fn topk_tokens(&self) -> usize {
        self.topk_tokens.unwrap_or_else(|| {
            let p = self.page_size.max(1);
            (self.budget_tokens / 2).min(1280) / p * p
        })
    }

    /// Validates the configuration against a model shape and returns the page budget.
    pub fn resolve(&self, shape: &ModelShape) -> Result<PageBudget> {
        shape.validate()?;
        let p = self.page_size;
        if ![8, 16, 32, 64].contains(&p) {
            return Err(Error::config(format!(
                "page_size must be 8, 16, 32 or 64, got {p}"
            )));
        }
        if self.budget_tokens == 0 || self.budget_tokens % p != 0 {
            return Err(Error::config(format!(
                "budget ({} tokens) must be a positive multiple of page_size ({p})",
                self.budget_tokens
            )));
        }
        let topk = self.topk_tokens();
        if topk % p != 0 {
            return Err(Error::config(format!(
                "top-k ({topk} tokens) must be a multiple of page_size ({p})"
            )));
        }
        if self.window_pages < 2 {
            return Err(Error::config(format!(
                "window_pages must be at least 2 (the partial page and the last full one), got {}",
                self.window_pages
            )));
        }
        let budget = PageBudget {
            page_size: p,
            pages: self.budget_tokens / p,
            topk: topk / p,
            sinks: self.sink_pages,
            window: self.window_pages,
        };
        if budget.sinks + budget.window + budget.topk > budget.pages {
            return Err(Error::config(format!(
                "budget of {} pages cannot hold {} sink + {} window + {} top-k pages; \
                 raise the budget or lower sinks/window/top-k",
                budget.pages, budget.sinks, budget.window, budget.topk
            )));
        }
        if self.head_groups == 0 || shape.kv_heads % self.head_groups != 0 {
            return Err(Error::config(format!(
                "head_groups ({}) must be between 1 and the KV heads ({}) and divide them",
                self.head_groups, shape.kv_heads
            )));
        }
        if self.dense_layers > shape.layers {
            return Err(Error::config(format!(
                "dense_layers ({}) exceeds the model's {} layers",
                self.dense_layers, shape.layers
            )));
        }
        if self.prefill_chunk_tokens == 0 || self.prefill_chunk_tokens % p != 0 {
            return Err(Error::config(format!(
                "prefill_chunk_tokens ({}) must be a positive multiple of page_size ({p})",
                self.prefill_chunk_tokens
            )));
        }
        let slot = self.slot_bytes(shape);
        if self.device_bytes < slot * (budget.pages + 1) {
            return Err(Error::config(format!(
                "device_bytes ({}) cannot hold one sequence-layer budget of {} pages of {slot} bytes",
                self.device_bytes, budget.pages
            )));
        }
        if self.host_bytes < slot {
            return Err(Error::config(format!(
                "host_bytes ({}) cannot hold a single page of {slot} bytes",
                self.host_bytes
            )));
        }
        Ok(budget)
    }

    /// Rounds the prefill chunk up to whole pages (after the page size changed); a zero page
    /// size, which [`CacheConfig::resolve`] rejects, leaves it as it is.
    pub fn round_prefill_chunk(&mut self) {
        if self.page_size > 0 {
            self.prefill_chunk_tokens =
                self.prefill_chunk_tokens.div_ceil(self.page_size) * self.page_size;
        }
    }

    /// KV heads per head group.
    pub fn heads_per_group(&self, shape: &ModelShape) -> usize {
        shape.kv_heads / self.head_groups.max(1)
    }

    /// Bytes of one page unit (K and V of `page_size` tokens for one head group).
    pub fn slot_bytes(&self, shape: &ModelShape) -> usize {
        2 * self.heads_per_group(shape) * self.page_size * shape.head_dim * self.kv_dtype.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ModelShape {
        ModelShape {
            layers: 4,
            q_heads: 8,
            kv_heads: 4,
            head_dim: 16,
        }
    }

    #[test]
    fn default_topk_is_the_papers_rule() {
        let c = CacheConfig {
            budget_tokens: 4096,
            ..Default::default()
        };
        assert_eq!(c.topk_tokens(), 1280);
        let c = CacheConfig {
            budget_tokens: 1024,
            ..Default::default()
        };
        assert_eq!(c.topk_tokens(), 512);
        let b = c.resolve(&shape()).unwrap();
        assert_eq!((b.pages, b.topk, b.sinks, b.window), (32, 16, 1, 2));
    }

    #[test]
    fn each_bad_field_is_named() {
        let s = shape();
        let bad = [
            (
                CacheConfig {
                    page_size: 12,
                    ..Default::default()
                },
                "page_size",
            ),
            (
                CacheConfig {
                    budget_tokens: 100,
                    ..Default::default()
                },
                "budget",
            ),
            (
                CacheConfig {
                    window_pages: 1,
                    ..Default::default()
                },
                "window_pages",
            ),
            (
                CacheConfig {
                    head_groups: 3,
                    ..Default::default()
                },
                "head_groups",
            ),
            (
                CacheConfig {
                    dense_layers: 5,
                    ..Default::default()
                },
                "dense_layers",
            ),
            (
                CacheConfig {
                    sink_pages: 40,
                    ..Default::default()
                },
                "sink",
            ),
            (
                CacheConfig {
                    device_bytes: 10,
                    ..Default::default()
                },
                "device_bytes",
            ),
            (
                CacheConfig {
                    host_bytes: 10,
                    ..Default::default()
                },
                "host_bytes",
            ),
            (
                CacheConfig {
                    topk_tokens: Some(33),
                    ..Default::default()
                },
                "top-k",
            ),
        ];
        for (cfg, word) in bad {
            let msg = cfg.resolve(&s).unwrap_err().to_string();
            assert!(msg.contains(word), "{msg:?} should name {word}");
        }
    }

    #[test]
    fn presets_and_overrides_set_the_selection_rules() {
        let mut c = CacheConfig::default();
        Preset::Recommended.apply(&mut c, 4);
        assert_eq!((c.page_size, c.sink_pages, c.window_pages), (16, 2, 4));
        assert_eq!(c.head_groups, 4);
        assert_eq!(
            (c.score_agg, c.victims, c.prefill_keep),
            (ScoreAgg::Max, VictimRule::Attention, PrefillKeep::Attention)
        );
        assert!(c.resolve(&shape()).is_ok());
        let mut p = c.clone();
        Preset::Paper.apply(&mut p, 4);
        let d = CacheConfig::default();
        assert_eq!(
            (
                p.page_size,
                p.head_groups,
                p.victims,
                p.prefill_keep,
                p.score_agg
            ),
            (
                d.page_size,
                d.head_groups,
                d.victims,
                d.prefill_keep,
                d.score_agg
            )
        );
        // The preset comes first whatever its place; page keeps sinks/window in tokens.
        let mut o = CacheConfig::default();
        apply_overrides(
            &mut o,
            "victims=attention+ preset=paper+page=16+groups=kv",
            4,
        )
        .unwrap();
        assert_eq!(o.victims, VictimRule::Attention);
        assert_eq!((o.page_size, o.sink_pages, o.window_pages), (16, 2, 4));
        assert_eq!(o.head_groups, 4);
        for bad in ["victims=lru", "groups=x", "colour=red", "page"] {
            assert!(apply_overrides(&mut o, bad, 4).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_names_round_trip() {
        for k in DigestKind::ALL {
            assert_eq!(DigestKind::parse(k.name()).unwrap(), k);
        }
        assert!(DigestKind::parse("cube").is_err());
    }
}
