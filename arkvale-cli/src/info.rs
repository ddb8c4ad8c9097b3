//! `arkvale info`: what a model (GGUF file or Hugging Face directory) holds and the KV memory
//! a context needs.

use std::path::Path;

use anyhow::{Context, Result};
use arkvale_core::CacheConfig;
use arkvale_model::gguf::GgufFile;
use arkvale_model::hf::{self, HfModelDir};
use arkvale_model::llama::LlamaConfig;
use arkvale_model::text::TextTokenizer;
use arkvale_model::tokenizer::Tokenizer;

use arkvale_model::memory::{budget_kv_bytes, full_kv_bytes};

use crate::args::InfoArgs;
use crate::model_path::resolve_model;
use crate::setup::human_bytes;

/// What `info` prints about a model path before the KV estimate.
struct Described {
    config: LlamaConfig,
    tokenizer: TextTokenizer,
    chat_template: bool,
    /// `general.name` and format of a GGUF file, or the format of a directory.
    origin: String,
}

/// Reads the configuration and tokenizer of a GGUF file or Hugging Face directory (no
/// weights are loaded).
fn describe(path: &Path) -> Result<Described> {
    if hf::is_hf_dir(path) {
        let dir = HfModelDir::open(path)?;
        return Ok(Described {
            config: dir.config().clone(),
            chat_template: dir.tokenizer().chat_template().is_some(),
            tokenizer: TextTokenizer::Hf(dir.tokenizer().clone()),
            origin: format!(
                "Hugging Face directory, {} weight file(s)",
                dir.weights().files().len()
            ),
        });
    }
    let file = GgufFile::open(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let config = LlamaConfig::from_gguf(&file)
        .with_context(|| format!("cannot read the model configuration of {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file)
        .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
    let md = file.metadata();
    Ok(Described {
        config,
        chat_template: md.get("tokenizer.chat_template").is_some(),
        tokenizer: TextTokenizer::Gguf(tok),
        origin: format!(
            "{}, GGUF v{}",
            md.get_str("general.name").unwrap_or("(unnamed)"),
            file.version()
        ),
    })
}

/// Runs `arkvale info`, printing to stdout.
pub fn run(args: InfoArgs) -> Result<()> {
    let path = resolve_model(args.model.as_deref())?;
    let Described {
        config: c,
        tokenizer: tok,
        chat_template,
        origin,
    } = describe(&path)?;
    let special = |id: Option<u32>| match id {
        Some(id) => format!(
            "{id} {:?}",
            tok.token_text(id).unwrap_or_else(|| "?".into())
        ),
        None => "none".to_string(),
    };

    println!("model        {} ({origin})", path.display());
    println!(
        "architecture {}{}",
        c.arch,
        if c.qkv_bias { " (q/k/v biases)" } else { "" }
    );
    println!(
        "shape        {} layers, d_model {}, d_ff {}, {} q heads / {} kv heads x {}",
        c.layers, c.d_model, c.d_ff, c.q_heads, c.kv_heads, c.head_dim
    );
    println!(
        "context      {} tokens, RoPE base {}, scaling {:?}{}",
        c.context_length,
        c.rope_theta,
        c.rope_scaling,
        if c.rope_freq_factors.is_some() {
            " + frequency factors"
        } else {
            ""
        }
    );
    println!(
        "embeddings   {}, RMSNorm eps {:e}",
        if c.tied_embeddings {
            "tied"
        } else {
            "separate output"
        },
        c.rms_eps
    );
    let added = match &tok {
        TextTokenizer::Gguf(t) => {
            if t.add_bos() {
                "yes"
            } else {
                "no"
            }
        }
        TextTokenizer::Hf(t) => {
            if t.add_bos() {
                "yes"
            } else {
                "no"
            }
        }
    };
    println!(
        "tokenizer    {} tokens, {}, BOS {} (added: {added}), EOS {}",
        tok.vocab_size(),
        tok.describe(),
        special(tok.bos_id()),
        special(tok.eos_id())
    );
    println!("chat template {}", if chat_template { "yes" } else { "no" });
    if let Some(backend) = args.backend {
        println!("backend      {}", crate::backend::describe(backend)?);
    }

    let context = args.context.unwrap_or(c.context_length);
    let config = CacheConfig {
        page_size: args.page_size,
        budget_tokens: args.budget,
        dense_layers: args.dense_layers,
        kv_dtype: args.kv_dtype.dtype(),
        ..Default::default()
    };
    let shape = c.shape();
    config
        .resolve(&shape)
        .context("invalid --budget/--page-size/--dense-layers")?;
    let full = full_kv_bytes(&shape, &config, context);
    let budget = budget_kv_bytes(&shape, &config, context);
    println!(
        "KV memory    {context} tokens, {:?} KV, pages of {}: full cache {}, ArkVale budget {} \
         tokens ({} dense layers) {} on the device ({:.1}%; evicted pages backed up on the host)",
        config.kv_dtype,
        config.page_size,
        human_bytes(full),
        args.budget,
        config.dense_layers,
        human_bytes(budget),
        100.0 * budget as f64 / full.max(1) as f64
    );
    if context > c.context_length {
        println!(
            "note         {context} tokens exceed the model's context length ({})",
            c.context_length
        );
    }
    Ok(())
}
