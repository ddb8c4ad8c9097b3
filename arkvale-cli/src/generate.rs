//! `arkvale generate`: load, tokenize, prefill (with a progress bar), sample and decode,
//! streaming text to stdout or printing one JSON object.

use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arkvale_core::{CacheConfig, CacheManager, Device, PhaseTimes, SeqId, policy_by_name};
use arkvale_model::chat::Message;
use arkvale_model::generation::{self, Generation, Limits, Prefill, run_sequence};
use arkvale_model::llama::{LlamaModel, Logits};
use arkvale_model::loaded::LoadedModel;
use arkvale_model::sampling::{Sampler, SamplingParams};
use arkvale_model::stop::StopMatcher;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::args::{CacheArgs, GenerateArgs, PREFILL_CHUNK, RunArgs};
use crate::backend::open_device;
use crate::model_path::resolve_model;
use arkvale_model::memory::size_cache;

/// Prompts at least this long get a progress bar (when stderr is a terminal).
pub const PROGRESS_MIN_TOKENS: usize = 2 * PREFILL_CHUNK;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The generation ended by itself (EOS, a `--stop` string, `--max-tokens`, the context
    /// length).
    Ended(generation::StopReason),
    /// stdout was closed (e.g. piped into `head`).
    OutputClosed,
}

impl StopReason {
    /// The name in the statistics.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Ended(r) => r.name(),
            StopReason::OutputClosed => "output_closed",
        }
    }
}

/// A model loaded for generation (weights, tokenizer, chat template) and its device.
pub struct Loaded {
    /// The model, its tokenizer and chat template.
    pub inner: LoadedModel,
    /// The device the model runs on.
    pub dev: Arc<dyn Device>,
    /// How long loading took.
    pub load_time: Duration,
}

impl std::ops::Deref for Loaded {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.inner
    }
}

/// Checks the options shared by `generate` and `chat` that clap cannot check.
pub fn check_run_args(run: &RunArgs) -> Result<SamplingParams> {
    let params = SamplingParams {
        temperature: run.temperature,
        top_k: run.top_k,
        top_p: run.top_p,
    };
    // The library names the fields (`temperature`, `top_p`); name the flags.
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}", e.replacen("top_p", "top-p", 1)))?;
    if run.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    StopMatcher::new(run.stop.clone()).map_err(|e| anyhow::anyhow!("--stop: {e}"))?;
    Ok(params)
}

/// Loads the model of `--model` (a GGUF file or a Hugging Face directory) on `--backend`.
pub fn load(run: &RunArgs) -> Result<Loaded> {
    let path = resolve_model(run.model.as_deref())?;
    let t_load = Instant::now();
    let dev = open_device(run.backend, run.threads)?;
    let inner = LoadedModel::open(&path, dev.clone(), run.weights.storage())?;
    Ok(Loaded {
        inner,
        dev,
        load_time: t_load.elapsed(),
    })
}

impl Loaded {
    /// A KV cache for this model sized for `total_tokens` tokens, and its configuration.
    pub fn new_cache(
        &self,
        c: &CacheArgs,
        total_tokens: usize,
    ) -> Result<(CacheManager, CacheConfig)> {
        let mut config = c.config(self.model.shape().kv_heads)?;
        let policy = policy_by_name(&c.policy, &config)?;
        let sizing = size_cache(
            &self.model.shape(),
            &config,
            policy.residency(),
            total_tokens,
        );
        config.device_bytes = sizing.device_bytes;
        config.host_bytes = sizing.host_bytes;
        let cache = CacheManager::new(self.dev.clone(), self.model.shape(), config.clone(), policy)
            .context("cannot create the KV cache")?;
        Ok((cache, config))
    }
}

/// What one decode loop produced.
pub struct Decoded {
    /// The generated ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
    /// Decode steps run (tokens fed back into the cache).
    pub steps: usize,
    /// Time spent decoding.
    pub time: Duration,
}

