//! The sweep machinery: prefill a prompt once, fork the recorded state per policy × budget,
//! decode each fork.

use std::time::Instant;

use arkvale_core::{
    CacheConfig, CacheManager, PrefillSnapshot, SeqId, SnapshotOptions, policy::Residency,
    policy_by_name, policy_from_spec,
};
use arkvale_model::llama::LlamaModel;

use crate::{EvalError, Result, argmax};

/// Where a sweep reports its progress (the CLI draws progress bars; tests pass [`NoProgress`]).
pub trait Progress {
    /// A new phase of `total` steps begins.
    fn start(&mut self, total: u64, what: &str);
    /// `n` more steps are done; `msg` says what runs now.
    fn inc(&mut self, n: u64, msg: &str);
    /// The phase is over.
    fn finish(&mut self);
    /// The records finished so far (after each prompt of a sweep), so that a caller can save
    /// partial results of a long sweep.
    fn checkpoint(&mut self, _records: &[crate::Record]) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _total: u64, _what: &str) {}
    fn inc(&mut self, _n: u64, _msg: &str) {}
    fn finish(&mut self) {}
}

/// One policy at one budget (and optionally one top-k) of a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Policy spec: a name of `arkvale-core`'s `POLICY_NAMES`, optionally with overrides of
    /// the sweep's cache settings (`arkvale:preset=paper`, `arkvale:victims=attention`; see
    /// [`arkvale_core::policy_from_spec`]).
    pub policy: String,
    /// Token budget; `None` for `full`, which keeps everything whatever the budget.
    pub budget: Option<usize>,
    /// Top-k tokens (`None`: the sweep's base setting, by default the paper's
    /// `min(1280, budget / 2)`).
    pub topk: Option<usize>,
}

impl Variant {
    /// `policy@budget` (or just `full`), for progress messages and table columns.
    pub fn label(&self) -> String {
        match (self.budget, self.topk) {
            (None, _) => self.policy.clone(),
            (Some(b), None) => format!("{}@{b}", self.policy),
            (Some(b), Some(k)) => format!("{}@{b}/k{k}", self.policy),
        }
    }
}

/// The cache settings a sweep shares (everything but policy, budget and top-k) and its
/// variants.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Page size, sinks, window, dense layers, digest, KV type, prefill chunk of every cache.
    /// Its budget/top-k and byte sizes are overwritten per variant.
    pub base: CacheConfig,
    /// The policy × budget cases, `full` once.
    pub variants: Vec<Variant>,
}

impl Sweep {
    /// Every policy at every budget (`full` once). Errors on an unknown policy name, an
    /// empty list, or a budget that is not a positive multiple of the page size.
    pub fn new(base: CacheConfig, policies: &[String], budgets: &[usize]) -> Result<Self> {
        if policies.is_empty() {
            return Err(EvalError::Input("no policies given".into()));
        }
        let mut variants = Vec::new();
        for p in policies {
            policy_from_spec(p, &base, 1)?;
            if p == "full" {
                if !variants.iter().any(|v: &Variant| v.policy == "full") {
                    variants.push(Variant {
                        policy: p.clone(),
                        budget: None,
                        topk: None,
                    });
                }
                continue;
            }
            if budgets.is_empty() {
                return Err(EvalError::Input(format!("policy '{p}' needs --budgets")));
            }
            for &b in budgets {
                let v = Variant {
                    policy: p.clone(),
                    budget: Some(b),
                    topk: None,
                };
                if !variants.contains(&v) {
                    variants.push(v);
                }
            }
        }
        Ok(Sweep { base, variants })
    }

    /// The policy and cache configuration of `v` for a model with `kv_heads` KV heads (byte
    /// sizes still to be set).
    pub fn config_for(
        &self,
        v: &Variant,
        kv_heads: usize,
    ) -> Result<(Box<dyn arkvale_core::Policy>, CacheConfig)> {
        let mut c = self.base.clone();
        if let Some(b) = v.budget {
            c.budget_tokens = b;
        } else {
            // `full` ignores the budget; any valid one will do.
            c.budget_tokens = 2 * c.page_size * (c.sink_pages + c.window_pages).max(2);
            c.topk_tokens = None;
        }
        if v.topk.is_some() {
            c.topk_tokens = v.topk;
        }
        let (policy, c) = policy_from_spec(&v.policy, &c, kv_heads)?;
        Ok((policy, c))
    }

    /// Checks every variant against the model (budget too small for sinks + window, top-k
    /// larger than the budget, ...) by building its cache with a tiny pool: a clear error
    /// before any prefill.
    pub fn validate(&self, model: &LlamaModel) -> Result<()> {
        for v in &self.variants {
            let (policy, mut c) = self.config_for(v, model.shape().kv_heads)?;
            let slot = c.slot_bytes(&model.shape());
            c.device_bytes = slot * (c.budget_tokens / c.page_size + 2);
            c.host_bytes = slot;
            CacheManager::new(model.device().clone(), model.shape(), c, policy)
                .map_err(|e| EvalError::Input(format!("{}: {e}", v.label())))?;
        }
        Ok(())
    }
}

/// Device and host bytes for one sequence of `total_tokens` under `config` and a policy with
/// `residency` (the rule of [`arkvale_model::memory::size_cache`]).
pub fn cache_bytes(
    model: &LlamaModel,
    config: &CacheConfig,
    residency: Residency,
    total_tokens: usize,
) -> (usize, usize) {
    let s = arkvale_model::memory::size_cache(&model.shape(), config, residency, total_tokens);
    (s.device_bytes, s.host_bytes)
}

