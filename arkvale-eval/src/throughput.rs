//! The throughput experiment of the paper (Fig. 9b): under a fixed device KV memory cap, how
//! many sequences of a given context each policy can decode together, and how many tokens
//! per second that batch produces.
//!
//! # Method
//!
//! * The batch size of a policy is what the serving engine would admit
//!   ([`arkvale_model::engine::Admission`]: every sequence reserves the slots it can ever need for
//!   `context + generate` tokens, prefill chunk included), capped by `max_batch`.
//! * The context is one real prompt prefilled once with a `full` cache and recorded
//!   ([`arkvale_core::CacheManager::begin_snapshot`]); each of the batch's sequences is a fork
//!   of it ([`arkvale_core::CacheManager::fork_snapshot`]), i.e. exactly the state that
//!   policy's own prefill would have left. All sequences share one cache of `kv_bytes`.
//! * Then `generate` greedy decode steps run for the whole batch (one
//!   [`LlamaModel::decode`] call per step); tokens/s is `batch × generate / time`. Prefill
//!   time is not part of the figure (as in the paper's decode throughput).

use std::time::Instant;

use arkvale_core::{CacheConfig, CacheManager, PrefillSnapshot, SeqId, policy_by_name};
use arkvale_model::engine::Admission;
use arkvale_model::llama::{LlamaError, LlamaModel, Result};

use crate::argmax;

/// One policy × budget of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputRow {
    /// The policy.
    pub policy: String,
    /// Its token budget (ignored by `full`, reported anyway).
    pub budget: usize,
    /// Sequences decoded together (0: not even one fits the cap).
    pub batch: usize,
    /// Device KV bytes one sequence reserves.
    pub reserved_bytes_per_seq: usize,
    /// Seconds of the decode steps.
    pub decode_seconds: f64,
    /// Generated tokens per second, the whole batch together.
    pub tokens_per_s: f64,
    /// KV bytes resident on the device at the end.
    pub kv_resident_bytes: usize,
    /// Pages recalled from host backups per decode step (all layers, all sequences).
    pub recalls_per_step: f64,
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThroughputOptions {
    /// Prompt tokens per sequence (the snapshot's length).
    pub context: usize,
    /// Decode steps.
    pub generate: usize,
    /// Device KV memory cap in bytes.
    pub kv_bytes: usize,
    /// Largest batch tried.
    pub max_batch: usize,
}

/// The batch `policy` with `config` (budget set) can hold under `opts`, and the bytes one
/// sequence reserves.
pub fn batch_size(
    model: &LlamaModel,
    config: &CacheConfig,
    policy: &str,
    opts: &ThroughputOptions,
) -> Result<(usize, usize)> {
    let p = policy_by_name(policy, config)?;
    let admission = Admission::new(model.shape(), config, p.residency());
    let per_seq = admission.slots(opts.context + opts.generate);
    let slot_bytes = admission.slot_bytes();
    let pool = opts.kv_bytes / slot_bytes.max(1);
    let batch = (admission.usable(pool) / per_seq.max(1)).min(opts.max_batch);
    Ok((batch, per_seq * slot_bytes))
}

/// Runs one policy × budget: forks `snapshot` into as many sequences as fit and decodes
/// `opts.generate` steps greedily from `first_logits` (the prompt's last logits).
pub fn run_variant(
    model: &LlamaModel,
    snapshot: &PrefillSnapshot,
    first_logits: &[f32],
    config: &CacheConfig,
    policy: &str,
    opts: &ThroughputOptions,
) -> Result<ThroughputRow> {
    if snapshot.tokens() != opts.context {
        return Err(LlamaError::Input(format!(
            "the snapshot holds {} tokens, the run asks for a context of {}",
            snapshot.tokens(),
            opts.context
        )));
    }
    let (batch, reserved) = batch_size(model, config, policy, opts)?;
    let mut row = ThroughputRow {
        policy: policy.to_string(),
        budget: config.budget_tokens,
        batch,
        reserved_bytes_per_seq: reserved,
        decode_seconds: 0.0,
        tokens_per_s: 0.0,
        kv_resident_bytes: 0,
        recalls_per_step: 0.0,
    };
    if batch == 0 || opts.generate == 0 {
        return Ok(row);
    }
    let mut c = config.clone();
    c.device_bytes = opts.kv_bytes;
    // Host backups of every page of every sequence (allocated only as used).
    c.host_bytes = batch
        * arkvale_model::memory::full_kv_bytes(&model.shape(), &c, opts.context + opts.generate)
        + (16 << 20);
    let mut cache = CacheManager::new(
        model.device().clone(),
        model.shape(),
        c.clone(),
        policy_by_name(policy, &c)?,
    )?;
    let seqs: Vec<SeqId> = (0..batch)
        .map(|_| cache.fork_snapshot(snapshot))
        .collect::<std::result::Result<_, _>>()?;
    cache.take_stats();
    let first = argmax(first_logits);
    let mut tokens = vec![first; batch];
    let started = Instant::now();
    for _ in 0..opts.generate {
        // Greedy on the device: only the ids come back.
        tokens = model.decode_logits(&mut cache, &seqs, &tokens)?.argmax()?;
    }
    row.decode_seconds = started.elapsed().as_secs_f64();
    row.tokens_per_s = (batch * opts.generate) as f64 / row.decode_seconds.max(1e-9);
    row.kv_resident_bytes = cache.resident_bytes();
    row.recalls_per_step = cache.stats().recalls as f64 / opts.generate as f64;
    Ok(row)
}

/// The rows as a markdown table, with each row's tokens/s as a ratio to `full`'s.
pub fn markdown(rows: &[ThroughputRow], opts: &ThroughputOptions) -> String {
    let full = rows
        .iter()
        .find(|r| r.policy == "full")
        .map(|r| r.tokens_per_s);
    let mut out = format!(
        "KV cap {:.1} MiB, context {} tokens, {} decode steps\n\n\
         | policy | budget | batch | reserved KV / seq (MiB) | decode tokens/s | vs full | \
         recalls/step |\n|---|---|---|---|---|---|---|\n",
        opts.kv_bytes as f64 / (1 << 20) as f64,
        opts.context,
        opts.generate
    );
    for r in rows {
        let ratio = match full {
            Some(f) if f > 0.0 => format!("{:.2}x", r.tokens_per_s / f),
            _ => "-".into(),
        };
        let budget = if r.policy == "full" {
            "-".to_string()
        } else {
            r.budget.to_string()
        };
        out.push_str(&format!(
            "| {} | {budget} | {} | {:.1} | {:.1} | {ratio} | {:.1} |\n",
            r.policy,
            r.batch,
            r.reserved_bytes_per_seq as f64 / (1 << 20) as f64,
            r.tokens_per_s,
            r.recalls_per_step
        ));
    }
    out
}
