//! End to end on the wgpu backend: SmolLM2-135M-Instruct greedy generation on `WgpuDevice`
//! produces the same tokens as on `CpuDevice` for a short prompt (f32 and f16 weights, KV in
//! f16). Skips with a line when the model file or a wgpu adapter is absent. On lavapipe
//! (software Vulkan) it takes a few seconds per weight type.
#![cfg(feature = "wgpu")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arkvale_core::{CacheConfig, CacheManager, DType, Device, KvDtype, policy_by_name};
use arkvale_model::gguf::GgufFile;
use arkvale_model::llama::LlamaModel;
use arkvale_model::tokenizer::Tokenizer;

/// Prompt text and how many tokens to generate.
const PROMPT: &str = "The capital of France is";
const STEPS: usize = 8;

/// `$ARKVALE_MODEL`, `$ARKVALE_SMOLLM2_GGUF`, or the workspace's `models/` copy.
fn model_path() -> Option<PathBuf> {
    let path = ["ARKVALE_MODEL", "ARKVALE_SMOLLM2_GGUF"]
        .iter()
        .find_map(std::env::var_os)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: SmolLM2 GGUF not found at {} (run `cargo xtask fetch-model`)",
            path.display()
        );
        None
    }
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

/// Greedy generation of `STEPS` tokens after `prompt` (arkvale policy, KV in f16).
fn greedy(dev: Arc<dyn Device>, file: &GgufFile, weights: DType, prompt: &[u32]) -> Vec<u32> {
    let name = dev.name();
    let t = Instant::now();
    let model = LlamaModel::load(dev, file, weights).unwrap();
    let load = t.elapsed();
    let config = CacheConfig {
        budget_tokens: 256,
        kv_dtype: KvDtype::F16,
        device_bytes: 16 << 20,
        host_bytes: 16 << 20,
        prefill_chunk_tokens: 64,
        ..Default::default()
    };
    let policy = policy_by_name("arkvale", &config).unwrap();
    let mut cache =
        CacheManager::new(model.device().clone(), model.shape(), config, policy).unwrap();
    let seq = cache.add_sequence();
    let t = Instant::now();
    let mut out = vec![argmax(&model.prefill(&mut cache, seq, prompt).unwrap())];
    let prefill = t.elapsed();
    let t = Instant::now();
    while out.len() < STEPS {
        let l = model
            .decode(&mut cache, &[seq], &[*out.last().unwrap()])
            .unwrap();
        out.push(argmax(&l));
    }
    eprintln!(
        "{name} {weights:?} weights: load {load:.2?}, prefill {} tokens {prefill:.2?}, {} \
         decode steps {:.2?}: {out:?}",
        prompt.len(),
        STEPS - 1,
        t.elapsed()
    );
    out
}

#[test]
fn wgpu_greedy_generation_equals_cpu() {
    let Some(path) = model_path() else { return };
    let wgpu_dev = match arkvale_wgpu::WgpuDevice::new() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e})");
            return;
        }
    };
    eprintln!("wgpu adapter: {:?}", wgpu_dev.adapter());
    let wgpu_dev: Arc<dyn Device> = Arc::new(wgpu_dev);
    let cpu_dev: Arc<dyn Device> = Arc::new(arkvale_cpu::CpuDevice::new(None).unwrap());
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let prompt = tok.encode(PROMPT, false, true).unwrap();
    for weights in [DType::F32, DType::F16] {
        let want = greedy(cpu_dev.clone(), &file, weights, &prompt);
        let got = greedy(wgpu_dev.clone(), &file, weights, &prompt);
        assert_eq!(got, want, "{weights:?} weights: wgpu vs cpu greedy tokens");
        eprintln!("{weights:?}: {:?}", tok.decode(&got, false).unwrap());
    }
}
