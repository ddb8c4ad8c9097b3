//! Llama-family decoders (SmolLM2 and other GGUF files of architecture `llama`) whose every
//! attention runs through arkvale-core's [`CacheManager`](arkvale_core::CacheManager).
//!
//! # Usage
//!
//! The caller owns the cache and builds it with the model's [`LlamaModel::shape`]; the model
//! checks the shape on every call. Positions continue after what a sequence already holds, so
//! a prompt can be prefilled in several calls and then decoded token by token.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use arkvale_core::{CacheConfig, CacheManager, DType, policy_by_name};
//! use arkvale_cpu::CpuDevice;
//! use arkvale_model::gguf::GgufFile;
//! use arkvale_model::llama::LlamaModel;
//!
//! let file = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let dev = Arc::new(CpuDevice::new(None)?);
//! let model = LlamaModel::load(dev.clone(), &file, DType::F32)?;
//! let config = CacheConfig { budget_tokens: 512, device_bytes: 256 << 20, ..Default::default() };
//! let policy = policy_by_name("arkvale", &config)?;
//! let mut cache = CacheManager::new(dev, model.shape(), config, policy)?;
//! let seq = cache.add_sequence();
//! let logits = model.prefill(&mut cache, seq, &[504, 22142, 5744])?; // [vocab]
//! let mut next = argmax(&logits);
//! for _ in 0..8 {
//!     let logits = model.decode(&mut cache, &[seq], &[next])?; // [1, vocab]
//!     next = argmax(&logits);
//! }
//! # fn argmax(x: &[f32]) -> u32 { 0 }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`LlamaModel::prefill_logits`] and [`LlamaModel::decode_logits`] leave the logits on the
//! device as a [`Logits`], so that greedy decoding downloads only the chosen ids
//! ([`Logits::argmax`]); [`crate::generation`] builds on them.
//!
//! # The computation
//!
//! Per layer: RMSNorm → Q, K, V projections → RoPE on Q and K → cache attention
//! ([`CacheManager::prefill_layer`](arkvale_core::CacheManager::prefill_layer) /
//! [`CacheManager::decode_layer`](arkvale_core::CacheManager::decode_layer)) → output
//! projection → residual add → RMSNorm → gate and up projections → SiLU(gate)·up → down
//! projection → residual add; then the final RMSNorm and the logits projection (the token
//! embedding when the file has no `output.weight`).
//!
//! Qwen2 adds a bias to the Q, K and V projections ([`LlamaConfig::qkv_bias`]).
//!
//! RoPE uses [`RopeStyle::Interleaved`] (adjacent pairs) for GGUF architecture `llama`,
//! because llama.cpp's converter permutes the Q/K rows of `llama` checkpoints for that
//! rotation, and [`RopeStyle::Neox`] for `qwen2`, whose rows it keeps
//! ([`LlamaConfig::gguf_rope_style`]); a Hugging Face checkpoint
//! (unpermuted) would need [`RopeStyle::Neox`] — [`LlamaModel::set_rope_style`].
//!
//! All activations are f32; weights are either dequantized on load and stored as f32, f16 or
//! bf16, or kept in the file's block-quantized types where the device has kernels for them
//! (the [`WeightStorage`] of [`LlamaModel::load`]); norm weights stay f32.
//!
//! # Errors
//!
//! Bad files and bad inputs are [`LlamaError`] values. A forward call that fails part-way
//! (e.g. the KV pool is exhausted) leaves its sequences in an unspecified state: remove them
//! from the cache.

mod config;
mod forward;
mod weights;

use std::sync::Arc;

use parking_lot::Mutex;

use arkvale_core::{DType, Device, ModelShape, RopeScaling, RopeStyle, rope_inv_freq};

pub use config::{LlamaConfig, SUPPORTED_ARCHITECTURES};
pub use forward::Logits;
pub use weights::{HostLayer, LlamaHostWeights, WeightStorage};

use crate::gguf::{GgufError, GgufFile};
use forward::Scratch;
use weights::{Tensor, Weights};

/// Everything that can go wrong while loading or running a Llama-family model.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// Reading the GGUF file failed (missing key, malformed tensor, ...).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The model's hyper-parameters are missing, inconsistent or unsupported.
    #[error("model configuration: {0}")]
    Config(String),
    /// A weight tensor is missing or has the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// The caller's input cannot be run (empty prompt, token id out of range, context too
    /// long, a cache built for another shape, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// The cache manager or the device failed.
    #[error(transparent)]
    Cache(#[from] arkvale_core::Error),
}

/// Shorthand for results carrying [`LlamaError`].
pub type Result<T, E = LlamaError> = std::result::Result<T, E>;

