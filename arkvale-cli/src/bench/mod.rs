//! `arkvale bench throughput`: the paper's throughput experiment (Fig. 9b) on any model — the
//! largest batch each policy holds under a KV memory cap, its decode tokens/s, as a table,
//! `results.json` and a PNG plot. The method is in `arkvale_eval::throughput`.
//! `arkvale bench speed`: single-sequence prefill and decode tokens/s per context length and
//! policy (the side of `bench/llama_cpp.sh` that runs this engine), see [`speed`].

pub mod args;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use arkvale_core::SnapshotOptions;
use arkvale_core::policy::Residency;
use arkvale_eval::haystacks;
use arkvale_eval::passkey::FILLER;
use arkvale_eval::runner::{Sweep, check_context, fork, greedy, prefill_once};
use arkvale_eval::throughput::{ThroughputOptions, ThroughputRow, markdown, run_variant};
use arkvale_model::memory::{STAGING_SLACK, sequence_slots};
use serde_json::json;

use self::args::{BenchArgs, BenchTask, SpeedArgs, ThroughputArgs};
use crate::plot;
use crate::setup::load_experiment;

/// Runs `arkvale bench <task>`.
pub fn run(a: BenchArgs) -> Result<()> {
    match a.task {
        BenchTask::Throughput(t) => throughput(t),
        BenchTask::Speed(t) => speed(t),
    }
}

fn throughput(a: ThroughputArgs) -> Result<()> {
    if a.context == 0 || a.generate == 0 || a.max_batch == 0 || a.full_sequences == 0 {
        bail!("--context, --generate, --max-batch and --full-sequences must be at least 1");
    }
    let m = load_experiment(&a.common)?;
    let ctx = m.model.config().context_length;
    if a.context + a.generate > ctx {
        bail!(
            "--context {} + --generate {} exceed the model's context length {ctx}",
            a.context,
            a.generate
        );
    }
    let mut base = a.cache.config(m.model.shape().kv_heads)?;
    if a.prefill_chunk == 0 || a.prefill_chunk % base.page_size != 0 {
        bail!(
            "--prefill-chunk must be a non-zero multiple of the page size ({})",
            base.page_size
        );
    }
    base.prefill_chunk_tokens = a.prefill_chunk;
    let shape = m.model.shape();
    let slot = base.slot_bytes(&shape);
    let full_seq = sequence_slots(&shape, &base, Residency::KeepAll, a.context + a.generate);
    let kv_bytes = match a.kv_memory_mib {
        Some(mib) if mib > 0.0 => (mib * (1 << 20) as f64) as usize,
        Some(mib) => bail!("--kv-memory-mib must be > 0, got {mib}"),
        None => (a.full_sequences * full_seq + STAGING_SLACK) * slot,
    };
    let opts = ThroughputOptions {
        context: a.context,
        generate: a.generate,
        kv_bytes,
        max_batch: a.max_batch,
    };

    // One real prompt: filler text, exactly --context tokens.
    let text = std::iter::repeat_n(FILLER, a.context / 8 + 2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut ids = m
        .tokenizer
        .encode(&text, false, false)
        .context("cannot tokenize the filler text")?;
    if ids.len() < a.context {
        bail!(
            "the filler text gave {} tokens, {} needed",
            ids.len(),
            a.context
        );
    }
    ids.truncate(a.context);
    eprintln!(
        "[arkvale] prefilling one {}-token prompt (every sequence is a fork of it)",
        a.context
    );
    let pre = prefill_once(&m.model, &base, &ids, SnapshotOptions::default())?;

    let mut rows: Vec<ThroughputRow> = Vec::new();
    for policy in &a.policies {
        let budgets: Vec<usize> = if policy == "full" {
            vec![
                a.budgets
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(base.budget_tokens),
            ]
        } else {
            a.budgets.clone()
        };
        for budget in budgets {
            let mut c = base.clone();
            c.budget_tokens = budget;
            eprintln!("[arkvale] {policy} budget {budget}: decoding");
            let row = run_variant(&m.model, &pre.snapshot, &pre.logits, &c, policy, &opts)
                .with_context(|| format!("{policy} with budget {budget}"))?;
            eprintln!(
                "[arkvale] {policy} budget {budget}: batch {}, {:.1} tokens/s",
                row.batch, row.tokens_per_s
            );
            rows.push(row);
        }
    }
    let table = markdown(&rows, &opts);
    println!("{table}");

    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-out/throughput"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let records: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "policy": r.policy, "budget": r.budget, "batch": r.batch,
                "reserved_bytes_per_seq": r.reserved_bytes_per_seq,
                "decode_seconds": r.decode_seconds, "tokens_per_s": r.tokens_per_s,
                "kv_resident_bytes": r.kv_resident_bytes, "recalls_per_step": r.recalls_per_step,
            })
        })
        .collect();
    let results = json!({
        "experiment": "throughput",
        "model": m.path.display().to_string(),
        "context": a.context, "generate": a.generate, "kv_bytes": kv_bytes,
        "page_size": base.page_size, "prefill_chunk": base.prefill_chunk_tokens,
        "records": records,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(out.join("table.md"), &table)
        .with_context(|| format!("cannot write {}", out.join("table.md").display()))?;
    let series = throughput_series(&rows);
    plot::lines(
        &out.join("throughput.png"),
        &format!(
            "Decode throughput under a {:.0} MiB KV cap, {}-token contexts",
            kv_bytes as f64 / (1 << 20) as f64,
            a.context
        ),
        "budget (tokens)",
        "tokens/s (whole batch)",
        &series,
        None,
    )?;
    eprintln!("[arkvale] wrote {}", out.display());
    Ok(())
}

/// One line per policy over the budgets (`full` drawn flat across them).
fn throughput_series(rows: &[ThroughputRow]) -> Vec<plot::Series> {
    let budgets: Vec<f64> = rows
        .iter()
        .filter(|r| r.policy != "full")
        .map(|r| r.budget as f64)
        .collect();
    let mut names: Vec<&str> = rows.iter().map(|r| r.policy.as_str()).collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let pts: Vec<(f64, f64)> = if name == "full" {
                let y = rows
                    .iter()
                    .find(|r| r.policy == "full")
                    .map_or(0.0, |r| r.tokens_per_s);
                budgets.iter().map(|&x| (x, y)).collect()
            } else {
                rows.iter()
                    .filter(|r| r.policy == name)
                    .map(|r| (r.budget as f64, r.tokens_per_s))
                    .collect()
            };
            (name.to_string(), pts)
        })
        .collect()
}

