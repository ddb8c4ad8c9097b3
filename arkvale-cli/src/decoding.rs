//! The prefill and decode loop of `generate` and `chat`: the prompt prefilled with a progress
//! bar, then tokens sampled and streamed to stdout until a stop condition, and the statistics
//! line on stderr. Built on the library's generation step machine.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arkvale_core::{CacheManager, SeqId};
use arkvale_model::generation::{self, Generation, Limits, Prefill, run_sequence};
use arkvale_model::llama::{LlamaModel, Logits};
use arkvale_model::sampling::Sampler;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::common_args::PREFILL_CHUNK;
use crate::setup::{Loaded, human_bytes};

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

/// Writes `s` to stdout and flushes; `Ok(false)` when stdout was closed by the reader.
pub fn emit(out: &mut impl Write, s: &str) -> Result<bool> {
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
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