/// A Llama-family decoder with its weights on a [`Device`].
pub struct LlamaModel {
    dev: Arc<dyn Device>,
    config: LlamaConfig,
    weights: Weights,
    weight_dtype: DType,
    inv_freq: Vec<f32>,
    rope_style: RopeStyle,
    /// Activation buffers of recent forward calls, most recent first, reused by calls of the
    /// same token count (see `forward`).
    scratch: Mutex<Vec<Scratch>>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("device", &self.dev.name())
            .field("config", &self.config)
            .field("weight_dtype", &self.weight_dtype)
            .field("rope_style", &self.rope_style)
            .finish()
    }
}

impl LlamaModel {
    /// Loads the model in `file` onto `dev`: reads its [`LlamaConfig`] and uploads every
    /// weight, matrices and the embedding table as `storage` says — dequantized to f32 and
    /// converted to a float type (`F32`, `F16` or `BF16`; a [`DType`] converts into
    /// [`WeightStorage::Convert`]), or kept in the file's own types
    /// ([`WeightStorage::Native`]) where the device has kernels for them. Tensors are read one
    /// at a time from the file's memory map, so the host holds at most one dequantized tensor;
    /// native tensors are copied to the device without being decoded.
    pub fn load(
        dev: Arc<dyn Device>,
        file: &GgufFile,
        storage: impl Into<WeightStorage>,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let rope_style = config.gguf_rope_style();
        let weights = Weights::from_gguf(dev.as_ref(), file, &config, storage.into())?;
        let weight_dtype = weights
            .layers
            .first()
            .map_or(weights.embedding.dtype(), |l| l.wq.dtype());
        let mut model = Self::assemble(dev, config, weights, weight_dtype)?;
        model.rope_style = rope_style;
        Ok(model)
    }

    /// Builds a model from host weights (f32, GGUF layout and Q/K order; see [`HostLayer`]),
    /// e.g. a small random model for tests. `config.tied_embeddings` must agree with whether
    /// `weights.output` is `None`.
    pub fn from_host_weights(
        dev: Arc<dyn Device>,
        config: LlamaConfig,
        mut weights: LlamaHostWeights,
        weight_dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        if config.tied_embeddings != weights.output.is_none() {
            return Err(LlamaError::Weights(format!(
                "config.tied_embeddings is {} but the output projection is {}",
                config.tied_embeddings,
                if weights.output.is_some() {
                    "given"
                } else {
                    "absent"
                }
            )));
        }
        let has_bias = |l: &HostLayer| !(l.bq.is_empty() && l.bk.is_empty() && l.bv.is_empty());
        if !config.qkv_bias && weights.layers.iter().any(has_bias) {
            return Err(LlamaError::Weights(
                "q/k/v biases given but config.qkv_bias is false".into(),
            ));
        }
        if weights.layers.len() != config.layers {
            return Err(LlamaError::Weights(format!(
                "{} layers of weights for a {}-layer config",
                weights.layers.len(),
                config.layers
            )));
        }
        let tied = config.tied_embeddings;
        let uploaded = Weights::upload(dev.as_ref(), &config, weight_dtype, tied, |t: Tensor| {
            weights.take(t)
        })?;
        Self::assemble(dev, config, uploaded, weight_dtype)
    }

    fn assemble(
        dev: Arc<dyn Device>,
        config: LlamaConfig,
        weights: Weights,
        weight_dtype: DType,
    ) -> Result<Self> {
        let mut inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)?;
        if let Some(factors) = &config.rope_freq_factors {
            for (f, s) in inv_freq.iter_mut().zip(factors) {
                *f /= s;
            }
        }
        Ok(LlamaModel {
            dev,
            config,
            weights,
            weight_dtype,
            inv_freq,
            rope_style: RopeStyle::Interleaved,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The attention shape; build the [`CacheManager`](arkvale_core::CacheManager) with it.
    pub fn shape(&self) -> ModelShape {
        self.config.shape()
    }

    /// Vocabulary size (columns of the logits).
    pub fn vocab(&self) -> usize {
        self.config.vocab
    }

    /// The storage type of the weight matrices (with [`WeightStorage::Native`], that of the
    /// first layer's query projection: a file may mix types).
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    /// The RoPE pairing in use ([`LlamaConfig::gguf_rope_style`] after [`LlamaModel::load`],
    /// [`RopeStyle::Interleaved`] after [`LlamaModel::from_host_weights`], unless changed).
    pub fn rope_style(&self) -> RopeStyle {
        self.rope_style
    }

    /// Changes the RoPE pairing (for Q/K weights in Hugging Face order, use
    /// [`RopeStyle::Neox`]).
    pub fn set_rope_style(&mut self, style: RopeStyle) {
        self.rope_style = style;
    }

    /// The RoPE scaling in use.
    pub fn rope_scaling(&self) -> RopeScaling {
        self.config.rope_scaling
    }
}