/// Reads whitespace- or comma-separated decimal token ids.
fn read_ids(path: &std::path::Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompt ids {}", path.display()))?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("{}: '{t}' is not a token id", path.display()))
        })
        .collect()
}

fn speed(a: SpeedArgs) -> Result<()> {
    if a.contexts.is_empty() || a.contexts.contains(&0) || a.generate == 0 {
        bail!("--contexts must be positive and --generate at least 1");
    }
    let m = load_experiment(&a.common)?;
    let longest = *a.contexts.iter().max().expect("non-empty");
    check_context(&m.model, longest, a.generate)?;
    let ids = match &a.prompt_ids {
        Some(path) => read_ids(path)?,
        None => m
            .tokenizer
            .encode(haystacks::PERSUASION, false, false)
            .context("cannot tokenize the Persuasion text")?,
    };
    let vocab = m.model.config().vocab;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("prompt token id {bad} is outside the model's vocabulary of {vocab}");
    }
    if ids.len() < longest {
        bail!("the prompt has {} tokens, {longest} needed", ids.len());
    }
    let base = a.cache.config(m.model.shape().kv_heads)?;
    let sweep = Sweep::new(base, &a.policies, &a.budgets)?;
    sweep.validate(&m.model)?;
    let threads = a
        .common
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut rows: Vec<SpeedRow> = Vec::new();
    for &context in &a.contexts {
        let prompt = &ids[..context];
        eprintln!("[arkvale] {context} tokens: prefilling (full cache)");
        let pre = prefill_once(&m.model, &sweep.base, prompt, SnapshotOptions::default())?;
        for v in &sweep.variants {
            let (mut cache, seq) = fork(&m.model, &sweep, v, &pre.snapshot, a.generate)?;
            let t = std::time::Instant::now();
            let tokens = greedy(&m.model, &mut cache, seq, &pre.logits, a.generate, None)?;
            let seconds = t.elapsed().as_secs_f64();
            // The first token comes from the prefill's logits; `generate - 1` steps ran.
            let steps = tokens.len().saturating_sub(1).max(1);
            let row = SpeedRow {
                context,
                variant: v.label(),
                prefill_tokens_per_s: context as f64 / pre.seconds,
                decode_tokens_per_s: steps as f64 / seconds,
                tokens,
            };
            eprintln!(
                "[arkvale] {context} tokens, {}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
                row.variant, row.prefill_tokens_per_s, row.decode_tokens_per_s
            );
            rows.push(row);
        }
    }
    let mut table =
        "| context | policy | prefill tokens/s | decode tokens/s |\n|---|---|---|---|\n"
            .to_string();
    for r in &rows {
        table += &format!(
            "| {} | {} | {:.1} | {:.1} |\n",
            r.context, r.variant, r.prefill_tokens_per_s, r.decode_tokens_per_s
        );
    }
    println!("{table}");
    let out = a
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-out/speed"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let records: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "context": r.context, "policy": r.variant,
                "prefill_tokens_per_s": r.prefill_tokens_per_s,
                "decode_tokens_per_s": r.decode_tokens_per_s, "tokens": r.tokens,
            })
        })
        .collect();
    let results = json!({
        "experiment": "speed",
        "model": m.path.display().to_string(),
        "weights": format!("{:?}", a.common.weights),
        "threads": threads, "generate": a.generate,
        "kv_dtype": format!("{:?}", sweep.base.kv_dtype),
        "page_size": sweep.base.page_size,
        "records": records,
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    eprintln!("[arkvale] wrote {}", json_path.display());
    Ok(())
}

/// One (context, policy) measurement of [`speed`].
struct SpeedRow {
    context: usize,
    variant: String,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    tokens: Vec<u32>,
}
