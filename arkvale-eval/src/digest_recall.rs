//! Digest recall accuracy (the paper's Fig. 7): on real queries and post-RoPE keys of a long
//! text, how much of the true top-k pages each digest kind's estimated top-k recovers.
//!
//! The text is prefilled once (a `full` cache recording every query and key). For a sample of
//! query positions `t` in the second half of the text and every layer, the candidates are the
//! pages a decode step at `t` would rank: every full page except the first `sinks` and the last
//! `window - 1` before `t`'s own page (the window is resident whatever the ranking). A page's **true** importance for a query head is the exact
//! `max q·k` over the page's keys of that head's KV head; its **estimate** is the digest score
//! (`arkvale_core::digest::score`). Recall@k is `|top-k(estimate) ∩ top-k(true)| / k`
//! (ties: the lower page index, as the cache ranks). Two aggregations are reported:
//!
//! * `head` — per query head, averaged over heads, layers and queries (the paper's figure);
//! * `group` — as the cache ranks with one head group: a page's estimate is the mean over
//!   the query heads of their digest scores, its true importance the mean over the heads of
//!   their exact max `q·k`.

use arkvale_core::{DigestKind, SnapshotOptions, digest};
use arkvale_model::llama::LlamaModel;
use serde_json::json;

use crate::report::{Record, Results, Table};
use crate::rng::Rng;
use crate::runner::{self, Progress};
use crate::{EvalError, Result};

/// Options of the digest-recall task.
#[derive(Debug, Clone)]
pub struct DigestRecallOptions {
    /// Text tokens prefilled.
    pub context: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// Query positions sampled from the second half of the text.
    pub queries: usize,
    /// Largest k (recall is reported for k = 1..=max_k).
    pub max_k: usize,
    /// Seed of the query positions.
    pub seed: u64,
    /// Leading pages left out of the ranking (the cache's sink pages, never evicted).
    pub sinks: usize,
    /// Trailing pages before the query left out of the ranking (the cache's window, the
    /// query's own partial page included, never evicted).
    pub window: usize,
}