/// A prompt prefilled once in a `full` cache, recorded for forking.
#[derive(Debug)]
pub struct Prefilled {
    /// The recorded state.
    pub snapshot: PrefillSnapshot,
    /// Logits of the prompt's last token (the same for every policy: prefill is exact).
    pub logits: Vec<f32>,
    /// Seconds the prefill took.
    pub seconds: f64,
}

/// Prefills `ids` once with a `full` cache of `sweep.base`'s page size and chunking,
/// recording a snapshot with `options`.
pub fn prefill_once(
    model: &LlamaModel,
    base: &CacheConfig,
    ids: &[u32],
    options: SnapshotOptions,
) -> Result<Prefilled> {
    check_context(model, ids.len(), 0)?;
    let mut c = base.clone();
    c.budget_tokens = 2 * c.page_size * (c.sink_pages + c.window_pages).max(2);
    c.topk_tokens = None;
    let (dev_bytes, host_bytes) = cache_bytes(model, &c, Residency::KeepAll, ids.len());
    c.device_bytes = dev_bytes;
    c.host_bytes = host_bytes;
    let policy = policy_by_name("full", &c)?;
    let mut cache = CacheManager::new(model.device().clone(), model.shape(), c, policy)?;
    let seq = cache.add_sequence();
    cache.begin_snapshot(seq, options)?;
    let t = Instant::now();
    let logits = model.prefill(&mut cache, seq, ids)?;
    let seconds = t.elapsed().as_secs_f64();
    let snapshot = cache.take_snapshot(seq)?;
    Ok(Prefilled {
        snapshot,
        logits,
        seconds,
    })
}

/// A cache of `sweep`'s variant `v`, sized for the snapshot plus `extra_tokens`, holding the
/// state `v`'s own prefill of the snapshot's prompt would have left.
pub fn fork(
    model: &LlamaModel,
    sweep: &Sweep,
    v: &Variant,
    snap: &PrefillSnapshot,
    extra_tokens: usize,
) -> Result<(CacheManager, SeqId)> {
    let (policy, mut c) = sweep.config_for(v, model.shape().kv_heads)?;
    let (dev_bytes, host_bytes) =
        cache_bytes(model, &c, policy.residency(), snap.tokens() + extra_tokens);
    c.device_bytes = dev_bytes;
    c.host_bytes = host_bytes;
    let mut cache = CacheManager::new(model.device().clone(), model.shape(), c, policy)?;
    let seq = cache.fork_snapshot(snap)?;
    cache.take_stats();
    Ok((cache, seq))
}

/// Greedy decoding of up to `n` tokens after `first_logits` (the prompt's last logits);
/// stops early after `stop` (e.g. EOS), which is not returned.
pub fn greedy(
    model: &LlamaModel,
    cache: &mut CacheManager,
    seq: SeqId,
    first_logits: &[f32],
    n: usize,
    stop: Option<u32>,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    let mut next = argmax(first_logits);
    for i in 0..n {
        if Some(next) == stop {
            break;
        }
        out.push(next);
        if i + 1 == n {
            break;
        }
        // Greedy on the device (the rule of `argmax`): only the id comes back.
        next = model.decode_logits(cache, &[seq], &[next])?.argmax()?[0];
    }
    Ok(out)
}

/// Indices `0..n` in an order that spreads early ones over the range (0, n/2, n/4, 3n/4, ...:
/// bit-reversed), so that a sweep stopped part-way has covered the range evenly.
pub fn spread_order(n: usize) -> Vec<usize> {
    let bits = usize::BITS - n.saturating_sub(1).leading_zeros();
    let rev = |i: usize| {
        if bits == 0 {
            0
        } else {
            i.reverse_bits() >> (usize::BITS - bits)
        }
    };
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by_key(|&i| rev(i));
    idx
}

/// Errors clearly when `prompt + generate` tokens exceed the model's context length.
pub fn check_context(model: &LlamaModel, prompt: usize, generate: usize) -> Result<()> {
    let max = model.config().context_length;
    if prompt + generate > max {
        return Err(EvalError::Input(format!(
            "a context of {prompt} prompt tokens + {generate} generated tokens exceeds the \
             model's context length of {max}"
        )));
    }
    Ok(())
}

/// Teacher-forced decoding: `visit(i, logits)` sees the logits that predict `targets[i]` (the
/// first from `first_logits`, the prompt's last logits); then `targets[i]` is fed.
pub fn teacher_forced(
    model: &LlamaModel,
    cache: &mut CacheManager,
    seq: SeqId,
    first_logits: &[f32],
    targets: &[u32],
    mut visit: impl FnMut(usize, &[f32]),
) -> Result<()> {
    let mut logits = first_logits.to_vec();
    for (i, &t) in targets.iter().enumerate() {
        visit(i, &logits);
        if i + 1 < targets.len() {
            logits = model.decode(cache, &[seq], &[t])?;
        }
    }
    Ok(())
}

/// `log softmax(x)` in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// `KL(p || q)` of two log-distributions.
pub fn kl(logp: &[f64], logq: &[f64]) -> f64 {
    logp.iter()
        .zip(logq)
        .map(|(&a, &b)| {
            if a.is_finite() {
                a.exp() * (a - b)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Tokens of a text file, with a clear error when it cannot be read or is too short.
pub fn text_tokens(
    tok: &dyn crate::EvalTokenizer,
    path: &std::path::Path,
    need: usize,
) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let ids = tok.encode_text(&text)?;
    if ids.len() < need {
        return Err(EvalError::Input(format!(
            "{} has {} tokens, {need} needed",
            path.display(),
            ids.len()
        )));
    }
    Ok(ids)
}
