//! `arkvale chat`: an interactive multi-turn chat on stdin. One sequence lives in the KV
//! cache for the whole conversation; each turn renders the whole conversation with the chat
//! template and prefills only the tokens after those the sequence already holds (when the
//! held tokens are a prefix of the new rendering; otherwise the sequence is rebuilt).

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arkvale_core::{CacheManager, SeqId};
use arkvale_model::chat::Message;

use arkvale_model::sampling::Sampler;

use crate::args::ChatArgs;
use crate::decoding::{
    Decoded, PROGRESS_MIN_TOKENS, StopReason, decode_loop, prefill, print_stats,
};
use crate::setup::{check_run_args, clock_seed, load};

/// Runs `arkvale chat`.
pub fn run(args: ChatArgs) -> Result<()> {
    let params = check_run_args(&args.run)?;
    let loaded = load(&args.run)?;
    loaded.chat_template()?;
    let run = &args.run;
    let ctx = loaded.model.config().context_length;
    let (mut cache, _config) = loaded.new_cache(&run.cache, ctx)?;
    let mut seq = cache.add_sequence();
    let seed = run.seed.unwrap_or_else(clock_seed);
    let mut sampler = Sampler::new(params, seed).map_err(anyhow::Error::msg)?;
    let eos = if run.ignore_eos {
        None
    } else {
        loaded.tokenizer.eos_id()
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "[arkvale] chatting with {} (type /reset to start over, /exit or Ctrl-D to end)",
            loaded.path.display()
        );
    }

    let mut history: Vec<Message> = Vec::new();
    if let Some(system) = &args.system {
        history.push(Message::system(system.clone()));
    }
    let base = history.clone();
    // The tokens the sequence holds in the cache, in order.
    let mut held: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read standard input")?;
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = base.clone();
                seq = reset(&mut cache, seq)?;
                held.clear();
                eprintln!("[arkvale] conversation cleared");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let ids = loaded.chat_tokens(&history)?;
        if ids.len() >= ctx {
            bail!(
                "the conversation has {} tokens but the model's context length is {ctx}; \
                 start over with /reset",
                ids.len()
            );
        }
        let reuse = ids.len() > held.len() && ids.starts_with(&held);
        if !reuse && !held.is_empty() {
            eprintln!(
                "[arkvale] the new rendering does not extend the cached tokens; prefilling \
                 the whole conversation again ({} tokens)",
                ids.len()
            );
            seq = reset(&mut cache, seq)?;
            held.clear();
        }
        let new = &ids[held.len()..];
        let recalls_before = cache.stats().recalls;
        let t_prefill = Instant::now();
        let show_progress =
            !run.no_progress && std::io::stderr().is_terminal() && new.len() >= PROGRESS_MIN_TOKENS;
        let logits = prefill(&loaded.model, &mut cache, seq, new, show_progress)?;
        let prefill_time: Duration = t_prefill.elapsed();
        let prefilled = new.len();
        held = ids;
        let max_tokens = run.max_tokens.min(ctx - held.len());
        let d: Decoded = decode_loop(
            &loaded,
            &mut cache,
            seq,
            logits,
            &mut sampler,
            eos,
            &run.stop,
            max_tokens,
            held.len(),
            false,
        )?;
        // Every generated token but the last was fed back into the cache.
        held.extend_from_slice(&d.tokens[..d.steps]);
        let recalls = cache.stats().recalls - recalls_before;
        print_stats(
            &run.cache.policy,
            prefilled,
            prefill_time,
            &d,
            recalls,
            &cache,
        );
        if d.stop == StopReason::OutputClosed {
            break;
        }
        history.push(Message::assistant(d.text.trim().to_string()));
    }
    Ok(())
}

/// Drops `seq` and its pages and starts an empty sequence.
fn reset(cache: &mut CacheManager, seq: SeqId) -> Result<SeqId> {
    cache
        .remove_sequence(seq)
        .context("cannot drop the conversation's KV cache")?;
    Ok(cache.add_sequence())
}
