//! `config.json` of a Hugging Face model directory → [`LlamaConfig`].

use arkvale_core::RopeScaling;
use serde_json::Value;

use super::{HfError, Result};
use crate::llama::LlamaConfig;

/// The `model_type` values of `config.json` this module reads (`qwen2`: with q/k/v
/// projection biases).
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// Reads a [`LlamaConfig`] from the text of a `config.json` (`what` names the file in errors).
///
/// Accepted: `model_type` in [`SUPPORTED_MODEL_TYPES`]; `rope_scaling` absent, `null`,
/// `linear` or `llama3`. `tie_word_embeddings` defaults to `false` (the Transformers default);
/// `num_key_value_heads` to `num_attention_heads`; `rope_theta` to 10000; `head_dim`, when
/// present, must equal `hidden_size / num_attention_heads`.
pub fn parse_config(text: &str, what: &str) -> Result<LlamaConfig> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| HfError::Config(format!("{what}: invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| HfError::Config(format!("{what}: expected a JSON object")))?;
    let err = |msg: String| HfError::Config(format!("{what}: {msg}"));
    let model_type = obj
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("missing string key \"model_type\"".into()))?;
    if !SUPPORTED_MODEL_TYPES.contains(&model_type) {
        return Err(err(format!(
            "unsupported model_type '{model_type}' (supported: {})",
            SUPPORTED_MODEL_TYPES.join(", ")
        )));
    }
    let uint = |k: &str| -> Result<Option<usize>> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| err(format!("\"{k}\" must be a non-negative integer, got {x}"))),
        }
    };
    let req = |k: &str| -> Result<usize> {
        uint(k)?.ok_or_else(|| err(format!("missing integer key \"{k}\"")))
    };
    let float = |k: &str| -> Result<Option<f32>> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| err(format!("\"{k}\" must be a number, got {x}"))),
        }
    };
    let d_model = req("hidden_size")?;
    let d_ff = req("intermediate_size")?;
    let layers = req("num_hidden_layers")?;
    let q_heads = req("num_attention_heads")?;
    let kv_heads = uint("num_key_value_heads")?.unwrap_or(q_heads);
    let vocab = req("vocab_size")?;
    let context_length = req("max_position_embeddings")?;
    let rms_eps = float("rms_norm_eps")?.unwrap_or(1e-6);
    let rope_theta = float("rope_theta")?.unwrap_or(10000.0);
    let tied_embeddings = match obj.get("tie_word_embeddings") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(x) => {
            return Err(err(format!(
                "\"tie_word_embeddings\" must be a bool, got {x}"
            )));
        }
    };
    if q_heads == 0 || kv_heads == 0 {
        return Err(err(
            "num_attention_heads and num_key_value_heads must be > 0".into(),
        ));
    }
    if d_model % q_heads != 0 {
        return Err(err(format!(
            "hidden_size ({d_model}) is not a multiple of num_attention_heads ({q_heads})"
        )));
    }
    let head_dim = d_model / q_heads;
    if let Some(hd) = uint("head_dim")?
        && hd != head_dim
    {
        return Err(err(format!(
            "head_dim ({hd}) differs from hidden_size / num_attention_heads ({head_dim}); \
             such models are not supported"
        )));
    }
    if !(rms_eps.is_finite() && rms_eps >= 0.0) {
        return Err(err(format!(
            "rms_norm_eps must be finite and >= 0, got {rms_eps}"
        )));
    }
    if !(rope_theta.is_finite() && rope_theta > 0.0) {
        return Err(err(format!(
            "rope_theta must be finite and > 0, got {rope_theta}"
        )));
    }
    let rope_scaling = rope_scaling(obj.get("rope_scaling"), &err)?;
    let config = LlamaConfig {
        arch: model_type.to_string(),
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
        rope_freq_factors: None,
        rms_eps,
        tied_embeddings,
        qkv_bias: model_type == "qwen2",
    };
    config
        .validate()
        .map_err(|e| err(format!("inconsistent sizes: {e}")))?;
    Ok(config)
}

/// The `rope_scaling` object: `{"rope_type"|"type": "linear"|"llama3", "factor": ..}`.
fn rope_scaling(v: Option<&Value>, err: &dyn Fn(String) -> HfError) -> Result<RopeScaling> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(Value::Object(o)) => o,
        Some(x) => return Err(err(format!("\"rope_scaling\" must be an object, got {x}"))),
    };
    let ty = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| err("rope_scaling lacks a string \"rope_type\" (or \"type\")".into()))?;
    let num = |k: &str| -> Result<f32> {
        let x = obj
            .get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| err(format!("rope_scaling ({ty}) lacks the number \"{k}\"")))?;
        let x = x as f32;
        if !(x.is_finite() && x > 0.0) {
            return Err(err(format!(
                "rope_scaling.{k} must be finite and > 0, got {x}"
            )));
        }
        Ok(x)
    };
    match ty {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let orig = num("original_max_position_embeddings")?;
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: orig as u32,
            })
        }
        other => Err(err(format!(
            "unsupported rope_scaling type '{other}' (supported: linear, llama3)"
        ))),
    }
}