/// Generates from the prompt's last `logits` with the library's step machine
/// ([`run_sequence`]), streaming the text to stdout (unless `quiet`), until EOS, a stop string
/// of `stops`, `max_tokens` or the context length (`held` tokens are already in the sequence).
/// The last generated token is not fed back. With a stop string, `tokens` ends with the token
/// that completed it and `text` ends before it.
#[allow(clippy::too_many_arguments)]
pub fn decode_loop(
    loaded: &Loaded,
    cache: &mut CacheManager,
    seq: SeqId,
    logits: Logits<'_>,
    sampler: &mut Sampler,
    eos: Option<u32>,
    stops: &[String],
    max_tokens: usize,
    held: usize,
    quiet: bool,
) -> Result<Decoded> {
    let limits = Limits {
        eos,
        max_tokens,
        held,
        context_length: loaded.model.config().context_length,
    };
    let generation =
        Generation::new(&loaded.tokenizer, stops.to_vec(), limits).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    let t_decode = Instant::now();
    let g = run_sequence(
        &loaded.model,
        cache,
        seq,
        logits,
        sampler,
        generation,
        |text, last| -> Result<bool> {
            if quiet {
                Ok(true)
            } else if last {
                emit(&mut out, &format!("{text}\n"))
            } else if text.is_empty() {
                Ok(true)
            } else {
                emit(&mut out, text)
            }
        },
    )?;
    Ok(Decoded {
        tokens: g.tokens,
        text: g.text,
        stop: g.stop.map_or(StopReason::OutputClosed, StopReason::Ended),
        steps: g.steps,
        time: t_decode.elapsed(),
    })
}

/// Tokens per second.
pub fn per_s(n: usize, t: Duration) -> f64 {
    if t.as_secs_f64() > 0.0 {
        n as f64 / t.as_secs_f64()
    } else {
        0.0
    }
}

/// The statistics line on stderr (`recalls`: pages recalled during this decode).
pub fn print_stats(
    policy: &str,
    prefill_tokens: usize,
    prefill_time: Duration,
    d: &Decoded,
    recalls: u64,
    cache: &CacheManager,
) {
    let recalls_per_step = if d.steps == 0 {
        0.0
    } else {
        recalls as f64 / d.steps as f64
    };
    let resident = cache.resident_bytes();
    let full = cache.full_bytes();
    eprintln!(
        "[arkvale] policy {} | prefill {} tokens, {:.1} tokens/s | decode {} tokens, {:.1} \
         tokens/s | KV resident {} of {} full ({:.0}%) | {:.2} recalls/step | stop: {}",
        policy,
        prefill_tokens,
        per_s(prefill_tokens, prefill_time),
        d.steps,
        per_s(d.steps, d.time),
        human_bytes(resident),
        human_bytes(full),
        if full > 0 {
            100.0 * resident as f64 / full as f64
        } else {
            100.0
        },
        recalls_per_step,
        d.stop.name(),
    );
}

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

/// Writes `s` to stdout and flushes; `Ok(false)` when stdout was closed by the reader.
pub fn emit(out: &mut impl Write, s: &str) -> Result<bool> {
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
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

/// Prefills `ids` with the library's [`Prefill`] (chunks of the cache's
/// `prefill_chunk_tokens`, or the whole prompt for token-level policies), advancing a
/// progress bar on stderr. Returns the last token's logits, on the device.
pub fn prefill<'m>(
    model: &'m LlamaModel,
    cache: &mut CacheManager,
    seq: SeqId,
    ids: &[u32],
    show_progress: bool,
) -> Result<Logits<'m>> {
    let bar = if show_progress {
        let bar =
            ProgressBar::with_draw_target(Some(ids.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "prefill {bar:40.cyan/blue} {pos}/{len} tokens ({elapsed}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let mut prefill = Prefill::new(cache, seq, ids.len());
    loop {
        let before = prefill.done();
        let logits = prefill.step(model, cache, ids)?;
        if let Some(bar) = &bar {
            bar.inc((prefill.done() - before) as u64);
        }
        if let Some(logits) = logits {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(logits);
        }
    }
}

/// A seed from the clock, for runs without `--seed`.
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `n` bytes in KiB/MiB/GiB with one decimal.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
