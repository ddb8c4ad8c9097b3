//! Options of `arkvale serve`.

use std::path::PathBuf;

use clap::Args;

use crate::args::{Backend, CacheArgs, WeightDtype};

/// Options of `arkvale serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// GGUF model file or Hugging Face model directory [default: $ARKVALE_MODEL, then
    /// models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Address to listen on (only this machine by default; use 0.0.0.0 to expose it).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,
    /// Device KV memory shared by all sequences, in MiB; admission keeps every sequence's
    /// worst-case resident KV within it.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub kv_memory_mib: usize,
    /// Host memory limit for the backups of evicted pages, in MiB.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub host_memory_mib: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_batch: usize,
    /// Most requests waiting for admission; more get 429 Too Many Requests.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_queue: usize,
    /// Longest prompt accepted, in tokens [default: the model's context length - 1].
    #[arg(long, value_name = "TOKENS")]
    pub max_prompt_tokens: Option<usize>,
    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is cancelled (504, or an error event when
    /// streaming).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub request_timeout: u64,
    /// Default `max_tokens` of a request that gives none.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Worker threads of the CPU backend [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Storage type of the weight matrices (`native`: the file's own types where the backend
    /// has kernels for them, as `arkvale generate`).
    #[arg(long, value_enum, default_value_t = WeightDtype::Native)]
    pub weights: WeightDtype,
}
