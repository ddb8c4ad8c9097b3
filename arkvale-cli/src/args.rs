//! The command line: `arkvale generate`, `chat`, `info`, `eval`, `serve` and `bench` (clap
//! derive). The options several commands share are in [`crate::common_args`]; those of
//! `eval`, `serve` and `bench` in their own `args` modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bench::args::BenchArgs;
use crate::common_args::{Backend, KvType, RunArgs};
use crate::eval::args::EvalArgs;
use crate::serve::args::ServeArgs;

/// Extra text of `arkvale generate --help`: memory sizing and the statistics.
const GENERATE_NOTES: &str = "\
KV memory: with T = prompt + max-tokens tokens (at most the context length) and P = ceil(T / \
page-size) pages, the device pool holds P pages for every layer that keeps all its pages \
(policies full, quest, h2o, tova; the --dense-layers leading layers) and min(P, budget pages + one \
prefill chunk + 1) for every budgeted layer (arkvale, streaming), plus 16 staging pages; \
the host tier (backups of evicted pages, allocated as used) may hold every page.

Statistics (last line on stderr; the \"stats\" object with --json): prefill and decode tokens/s, \
KV bytes resident on the device vs a full cache for the same tokens, and recalls per step \
(pages recalled from host backups per decode step, all layers together).";

/// Run Llama-family models with an ArkVale KV cache: generate, chat, serve, evaluate, benchmark.
///
/// arkvale runs Llama-family decoders (SmolLM2, Llama 2/3, Mistral, Qwen2 architectures; GGUF
/// files or Hugging Face safetensors directories) on the CPU, or on a GPU through wgpu or CUDA
/// when built with those features, with the KV cache of the ArkVale paper: the cache is paged,
/// pages beyond a token budget are evicted to host memory but keep a small digest, and the
/// pages a query needs are recalled before attention. `generate` continues a prompt, `chat`
/// holds a multi-turn conversation, `info` describes a model and the KV memory a context
/// needs, `serve` answers an OpenAI-compatible HTTP API with continuous batching and KV-memory
/// admission, `eval` runs the paper's accuracy experiments (passkey, needle in a haystack,
/// fidelity, digest recall, recalls per step) against the baseline policies (full, streaming,
/// H2O, TOVA, Quest), and `bench throughput` measures the largest batch and tokens/s that fit
/// a KV memory cap. Without --model (or $ARKVALE_MODEL) the default model,
/// SmolLM2-135M-Instruct.Q4_1.gguf, is read from $XDG_DATA_HOME/arkvale/models or
/// ~/.local/share/arkvale/models (then ./models); `cargo xtask fetch-model --user` puts it
/// there.
#[derive(Debug, Parser)]
#[command(name = "arkvale", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streamed to stdout (or one JSON object with --json).
    #[command(after_long_help = GENERATE_NOTES)]
    Generate(GenerateArgs),
    /// Describe a model file: architecture, shapes, tokenizer, KV memory for a context.
    Info(InfoArgs),
    /// Interactive multi-turn chat on stdin (one line per user turn; /reset clears the
    /// history, /exit or end of input ends); the KV cache is kept across turns.
    #[command(after_long_help = GENERATE_NOTES)]
    Chat(ChatArgs),
    /// The paper's accuracy experiments (passkey, niah, fidelity, digest-recall, recalls)
    /// with every baseline policy, written as results.json / CSV / markdown / PNG plots.
    Eval(EvalArgs),
    /// Serve the model over HTTP with an OpenAI-compatible API (continuous batching, KV
    /// memory admission, streaming). The "model" of a request must be one of the served
    /// names (see --served-model-name) or absent.
    Serve(ServeArgs),
    /// Benchmarks: `throughput` (the paper's Fig. 9b, largest batch under a KV memory cap).
    Bench(BenchArgs),
}

/// Options of `arkvale generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt text (else --prompt-file, else standard input).
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Apply the model's chat template: the prompt becomes one user turn (plus the
    /// template's own default system prompt, if it has one), ending with the assistant header.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object (prompt ids, generated ids, text, statistics) instead of
    /// streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `arkvale chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A system prompt (else the template's default, if it has one).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `arkvale info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// GGUF model file or Hugging Face model directory [default: $ARKVALE_MODEL, then
    /// SmolLM2-135M-Instruct.Q4_1.gguf in $XDG_DATA_HOME/arkvale/models or
    /// ~/.local/share/arkvale/models, then in ./models; `cargo xtask fetch-model --user`].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Context length for the KV memory estimate [default: the model's context length].
    #[arg(long, value_name = "TOKENS")]
    pub context: Option<usize>,
    /// ArkVale budget (resident tokens per layer) for the KV memory estimate.
    #[arg(long, default_value_t = 2048, value_name = "TOKENS")]
    pub budget: usize,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 32, value_name = "TOKENS")]
    pub page_size: usize,
    /// Leading layers that keep every page.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub dense_layers: usize,
    /// Storage type of the KV cache.
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    pub kv_dtype: KvType,
    /// Also open this compute backend and describe it (for `wgpu`: adapter and f16 storage).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
}

#[cfg(test)]
mod tests {
    use arkvale_core::policy::POLICY_NAMES;

