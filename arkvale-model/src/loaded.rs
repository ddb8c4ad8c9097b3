//! A model ready to run, from either kind of model path: a GGUF file or a Hugging Face
//! directory (`config.json`, `tokenizer.json`, `*.safetensors`). It bundles what every
//! front end needs: the weights on a device, the tokenizer and the chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arkvale_core::Device;

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::gguf::{GgufError, GgufFile};
use crate::hf::{self, HfError};
use crate::llama::{LlamaError, LlamaModel, WeightStorage};
use crate::text::{TextError, TextTokenizer};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Anything that can go wrong opening a model or building its prompts. Every message names
/// the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Nothing at the path.
    #[error(
        "model not found: {0} (expected a GGUF file or a Hugging Face model directory with \
         config.json)"
    )]
    NotFound(PathBuf),
    /// The GGUF file cannot be read.
    #[error("cannot read model file {path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// Why.
        source: GgufError,
    },
    /// The GGUF file's tokenizer cannot be built.
    #[error("cannot build the tokenizer of {path}: {source}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// Why.
        source: TokenizerError,
    },
    /// The chat template cannot be read or rendered.
    #[error("chat template of {path}: {source}")]
    Chat {
        /// The model path.
        path: PathBuf,
        /// Why.
        source: ChatError,
    },
    /// The model has no chat template.
    #[error(
        "{0} has no chat template (GGUF tokenizer.chat_template / tokenizer_config.json \
         chat_template); write the prompt format yourself"
    )]
    NoChatTemplate(PathBuf),
    /// The weights cannot be loaded.
    #[error("cannot load the model in {path}: {source}")]
    Llama {
        /// The model path.
        path: PathBuf,
        /// Why.
        source: LlamaError,
    },
    /// The Hugging Face directory is broken (the message names the file).
    #[error(transparent)]
    Hf(#[from] HfError),
    /// Tokenizing a prompt failed.
    #[error("cannot tokenize the prompt: {0}")]
    Text(#[from] TextError),
}

/// Where a [`LoadedModel`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face model directory.
    HfDir,
}

/// A model on a device with its tokenizer and chat template.
#[derive(Debug)]
pub struct LoadedModel {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// The chat template, if the model has one.
    pub template: Option<ChatTemplate>,
    /// The weights.
    pub model: LlamaModel,
    /// The path it was loaded from.
    pub path: PathBuf,
    /// The kind of path.
    pub format: ModelFormat,
}

impl LoadedModel {
    /// Loads `path` onto `dev`: a directory with `config.json` through [`hf::load`], anything
    /// else as a GGUF file ([`LlamaModel::load`]); weight matrices stored as `storage` says
    /// (an [`arkvale_core::DType`] converts to [`WeightStorage::Convert`]; Hugging Face directories are read
    /// as f32, so [`WeightStorage::Native`] keeps them f32).
    pub fn open(
        path: &Path,
        dev: Arc<dyn Device>,
        storage: impl Into<WeightStorage>,
    ) -> Result<Self, LoadError> {
        let storage = storage.into();
        let path_buf = path.to_path_buf();
        if hf::is_hf_dir(path) {
            let (dir, model) = hf::load(path, dev, storage.host_dtype())?;
            let template = match dir.tokenizer().chat_template() {
                Some(src) => Some(ChatTemplate::new(src).map_err(|source| LoadError::Chat {
                    path: path_buf.clone(),
                    source,
                })?),
                None => None,
            };
            let tokenizer = TextTokenizer::Hf(dir.tokenizer().clone());
            return Ok(LoadedModel {
                tokenizer,
                template,
                model,
                path: path_buf,
                format: ModelFormat::HfDir,
            });
        }
        if !path.is_file() {
            return Err(LoadError::NotFound(path_buf));
        }
        let with_path = |source| LoadError::Gguf {
            path: path_buf.clone(),
            source,
        };
        let file = GgufFile::open(path).map_err(with_path)?;
        let tokenizer = Tokenizer::from_gguf(&file).map_err(|source| LoadError::Tokenizer {
            path: path_buf.clone(),
            source,
        })?;
        let template = ChatTemplate::from_gguf(&file).map_err(|source| LoadError::Chat {
            path: path_buf.clone(),
            source,
        })?;
        let model = LlamaModel::load(dev, &file, storage).map_err(|source| LoadError::Llama {
            path: path_buf.clone(),
            source,
        })?;
        Ok(LoadedModel {
            tokenizer: TextTokenizer::Gguf(tokenizer),
            template,
            model,
            path: path_buf,
            format: ModelFormat::Gguf,
        })
    }

    /// The chat template, or [`LoadError::NoChatTemplate`].
    pub fn chat_template(&self) -> Result<&ChatTemplate, LoadError> {
        self.template
            .as_ref()
            .ok_or_else(|| LoadError::NoChatTemplate(self.path.clone()))
    }

    /// Renders `messages` with the chat template (ending with the assistant header) and
    /// tokenizes the text, special tokens parsed; the template adds BOS itself when it wants
    /// one.
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<u32>, LoadError> {
        let token_text = |id: Option<u32>| {
            id.and_then(|id| self.tokenizer.token_text(id))
                .unwrap_or_default()
        };
        let bos = token_text(self.tokenizer.bos_id());
        let eos = token_text(self.tokenizer.eos_id());
        let text = self
            .chat_template()?
            .render(messages, true, &bos, &eos)
            .map_err(|source| LoadError::Chat {
                path: self.path.clone(),
                source,
            })?;
        Ok(self.tokenizer.encode(&text, true, true)?)
    }

    /// Tokens of a plain prompt: the file's BOS/EOS rules, special-token text kept as text.
    pub fn prompt_tokens(&self, text: &str) -> Result<Vec<u32>, LoadError> {
        Ok(self.tokenizer.encode(text, true, false)?)
    }
}
