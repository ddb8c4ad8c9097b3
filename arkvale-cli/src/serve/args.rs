//! Options of `arkvale serve`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::common_args::{Backend, CacheArgs, WeightDtype};

/// Options of `arkvale serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// GGUF model file or Hugging Face model directory [default: $ARKVALE_MODEL, then
    /// SmolLM2-135M-Instruct.Q4_1.gguf in $XDG_DATA_HOME/arkvale/models or
    /// ~/.local/share/arkvale/models, then in ./models; `cargo xtask fetch-model --user`].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Another name a request's "model" may use (repeatable). Accepted are: the model file's
    /// name without its extension (for the default model "SmolLM2-135M-Instruct.Q4_1"; the
    /// directory's name for a Hugging Face directory), the file name itself, and every
    /// --served-model-name; GET /v1/models lists them. A request without "model" is served;
    /// any other name gets 404 with code "model_not_found", as OpenAI answers.
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Vec<String>,
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
    /// Storage type of the weight matrices (as `arkvale generate`: `native` by default, the
    /// file's quantized types where the backend has kernels for them; `f32` is exact).
    #[arg(long, value_enum, default_value_t = WeightDtype::Native)]
    pub weights: WeightDtype,
}

/// The names a request's `model` may use for the model at `path`: its file name without the
/// extension (the one `/v1/models` lists first; a directory's whole name when `dir`), the
/// file name, then `aliases`; no repeats.
pub fn served_names(path: &Path, dir: bool, aliases: &[String]) -> Vec<String> {
    let stem = if dir {
        path.file_name()
    } else {
        path.file_stem()
    };
    let stem = stem.map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let mut names = vec![stem];
    let file = path.file_name().map(|s| s.to_string_lossy().into_owned());
    for name in file.into_iter().chain(aliases.iter().cloned()) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names_are_stem_file_name_and_aliases() {
        let names = served_names(
            Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            false,
            &[
                "smol".into(),
                "SmolLM2-135M-Instruct.Q4_1".into(),
                String::new(),
            ],
        );
        assert_eq!(
            names,
            [
                "SmolLM2-135M-Instruct.Q4_1",
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "smol"
            ]
        );
        assert_eq!(
            served_names(Path::new("/hf/SmolLM2-1.7B"), true, &[]),
            ["SmolLM2-1.7B"]
        );
    }
}
