//! `arkvale`: run Llama-family GGUF models with an ArkVale KV cache from the command line.
//!
//! * `arkvale generate --prompt TEXT` streams a continuation to stdout (`--json`: one JSON
//!   object with ids, text and statistics) and ends with a statistics line on stderr.
//! * `arkvale chat` is an interactive multi-turn chat on stdin, the KV cache kept across turns.
//! * `arkvale info --model PATH` describes a model and the KV memory a context needs.
//! * `arkvale eval passkey|niah|fidelity|digest-recall|recalls` runs the paper's accuracy
//!   experiments with every baseline policy (prefill once, fork per policy x budget).
//!
//! Errors are one `error: ...` message on stderr and exit status 1; usage errors exit with 2.

mod args;
mod backend;
mod bench;
mod chat;
mod eval;
mod generate;
mod info;
mod model_path;
mod selection;
mod serve;

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
