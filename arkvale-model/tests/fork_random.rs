//! Prefill once, fork per policy (`CacheManager::begin_snapshot` / `fork_snapshot`) against
//! each policy's own prefill, on a small random-weight Llama model (no file needed): the same
//! resident pages, the same keep-masks and the same decode logits — bit for bit when the
//! prompt is one prefill chunk, within rounding (and with the same residency) when the budgeted
//! policies' prefill streams evicted pages in a different summation order.

use std::sync::Arc;

use arkvale_core::{
    CacheConfig, CacheManager, DType, Device, KvDtype, RopeScaling, SeqId, SnapshotOptions,
    policy::POLICY_NAMES, policy_by_name,
};
use arkvale_cpu::CpuDevice;
use arkvale_model::llama::{HostLayer, LlamaConfig, LlamaHostWeights, LlamaModel};

/// Deterministic xorshift generator of values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.next() * scale).collect()
    }
    fn norm(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| 1.0 + 0.2 * self.next()).collect()
    }
}

fn model() -> LlamaModel {
    let c = LlamaConfig {
        arch: "llama".into(),
        layers: 3,
        d_model: 32,
        d_ff: 48,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 8,
        vocab: 64,
        context_length: 512,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_freq_factors: None,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qkv_bias: false,
    };
    let mut r = Rng(11);
    let (d, kv, f) = (c.d_model, c.kv_heads * c.head_dim, c.d_ff);
    let s = |k: usize| 1.5 / (k as f32).sqrt();
    let w = LlamaHostWeights {
        embedding: r.vec(c.vocab * d, 1.0),
        layers: (0..c.layers)
            .map(|_| HostLayer {
                attn_norm: r.norm(d),
                wq: r.vec(d * d, 2.0 * s(d)),
                wk: r.vec(kv * d, 2.0 * s(d)),
                wv: r.vec(kv * d, s(d)),
                wo: r.vec(d * d, s(d)),
                ffn_norm: r.norm(d),
                w_gate: r.vec(f * d, s(d)),
                w_up: r.vec(f * d, s(d)),
                w_down: r.vec(d * f, s(f)),
                ..Default::default()
            })
            .collect(),
        output_norm: r.norm(d),
        output: None,
    };
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(2)).unwrap());
    LlamaModel::from_host_weights(dev, c, w, DType::F32).unwrap()
}

fn cache(model: &LlamaModel, policy: &str, chunk: usize) -> CacheManager {
    let config = CacheConfig {
        page_size: 8,
        budget_tokens: 64,
        topk_tokens: Some(32),
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

fn prompt(len: usize) -> Vec<u32> {
    let mut r = Rng(5);
    (0..len)
        .map(|_| ((r.next() + 1.0) * 32.0) as u32 % 64)
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

/// Residency of every (layer, group) page and every keep-mask of a sequence.
fn state(c: &CacheManager, seq: SeqId) -> (Vec<Vec<bool>>, Vec<Option<Vec<bool>>>) {
    let shape = *c.shape();
    let mut pages = Vec::new();
    let mut masks = Vec::new();
    for layer in 0..shape.layers {
        for g in 0..c.config().head_groups {
            pages.push(
                c.pages(seq, layer, g)
                    .unwrap()
                    .iter()
                    .map(|p| p.slot.is_some())
                    .collect(),
            );
        }
        for h in 0..shape.kv_heads {
            masks.push(c.keep_mask(seq, layer, h).unwrap());
        }
    }
    (pages, masks)
}

/// Greedy decode of `steps` tokens after `logits`; returns every step's logits.
fn decode(model: &LlamaModel, c: &mut CacheManager, seq: SeqId, logits: &[f32]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut next = argmax(logits);
    for _ in 0..6 {
        let l = model.decode(c, &[seq], &[next]).unwrap();
        next = argmax(&l);
        out.push(l);
    }
    out
}

fn check(chunk: usize, exact: bool) {
    let model = model();
    let ids = prompt(200);
    let mut src = cache(&model, "full", chunk);
    let s = src.add_sequence();
    src.begin_snapshot(
        s,
        SnapshotOptions {
            token_weights: true,
            ..Default::default()
        },
    )
    .unwrap();
    let logits = model.prefill(&mut src, s, &ids).unwrap();
    let snap = src.take_snapshot(s).unwrap();
    assert_eq!(snap.tokens(), ids.len());
    for name in POLICY_NAMES {
        let mut direct = cache(&model, name, chunk);
        let d = direct.add_sequence();
        let direct_logits = model.prefill(&mut direct, d, &ids).unwrap();
        let mut forked = cache(&model, name, chunk);
        let f = forked.fork_snapshot(&snap).unwrap();
        let (dp, dm) = state(&direct, d);
        let (fp, fm) = state(&forked, f);
        assert_eq!(dp, fp, "{name}: resident pages (chunk {chunk})");
        assert_eq!(dm, fm, "{name}: keep-masks (chunk {chunk})");
        if name != "full" && name != "quest" {
            assert!(
                dp.iter().any(|l| l.contains(&false))
                    || dm.iter().flatten().any(|m| m.contains(&false)),
                "{name}: the test must evict something"
            );
        }
        let dl = decode(&model, &mut direct, d, &direct_logits);
        let fl = decode(&model, &mut forked, f, &logits);
        for (step, (a, b)) in dl.iter().zip(&fl).enumerate() {
            if exact {
                assert_eq!(a, b, "{name}: decode step {step} logits differ");
            } else {
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-3,
                    "{name}: decode step {step} logits differ by {diff}"
                );
            }
        }
        for layer in 0..model.shape().layers {
            assert_eq!(
                direct.last_attended(d, layer, 0).unwrap(),
                forked.last_attended(f, layer, 0).unwrap(),
                "{name}: pages attended by the last decode step of layer {layer}"
            );
        }
        // The fork leaves the source untouched and can be forked again.
        let again = forked.fork_snapshot(&snap).unwrap();
        assert_eq!(state(&forked, again), (fp, fm), "{name}: second fork");
    }
}

#[test]
fn fork_equals_direct_prefill_bit_for_bit_in_one_chunk() {
    check(256, true);
}

#[test]
fn fork_equals_direct_prefill_across_chunks() {
    check(64, false);
}

#[test]
fn fork_errors_are_clear() {
    let model = model();
    let ids = prompt(40);
    let mut src = cache(&model, "full", 64);
    let s = src.add_sequence();
    src.begin_snapshot(s, SnapshotOptions::default()).unwrap();
    model.prefill(&mut src, s, &ids).unwrap();
    // Not empty any more: a snapshot must start with the prompt.
    let e = src
        .begin_snapshot(s, SnapshotOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    let snap = src.take_snapshot(s).unwrap();
    assert!(src.take_snapshot(s).is_err());
    let mut h2o = cache(&model, "h2o", 64);
    let e = h2o.fork_snapshot(&snap).unwrap_err().to_string();
    assert!(e.contains("token weights"), "{e}");
    assert!(
        h2o.sequences().is_empty(),
        "a failed fork leaves no sequence"
    );
    let mut ark = cache(&model, "arkvale", 64);
    let f = ark.fork_snapshot(&snap).unwrap();
    assert_eq!(ark.seq_len(f, 0).unwrap(), 40);
}
