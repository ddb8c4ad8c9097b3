//! What can go wrong in an evaluation.

use arkvale_model::llama::LlamaError;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A bad option or input (context longer than the model's, a budget too small, ...).
    #[error("{0}")]
    Input(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] LlamaError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] arkvale_core::Error),
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Shorthand for results carrying [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
