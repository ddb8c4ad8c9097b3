//! A small random-weight Llama model (no file needed): prefill/decode consistency, chunking,
//! batching, `arkvale` against `full`, bad input, and `LlamaConfig::from_gguf` / `load` on an
//! in-memory GGUF file written here; the forward pass (Llama and Qwen2 with biases) against a
//! naive f64 reference.

mod common;

use std::sync::Arc;

use arkvale_core::{
    CacheConfig, CacheManager, DType, Device, KvDtype, RopeScaling, RopeStyle, policy_by_name,
};
use arkvale_cpu::CpuDevice;
use arkvale_model::gguf::GgufFile;
use arkvale_model::llama::{LlamaConfig, LlamaError, LlamaHostWeights, LlamaModel};
use arkvale_testkit::XorShift;
use arkvale_testkit::llama::{random_weights, tiny_config};
use common::naive::naive_logits;

/// [`tiny_config`] as a Qwen2 model: q/k/v biases, untied output.
fn tiny_qwen2_config() -> LlamaConfig {
    LlamaConfig {
        arch: "qwen2".into(),
        qkv_bias: true,
        tied_embeddings: false,
        ..tiny_config()
    }
}

fn model(dtype: DType) -> LlamaModel {
    let c = tiny_config();
    let w = random_weights(&c, 7);
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    LlamaModel::from_host_weights(dev, c, w, dtype).unwrap()
}

fn cache(model: &LlamaModel, policy: &str, budget: usize, chunk: usize) -> CacheManager {
    let config = CacheConfig {
        page_size: 8,
        budget_tokens: budget,
        topk_tokens: Some(budget / 2),
        dense_layers: 1,
        kv_dtype: KvDtype::F32,
        device_bytes: 8 << 20,
        host_bytes: 8 << 20,
        prefill_chunk_tokens: chunk,
        ..Default::default()
    };
    let policy = policy_by_name(policy, &config).unwrap();
    CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap()
}

fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut r = XorShift::new(seed);
    (0..len)
        .map(|_| ((r.unit() + 1.0) * 32.0) as u32 % 64)
        .collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn greedy(model: &LlamaModel, cache: &mut CacheManager, tokens: &[u32], steps: usize) -> Vec<u32> {
    let seq = cache.add_sequence();
    let mut out = vec![argmax(&model.prefill(cache, seq, tokens).unwrap())];
    while out.len() < steps {
        let l = model
            .decode(cache, &[seq], &[*out.last().unwrap()])
            .unwrap();
        assert!(l.iter().all(|x| x.is_finite()));
        out.push(argmax(&l));
    }
    out
}

#[test]
fn prefill_then_decode_equals_one_shot_prefill() {
    let m = model(DType::F32);
    let tokens = prompt(45, 3);
    let mut c1 = cache(&m, "full", 256, 64);
    let s1 = c1.add_sequence();
    let one_shot = m.prefill(&mut c1, s1, &tokens).unwrap();
    assert_eq!(one_shot.len(), 64);

    // 40 tokens in chunks of 16, then 5 prefills/decodes one token at a time.
    let mut c2 = cache(&m, "full", 256, 16);
    let s2 = c2.add_sequence();
    m.prefill(&mut c2, s2, &tokens[..38]).unwrap();
    m.prefill(&mut c2, s2, &tokens[38..40]).unwrap();
    let mut last = Vec::new();
    for &t in &tokens[40..] {
        last = m.decode(&mut c2, &[s2], &[t]).unwrap();
    }
    let d = max_diff(&one_shot, &last);
    assert!(d < 1e-4, "prefill+decode vs one-shot: {d}");
    assert_eq!(c2.seq_len(s2, 0).unwrap(), 45);
}