    use super::*;
    use crate::common_args::{Attention, WeightDtype};
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("arkvale").chain(args.iter().copied()))
    }

    fn generate(args: &[&str]) -> GenerateArgs {
        match parse(&[&["generate"], args].concat()).unwrap().command {
            Command::Generate(g) => g,
            c => panic!("expected generate, got {c:?}"),
        }
    }

    #[test]
    fn generate_defaults() {
        let g = generate(&["--prompt", "hi"]);
        assert_eq!(g.prompt.as_deref(), Some("hi"));
        assert_eq!(g.run.max_tokens, 128);
        assert_eq!(g.run.temperature, 0.0);
        assert_eq!((g.run.top_k, g.run.top_p, g.run.seed), (0, 1.0, None));
        assert_eq!(g.run.cache.policy, "arkvale");
        let sel = &g.run.cache.shape.selection;
        assert_eq!((g.run.cache.budget, sel.page_size), (2048, None));
        assert_eq!(sel.preset, "recommended");
        assert_eq!(g.run.cache.shape.digest, "cuboid-mean");
        assert_eq!(
            (sel.sinks, sel.window, g.run.cache.shape.dense_layers),
            (None, None, 2)
        );
        assert!(sel.head_groups.is_none() && sel.victims.is_none() && sel.prefill_keep.is_none());
        assert_eq!(g.run.cache.shape.attention, Attention::Resident);
        assert_eq!(g.run.cache.shape.kv_dtype, KvType::F16);
        assert_eq!(g.run.weights, WeightDtype::Native);
        assert_eq!(g.run.backend, Backend::Cpu);
        assert!(!g.json && !g.chat && !g.run.ignore_eos && g.run.model.is_none());
    }

    #[test]
    fn generate_every_option() {
        let g = generate(&[
            "--model",
            "m.gguf",
            "--prompt-file",
            "p.txt",
            "--max-tokens",
            "8",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--top-k",
            "40",
            "--seed",
            "5",
            "--policy",
            "quest",
            "--budget",
            "512",
            "--page-size",
            "16",
            "--preset",
            "paper",
            "--head-groups",
            "kv",
            "--score-agg",
            "max",
            "--victims",
            "attention",
            "--prefill-keep",
            "digest",
            "--digest",
            "sphere-max",
            "--topk",
            "128",
            "--sinks",
            "2",
            "--window",
            "3",
            "--dense-layers",
            "0",
            "--attention",
            "sparse",
            "--threads",
            "2",
            "--weights",
            "f16",
            "--kv-dtype",
            "bf16",
            "--json",
            "--ignore-eos",
        ]);
        assert_eq!(g.run.model, Some(PathBuf::from("m.gguf")));
        assert_eq!(g.prompt_file, Some(PathBuf::from("p.txt")));
        assert_eq!(
            (g.run.max_tokens, g.run.top_k, g.run.seed),
            (8, 40, Some(5))
        );
        assert_eq!((g.run.temperature, g.run.top_p), (0.7, 0.9));
        assert_eq!(g.run.cache.policy, "quest");
        let sel = &g.run.cache.shape.selection;
        assert_eq!(
            (g.run.cache.budget, sel.page_size, g.run.cache.shape.topk),
            (512, Some(16), Some(128))
        );
        assert_eq!(g.run.cache.shape.digest, "sphere-max");
        assert_eq!(
            (sel.sinks, sel.window, g.run.cache.shape.dense_layers),
            (Some(2), Some(3), 0)
        );
        assert_eq!(sel.preset, "paper");
        assert_eq!(sel.head_groups.as_deref(), Some("kv"));
        assert_eq!(sel.score_agg.as_deref(), Some("max"));
        assert_eq!(sel.victims.as_deref(), Some("attention"));
        assert_eq!(sel.prefill_keep.as_deref(), Some("digest"));
        assert_eq!(g.run.cache.shape.attention, Attention::Sparse);
        assert_eq!(g.run.cache.shape.kv_dtype, KvType::Bf16);
        assert_eq!((g.run.threads, g.run.weights), (Some(2), WeightDtype::F16));
        assert!(g.json && g.run.ignore_eos);
    }

    #[test]
    fn prompt_and_prompt_file_conflict() {
        let e = parse(&["generate", "--prompt", "a", "--prompt-file", "b"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn unknown_policy_lists_the_valid_ones() {
        let e = parse(&["generate", "--prompt", "a", "--policy", "lru"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        let msg = e.to_string();
        for name in POLICY_NAMES {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        for args in [
            &["generate", "--digest", "cube"][..],
            &["generate", "--attention", "dense"],
            &["generate", "--max-tokens", "-1"],
            &["generate", "--weights", "q4"],
            &["generate", "--backend", "tpu"],
            &["info", "--context", "many"],
            &["frobnicate"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn stop_strings_repeat() {
        let g = generate(&["--stop", "\n\n", "--stop", "END"]);
        assert_eq!(g.run.stop, vec!["\n\n".to_string(), "END".to_string()]);
        assert!(generate(&[]).run.stop.is_empty());
        assert_eq!(generate(&["--backend", "wgpu"]).run.backend, Backend::Wgpu);
    }

    #[test]
    fn chat_shares_the_run_options() {
        let c = parse(&[
            "chat",
            "--model",
            "m.gguf",
            "--system",
            "Be brief.",
            "--max-tokens",
            "5",
            "--policy",
            "full",
            "--budget",
            "512",
        ])
        .unwrap();
        let Command::Chat(c) = c.command else {
            panic!("expected chat")
        };
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!(c.run.model, Some(PathBuf::from("m.gguf")));
        assert_eq!(c.run.max_tokens, 5);
        assert_eq!(
            (c.run.cache.policy.as_str(), c.run.cache.budget),
            ("full", 512)
        );
        assert!(parse(&["chat", "--prompt", "x"]).is_err());
    }

    #[test]
    fn info_options() {
        let c = parse(&[
            "info",
            "--model",
            "x.gguf",
            "--context",
            "8192",
            "--budget",
            "512",
        ])
        .unwrap();
        let Command::Info(i) = c.command else {
            panic!("expected info")
        };
        assert_eq!(i.model, Some(PathBuf::from("x.gguf")));
        assert_eq!((i.context, i.budget, i.page_size), (Some(8192), 512, 32));
    }
}
