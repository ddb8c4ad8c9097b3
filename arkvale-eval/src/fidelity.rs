//! Teacher-forced fidelity: after a prefill of `N` tokens of real text, the next `M` tokens
//! of the same text are fed one by one under each policy × budget, and each step's
//! next-token distribution is compared with `full`'s: top-1 agreement, mean
//! `KL(full || policy)`, and the policy's perplexity on the true tokens.

use arkvale_core::SnapshotOptions;
use arkvale_model::llama::LlamaModel;
use serde_json::json;

use crate::report::{Record, Results, Table};
use crate::runner::{self, Progress, Sweep, Variant};
use crate::{Result, argmax};

/// Options of the fidelity task.
#[derive(Debug, Clone)]
pub struct FidelityOptions {
    /// Prefill tokens `N`.
    pub prefill: usize,
    /// Teacher-forced decode tokens `M`.
    pub decode: usize,
    /// Windows of `N + M` tokens, evenly spaced over the text.
    pub samples: usize,
}

/// Runs the fidelity sweep over `text` (token ids; at least `prefill + decode` of them).
/// `full` always runs (it is the reference), first.
pub fn run(
    model: &LlamaModel,
    sweep: &Sweep,
    text: &[u32],
    opts: &FidelityOptions,
    progress: &mut dyn Progress,
) -> Result<Results> {
    let (n, m) = (opts.prefill, opts.decode);
    if n == 0 || m == 0 || opts.samples == 0 {
        return Err(crate::EvalError::Input(
            "--prefill, --decode and --samples must be at least 1".into(),
        ));
    }
    if text.len() < n + m {
        return Err(crate::EvalError::Input(format!(
            "the text has {} tokens; --prefill {n} + --decode {m} need {}",
            text.len(),
            n + m
        )));
    }
    runner::check_context(model, n, m)?;
    let mut sweep = sweep.clone();
    sweep.variants.retain(|v| v.policy != "full");
    sweep.variants.insert(
        0,
        Variant {
            policy: "full".into(),
            budget: None,
            topk: None,
        },
    );
    sweep.validate(model)?;
    let token_weights = sweep
        .variants
        .iter()
        .any(|v| matches!(v.policy.as_str(), "h2o" | "tova"));
    let span = text.len() - (n + m);
    progress.start((opts.samples * sweep.variants.len()) as u64, "cases");
    let mut records = Vec::new();
    for s in 0..opts.samples {
        let off = if opts.samples == 1 {
            0
        } else {
            s * span / (opts.samples - 1)
        };
        let window = &text[off..off + n + m];
        let (prompt, targets) = window.split_at(n);
        let pre = runner::prefill_once(
            model,
            &sweep.base,
            prompt,
            SnapshotOptions {
                token_weights,
                ..Default::default()
            },
        )?;
        let mut reference: Vec<Vec<f64>> = Vec::new();
        for v in &sweep.variants {
            progress.inc(0, &format!("sample {s} {}", v.label()));
            let t = std::time::Instant::now();
            let (mut cache, seq) = runner::fork(model, &sweep, v, &pre.snapshot, m)?;
            let (mut agree, mut kl_sum, mut nll) = (0usize, 0f64, 0f64);
            let is_full = v.policy == "full";
            runner::teacher_forced(model, &mut cache, seq, &pre.logits, targets, |i, logits| {
                let lp = runner::log_softmax(logits);
                nll -= lp[targets[i] as usize];
                if is_full {
                    reference.push(lp);
                    agree += 1;
                } else {
                    let r = &reference[i];
                    let top_ref = argmax(&r.iter().map(|&x| x as f32).collect::<Vec<_>>());
                    agree += usize::from(argmax(logits) == top_ref);
                    kl_sum += runner::kl(r, &lp);
                }
            })?;
            records.push(Record {
                task: "fidelity".into(),
                policy: v.policy.clone(),
                budget: v.budget,
                page_size: sweep.base.page_size,
                context: n,
                depth: None,
                key: String::new(),
                output: String::new(),
                correct: None,
                extra: serde_json::Map::from_iter([
                    ("sample".into(), json!(s)),
                    ("offset".into(), json!(off)),
                    ("decode".into(), json!(m)),
                    ("top1_agreement".into(), json!(agree as f64 / m as f64)),
                    ("kl".into(), json!(kl_sum / m as f64)),
                    ("perplexity".into(), json!((nll / m as f64).exp())),
                    ("recalls".into(), json!(cache.stats().recalls)),
                    (
                        "decode_s".into(),
                        json!(crate::passkey::round3(t.elapsed().as_secs_f64())),
                    ),
                ]),
            });
            progress.inc(1, "");
        }
    }
    progress.finish();
    let tables = vec![table(&records)];
    Ok(Results {
        meta: serde_json::Map::new(),
        records,
        tables,
    })
}

/// Mean agreement, KL and perplexity per policy@budget over the samples.
pub fn table(records: &[Record]) -> Table {
    let mut variants: Vec<Variant> = Vec::new();
    for r in records {
        let v = Variant {
            policy: r.policy.clone(),
            budget: r.budget,
            topk: None,
        };
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let rows = variants
        .iter()
        .map(|v| {
            let mine: Vec<&Record> = records
                .iter()
                .filter(|r| r.policy == v.policy && r.budget == v.budget)
                .collect();
            let mean = |k: &str| {
                mine.iter().filter_map(|r| r.metric(k)).sum::<f64>() / mine.len().max(1) as f64
            };
            vec![
                v.policy.clone(),
                v.budget.map_or("-".into(), |b| b.to_string()),
                format!("{:.2}%", 100.0 * mean("top1_agreement")),
                format!("{:.5}", mean("kl")),
                format!("{:.3}", mean("perplexity")),
            ]
        })
        .collect();
    Table {
        title: "Fidelity (teacher-forced, vs full)".into(),
        header: [
            "policy",
            "budget",
            "top-1 agreement",
            "mean KL(full||policy)",
            "perplexity",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}