#[test]
fn batched_decode_equals_single_sequence_decode() {
    let m = model(DType::F32);
    let (a, b) = (prompt(20, 5), prompt(33, 9));
    let mut c = cache(&m, "full", 256, 64);
    let (sa, sb) = (c.add_sequence(), c.add_sequence());
    m.prefill(&mut c, sa, &a).unwrap();
    m.prefill(&mut c, sb, &b).unwrap();
    let batched = m.decode(&mut c, &[sa, sb], &[1, 2]).unwrap();
    assert_eq!(batched.len(), 2 * 64);
    for (i, (p, t)) in [(&a, 1u32), (&b, 2)].into_iter().enumerate() {
        let mut c1 = cache(&m, "full", 256, 64);
        let s = c1.add_sequence();
        m.prefill(&mut c1, s, p).unwrap();
        let single = m.decode(&mut c1, &[s], &[t]).unwrap();
        let d = max_diff(&single, &batched[i * 64..(i + 1) * 64]);
        assert!(d < 1e-4, "row {i}: {d}");
    }
}

#[test]
fn arkvale_with_a_covering_budget_decodes_like_full() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let m = model(dtype);
        let tokens = prompt(70, 11);
        let full = greedy(&m, &mut cache(&m, "full", 256, 32), &tokens, 20);
        let ark = greedy(&m, &mut cache(&m, "arkvale", 128, 32), &tokens, 20);
        assert_eq!(full, ark, "{dtype:?}");
    }
    // A budget far below the context still runs (evicting and recalling pages).
    let m = model(DType::F32);
    let mut c = cache(&m, "arkvale", 48, 32);
    let out = greedy(&m, &mut c, &prompt(120, 13), 12);
    assert_eq!(out.len(), 12);
    assert!(c.resident_bytes() < c.full_bytes());
}

#[test]
fn bad_input_is_an_error() {
    let m = model(DType::F32);
    let mut c = cache(&m, "full", 256, 64);
    let s = c.add_sequence();
    let msg = |e: LlamaError| e.to_string();
    assert!(msg(m.prefill(&mut c, s, &[]).unwrap_err()).contains("empty"));
    assert!(msg(m.prefill(&mut c, s, &[1, 64]).unwrap_err()).contains("token id 64"));
    let long = vec![1u32; 257];
    let e = msg(m.prefill(&mut c, s, &long).unwrap_err());
    assert!(e.contains("257") && e.contains("256"), "{e}");
    assert!(m.decode(&mut c, &[], &[]).is_err());
    assert!(m.decode(&mut c, &[s], &[1, 2]).is_err());
    assert!(m.decode(&mut c, &[s, s], &[1, 2]).is_err());
    m.prefill(&mut c, s, &[1, 2, 3]).unwrap();

    // A cache built for another shape.
    let other = CacheConfig::default();
    let policy = policy_by_name("full", &other).unwrap();
    let shape = arkvale_core::ModelShape {
        layers: 2,
        ..m.shape()
    };
    let mut wrong = CacheManager::new(m.device().clone(), shape, other, policy).unwrap();
    let ws = wrong.add_sequence();
    let e = msg(m.prefill(&mut wrong, ws, &[1]).unwrap_err());
    assert!(e.contains("model.shape()"), "{e}");

    // Host weights that do not fit the config.
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(1)).unwrap());
    let c = tiny_config();
    let mut w = random_weights(&c, 1);
    w.layers[1].wk.pop();
    let e = LlamaModel::from_host_weights(dev.clone(), c.clone(), w, DType::F32).unwrap_err();
    assert!(e.to_string().contains("blk.1.attn_k.weight"), "{e}");
    let w = random_weights(&c, 1);
    assert!(LlamaModel::from_host_weights(dev, c, w, DType::U32).is_err());
}

// ---------------------------------------------------------------------------------------
// A minimal GGUF v3 writer (metadata u32/f32/string, F32 tensors) for loader tests.

