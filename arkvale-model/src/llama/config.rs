//! The hyper-parameters of a Llama-family decoder, read from GGUF metadata.

use arkvale_core::{ModelShape, RopeScaling, RopeStyle};

use super::{LlamaError, Result};
use crate::gguf::{GgufFile, Metadata, MetadataValue};

/// The GGUF architectures this module runs (`general.architecture`): `llama` (Llama 2/3,
/// Mistral, SmolLM2, ...) and `qwen2` (the same decoder with q/k/v projection biases and
/// NeoX-style RoPE).
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

/// Sizes and constants of a Llama-family decoder (Llama 2/3, Mistral, SmolLM2 and other files
/// with GGUF architecture `llama`; Qwen2).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The GGUF architecture name, the prefix of its metadata keys (`llama`).
    pub arch: String,
    /// Decoder layers (`{arch}.block_count`).
    pub layers: usize,
    /// Hidden size (`{arch}.embedding_length`).
    pub d_model: usize,
    /// Inner size of the gated feed-forward network (`{arch}.feed_forward_length`).
    pub d_ff: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub q_heads: usize,
    /// Key/value heads (`{arch}.attention.head_count_kv`, default: `q_heads`).
    pub kv_heads: usize,
    /// Elements per head (`d_model / q_heads`).
    pub head_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
    /// Longest context the model was trained for (`{arch}.context_length`).
    pub context_length: usize,
    /// RoPE base (`{arch}.rope.freq_base`, default 10000).
    pub rope_theta: f32,
    /// RoPE frequency scaling (`{arch}.rope.scaling.type` / `.factor`, or the older
    /// `{arch}.rope.scale_linear`).
    pub rope_scaling: RopeScaling,
    /// Per-frequency divisors from the optional `rope_freqs.weight` tensor (how llama.cpp's
    /// GGUF files carry Llama 3.1 RoPE scaling); `head_dim / 2` values when present.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Whether the output projection is the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
    /// Whether the q, k and v projections add a bias (Qwen2: GGUF tensors
    /// `blk.N.attn_{q,k,v}.bias`, Hugging Face `self_attn.{q,k,v}_proj.bias`).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// Reads the configuration of `file`'s model from its metadata and tensor shapes.
    ///
    /// Errors ([`LlamaError::Config`] unless a GGUF read fails): an architecture other than
    /// [`SUPPORTED_ARCHITECTURES`], a missing or mistyped required key, zero sizes, heads that
    /// do not divide the hidden size or each other, a RoPE dimension other than the head
    /// dimension (partial rotary embeddings are not supported), an unsupported RoPE scaling
    /// type, or a vocabulary size that disagrees with the embedding tensor.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let arch = md.get_str("general.architecture")?.to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(LlamaError::Config(format!(
                "unsupported architecture '{arch}' (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| -> Result<usize> { to_usize(&key(k), md.get_uint(&key(k))?) };
        let layers = uint("block_count")?;
        let d_model = uint("embedding_length")?;
        let d_ff = uint("feed_forward_length")?;
        let q_heads = uint("attention.head_count")?;
        let kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(_) => uint("attention.head_count_kv")?,
            None => q_heads,
        };
        let context_length = uint("context_length")?;
        let rope_theta = match md.get(&key("rope.freq_base")) {
            Some(_) => float(md, &key("rope.freq_base"))?,
            None => 10000.0,
        };
        let rms_eps = float(md, &key("attention.layer_norm_rms_epsilon"))?;

        for (name, v) in [
            ("block_count", layers),
            ("embedding_length", d_model),
            ("feed_forward_length", d_ff),
            ("attention.head_count", q_heads),
            ("attention.head_count_kv", kv_heads),
            ("context_length", context_length),
        ] {
            if v == 0 {
                return Err(LlamaError::Config(format!("{arch}.{name} must be > 0")));
            }
        }
        if d_model % q_heads != 0 {
            return Err(LlamaError::Config(format!(
                "{arch}.embedding_length ({d_model}) is not a multiple of \
                 {arch}.attention.head_count ({q_heads})"
            )));
        }
        if q_heads % kv_heads != 0 {
            return Err(LlamaError::Config(format!(
                "{arch}.attention.head_count ({q_heads}) is not a multiple of \
                 {arch}.attention.head_count_kv ({kv_heads})"
            )));
        }
        let head_dim = d_model / q_heads;
        for k in ["attention.key_length", "attention.value_length"] {
            if md.get(&key(k)).is_some() && uint(k)? != head_dim {
                return Err(LlamaError::Config(format!(
                    "{arch}.{k} ({}) differs from embedding_length / head_count ({head_dim}); \
                     such models are not supported",
                    uint(k)?
                )));
            }
        }
        if md.get(&key("rope.dimension_count")).is_some() {
            let rope_dim = uint("rope.dimension_count")?;
            if rope_dim != head_dim {
                return Err(LlamaError::Config(format!(
                    "{arch}.rope.dimension_count ({rope_dim}) differs from the head dimension \
                     ({head_dim}); partial rotary embeddings are not supported"
                )));
            }
        }
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(LlamaError::Config(format!(
                "{arch}.attention.layer_norm_rms_epsilon must be finite and >= 0, got {rms_eps}"
            )));
        }
        let rope_scaling = rope_scaling(md, &arch)?;

        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| LlamaError::Config("missing tensor token_embd.weight".into()))?;
        if embd.dims.len() != 2 || embd.dims[0] != d_model as u64 {
            return Err(LlamaError::Config(format!(
                "token_embd.weight has dims {:?}, expected [{d_model}, vocab]",
                embd.dims
            )));
        }
        let vocab = to_usize("token_embd.weight rows", embd.dims[1])?;
        if md.get(&key("vocab_size")).is_some() && uint("vocab_size")? != vocab {
            return Err(LlamaError::Config(format!(
                "{arch}.vocab_size ({}) differs from the rows of token_embd.weight ({vocab})",
                uint("vocab_size")?
            )));
        }
        let rope_freq_factors = match file.tensor("rope_freqs.weight") {
            Some(t) => {
                if t.n_elements != (head_dim / 2) as u64 {
                    return Err(LlamaError::Config(format!(
                        "rope_freqs.weight has {} values, expected head_dim / 2 = {}",
                        t.n_elements,
                        head_dim / 2
                    )));
                }
                let f = file.tensor_f32("rope_freqs.weight")?;
                if f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(LlamaError::Config(
                        "rope_freqs.weight must hold finite values > 0".into(),
                    ));
                }
                Some(f)
            }
            None => None,
        };
        let tied_embeddings = file.tensor("output.weight").is_none();
        let qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();

        Ok(LlamaConfig {
            arch,
            layers,
            d_model,
            d_ff,
            q_heads,
            kv_heads,
            head_dim,
            vocab,
            context_length,
            rope_theta,
            rope_scaling,
            rope_freq_factors,
            rms_eps,
            tied_embeddings,
            qkv_bias,
        })
    }

    /// The RoPE pairing llama.cpp's GGUF converter stores this architecture's Q/K rows for:
    /// [`RopeStyle::Interleaved`] for `llama` (its converter permutes the rows),
    /// [`RopeStyle::Neox`] for `qwen2` (rows kept in Hugging Face order).
    pub fn gguf_rope_style(&self) -> RopeStyle {
        if self.arch == "qwen2" {
            RopeStyle::Neox
        } else {
            RopeStyle::Interleaved
        }
    }

    /// The attention shape the KV cache must be built with:
    /// `CacheManager::new(dev, config.shape(), ...)`.
    pub fn shape(&self) -> ModelShape {
        ModelShape {
            layers: self.layers,
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Checks the sizes for internal consistency (what [`LlamaConfig::from_gguf`] checks of a
    /// file, for configurations built by hand).
    pub fn validate(&self) -> Result<()> {
        let positive = [
            self.layers,
            self.d_model,
            self.d_ff,
            self.q_heads,
            self.kv_heads,
            self.head_dim,
            self.vocab,
            self.context_length,
        ];
        if positive.contains(&0) {
            return Err(LlamaError::Config(format!(
                "every size must be > 0, got {self:?}"
            )));
        }
        if self.q_heads * self.head_dim != self.d_model || self.q_heads % self.kv_heads != 0 {
            return Err(LlamaError::Config(format!(
                "heads do not fit: {} q heads x {} != d_model {} or not a multiple of {} kv heads",
                self.q_heads, self.head_dim, self.d_model, self.kv_heads
            )));
        }
        let factors = self.rope_freq_factors.as_ref().map_or(0, Vec::len);
        if self.rope_freq_factors.is_some() && factors != self.head_dim / 2 {
            return Err(LlamaError::Config(format!(
                "{factors} RoPE frequency factors given, expected head_dim / 2 = {}",
                self.head_dim / 2
            )));
        }
        Ok(())
    }
}

/// A metadata count as `usize` (it may not fit on 32-bit targets).
fn to_usize(what: &str, v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| LlamaError::Config(format!("{what} ({v}) is too large")))
}

/// A float metadata value stored as f32 or f64.
fn float(md: &Metadata, key: &str) -> Result<f32> {
    match md.require(key)? {
        MetadataValue::F32(x) => Ok(*x),
        MetadataValue::F64(x) => Ok(*x as f32),
        v => Err(LlamaError::Config(format!(
            "metadata key {key:?} has type {}, expected a float",
            v.type_name()
        ))),
    }
}

/// The RoPE scaling the metadata asks for.
fn rope_scaling(md: &Metadata, arch: &str) -> Result<RopeScaling> {
    let ty_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let old_key = format!("{arch}.rope.scale_linear");
    let ty = match md.get(&ty_key) {
        Some(_) => Some(md.get_str(&ty_key)?),
        None => None,
    };
    match ty {
        None | Some("none") => {
            if md.get(&old_key).is_some() {
                let factor = float(md, &old_key)?;
                if factor != 1.0 {
                    return linear(factor, &old_key);
                }
            }
            Ok(RopeScaling::None)
        }
        Some("linear") => linear(float(md, &factor_key)?, &factor_key),
        Some(other) => Err(LlamaError::Config(format!(
            "unsupported RoPE scaling type '{other}' in {ty_key} (supported: none, linear; \
             Llama 3.1 scaling comes as the rope_freqs.weight tensor)"
        ))),
    }
}

fn linear(factor: f32, key: &str) -> Result<RopeScaling> {
    if !(factor.is_finite() && factor > 0.0) {
        return Err(LlamaError::Config(format!(
            "{key} must be a finite number > 0, got {factor}"
        )));
    }
    Ok(RopeScaling::Linear { factor })
}
