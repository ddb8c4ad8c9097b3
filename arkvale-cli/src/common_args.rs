//! The options several commands share (clap derive): the model, sampling, cache and backend
//! options of `generate` and `chat`, the cache options of every command that builds a KV cache,
//! the options of every experiment (`eval`, `bench`), and the value enums behind them. A leaf:
//! it names no command module, so every command's options may use it.

use std::path::PathBuf;

use anyhow::Result;
use arkvale_core::{AttentionMode, CacheConfig, DigestKind, KvDtype, policy::POLICY_NAMES};
use arkvale_model::llama::WeightStorage;
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};

use crate::selection::SelectionArgs;

/// Prompt tokens per prefill chunk of every command (a multiple of every page size).
pub const PREFILL_CHUNK: usize = 512;

/// The model, sampling, cache and backend options shared by `generate` and `chat`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// GGUF model file or Hugging Face model directory (config.json, tokenizer.json,
    /// *.safetensors) [default: $ARKVALE_MODEL, then
    /// SmolLM2-135M-Instruct.Q4_1.gguf in $XDG_DATA_HOME/arkvale/models or
    /// ~/.local/share/arkvale/models, then in ./models; `cargo xtask fetch-model --user`].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Most tokens to generate (per reply with `chat`; generation also stops at EOS and at
    /// the context length).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the generated text contains TEXT (repeatable); the stop string itself is
    /// not printed.
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Sampling temperature; 0 is greedy (argmax).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "T",
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "P",
        allow_negative_numbers = true
    )]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0: no cut).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Seed of the sampler's RNG [default: from the clock; reported in the statistics].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Compute backend (`wgpu` needs a binary built with `--features wgpu`).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Worker threads of the CPU backend [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Storage type of the weight matrices: the file's own quantized types where the backend
    /// has kernels for them (`native`, the default; the CPU backend has them for Q4_0, Q4_1,
    /// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K, other backends and types get f32): ~15x faster
    /// load, a quarter of the memory and ~3x faster decode than f32 on the CPU; or dequantized
    /// on load to `f32` (exact: the mode the numpy reference is checked in), `f16` or `bf16`.
    #[arg(long, value_enum, default_value_t = WeightDtype::Native)]
    pub weights: WeightDtype,
    /// Never draw the prefill progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// The KV-cache options of `generate`, `chat` and `serve`: a policy and its budget on top of
/// the [`CacheShape`].
#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// Eviction policy.
    #[arg(long, default_value = "arkvale", value_parser = PossibleValuesParser::new(POLICY_NAMES))]
    pub policy: String,
    /// Resident KV tokens per (layer, head group); a multiple of --page-size.
    #[arg(long, default_value_t = 2048, value_name = "TOKENS")]
    pub budget: usize,
    /// Page geometry, digest, top-k, dense layers, attention mode and KV type.
    #[command(flatten)]
    pub shape: CacheShape,
}

impl CacheArgs {
    /// The cache configuration of these options: [`CacheShape::config`] with `--budget`.
    pub fn config(&self, kv_heads: usize) -> Result<CacheConfig> {
        let mut config = self.shape.config(kv_heads)?;
        config.budget_tokens = self.budget;
        Ok(config)
    }
}

/// The cache options every command that builds a KV cache shares (`generate`, `chat`,
/// `serve`, `eval`, `bench`): everything but the policy and its budget.
#[derive(Debug, Args, Clone)]
pub struct CacheShape {
    /// Page geometry and ArkVale's selection rules.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Leading layers that keep every page.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub dense_layers: usize,
    /// Page digest ArkVale estimates page importance with.
    #[arg(long, default_value = "cuboid-mean", value_parser = PossibleValuesParser::new(DigestKind::ALL.map(DigestKind::name)))]
    pub digest: String,
    /// Tokens that take part in each ArkVale attention (top-k) [default: min(1280, budget /
    /// 2)].
    #[arg(long, value_name = "TOKENS")]
    pub topk: Option<usize>,
    /// Which pages ArkVale's decode attends once a sequence exceeds its budget.
    #[arg(long, value_enum, default_value_t = Attention::Resident)]
    pub attention: Attention,
    /// Storage type of the KV cache and its host backups.
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    pub kv_dtype: KvType,
}