enum Md {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

fn gguf_bytes<K: AsRef<str>>(md: &[(K, Md)], tensors: &[(String, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((md.len() as u64).to_le_bytes());
    for (k, v) in md {
        string(&mut out, k.as_ref());
        match v {
            Md::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Md::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Md::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, data) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64 * 4).next_multiple_of(32);
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, data) in tensors {
        for x in data {
            out.extend(x.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    out
}

fn tiny_metadata() -> Vec<(&'static str, Md)> {
    let c = tiny_config();
    vec![
        ("general.architecture", Md::Str("llama")),
        ("llama.block_count", Md::U32(c.layers as u32)),
        ("llama.embedding_length", Md::U32(c.d_model as u32)),
        ("llama.feed_forward_length", Md::U32(c.d_ff as u32)),
        ("llama.attention.head_count", Md::U32(c.q_heads as u32)),
        ("llama.attention.head_count_kv", Md::U32(c.kv_heads as u32)),
        ("llama.context_length", Md::U32(c.context_length as u32)),
        ("llama.rope.freq_base", Md::F32(c.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon", Md::F32(c.rms_eps)),
        ("llama.rope.dimension_count", Md::U32(c.head_dim as u32)),
    ]
}

fn tiny_tensors() -> Vec<(String, Vec<u64>, Vec<f32>)> {
    gguf_tensors(&tiny_config(), random_weights(&tiny_config(), 7))
}

/// `w` under llama.cpp's tensor names and ggml dims (biases when present).
fn gguf_tensors(c: &LlamaConfig, w: LlamaHostWeights) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let (d, kv, f, v) = (
        c.d_model as u64,
        (c.kv_heads * c.head_dim) as u64,
        c.d_ff as u64,
        c.vocab as u64,
    );
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![d, v], w.embedding),
        ("output_norm.weight".to_string(), vec![d], w.output_norm),
    ];
    for (l, x) in w.layers.into_iter().enumerate() {
        let name = |s: &str| format!("blk.{l}.{s}.weight");
        t.push((name("attn_norm"), vec![d], x.attn_norm));
        t.push((name("attn_q"), vec![d, d], x.wq));
        t.push((name("attn_k"), vec![d, kv], x.wk));
        t.push((name("attn_v"), vec![d, kv], x.wv));
        t.push((name("attn_output"), vec![d, d], x.wo));
        t.push((name("ffn_norm"), vec![d], x.ffn_norm));
        t.push((name("ffn_gate"), vec![d, f], x.w_gate));
        t.push((name("ffn_up"), vec![d, f], x.w_up));
        t.push((name("ffn_down"), vec![f, d], x.w_down));
        if c.qkv_bias {
            let bias = |s: &str| format!("blk.{l}.{s}.bias");
            t.push((bias("attn_q"), vec![d], x.bq));
            t.push((bias("attn_k"), vec![kv], x.bk));
            t.push((bias("attn_v"), vec![kv], x.bv));
        }
    }
    if let Some(out) = w.output {
        t.push(("output.weight".to_string(), vec![d, v], out));
    }
    t
}

#[test]
fn gguf_file_loads_the_same_model() {
    let file = GgufFile::from_bytes(gguf_bytes(&tiny_metadata(), &tiny_tensors())).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(config, tiny_config());
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    let from_file = LlamaModel::load(dev, &file, DType::F32).unwrap();
    let from_host = model(DType::F32);
    let tokens = prompt(30, 17);
    let a = from_file
        .prefill(
            &mut cache(&from_file, "full", 256, 64),
            arkvale_core::SeqId(0),
            &tokens,
        )
        .unwrap_err(); // no such sequence yet
    assert!(a.to_string().contains("unknown sequence"), "{a}");
    let run = |m: &LlamaModel| {
        let mut c = cache(m, "full", 256, 64);
        let s = c.add_sequence();
        m.prefill(&mut c, s, &tokens).unwrap()
    };
    assert_eq!(run(&from_file), run(&from_host));
}

#[test]
fn bad_gguf_config_is_a_clear_error() {
    let err = |md: Vec<(&'static str, Md)>, tensors: Vec<(String, Vec<u64>, Vec<f32>)>| {
        let file = GgufFile::from_bytes(gguf_bytes(&md, &tensors)).unwrap();
        match LlamaModel::load(
            Arc::new(CpuDevice::new(Some(1)).unwrap()),
            &file,
            DType::F32,
        ) {
            Ok(_) => panic!("loaded a bad model"),
            Err(e) => e.to_string(),
        }
    };
    let with = |key: &'static str, v: Md| {
        let mut md = tiny_metadata();
        md.retain(|(k, _)| *k != key);
        md.push((key, v));
        md
    };
    let without = |key: &str| {
        let mut md = tiny_metadata();
        md.retain(|(k, _)| *k != key);
        md
    };
    let e = err(
        with("general.architecture", Md::Str("mamba")),
        tiny_tensors(),
    );
    assert!(e.contains("unsupported architecture 'mamba'"), "{e}");
    let e = err(without("llama.block_count"), tiny_tensors());
    assert!(e.contains("llama.block_count"), "{e}");
    let e = err(
        with("llama.attention.head_count_kv", Md::U32(3)),
        tiny_tensors(),
    );
    assert!(e.contains("multiple"), "{e}");
    let e = err(with("llama.embedding_length", Md::U32(30)), tiny_tensors());
    assert!(e.contains("embedding_length"), "{e}");
    let e = err(
        with("llama.rope.dimension_count", Md::U32(4)),
        tiny_tensors(),
    );
    assert!(e.contains("partial rotary"), "{e}");
    let e = err(
        with("llama.rope.scaling.type", Md::Str("yarn")),
        tiny_tensors(),
    );
    assert!(e.contains("yarn"), "{e}");
    let e = err(with("llama.context_length", Md::F32(1.0)), tiny_tensors());
    assert!(e.contains("llama.context_length"), "{e}");
    let mut t = tiny_tensors();
    t.retain(|(n, _, _)| n != "blk.2.ffn_up.weight");
    let e = err(tiny_metadata(), t);
    assert!(e.contains("missing tensor blk.2.ffn_up.weight"), "{e}");
    let mut t = tiny_tensors();
    let i = t
        .iter()
        .position(|(n, _, _)| n == "blk.0.attn_q.weight")
        .unwrap();
    t[i].1 = vec![16, 64];
    let e = err(tiny_metadata(), t);
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("dims"),
        "{e}"
    );

    // Linear RoPE scaling is read.
    let md = with("llama.rope.scaling.type", Md::Str("linear"));
    let mut md = md;
    md.push(("llama.rope.scaling.factor", Md::F32(4.0)));
    let file = GgufFile::from_bytes(gguf_bytes(&md, &tiny_tensors())).unwrap();
    let c = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
}

#[test]
fn rope_freqs_tensor_scales_the_frequencies() {
    let half = tiny_config().head_dim / 2;
    let with_freqs = |factors: Vec<f32>| {
        let mut t = tiny_tensors();
        t.push((
            "rope_freqs.weight".to_string(),
            vec![factors.len() as u64],
            factors,
        ));
        GgufFile::from_bytes(gguf_bytes(&tiny_metadata(), &t)).unwrap()
    };
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    let tokens = prompt(20, 23);
    let run = |file: &GgufFile| {
        let m = LlamaModel::load(dev.clone(), file, DType::F32).unwrap();
        let mut c = cache(&m, "full", 256, 64);
        let s = c.add_sequence();
        m.prefill(&mut c, s, &tokens).unwrap()
    };
    let plain = run(&GgufFile::from_bytes(gguf_bytes(&tiny_metadata(), &tiny_tensors())).unwrap());
    let ones = with_freqs(vec![1.0; half]);
    assert_eq!(
        LlamaConfig::from_gguf(&ones).unwrap().rope_freq_factors,
        Some(vec![1.0; half])
    );
    assert_eq!(run(&ones), plain, "factors of 1 change nothing");
    let scaled = run(&with_freqs(vec![8.0; half]));
    assert!(
        max_diff(&scaled, &plain) > 1e-3,
        "factors of 8 change the logits"
    );
    let e = LlamaConfig::from_gguf(&with_freqs(vec![1.0; half + 1])).unwrap_err();
    assert!(e.to_string().contains("rope_freqs.weight"), "{e}");
    let e = LlamaConfig::from_gguf(&with_freqs(vec![0.0; half])).unwrap_err();
    assert!(e.to_string().contains("rope_freqs.weight"), "{e}");
}

/// Logits of the prefill of `tokens[..split]` and of decoding the rest one by one.
fn cached_logits(m: &LlamaModel, tokens: &[u32], split: usize) -> Vec<Vec<f32>> {
    let mut c = cache(m, "full", 256, 8);
    let s = c.add_sequence();
    let mut out = vec![m.prefill(&mut c, s, &tokens[..split]).unwrap()];
    for t in &tokens[split..] {
        out.push(m.decode(&mut c, &[s], &[*t]).unwrap());
    }
    out
}

/// The model (chunked prefill then decode, through the cache) against a naive f64 forward
/// pass of the same weights: f32 arithmetic, so within 1e-4 of logits of magnitude ~1–10.
fn check_against_naive(config: LlamaConfig, style: RopeStyle) {
    let w = random_weights(&config, 11);
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    let mut m = LlamaModel::from_host_weights(dev, config.clone(), w.clone(), DType::F32).unwrap();
    m.set_rope_style(style);
    let tokens = prompt(29, 5);
    let split = 21; // three prefill chunks of 8, 8 and 5
    let got = cached_logits(&m, &tokens, split);
    let want = naive_logits(&config, &w, style, &tokens);
    let want = &want[split - 1..];
    assert_eq!(got.len(), want.len());
    for (i, (g, r)) in got.iter().zip(want).enumerate() {
        let diff = max_diff(g, r);
        assert!(
            diff < 1e-4,
            "{} position {}: differs by {diff}",
            config.arch,
            split - 1 + i
        );
    }
}

#[test]
fn llama_forward_matches_a_naive_reference() {
    check_against_naive(tiny_config(), RopeStyle::Interleaved);
}

#[test]
fn qwen2_forward_with_biases_matches_a_naive_reference() {
    check_against_naive(tiny_qwen2_config(), RopeStyle::Neox);
    // The biases are not negligible: dropping them changes the logits.
    let c = tiny_qwen2_config();
    let mut w = random_weights(&c, 11);
    let tokens = prompt(12, 5);
    let with = naive_logits(&c, &w, RopeStyle::Neox, &tokens);
    for l in &mut w.layers {
        (l.bq, l.bk, l.bv) = (Vec::new(), Vec::new(), Vec::new());
    }
    let without = naive_logits(&c, &w, RopeStyle::Neox, &tokens);
    assert!(max_diff(&with[11], &without[11]) > 1e-2);
}

#[test]
fn qwen2_gguf_loads_with_biases_and_neox_rope() {
    let c = tiny_qwen2_config();
    let w = random_weights(&c, 13);
    let md: Vec<(String, Md)> = tiny_metadata()
        .into_iter()
        .map(|(k, v)| match (k, v) {
            ("general.architecture", _) => (k.to_string(), Md::Str("qwen2")),
            (k, v) => (k.replacen("llama.", "qwen2.", 1), v),
        })
        .collect();
    let file = GgufFile::from_bytes(gguf_bytes(&md, &gguf_tensors(&c, w.clone()))).unwrap();
    assert_eq!(LlamaConfig::from_gguf(&file).unwrap(), c);
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    let m = LlamaModel::load(dev, &file, DType::F32).unwrap();
    assert_eq!(m.rope_style(), RopeStyle::Neox);
    let tokens = prompt(15, 9);
    let got = cached_logits(&m, &tokens, 15);
    let want = naive_logits(&c, &w, RopeStyle::Neox, &tokens);
    assert!(max_diff(&got[0], &want[14]) < 1e-4);

    // A bias tensor of the wrong size is a clear error.
    let mut t = gguf_tensors(&c, w);
    let i = t
        .iter()
        .position(|(n, _, _)| n == "blk.1.attn_k.bias")
        .unwrap();
    t[i].1 = vec![8];
    t[i].2.truncate(8);
    let file = GgufFile::from_bytes(gguf_bytes(&md, &t)).unwrap();
    let e = LlamaModel::load(
        Arc::new(CpuDevice::new(Some(1)).unwrap()),
        &file,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("blk.1.attn_k.bias"), "{e}");
}
