//! Recalls per decode step (the paper's Fig. 4b): how many evicted pages ArkVale brings back
//! per step as a function of the cache capacity (budget, in pages) and `k` (the top-k).
//!
//! A text of `N` tokens is prefilled once; for every capacity × k the `arkvale` state is
//! forked and the next `M` tokens of the text are fed (teacher forcing). The records give the
//! pages recalled per decode step summed over all budgeted layers (`recalls_per_step`) and per
//! (layer, head group) step (`recalls_per_layer_step`).

use arkvale_core::SnapshotOptions;
use arkvale_model::llama::LlamaModel;
use serde_json::json;

use crate::report::{Record, Results, Table};
use crate::runner::{self, Progress, Sweep, Variant};
use crate::{EvalError, Result};

/// Options of the recalls task.
#[derive(Debug, Clone)]
pub struct RecallsOptions {
    /// Prefill tokens `N`.
    pub prefill: usize,
    /// Decode steps `M`.
    pub decode: usize,
    /// Cache capacities (budgets) in tokens.
    pub capacities: Vec<usize>,
    /// Top-k sizes in tokens.
    pub ks: Vec<usize>,
}

/// Runs the grid on `text` (at least `prefill + decode` tokens). Capacity × k pairs where k
/// does not fit the budget beside the sinks and window are skipped (and listed in the
/// table as `-`).
pub fn run(
    model: &LlamaModel,
    sweep: &Sweep,
    text: &[u32],
    opts: &RecallsOptions,
    progress: &mut dyn Progress,
) -> Result<Results> {
    let (n, m) = (opts.prefill, opts.decode);
    if n == 0 || m == 0 {
        return Err(EvalError::Input(
            "--prefill and --decode must be at least 1".into(),
        ));
    }
    if text.len() < n + m {
        return Err(EvalError::Input(format!(
            "the text has {} tokens; --prefill {n} + --decode {m} need {}",
            text.len(),
            n + m
        )));
    }
    runner::check_context(model, n, m)?;
    let p = sweep.base.page_size;
    let fixed = (sweep.base.sink_pages + sweep.base.window_pages) * p;
    let mut grid = Sweep {
        base: sweep.base.clone(),
        variants: Vec::new(),
    };
    for &c in &opts.capacities {
        for &k in &opts.ks {
            if k + fixed <= c {
                grid.variants.push(Variant {
                    policy: "arkvale".into(),
                    budget: Some(c),
                    topk: Some(k),
                });
            }
        }
    }
    if grid.variants.is_empty() {
        return Err(EvalError::Input(format!(
            "no capacity holds any k beside the {fixed} sink + window tokens"
        )));
    }
    grid.validate(model)?;
    progress.start(grid.variants.len() as u64 + 1, "cases");
    progress.inc(0, &format!("prefill {n} tokens"));
    let pre = runner::prefill_once(model, &grid.base, &text[..n], SnapshotOptions::default())?;
    progress.inc(1, "");
    let targets = &text[n..n + m];
    let budgeted_layers = model.shape().layers.saturating_sub(grid.base.dense_layers);
    let mut records = Vec::new();
    for v in &grid.variants {
        progress.inc(0, &v.label());
        let (mut cache, seq) = runner::fork(model, &grid, v, &pre.snapshot, m)?;
        runner::teacher_forced(model, &mut cache, seq, &pre.logits, targets, |_, _| {})?;
        let stats = cache.stats();
        // The first step's logits come from the prefill: m - 1 decode steps ran.
        let steps = (m - 1).max(1) as f64;
        let per_layer_step = stats.recalls as f64
            / (steps * (budgeted_layers * grid.base.head_groups).max(1) as f64);
        records.push(Record {
            task: "recalls".into(),
            policy: v.policy.clone(),
            budget: v.budget,
            page_size: p,
            context: n,
            depth: None,
            key: String::new(),
            output: String::new(),
            correct: None,
            extra: serde_json::Map::from_iter([
                ("capacity_pages".into(), json!(v.budget.unwrap_or(0) / p)),
                ("topk".into(), json!(v.topk)),
                ("topk_pages".into(), json!(v.topk.unwrap_or(0) / p)),
                ("decode_steps".into(), json!(m - 1)),
                ("recalls".into(), json!(stats.recalls)),
                (
                    "recalls_per_step".into(),
                    json!(stats.recalls as f64 / steps),
                ),
                ("recalls_per_layer_step".into(), json!(per_layer_step)),
            ]),
        });
        progress.inc(1, "");
    }
    progress.finish();
    let tables = vec![table(&records)];
    Ok(Results {
        meta: serde_json::Map::new(),
        records,
        tables,
    })
}

/// Recalls per (layer, group) step: one row per capacity, one column per k.
pub fn table(records: &[Record]) -> Table {
    let mut caps: Vec<usize> = records.iter().filter_map(|r| r.budget).collect();
    caps.sort();
    caps.dedup();
    let mut ks: Vec<usize> = records
        .iter()
        .filter_map(|r| r.metric("topk").map(|k| k as usize))
        .collect();
    ks.sort();
    ks.dedup();
    let mut header = vec!["capacity (tokens)".to_string()];
    header.extend(ks.iter().map(|k| format!("k={k}")));
    let rows = caps
        .iter()
        .map(|&c| {
            let mut row = vec![c.to_string()];
            for &k in &ks {
                let r = records
                    .iter()
                    .find(|r| r.budget == Some(c) && r.metric("topk") == Some(k as f64));
                row.push(
                    r.and_then(|r| r.metric("recalls_per_layer_step"))
                        .map_or("-".into(), |x| format!("{x:.3}")),
                );
            }
            row
        })
        .collect();
    Table {
        title: "Recalls per decode step per (layer, head group)".into(),
        header,
        rows,
    }
}
