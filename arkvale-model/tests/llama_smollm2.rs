//! SmolLM2-135M-Instruct (Q4_1 GGUF) through the Llama forward pass against the f32 numpy
//! reference of `tests/fixtures/smollm2_reference.json` (weights dequantized by gguf-py, the
//! same math as ours). The model is read from `ARKVALE_SMOLLM2_GGUF`, else from
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root; when neither exists the
//! tests print a skip line and pass.

mod common;

use common::{fixture, model_path};
use std::sync::Arc;
use std::time::Instant;

use arkvale_core::{CacheConfig, CacheManager, DType, KvDtype, QuantType, policy_by_name};
use arkvale_cpu::CpuDevice;
use arkvale_model::gguf::GgufFile;
use arkvale_model::llama::{LlamaModel, WeightStorage};
use arkvale_model::tokenizer::Tokenizer;
use serde_json::Value;

/// Largest |our logit - numpy fp32 logit| accepted on the top-5 logits. Both sides are f32
/// with identical dequantized weights; they differ only in summation order (GEMM blocking,
/// softmax and RMSNorm reductions) over 30 layers, which the fixture's own fp32-vs-fp64
/// comparison puts at ~7e-5 on the logits (we measure ~3e-5); 1e-3 (the bound) leaves
/// room for other blocking (threads, backends) while still catching any real mistake (a wrong
/// RoPE angle or norm moves logits by > 0.1).
const LOGIT_TOL: f32 = 1e-3;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
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

fn top5(x: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    idx.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]).then(a.cmp(&b)));
    idx.truncate(5);
    idx
}

fn cache_for(model: &LlamaModel, policy: &str, budget: usize) -> CacheManager {
    let config = CacheConfig {
        budget_tokens: budget,
        kv_dtype: KvDtype::F32,
        device_bytes: 128 << 20,
        host_bytes: 256 << 20,
        prefill_chunk_tokens: 256,
        ..Default::default()
    };
    let policy = policy_by_name(policy, &config).unwrap();
    CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap()
}

#[test]
fn smollm2_matches_the_numpy_f32_reference() {
    let Some(path) = model_path() else { return };
    let fx = fixture();
    let file = GgufFile::open(&path).unwrap();
    let dev = Arc::new(CpuDevice::new(None).unwrap());
    let t = Instant::now();
    let model = LlamaModel::load(dev, &file, DType::F32).unwrap();
    eprintln!("loaded {:?} in {:.2?}", model.config().shape(), t.elapsed());
    let c = model.config();
    assert_eq!(
        (c.layers, c.d_model, c.q_heads, c.kv_heads),
        (30, 576, 9, 3)
    );
    assert!(c.tied_embeddings);

    for name in ["plain", "chat"] {
        let p = &fx["prompts"][name];
        let prompt = ids(&p["token_ids"]);
        let want_top5 = ids(&p["top5_next_numpy_fp32"]["ids"]);
        let want_logits = floats(&p["top5_next_numpy_fp32"]["logits"]);
        let want_greedy = ids(&p["greedy20_numpy_fp32"]["ids"]);

        // Text in, text out: the tokenizer gives the fixture's ids and reads back its text.
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false, true).unwrap(),
            prompt,
            "{name}: token ids"
        );

        let mut cache = cache_for(&model, "full", 2048);
        let seq = cache.add_sequence();
        let t = Instant::now();
        let logits = model.prefill(&mut cache, seq, &prompt).unwrap();
        let prefill_time = t.elapsed();
        let got_top5 = top5(&logits);
        let max_diff = want_top5
            .iter()
            .zip(&want_logits)
            .map(|(&i, &w)| (logits[i as usize] - w).abs())
            .fold(0f32, f32::max);
        if name == "chat" {
            let ck = &p["numpy_fp32_checkpoints"];
            let want8 = floats(&ck["logits[last][:8]"]);
            let d8 = want8
                .iter()
                .zip(&logits)
                .map(|(w, g)| (w - g).abs())
                .fold(0f32, f32::max);
            eprintln!("chat logits[last][:8] max |diff| {d8:.2e}");
            assert!(d8 <= LOGIT_TOL, "logits[last][:8] differ by {d8}");
        }

        let mut greedy = vec![argmax(&logits)];
        let t = Instant::now();
        while greedy.len() < want_greedy.len() {
            let l = model
                .decode(&mut cache, &[seq], &[*greedy.last().unwrap()])
                .unwrap();
            greedy.push(argmax(&l));
        }
        let decode_time = t.elapsed();
        eprintln!(
            "{name}: {} prompt tokens prefilled in {prefill_time:.2?}, 19 decode steps in \
             {decode_time:.2?}; top5 {got_top5:?} (want {want_top5:?}), max |dlogit| \
             {max_diff:.2e}; greedy {greedy:?}",
            prompt.len()
        );
        assert_eq!(got_top5, want_top5, "{name}: top-5 ids");
        assert!(
            max_diff <= LOGIT_TOL,
            "{name}: top-5 logits differ by {max_diff}"
        );
        assert_eq!(greedy, want_greedy, "{name}: greedy continuation");
        let want_text = p["greedy20_numpy_fp32"]["text"].as_str().unwrap();
        assert_eq!(
            tok.decode(&greedy, false).unwrap(),
            want_text,
            "{name}: greedy text"
        );
    }
}

