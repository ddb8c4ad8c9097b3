//! Tiny random Hugging Face model directories (no network, no fixture files): a word-level
//! `tokenizer.json`, a `config.json` and random safetensors weights (F32 or BF16, one file or
//! two shards). Shared by the model crate's `hf_dir` tests and arkvale-cli's `cli_hf_dir`
//! test (included there by path).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arkvale_core::Device;
use arkvale_cpu::CpuDevice;
use safetensors::tensor::{Dtype, TensorView};

/// The seeded generator of the random weights (re-exported for the tests that include this).
pub use arkvale_testkit::XorShift;

/// Layers of the model.
pub const LAYERS: usize = 2;
/// Model width.
pub const D: usize = 64;
/// Query heads.
pub const HEADS: usize = 4;
/// KV heads.
pub const KV_HEADS: usize = 2;
/// Head dimension.
pub const HEAD_DIM: usize = D / HEADS;
/// Feed-forward width.
pub const FF: usize = 96;
/// Vocabulary size.
pub const VOCAB: usize = 64;

/// `config.json` of a model of architecture `model_type` (`llama`, `mistral`, `qwen2`).
pub fn config_json(model_type: &str, tied: bool) -> String {
    format!(
        r#"{{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "{model_type}",
  "hidden_size": {D},
  "intermediate_size": {FF},
  "num_hidden_layers": {LAYERS},
  "num_attention_heads": {HEADS},
  "num_key_value_heads": {KV_HEADS},
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "max_position_embeddings": 256,
  "vocab_size": {VOCAB},
  "tie_word_embeddings": {tied},
  "rope_scaling": null,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "torch_dtype": "float32"
}}"#
    )
}

/// A word-level tokenizer: `<s>`, `</s>`, `<unk>`, then `w3` .. `w63`.
pub fn tokenizer_json() -> String {
    let special = |id: usize, s: &str| {
        format!(
            r#"{{"id":{id},"content":"{s}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
        )
    };
    let mut vocab = vec![
        "\"<s>\":0".to_string(),
        "\"</s>\":1".into(),
        "\"<unk>\":2".into(),
    ];
    vocab.extend((3..VOCAB).map(|i| format!("\"w{i}\":{i}")));
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{},{}],
"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
        special(0, "<s>"),
        special(1, "</s>"),
        vocab.join(",")
    )
}

/// `tokenizer_config.json`: BOS and EOS names, BOS added, a chat template that concatenates.
pub const TOKENIZER_CONFIG: &str = r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
"add_bos_token": true, "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}"#;

/// Random weights by Hugging Face name, shape and values (HF Q/K row order).
pub fn hf_tensors(tied: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut r = XorShift(0x5eed);
    let kv = KV_HEADS * HEAD_DIM;
    let s = |k: usize| 1.5 / (k as f32).sqrt();
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![VOCAB, D],
        r.vec(VOCAB * D, 1.0),
    )];
    for l in 0..LAYERS {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        t.push((p("input_layernorm.weight"), vec![D], r.norm(D)));
        t.push((p("self_attn.q_proj.weight"), vec![D, D], r.vec(D * D, s(D))));
        t.push((
            p("self_attn.k_proj.weight"),
            vec![kv, D],
            r.vec(kv * D, s(D)),
        ));
        t.push((
            p("self_attn.v_proj.weight"),
            vec![kv, D],
            r.vec(kv * D, s(D)),
        ));
        t.push((p("self_attn.o_proj.weight"), vec![D, D], r.vec(D * D, s(D))));
        t.push((p("post_attention_layernorm.weight"), vec![D], r.norm(D)));
        t.push((p("mlp.gate_proj.weight"), vec![FF, D], r.vec(FF * D, s(D))));
        t.push((p("mlp.up_proj.weight"), vec![FF, D], r.vec(FF * D, s(D))));
        t.push((p("mlp.down_proj.weight"), vec![D, FF], r.vec(D * FF, s(FF))));
    }
    t.push(("model.norm.weight".into(), vec![D], r.norm(D)));
    if !tied {
        t.push((
            "lm_head.weight".into(),
            vec![VOCAB, D],
            r.vec(VOCAB * D, 1.0),
        ));
    }
    t
}

/// The little-endian bytes of `v` as F32 or BF16.
pub fn bytes(v: &[f32], bf16: bool) -> Vec<u8> {
    if bf16 {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    } else {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("arkvale-hf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `tensors` (name, shape, values) as one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], bf16: bool) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), bytes(v, bf16)))
        .collect();
    let dtype = if bf16 { Dtype::BF16 } else { Dtype::F32 };
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Writes a model directory; `sharded` splits the tensors over two files with an index.
pub fn write_dir(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    sharded: bool,
    bf16: bool,
    tied: bool,
) {
    std::fs::write(dir.join("config.json"), config_json("llama", tied)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), TOKENIZER_CONFIG).unwrap();
    if !sharded {
        write_safetensors(&dir.join("model.safetensors"), tensors, bf16);
        return;
    }
    let half = tensors.len() / 2;
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(&dir.join(names[0]), &tensors[..half], bf16);
    write_safetensors(&dir.join(names[1]), &tensors[half..], bf16);
    let map: Vec<String> = tensors
        .iter()
        .enumerate()
        .map(|(i, (n, _, _))| format!("\"{n}\": \"{}\"", names[usize::from(i >= half)]))
        .collect();
    let index = format!(
        "{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{}}}}}",
        map.join(", ")
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

/// The CPU backend on two threads.
pub fn device() -> Arc<dyn Device> {
    Arc::new(CpuDevice::new(Some(2)).unwrap())
}