/// Runs the digest-recall analysis on `text` (at least `context` tokens).
pub fn run(
    model: &LlamaModel,
    text: &[u32],
    opts: &DigestRecallOptions,
    progress: &mut dyn Progress,
) -> Result<Results> {
    let (t_len, p) = (opts.context, opts.page_size);
    if ![8, 16, 32, 64].contains(&p) {
        return Err(EvalError::Input(format!(
            "--page-size must be 8, 16, 32 or 64, got {p}"
        )));
    }
    if text.len() < t_len {
        return Err(EvalError::Input(format!(
            "the text has {} tokens, --context {t_len} needs that many",
            text.len()
        )));
    }
    if opts.max_k == 0 || opts.queries == 0 {
        return Err(EvalError::Input(
            "--max-k and --queries must be at least 1".into(),
        ));
    }
    if (t_len / 2 / p).saturating_sub(opts.sinks + opts.window) < opts.max_k {
        return Err(EvalError::Input(format!(
            "--context {t_len} gives queries only {} candidate pages at page size {p}; --max-k {} \
             needs at least that many (use a longer context or a smaller k)",
            (t_len / 2 / p).saturating_sub(opts.sinks + opts.window),
            opts.max_k
        )));
    }
    runner::check_context(model, t_len, 0)?;
    let base = arkvale_core::CacheConfig {
        page_size: p,
        prefill_chunk_tokens: 512usize.div_ceil(p) * p,
        ..Default::default()
    };
    progress.start(1, "prefill");
    progress.inc(0, &format!("prefill {t_len} tokens"));
    let pre = runner::prefill_once(
        model,
        &base,
        &text[..t_len],
        SnapshotOptions {
            queries: true,
            ..Default::default()
        },
    )?;
    progress.inc(1, "");
    progress.finish();
    let shape = model.shape();
    let (h, hkv, d) = (shape.q_heads, shape.kv_heads, shape.head_dim);
    let gqa = h / hkv;
    let mut rng = Rng::for_case(opts.seed, "digest-recall");
    let mut positions: Vec<usize> = (0..opts.queries)
        .map(|_| rng.range((t_len / 2) as u64, t_len as u64) as usize)
        .collect();
    positions.sort();
    let kinds = DigestKind::ALL;
    // hits[mode][kind][k-1], cases[mode]
    let mut hits = vec![vec![vec![0f64; opts.max_k]; kinds.len()]; 2];
    let mut cases = [0usize; 2];
    progress.start(shape.layers as u64, "layers");
    for layer in 0..shape.layers {
        progress.inc(0, &format!("layer {layer}"));
        let keys = pre
            .snapshot
            .keys(layer)
            .ok_or_else(|| EvalError::Input("snapshot without keys".into()))?;
        let queries = pre
            .snapshot
            .queries(layer)
            .ok_or_else(|| EvalError::Input("snapshot without queries".into()))?;
        let n_pages = t_len / p;
        // Per KV head, per page: its keys [p, d] and every kind's digest.
        let mut page_keys = vec![vec![Vec::new(); n_pages]; hkv];
        let mut digests = vec![vec![vec![Vec::new(); n_pages]; hkv]; kinds.len()];
        for kv in 0..hkv {
            for pg in 0..n_pages {
                let mut ks = Vec::with_capacity(p * d);
                for t in pg * p..(pg + 1) * p {
                    let o = (t * hkv + kv) * d;
                    ks.extend_from_slice(&keys[o..o + d]);
                }
                for (ki, &kind) in kinds.iter().enumerate() {
                    let mut out = vec![0f32; kind.len(d)];
                    digest::summarize(kind, &ks, d, &mut out);
                    digests[ki][kv][pg] = out;
                }
                page_keys[kv][pg] = ks;
            }
        }
        for &t in &positions {
            // Candidates as the cache ranks them: full pages before the query's page, minus
            // the sinks and the window (whose last page is the query's partial one).
            let first = opts.sinks;
            let cand = ((t + 1) / p)
                .min((t / p + 1).saturating_sub(opts.window))
                .max(first);
            let mut group_true = vec![0f32; cand - first];
            let mut group_est = vec![vec![0f32; cand - first]; kinds.len()];
            for qh in 0..h {
                let kv = qh / gqa;
                let q = &queries[(t * h + qh) * d..(t * h + qh + 1) * d];
                let truth: Vec<f32> = (first..cand)
                    .map(|pg| {
                        page_keys[kv][pg]
                            .chunks_exact(d)
                            .map(|k| dot(q, k))
                            .fold(f32::NEG_INFINITY, f32::max)
                    })
                    .collect();
                for (g, x) in group_true.iter_mut().zip(&truth) {
                    *g += x / h as f32;
                }
                for (ki, &kind) in kinds.iter().enumerate() {
                    let est: Vec<f32> = (first..cand)
                        .map(|pg| digest::score(kind, q, &digests[ki][kv][pg]))
                        .collect();
                    for (g, x) in group_est[ki].iter_mut().zip(&est) {
                        *g += x / h as f32;
                    }
                    add_recall(&mut hits[0][ki], &est, &truth);
                }
                cases[0] += 1;
            }
            for ki in 0..kinds.len() {
                add_recall(&mut hits[1][ki], &group_est[ki], &group_true);
            }
            cases[1] += 1;
        }
        progress.inc(1, "");
    }
    progress.finish();
    let mut records = Vec::new();
    for (mi, mode) in ["head", "group"].iter().enumerate() {
        for (ki, kind) in kinds.iter().enumerate() {
            for k in 1..=opts.max_k {
                records.push(Record {
                    task: "digest-recall".into(),
                    policy: kind.name().into(),
                    budget: None,
                    page_size: p,
                    context: t_len,
                    depth: None,
                    key: String::new(),
                    output: String::new(),
                    correct: None,
                    extra: serde_json::Map::from_iter([
                        ("digest".into(), json!(kind.name())),
                        ("mode".into(), json!(mode)),
                        ("k".into(), json!(k)),
                        (
                            "recall".into(),
                            json!(hits[mi][ki][k - 1] / cases[mi] as f64),
                        ),
                        ("cases".into(), json!(cases[mi])),
                    ]),
                });
            }
        }
    }
    let tables = tables_up_to(&records, opts.max_k);
    Ok(Results {
        meta: serde_json::Map::new(),
        records,
        tables,
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Adds recall@k for k = 1..=hits.len() of `est` against `truth`.
fn add_recall(hits: &mut [f64], est: &[f32], truth: &[f32]) {
    let k_max = hits.len().min(est.len());
    let e = digest::topk_indices(est, k_max);
    let t = digest::topk_indices(truth, k_max);
    let mut in_e = vec![false; est.len()];
    let mut in_t = vec![false; est.len()];
    let mut overlap = 0usize;
    for k in 0..k_max {
        let (a, b) = (e[k] as usize, t[k] as usize);
        in_e[a] = true;
        in_t[b] = true;
        overlap += usize::from(in_t[a]) + usize::from(in_e[b] && a != b);
        hits[k] += overlap as f64 / (k + 1) as f64;
    }
}

/// The tables of both rankings (`head`, then `group`) for k up to `max_k`.
fn tables_up_to(records: &[Record], max_k: usize) -> Vec<Table> {
    ["head", "group"]
        .iter()
        .map(|mode| table(records, mode, max_k))
        .collect()
}

/// The tables of both rankings of records read back from a results file, k up to the largest
/// k among them.
pub fn tables(records: &[Record]) -> Vec<Table> {
    let max_k = records
        .iter()
        .filter_map(|r| r.metric("k"))
        .fold(0.0, f64::max);
    tables_up_to(records, max_k as usize)
}

/// Recall at k = 1, 2, 4, ..., 40 per digest kind for one ranking `mode` (`head`/`group`).
pub fn table(records: &[Record], mode: &str, max_k: usize) -> Table {
    let ks: Vec<usize> = [1, 2, 4, 8, 16, 32, 40]
        .into_iter()
        .filter(|&k| k <= max_k)
        .collect();
    let mut header = vec!["digest".to_string()];
    header.extend(ks.iter().map(|k| format!("k={k}")));
    let rows = DigestKind::ALL
        .iter()
        .map(|kind| {
            let mut row = vec![kind.name().to_string()];
            for &k in &ks {
                let r = records.iter().find(|r| {
                    r.policy == kind.name()
                        && r.extra.get("mode").and_then(|v| v.as_str()) == Some(mode)
                        && r.metric("k") == Some(k as f64)
                });
                row.push(
                    r.and_then(|r| r.metric("recall"))
                        .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
                );
            }
            row
        })
        .collect();
    Table {
        title: format!("Digest top-k recall ({mode} ranking)"),
        header,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_the_overlap_of_prefixes() {
        let mut hits = vec![0.0; 3];
        // est ranks 0,1,2,3; truth ranks 1,0,3,2.
        add_recall(&mut hits, &[4.0, 3.0, 2.0, 1.0], &[3.0, 4.0, 1.0, 2.0]);
        assert_eq!(hits, vec![0.0, 1.0, 2.0 / 3.0]);
        let mut hits = vec![0.0; 2];
        add_recall(&mut hits, &[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!(hits, vec![1.0, 1.0]);
    }
}
