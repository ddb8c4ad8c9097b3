//! `arkvale generate`: load, tokenize, prefill (with a progress bar), sample and decode,
//! streaming text to stdout or printing one JSON object.

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arkvale_core::PhaseTimes;
use arkvale_model::chat::Message;
use arkvale_model::sampling::Sampler;
use serde_json::json;

use crate::args::GenerateArgs;
use crate::decoding::{PROGRESS_MIN_TOKENS, decode_loop, emit, per_s, prefill, print_stats};
use crate::setup::{check_run_args, clock_seed, load};

/// Runs `arkvale generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let params = check_run_args(&args.run)?;
    let prompt = read_prompt(&args)?;
    let loaded = load(&args.run)?;
    let run = &args.run;

    let prompt_ids = if args.chat {
        let user = prompt.trim_end_matches(['\n', '\r']);
        loaded.chat_tokens(&[Message::user(user)])?
    } else {
        loaded
            .tokenizer
            .encode(&prompt, true, true)
            .context("cannot tokenize the prompt")?
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let ctx = loaded.model.config().context_length;
    if prompt_ids.len() > ctx {
        bail!(
            "the prompt has {} tokens but the model's context length is {ctx}; shorten it \
             (it is not truncated)",
            prompt_ids.len()
        );
    }
    let total_tokens = (prompt_ids.len() + run.max_tokens).min(ctx);
    let (mut cache, config) = loaded.new_cache(&run.cache, total_tokens)?;
    let seq = cache.add_sequence();

    let seed = run.seed.unwrap_or_else(clock_seed);
    let mut sampler = Sampler::new(params, seed).map_err(anyhow::Error::msg)?;
    let eos = if run.ignore_eos {
        None
    } else {
        loaded.tokenizer.eos_id()
    };

    // Prefill.
    let t_prefill = Instant::now();
    let show_progress = !run.no_progress
        && std::io::stderr().is_terminal()
        && prompt_ids.len() >= PROGRESS_MIN_TOKENS;
    let logits = prefill(&loaded.model, &mut cache, seq, &prompt_ids, show_progress)?;
    let prefill_time = t_prefill.elapsed();

    // Decode.
    let phases_before = cache.stats().time;
    let d = decode_loop(
        &loaded,
        &mut cache,
        seq,
        logits,
        &mut sampler,
        eos,
        &run.stop,
        run.max_tokens,
        prompt_ids.len(),
        args.json,
    )?;

    let stats = cache.stats().clone();
    print_stats(
        &run.cache.policy,
        prompt_ids.len(),
        prefill_time,
        &d,
        stats.recalls,
        &cache,
    );
    if args.json {
        let recalls_per_step = if d.steps == 0 {
            0.0
        } else {
            stats.recalls as f64 / d.steps as f64
        };
        let obj = json!({
            "prompt_tokens": prompt_ids,
            "tokens": d.tokens,
            "text": d.text,
            "stats": {
                "prefill_tokens_per_s": per_s(prompt_ids.len(), prefill_time),
                "decode_tokens_per_s": per_s(d.steps, d.time),
                "kv_resident_bytes": cache.resident_bytes(),
                "kv_full_bytes": cache.full_bytes(),
                "recalls_per_step": recalls_per_step,
                "recalls_per_layer_step": stats.recalls_per_layer_step(),
                "prefill_seconds": prefill_time.as_secs_f64(),
                "decode_seconds": d.time.as_secs_f64(),
                "decode_steps": d.steps,
                "load_seconds": loaded.load_time.as_secs_f64(),
                "stop_reason": d.stop.name(),
                "policy": run.cache.policy,
                "budget_tokens": config.budget_tokens,
                "page_size": config.page_size,
                "kv_device_pool_bytes": config.device_bytes,
                "kv_host_limit_bytes": config.host_bytes,
                "recalls": stats.recalls,
                "evictions": stats.evictions,
                "pages_scored": stats.pages_scored,
                "prefill_streamed_pages": stats.prefill_streamed,
                "bytes_h2d": stats.bytes_h2d,
                "bytes_d2h": stats.bytes_d2h,
                "decode_phase_seconds": phase_seconds(&phases_before, &stats.time),
                "seed": seed,
            }
        });
        let mut out = std::io::stdout().lock();
        let _ = emit(&mut out, &format!("{obj}\n"))?;
    }
    Ok(())
}

/// The cache's host time per phase during decode (`after - before`), in seconds.
fn phase_seconds(before: &PhaseTimes, after: &PhaseTimes) -> serde_json::Value {
    let secs = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64();
    json!({
        "estimate": secs(after.estimate, before.estimate),
        "select": secs(after.select, before.select),
        "recall": secs(after.recall, before.recall),
        "attention": secs(after.attention, before.attention),
        "other": secs(after.other, before.other),
    })
}

/// The prompt from `--prompt`, `--prompt-file` or standard input (exactly one source).
fn read_prompt(args: &GenerateArgs) -> Result<String> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(_), Some(_)) => bail!("give the prompt once: --prompt or --prompt-file, not both"),
        (Some(p), None) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the prompt file {}", f.display()))?,
        (None, None) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("no prompt: pass --prompt TEXT, --prompt-file FILE, or pipe it on stdin");
            }
            let mut s = String::new();
            stdin
                .lock()
                .read_to_string(&mut s)
                .context("cannot read the prompt from stdin")?;
            s
        }
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    Ok(prompt)
}
