//! The options of `arkvale bench` (clap derive).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::common_args::{CacheShape, ExperimentArgs};

/// Options of `arkvale bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub task: BenchTask,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchTask {
    /// Decode throughput of the largest batch each policy fits under a KV memory cap (paper
    /// Fig. 9b). Each sequence is a fork of one prefilled prompt (filler text) of --context
    /// tokens; batch sizes follow the serving engine's admission rule.
    Throughput(ThroughputArgs),
    /// Single-sequence speed: for each context length, one prompt of that many tokens is
    /// prefilled (timed, `full` cache) and each policy then greedily decodes --generate
    /// tokens from it (timed). The prompt is the built-in *Persuasion* text, or the token ids
    /// of --prompt-ids (as `bench/llama_cpp.sh` passes, so both engines see the same tokens).
    Speed(SpeedArgs),
}

/// Options of `arkvale bench speed`.
#[derive(Debug, Args)]
pub struct SpeedArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,4096,8192",
        value_name = "TOKENS"
    )]
    pub contexts: Vec<usize>,
    /// Decode steps timed per policy (greedy).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub generate: usize,
    /// Policies, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "full,arkvale")]
    pub policies: Vec<String>,
    /// Budgets of the budgeted policies, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "512,2048",
        value_name = "TOKENS"
    )]
    pub budgets: Vec<usize>,
    /// A file of prompt token ids (decimal, separated by whitespace or commas); each context
    /// uses its first ids [default: the *Persuasion* text, tokenized].
    #[arg(long, value_name = "FILE")]
    pub prompt_ids: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheShape,
}

/// Options of `arkvale bench throughput`.
#[derive(Debug, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 4096, value_name = "TOKENS")]
    pub context: usize,
    /// Decode steps timed.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub generate: usize,
    /// Device KV memory cap in MiB [default: what --full-sequences full-cache sequences need].
    #[arg(long, value_name = "MIB")]
    pub kv_memory_mib: Option<f64>,
    /// Full-cache sequences the default cap holds.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub full_sequences: usize,
    /// Policies, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "full,arkvale")]
    pub policies: Vec<String>,
    /// Budgets of the budgeted policies, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,512,1024",
        value_name = "TOKENS"
    )]
    pub budgets: Vec<usize>,
    #[command(flatten)]
    pub cache: CacheShape,
    /// Prompt tokens per prefill chunk (a budgeted sequence reserves room for one chunk).
    #[arg(long, default_value_t = 128, value_name = "TOKENS")]
    pub prefill_chunk: usize,
    /// Largest batch tried.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_batch: usize,
}