/// `arkvale` with a budget covering prompt + continuation decodes exactly like `full`; with
/// f16 weights the first greedy token is unchanged; a budget far below the prompt still runs
/// (reported, not asserted: eviction may change the continuation).
#[test]
fn smollm2_arkvale_and_f16_weights() {
    let Some(path) = model_path() else { return };
    let fx = fixture();
    let p = &fx["prompts"]["chat"];
    let prompt = ids(&p["token_ids"]);
    let want_greedy = ids(&p["greedy20_numpy_fp32"]["ids"]);
    let file = GgufFile::open(&path).unwrap();
    let dev = Arc::new(CpuDevice::new(None).unwrap());

    let run = |model: &LlamaModel, policy: &str, budget: usize, steps: usize| {
        let mut cache = cache_for(model, policy, budget);
        let seq = cache.add_sequence();
        let t = Instant::now();
        let mut out = vec![argmax(&model.prefill(&mut cache, seq, &prompt).unwrap())];
        let prefill = t.elapsed();
        let t = Instant::now();
        while out.len() < steps {
            let l = model
                .decode(&mut cache, &[seq], &[*out.last().unwrap()])
                .unwrap();
            out.push(argmax(&l));
        }
        let per_step = t.elapsed() / (steps as u32 - 1);
        let stats = cache.stats();
        eprintln!(
            "{policy} budget {budget}, {:?} weights: prefill {prefill:.2?}, decode \
             {per_step:.2?}/step; resident {} of {} bytes, recalls/layer-step {:.2}: {out:?}",
            model.weight_dtype(),
            cache.resident_bytes(),
            cache.full_bytes(),
            stats.recalls_per_layer_step()
        );
        out
    };

    let f32_model = LlamaModel::load(dev.clone(), &file, DType::F32).unwrap();
    // 365 prompt + 10 generated tokens fit a 384-token budget: identical to full.
    let covering = run(&f32_model, "arkvale", 384, 10);
    assert_eq!(
        covering,
        want_greedy[..10],
        "arkvale with a covering budget"
    );
    let small = run(&f32_model, "arkvale", 192, 10);
    assert_eq!(small.len(), 10);
    drop(f32_model);

    let f16_model = LlamaModel::load(dev, &file, DType::F16).unwrap();
    let f16 = run(&f16_model, "full", 2048, 10);
    let agree = f16
        .iter()
        .zip(&want_greedy)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!("f16 weights: greedy agrees with the f32 reference for the first {agree} of 10");
    assert_eq!(f16[0], want_greedy[0], "f16 weights: first greedy token");
}

/// With the file's Q4_1 / Q8_0 tensors kept quantized on the CPU ([`WeightStorage::Native`]):
/// the weights stay in their stored types; on every fixture prompt the first greedy token
/// equals llama.cpp's (which also multiplies the quantized blocks by 8-bit activations) and
/// the f32 reference's, and the prompt's last logits stay within [`NATIVE_LOGIT_TOL`] of the
/// f32-weight model's on its top-5 tokens. The 20-token greedy continuations' common prefixes
/// with llama.cpp's and with the f32 reference's are reported per prompt.
#[test]
fn smollm2_native_quantized_weights() {
    let Some(path) = model_path() else { return };
    let fx = fixture();
    let file = GgufFile::open(&path).unwrap();
    let dev = Arc::new(CpuDevice::new(None).unwrap());
    let native = LlamaModel::load(dev.clone(), &file, WeightStorage::Native).unwrap();
    assert_eq!(native.weight_dtype(), DType::Quant(QuantType::Q4_1));
    let f32_model = LlamaModel::load(dev, &file, DType::F32).unwrap();

    let greedy = |model: &LlamaModel, prompt: &[u32], steps: usize| {
        let mut cache = cache_for(model, "full", 2048);
        let seq = cache.add_sequence();
        let first = model.prefill(&mut cache, seq, prompt).unwrap();
        let mut out = vec![argmax(&first)];
        while out.len() < steps {
            let l = model
                .decode(&mut cache, &[seq], &[*out.last().unwrap()])
                .unwrap();
            out.push(argmax(&l));
        }
        (first, out)
    };
    let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    for name in ["plain", "chat"] {
        let p = &fx["prompts"][name];
        let prompt = ids(&p["token_ids"]);
        let want_numpy = ids(&p["greedy20_numpy_fp32"]["ids"]);
        let want_llama = ids(&p["greedy20_llamacpp_f32kv"]["ids"]);
        let (nl, ng) = greedy(&native, &prompt, 20);
        let (fl, fg) = greedy(&f32_model, &prompt, 20);
        let worst = top5(&fl)
            .iter()
            .map(|&t| (nl[t as usize] - fl[t as usize]).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name}: native weights: top-5 prompt logits within {worst:.2e} of f32 weights; \
             greedy-20 common prefix with llama.cpp {} (f32 weights: {}), with the numpy f32 \
             reference {} (f32 weights: {}): {ng:?}",
            common(&ng, &want_llama),
            common(&fg, &want_llama),
            common(&ng, &want_numpy),
            common(&fg, &want_numpy),
        );
        assert!(
            worst <= NATIVE_LOGIT_TOL,
            "{name}: native vs f32 logits: {worst}"
        );
        assert_eq!(
            ng[0], want_llama[0],
            "{name}: native first greedy token vs llama.cpp"
        );
        assert_eq!(
            ng[0], want_numpy[0],
            "{name}: native first greedy token vs numpy"
        );
    }
}

/// Largest |native - f32 weights| logit difference accepted on the top-5 prompt logits. The
/// prompt's layers multiply dequantized tiles with f32 activations (as exact as f32), but the
/// logits of its last token are one row, the decode path, whose final hidden state is rounded
/// to 8 bits per 32 values (at most half a step, `max|x| / 254`, per value) before the dot
/// with the Q8_0 embedding rows: measured 0.065 on logits of magnitude ~20; 0.25 still
/// catches a wrong block layout (which moves logits by whole units).
const NATIVE_LOGIT_TOL: f32 = 0.25;