impl CacheShape {
    /// The one place the command line becomes a [`CacheConfig`], for a model with `kv_heads`
    /// KV heads: these options on the defaults, prompts prefilled in chunks of
    /// [`PREFILL_CHUNK`] tokens (rounded up to whole pages), then the preset and the
    /// selection options (`--page-size` checked there). The budget keeps its default, and the
    /// byte budgets are set later.
    pub fn config(&self, kv_heads: usize) -> Result<CacheConfig> {
        let base = CacheConfig {
            topk_tokens: self.topk,
            dense_layers: self.dense_layers,
            digest: DigestKind::parse(&self.digest)?,
            attention: self.attention.mode(),
            kv_dtype: self.kv_dtype.dtype(),
            prefill_chunk_tokens: PREFILL_CHUNK,
            ..Default::default()
        };
        self.selection.apply(base, kv_heads)
    }
}

/// Model, output and backend options of every experiment (`eval` and `bench`).
#[derive(Debug, Args, Clone)]
pub struct ExperimentArgs {
    /// GGUF model file or Hugging Face model directory [default: $ARKVALE_MODEL, then
    /// SmolLM2-135M-Instruct.Q4_1.gguf in $XDG_DATA_HOME/arkvale/models or
    /// ~/.local/share/arkvale/models, then in ./models; `cargo xtask fetch-model --user`].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Output directory [default: eval-out/<experiment>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of every random choice (keys, values, depths of distractors, query positions).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Worker threads of the CPU backend [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Storage type of the weight matrices (`native`: the file's own types where the backend
    /// has kernels for them; the default stays the exact f32, which the recorded evaluation
    /// results used).
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    pub weights: WeightDtype,
    /// Never draw progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// `--attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attention {
    /// Every resident page.
    Resident,
    /// Only sinks + top-k + window.
    Sparse,
}

impl Attention {
    /// The core's attention mode.
    pub fn mode(self) -> AttentionMode {
        match self {
            Attention::Resident => AttentionMode::Resident,
            Attention::Sparse => AttentionMode::Sparse,
        }
    }
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The multithreaded CPU backend.
    Cpu,
    /// The portable GPU backend (Vulkan / Metal / DX12; cargo feature `wgpu`).
    Wgpu,
    /// The NVIDIA backend (cargo feature `cuda`; not yet run on a GPU).
    Cuda,
}

/// `--weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightDtype {
    /// The file's own types, quantized blocks kept as stored, where the backend has kernels
    /// for them (else dequantized to f32). Decode multiplies by activations rounded to 8 bits.
    Native,
    /// f32 weights (exact dequantized values).
    F32,
    /// f16 weights (half the memory, faster decode).
    F16,
    /// bf16 weights (half the memory, f32's range).
    Bf16,
}

impl WeightDtype {
    /// How the model loader stores the weight matrices.
    pub fn storage(self) -> WeightStorage {
        match self {
            WeightDtype::Native => WeightStorage::Native,
            WeightDtype::F32 => WeightStorage::Convert(arkvale_core::DType::F32),
            WeightDtype::F16 => WeightStorage::Convert(arkvale_core::DType::F16),
            WeightDtype::Bf16 => WeightStorage::Convert(arkvale_core::DType::BF16),
        }
    }
}

/// `--kv-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvType {
    /// f32 KV (exact).
    F32,
    /// f16 KV (as in the paper).
    F16,
    /// bf16 KV.
    Bf16,
}

impl KvType {
    /// The core KV type.
    pub fn dtype(self) -> KvDtype {
        match self {
            KvType::F32 => KvDtype::F32,
            KvType::F16 => KvDtype::F16,
            KvType::Bf16 => KvDtype::BF16,
        }
    }
}
