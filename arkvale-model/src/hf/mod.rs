//! Hugging Face model directories: `config.json`, `tokenizer.json`, `tokenizer_config.json`
//! and the weights as one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.
//!
//! [`HfModelDir::open`] reads the configuration, memory-maps the weight files and builds the
//! tokenizer; [`HfModelDir::load_model`] widens every weight to f32 (F32, F16 and BF16 files)
//! and builds a [`LlamaModel`] with [`RopeStyle::Neox`]: Hugging Face checkpoints keep Q/K
//! rows in their original order (rotating the two halves of each head), unlike llama.cpp's
//! GGUF files, whose converter permutes them for [`RopeStyle::Interleaved`].
//!
//! Architectures: `model_type` `llama` and `mistral`. Qwen2 is refused with a clear error
//! until the model supports q/k/v projection biases.

mod config;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arkvale_core::{DType, Device, RopeStyle};
use serde_json::Value;

pub use config::{SUPPORTED_MODEL_TYPES, parse_config};
pub use tokenizer::{HfDecodeStream, HfTokenizer};
pub use weights::{INDEX_FILE, SINGLE_FILE, SafetensorsWeights};

use crate::llama::{LlamaConfig, LlamaError, LlamaModel};

/// Anything that can go wrong loading a Hugging Face model directory. Every message names
/// the file (and tensor) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HfError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` is missing, malformed, or describes an unsupported model.
    #[error("{0}")]
    Config(String),
    /// A weight file or tensor is missing, malformed or of the wrong shape or dtype.
    #[error("{0}")]
    Weights(String),
    /// `tokenizer.json` / `tokenizer_config.json` is missing or malformed, or encoding or
    /// decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Building the model from the weights failed.
    #[error(transparent)]
    Llama(#[from] LlamaError),
}

/// Result type of this module.
pub type Result<T, E = HfError> = std::result::Result<T, E>;

/// Whether `path` looks like a Hugging Face model directory (a directory with `config.json`).
pub fn is_hf_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// An opened Hugging Face model directory: its configuration, tokenizer and memory-mapped
/// weights.
#[derive(Debug)]
pub struct HfModelDir {
    dir: PathBuf,
    config: LlamaConfig,
    tokenizer: HfTokenizer,
    weights: SafetensorsWeights,
}

impl HfModelDir {
    /// Opens `dir`: parses `config.json` (see [`parse_config`]), memory-maps the weight files
    /// (checking every shard the index lists exists) and loads the tokenizer (see
    /// [`HfTokenizer::from_dir`], with `config.json`'s `bos_token_id` / `eos_token_id` as
    /// fallbacks).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(HfError::Config(format!(
                "{}: not a directory (expected a Hugging Face model directory)",
                dir.display()
            )));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(HfError::Config(format!("missing {}", cfg_path.display())));
        }
        let text = weights::read_text(&cfg_path)?;
        let config = parse_config(&text, &cfg_path.display().to_string())?;
        let raw: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        // `eos_token_id` may be a list (Llama 3.1); the first entry is the EOS id.
        let id = |k: &str| {
            let v = raw.get(k)?;
            let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            u32::try_from(v.as_u64()?).ok()
        };
        let weights = SafetensorsWeights::open(&dir)?;
        let tokenizer = HfTokenizer::from_dir(&dir, id("bos_token_id"), id("eos_token_id"))?;
        Ok(HfModelDir {
            dir,
            config,
            tokenizer,
            weights,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's hyper-parameters (`arch` is `config.json`'s `model_type`).
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &HfTokenizer {
        &self.tokenizer
    }

    /// The memory-mapped weight files.
    pub fn weights(&self) -> &SafetensorsWeights {
        &self.weights
    }

    /// Reads every weight (checking names, shapes and dtypes), uploads them to `dev` as
    /// `weight_dtype` (`F32`, `F16` or `BF16`) and returns the model with
    /// [`RopeStyle::Neox`].
    pub fn load_model(&self, dev: Arc<dyn Device>, weight_dtype: DType) -> Result<LlamaModel> {
        let host = self.weights.llama_host_weights(&self.config)?;
        let mut model =
            LlamaModel::from_host_weights(dev, self.config.clone(), host, weight_dtype)?;
        model.set_rope_style(RopeStyle::Neox);
        Ok(model)
    }
}

/// Opens `dir` and loads its model onto `dev`: [`HfModelDir::open`] then
/// [`HfModelDir::load_model`]. The tokenizer is in the returned [`HfModelDir`].
pub fn load(
    dir: impl AsRef<Path>,
    dev: Arc<dyn Device>,
    weight_dtype: DType,
) -> Result<(HfModelDir, LlamaModel)> {
    let hf = HfModelDir::open(dir)?;
    let model = hf.load_model(dev, weight_dtype)?;
    Ok((hf, model))
}
