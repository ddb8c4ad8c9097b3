//! `arkvale_model::hf` on tiny random Hugging Face model directories written here
//! ([`tiny_hf`]: no network, no fixture files): the HF Q/K order with NeoX RoPE must give the same logits as
//! the same weights permuted into llama.cpp's layout with interleaved RoPE; F32 and BF16
//! files, one file or two shards; and clear errors for broken directories.

#[path = "common/tiny_hf.rs"]
mod tiny_hf;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arkvale_core::{
    CacheConfig, CacheManager, DType, Device, KvDtype, RopeScaling, policy_by_name,
};
use arkvale_model::hf::{self, HfError, HfModelDir};
use arkvale_model::llama::{HostLayer, LlamaConfig, LlamaHostWeights, LlamaModel};
use safetensors::tensor::{Dtype, TensorView};
use tiny_hf::*;

/// What the file holds, read back as f32.
fn stored(v: &[f32], bf16: bool) -> Vec<f32> {
    if bf16 {
        v.iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect()
    } else {
        v.to_vec()
    }
}

/// Q/K rows of one projection (`heads` heads) from HF order into llama.cpp's GGUF order:
/// within each head, row `j * half + i` (HF: first half, then second half) moves to
/// `2 * i + j` (adjacent pairs).
fn permute_for_interleaved(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    if w.is_empty() {
        return Vec::new(); // an absent bias
    }
    let half = HEAD_DIM / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * HEAD_DIM + j * half + i) * cols;
                let dst = (h * HEAD_DIM + 2 * i + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The same weights as host weights in GGUF layout (Q/K permuted), as the file stores them.
fn reference_model(
    dev: Arc<dyn Device>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    bf16: bool,
    tied: bool,
) -> LlamaModel {
    let m: HashMap<&str, Vec<f32>> = tensors
        .iter()
        .map(|(n, _, v)| (n.as_str(), stored(v, bf16)))
        .collect();
    let get = |n: String| m[n.as_str()].clone();
    let qkv_bias = m.contains_key("model.layers.0.self_attn.q_proj.bias");
    let bias = |n: String| {
        if qkv_bias { get(n) } else { Vec::new() }
    };
    let layers = (0..LAYERS)
        .map(|l| {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            HostLayer {
                attn_norm: get(p("input_layernorm.weight")),
                wq: permute_for_interleaved(&get(p("self_attn.q_proj.weight")), HEADS, D),
                wk: permute_for_interleaved(&get(p("self_attn.k_proj.weight")), KV_HEADS, D),
                wv: get(p("self_attn.v_proj.weight")),
                bq: permute_for_interleaved(&bias(p("self_attn.q_proj.bias")), HEADS, 1),
                bk: permute_for_interleaved(&bias(p("self_attn.k_proj.bias")), KV_HEADS, 1),
                bv: bias(p("self_attn.v_proj.bias")),
                wo: get(p("self_attn.o_proj.weight")),
                ffn_norm: get(p("post_attention_layernorm.weight")),
                w_gate: get(p("mlp.gate_proj.weight")),
                w_up: get(p("mlp.up_proj.weight")),
                w_down: get(p("mlp.down_proj.weight")),
            }
        })
        .collect();
    let weights = LlamaHostWeights {
        embedding: get("model.embed_tokens.weight".into()),
        layers,
        output_norm: get("model.norm.weight".into()),
        output: (!tied).then(|| get("lm_head.weight".into())),
    };
    let config = LlamaConfig {
        arch: "llama".into(),
        layers: LAYERS,
        d_model: D,
        d_ff: FF,
        q_heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        vocab: VOCAB,
        context_length: 256,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_freq_factors: None,
        rms_eps: 1e-5,
        tied_embeddings: tied,
        qkv_bias,
    };
    LlamaModel::from_host_weights(dev, config, weights, DType::F32).unwrap()
}

/// Logits of every step: a prefill of `prompt`, then `steps` decodes of fixed tokens.
fn run(model: &LlamaModel, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let config = CacheConfig {
        page_size: 8,
        budget_tokens: 256,
        kv_dtype: KvDtype::F32,
        device_bytes: 8 << 20,
        host_bytes: 8 << 20,
        ..Default::default()
    };
    let policy = policy_by_name("full", &config).unwrap();
    let mut cache =
        CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap();
    let seq = cache.add_sequence();
    let mut out = vec![model.prefill(&mut cache, seq, prompt).unwrap()];
    for s in 0..steps {
        let tok = (7 + 5 * s as u32) % VOCAB as u32;
        out.push(model.decode(&mut cache, &[seq], &[tok]).unwrap());
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

const PROMPT: [u32; 11] = [0, 5, 17, 33, 2, 63, 40, 8, 8, 21, 50];

fn check_same_logits(name: &str, sharded: bool, bf16: bool, tied: bool) {
    let dir = TempDir::new(name);
    let tensors = hf_tensors(tied);
    write_dir(&dir.0, &tensors, sharded, bf16, tied);
    let (hf_dir, model) = hf::load(&dir.0, device(), DType::F32).unwrap();
    assert_eq!(model.rope_style(), arkvale_core::RopeStyle::Neox);
    assert_eq!(hf_dir.config().tied_embeddings, tied);
    assert_eq!(hf_dir.weights().files().len(), if sharded { 2 } else { 1 });
    let reference = reference_model(device(), &tensors, bf16, tied);
    let a = run(&model, &PROMPT, 6);
    let b = run(&reference, &PROMPT, 6);
    assert!(a.iter().flatten().all(|x| x.is_finite()));
    let diff = max_diff(&a, &b);
    assert!(
        diff < 1e-4,
        "{name}: HF/NeoX vs permuted/interleaved differ by {diff}"
    );
    // The rotation convention matters: HF order with interleaved RoPE must differ.
    let mut wrong = hf_dir.load_model(device(), DType::F32).unwrap();
    wrong.set_rope_style(arkvale_core::RopeStyle::Interleaved);
    assert!(max_diff(&run(&wrong, &PROMPT, 6), &b) > 1e-3);
}

#[test]
fn sharded_f32_matches_permuted_interleaved_reference() {
    check_same_logits("sharded-f32", true, false, false);
}

#[test]
fn sharded_bf16_matches_permuted_interleaved_reference() {
    check_same_logits("sharded-bf16", true, true, false);
}

#[test]
fn single_file_tied_matches_permuted_interleaved_reference() {
    check_same_logits("single-tied", false, false, true);
}

#[test]
fn qwen2_with_biases_matches_permuted_interleaved_reference() {
    let dir = TempDir::new("qwen2");
    let mut tensors = hf_tensors(false);
    let mut r = XorShift(0xb1a5);
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        for (n, len) in [("q", D), ("k", kv), ("v", kv)] {
            let name = format!("model.layers.{l}.self_attn.{n}_proj.bias");
            tensors.push((name, vec![len], r.vec(len, 0.8)));
        }
    }
    write_dir(&dir.0, &tensors, false, false, false);
    std::fs::write(dir.0.join("config.json"), config_json("qwen2", false)).unwrap();
    let (hf_dir, model) = hf::load(&dir.0, device(), DType::F32).unwrap();
    assert!(hf_dir.config().qkv_bias);
    let reference = reference_model(device(), &tensors, false, false);
    let (a, b) = (run(&model, &PROMPT, 4), run(&reference, &PROMPT, 4));
    let diff = max_diff(&a, &b);
    assert!(diff < 1e-4, "qwen2: differs by {diff}");
    // Without its biases the same weights give other logits.
    let plain = reference_model(device(), &hf_tensors(false), false, false);
    assert!(max_diff(&run(&plain, &PROMPT, 4), &b) > 1e-3);
}

#[test]
fn tokenizer_and_tokenizer_config() {
    let dir = TempDir::new("tok");
    write_dir(&dir.0, &hf_tensors(true), false, false, true);
    let hf_dir = HfModelDir::open(&dir.0).unwrap();
    let tok = hf_dir.tokenizer();
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_id(), Some(1));
    assert!(tok.add_bos());
    assert_eq!(tok.vocab_size(), VOCAB);
    assert_eq!(
        tok.chat_template(),
        Some("{% for m in messages %}{{ m.content }}{% endfor %}")
    );
    assert_eq!(
        tok.encode("w5 w17 w63", false, true).unwrap(),
        vec![5, 17, 63]
    );
    assert_eq!(tok.encode("<s> w5", false, true).unwrap(), vec![0, 5]);
    assert_eq!(tok.token_to_id("w9"), Some(9));
    assert_eq!(tok.id_to_token(9).unwrap(), "w9");
    assert!(tok.is_control(1) && !tok.is_control(9));
    assert_eq!(tok.decode(&[5, 17], true).unwrap(), "w5 w17");
    assert!(tok.decode(&[500], true).is_err());
    let mut stream = tok.decode_stream(true);
    let mut text = String::new();
    for id in [5, 17, 1] {
        text += &stream.push(id).unwrap();
    }
    text += &stream.finish();
    assert_eq!(text, tok.decode(&[5, 17, 1], true).unwrap());
}

fn open_err(dir: &Path) -> String {
    match HfModelDir::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn load_err(dir: &Path) -> String {
    match hf::load(dir, device(), DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_shard_is_a_clear_error() {
    let dir = TempDir::new("missing-shard");
    write_dir(&dir.0, &hf_tensors(false), true, false, false);
    std::fs::remove_file(dir.0.join("model-00002-of-00002.safetensors")).unwrap();
    let e = open_err(&dir.0);
    assert!(
        e.contains("missing shard") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_file_and_tensor() {
    let dir = TempDir::new("wrong-shape");
    let mut t = hf_tensors(false);
    let k = t
        .iter_mut()
        .find(|(n, _, _)| n == "model.layers.1.self_attn.k_proj.weight")
        .unwrap();
    k.1 = vec![D, D];
    k.2 = vec![0.5; D * D];
    write_dir(&dir.0, &t, false, false, false);
    let e = load_err(&dir.0);
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.weight")
            && e.contains("model.safetensors")
            && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn missing_tensor_and_bad_dtype_are_clear_errors() {
    let dir = TempDir::new("missing-tensor");
    let t: Vec<_> = hf_tensors(false)
        .into_iter()
        .filter(|(n, _, _)| n != "lm_head.weight")
        .collect();
    write_dir(&dir.0, &t, false, false, false);
    let e = load_err(&dir.0);
    assert!(e.contains("missing tensor lm_head.weight"), "{e}");

    let dir = TempDir::new("bad-dtype");
    write_dir(&dir.0, &hf_tensors(true), false, false, true);
    let norm = vec![1u8; D];
    let views = vec![(
        "model.norm.weight".to_string(),
        TensorView::new(Dtype::I8, vec![D], &norm).unwrap(),
    )];
    let mut all: Vec<(String, Vec<usize>, Vec<u8>)> = hf_tensors(true)
        .into_iter()
        .filter(|(n, _, _)| n != "model.norm.weight")
        .map(|(n, s, v)| (n, s, bytes(&v, false)))
        .collect();
    all.sort();
    let mut views: Vec<(String, TensorView<'_>)> = views;
    views.extend(all.iter().map(|(n, s, b)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        )
    }));
    std::fs::write(
        dir.0.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let e = load_err(&dir.0);
    assert!(
        e.contains("model.norm.weight") && e.contains("unsupported dtype"),
        "{e}"
    );
}

#[test]
fn config_errors() {
    let dir = TempDir::new("config");
    write_dir(&dir.0, &hf_tensors(false), false, false, false);
    let set = |text: String| std::fs::write(dir.0.join("config.json"), text).unwrap();

    set(config_json("gpt_neox", false));
    let e = open_err(&dir.0);
    assert!(e.contains("unsupported model_type 'gpt_neox'"), "{e}");

    // Qwen2 reads the q/k/v biases: a directory without them is a clear error.
    set(config_json("qwen2", false));
    let e = load_err(&dir.0);
    assert!(e.contains("self_attn.q_proj.bias"), "{e}");

    set(config_json("llama", false).replace(
        "\"rope_scaling\": null",
        "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}",
    ));
    let e = open_err(&dir.0);
    assert!(e.contains("unsupported rope_scaling type 'yarn'"), "{e}");

    set(config_json("llama", false).replace(
        "\"rope_scaling\": null",
        "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \
         \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}",
    ));
    let hf_dir = HfModelDir::open(&dir.0).unwrap();
    assert!(matches!(
        hf_dir.config().rope_scaling,
        RopeScaling::Llama3 {
            original_max_position_embeddings: 64,
            ..
        }
    ));

    set(config_json("mistral", false).replace("\"num_hidden_layers\": 2,", ""));
    let e = open_err(&dir.0);
    assert!(
        e.contains("config.json") && e.contains("num_hidden_layers"),
        "{e}"
    );

    set("{ not json".into());
    assert!(open_err(&dir.0).contains("invalid JSON"));

    std::fs::remove_file(dir.0.join("config.json")).unwrap();
    assert!(open_err(&dir.0).contains("missing"));
    assert!(matches!(
        HfModelDir::open(dir.0.join("nope")),
        Err(HfError::Config(_))
    ));
}
