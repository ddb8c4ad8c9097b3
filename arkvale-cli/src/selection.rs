//! The `arkvale` policy's selection options (`--preset` and what it sets), shared by
//! `generate`, `chat`, `serve`, `bench` and `eval`.

use anyhow::{Result, bail};
use arkvale_core::{CacheConfig, Preset, apply_overrides};
use clap::Args;
use clap::builder::PossibleValuesParser;

/// What `--help` says about the presets.
pub const PRESET_HELP: &str = "Starting point of the cache's page geometry and of ArkVale's \
selection rules; the options below override single fields. `recommended`: pages of 16 tokens \
(2 sink and 4 window pages), one head group per KV head, page scores maxed over a group's query \
heads, recall victims chosen by the attention mass the previous decode step measured \
(attention feedback), and the prompt's kept pages chosen by the last prompt token's exact \
attention mass — measured on real prose in docs/results/eval.md. `paper`: the paper's exact \
rules (pages of 32, 1 sink and 2 window pages, one group per layer, mean over heads, victims \
and kept pages ranked by digest).";

/// `--preset`, `--page-size`, `--sinks`, `--window`, `--head-groups`, `--score-agg`,
/// `--victims`, `--prefill-keep`.
#[derive(Debug, Args, Clone)]
pub struct SelectionArgs {
    #[doc = "Starting point of the page geometry and ArkVale's selection rules (see --help)."]
    #[arg(long, default_value = "recommended", long_help = PRESET_HELP,
          value_parser = PossibleValuesParser::new(Preset::ALL.map(Preset::name)))]
    pub preset: String,
    /// Tokens per KV page: 8, 16, 32 or 64 [default: the preset's].
    #[arg(long, value_name = "TOKENS")]
    pub page_size: Option<usize>,
    /// Leading pages never evicted (attention sinks) [default: the preset's].
    #[arg(long, value_name = "PAGES")]
    pub sinks: Option<usize>,
    /// Trailing pages never evicted, >= 2 [default: the preset's].
    #[arg(long, value_name = "PAGES")]
    pub window: Option<usize>,
    /// Head groups per layer, paged and scored separately: a divisor of the KV heads, or `kv`
    /// for one per KV head [default: the preset's].
    #[arg(long, value_name = "N|kv")]
    pub head_groups: Option<String>,
    /// How a group's query-head scores combine into a page score [default: the preset's].
    #[arg(long, value_parser = PossibleValuesParser::new(["mean", "max"]))]
    pub score_agg: Option<String>,
    /// Which resident pages make room for recalled ones: lowest `digest` score, or least
    /// `attention` mass at the previous step [default: the preset's].
    #[arg(long, value_parser = PossibleValuesParser::new(["digest", "attention"]))]
    pub victims: Option<String>,
    /// Which pages a long prompt keeps: best `digest` score or largest `attention` mass of the
    /// last prompt token [default: the preset's].
    #[arg(long, value_parser = PossibleValuesParser::new(["digest", "attention"]))]
    pub prefill_keep: Option<String>,
}

impl SelectionArgs {
    /// `base` with the preset and then every explicit option applied, for a model with
    /// `kv_heads` KV heads. The prefill chunk is rounded up to whole pages.
    pub fn apply(&self, mut base: CacheConfig, kv_heads: usize) -> Result<CacheConfig> {
        let mut spec = vec![format!("preset={}", self.preset)];
        let named = [
            ("groups", &self.head_groups),
            ("agg", &self.score_agg),
            ("victims", &self.victims),
            ("prefill", &self.prefill_keep),
        ];
        spec.extend(
            named
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}"))),
        );
        apply_overrides(&mut base, &spec.join("+"), kv_heads)?;
        if let Some(p) = self.page_size {
            if ![8, 16, 32, 64].contains(&p) {
                bail!("--page-size must be 8, 16, 32 or 64, got {p}");
            }
            base.page_size = p;
        }
        if let Some(s) = self.sinks {
            base.sink_pages = s;
        }
        if let Some(w) = self.window {
            base.window_pages = w;
        }
        base.round_prefill_chunk();
        Ok(base)
    }
}

/// The selection fields of `c`, for results metadata and `--json` output.
pub fn selection_meta(c: &CacheConfig) -> serde_json::Value {
    serde_json::json!({
        "page_size": c.page_size, "sinks": c.sink_pages, "window": c.window_pages,
        "head_groups": c.head_groups, "score_agg": c.score_agg.name(),
        "victims": c.victims.name(), "prefill_keep": c.prefill_keep.name(),
    })
}
