//! `arkvale`: run Llama-family models (GGUF files or Hugging Face directories) with an ArkVale
//! KV cache from the command line.
//!
//! * `arkvale generate --prompt TEXT` streams a continuation to stdout (`--json`: one JSON
//!   object with ids, text and statistics) and ends with a statistics line on stderr.
//! * `arkvale chat` is an interactive multi-turn chat on stdin, the KV cache kept across turns.
//! * `arkvale info --model PATH` describes a model and the KV memory a context needs.
//! * `arkvale serve` answers an OpenAI-compatible HTTP API on the continuous-batching engine.
//! * `arkvale eval passkey|niah|fidelity|digest-recall|recalls` runs the paper's accuracy
//!   experiments (arkvale-eval) with every baseline policy (prefill once, fork per policy x
//!   budget); `arkvale bench throughput|speed` measures batch throughput and speed.
//!
//! The CPU backend is always compiled in; the cargo features `wgpu` and `cuda` add the others.
//! Errors are one `error: ...` message on stderr and exit status 1; usage errors exit with 2.
//!
//! Modules: each command (`generate`, `chat`, `info`, `serve`, `eval`, `bench`) has its own
//! module and imports no other command. What they share sits in modules that import no
//! command: the shared options ([`common_args`], [`selection`]), model lookup and devices
//! ([`model_path`], [`backend`]), loading and cache setup ([`setup`]), the prefill/decode loop
//! of `generate` and `chat` ([`decoding`]) and the plots ([`plot`]). [`args`] assembles the
//! command line from the shared options and each command's `args` module.

mod args;
mod backend;
mod bench;
mod chat;
mod common_args;
mod decoding;
mod eval;
mod generate;
mod info;
mod model_path;
mod plot;
mod selection;
mod serve;
mod setup;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Generate(a) => generate::run(a),
        args::Command::Info(a) => info::run(a),
        args::Command::Chat(a) => chat::run(a),
        args::Command::Eval(a) => eval::run(a),
        args::Command::Serve(a) => serve::run(a),
        args::Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
