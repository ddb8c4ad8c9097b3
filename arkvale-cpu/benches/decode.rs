//! Decode attention over a long context: `full` vs `arkvale`, and the attention's achieved
//! bandwidth against a plain memcpy of the same bytes on the same threads, all in the same
//! run. Three cases:
//!
//! - `decode_layer_{8,32}k`: one layer of 32 query heads, 8 KV heads, head dim 128, pages of
//!   32, one head group per layer, every core; budget 2048;
//! - `smollm2_all_layers_{1,8}k`: SmolLM2-135M's cache geometry as `arkvale generate` runs it —
//!   30 layers of 9 query / 3 KV heads × 64, pages of 16, one head group per KV head, one
//!   thread — so the KV pool (188 MB at 8k) is far larger than the caches and its slots of
//!   4 KiB are spread over memory as a real prompt's chunked prefill leaves them; budget 512;
//! - `qwen2.5_all_layers_{0,4}k` (256 and 4096 tokens): Qwen2.5-0.5B's geometry the same
//!   way — 24 layers of 14 query / 2 KV heads × 64 (7 queries per KV head), pages of 16, one
//!   thread; budget 512.
//!
//! `ARKVALE_BENCH_CASE=NAME` runs only the case of that name (setting up every case's
//! contexts takes a while).
//!
//! f16 storage and batch 1 in both. The context is loaded with `CacheManager::load_layer`
//! (random post-RoPE keys with a per-page offset so attention is not uniform), then each
//! iteration runs one real `decode_layer` per layer — append, digest/backup when a page
//! fills, estimate, top-k, recalls, attention — so the sequence grows by one token per
//! step. To keep the measured context the stated one, the context is reloaded (untimed, from
//! the same keys and values) after every [`steps_per_load`] steps: it grows by at most ~1.6%
//! (8 tokens at short contexts) before it is reset. After criterion's report, a summary table
//! prints the ratios.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arkvale_core::{
    Buffer, CacheConfig, CacheManager, DType, Device, DeviceExt, KvDtype, ModelShape, SeqId,
    policy_by_name,
};
use arkvale_cpu::CpuDevice;
use arkvale_testkit::XorShift;
use common::{median, median_time};
use criterion::{Criterion, criterion_group, criterion_main};

/// One benchmarked geometry.
struct Case {
    name: &'static str,
    shape: ModelShape,
    page_size: usize,
    /// Head groups per layer (`kv_heads`: one per KV head).
    head_groups: usize,
    budget: usize,
    /// CPU worker threads (`None`: every core).
    threads: Option<usize>,
    contexts: &'static [usize],
}

const CASES: [Case; 3] = [
    Case {
        name: "decode_layer",
        shape: ModelShape {
            layers: 1,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
        },
        page_size: 32,
        head_groups: 1,
        budget: 2048,
        threads: None,
        contexts: &[8192, 32768],
    },
    Case {
        name: "smollm2_all_layers",
        shape: ModelShape {
            layers: 30,
            q_heads: 9,
            kv_heads: 3,
            head_dim: 64,
        },
        page_size: 16,
        head_groups: 3,
        budget: 512,
        threads: Some(1),
        contexts: &[1024, 8192],
    },
    Case {
        name: "qwen2.5_all_layers",
        shape: ModelShape {
            layers: 24,
            q_heads: 14,
            kv_heads: 2,
            head_dim: 64,
        },
        page_size: 16,
        head_groups: 2,
        budget: 512,
        threads: Some(1),
        contexts: &[256, 4096],
    },
];

/// The keys and values a context is loaded from, and the decode step's inputs, generated once
/// per (case, context) and shared by both policies' setups.
struct ContextData {
    /// Tokens of the context.
    tokens: usize,
    /// Per layer, keys and values f32 `[context, Hkv, d]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// The query of the load and of every step `[H, d]`.
    q: Vec<f32>,
    /// The key and value every step appends `[Hkv, d]`.
    k: Vec<f32>,
    v: Vec<f32>,
}

fn context_data(case: &Case, context: usize) -> ContextData {
    let shape = case.shape;
    let row = shape.kv_heads * shape.head_dim;
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D_u64);
    let q = rng.vec(shape.q_heads * shape.head_dim, 1.0);
    let layers = (0..shape.layers)
        .map(|layer| {
            let mut k = rng.vec(context * row, 1.0);
            let v = rng.vec(context * row, 1.0);
            for (t, key) in k.chunks_mut(row).enumerate() {
                let bias = ((t / 32) as f32 * 0.37 + layer as f32).sin();
                key.iter_mut().for_each(|x| *x += bias);
            }
            (k, v)
        })
        .collect();
    ContextData {
        tokens: context,
        layers,
        q,
        k: rng.vec(row, 1.0),
        v: rng.vec(row, 1.0),
    }
}

/// Decode steps between two reloads of a `context`-token context: the context grows by at
/// most ~1.6% (1/64) before it is reset, and by at least 8 steps' worth at short contexts.
fn steps_per_load(context: usize) -> usize {
    (context / 64).max(8)
}

struct Setup {
    cache: CacheManager,
    seq: SeqId,
    layers: usize,
    data: Arc<ContextData>,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    out: Buffer,
    /// Steps run since the context was last loaded.
    steps: usize,
}

fn setup(dev: &Arc<dyn Device>, case: &Case, policy: &str, data: &Arc<ContextData>) -> Setup {
    let shape = case.shape;
    let config = CacheConfig {
        page_size: case.page_size,
        head_groups: case.head_groups,
        budget_tokens: case.budget,
        dense_layers: 0,
        kv_dtype: KvDtype::F16,
        device_bytes: 1 << 30,
        host_bytes: 2 << 30,
        prefill_chunk_tokens: 4096,
        ..CacheConfig::default()
    };
    let policy = policy_by_name(policy, &config).expect("policy");
    let mut cache = CacheManager::new(dev.clone(), shape, config, policy).expect("cache");
    let seq = cache.add_sequence();
    let mut s = Setup {
        seq,
        layers: shape.layers,
        q: dev.upload_f32(&data.q, DType::F32).expect("q"),
        k: dev.upload_f32(&data.k, DType::F32).expect("k"),
        v: dev.upload_f32(&data.v, DType::F32).expect("v"),
        out: dev.alloc(DType::F32, data.q.len()).expect("out"),
        cache,
        data: data.clone(),
        steps: 0,
    };
    s.load();
    s
}

impl Setup {
    /// Loads the context into the (empty) sequence.
    fn load(&mut self) {
        for (layer, (k, v)) in self.data.layers.iter().enumerate() {
            self.cache
                .load_layer(layer, self.seq, k, v, &self.q)
                .expect("load");
        }
        self.steps = 0;
    }

    /// One decode step (every layer once), timed; the context is first reloaded (untimed)
    /// when it has grown by [`steps_per_load`] tokens.
    fn timed_step(&mut self) -> Duration {
        if self.steps >= steps_per_load(self.data.tokens) {
            self.cache.remove_sequence(self.seq).expect("remove");
            self.seq = self.cache.add_sequence();
            self.load();
        }
        let start = Instant::now();
        for layer in 0..self.layers {
            self.cache
                .decode_layer(layer, &[self.seq], &self.q, &self.k, &self.v, &self.out)
                .expect("decode");
        }
        black_box(&self.out);
        self.steps += 1;
        start.elapsed()
    }

    /// The median of `reps` timed steps.
    fn median_step(&mut self, reps: usize) -> Duration {
        median((0..reps).map(|_| self.timed_step()).collect())
    }
}

fn bench(c: &mut Criterion) {
    let mut rows = Vec::new();
    let only = std::env::var("ARKVALE_BENCH_CASE").ok();
    for case in CASES
        .iter()
        .filter(|c| only.as_deref().is_none_or(|n| n == c.name))
    {
        let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(case.threads).expect("cpu device"));
        for &context in case.contexts {
            let data = Arc::new(context_data(case, context));
            let mut full = setup(&dev, case, "full", &data);
            let mut ark = setup(&dev, case, "arkvale", &data);
            let mut group = c.benchmark_group(format!("{}_{}k", case.name, context / 1024));
            group
                .sample_size(20)
                .measurement_time(Duration::from_secs(4));
            let ark_name = format!("arkvale_{}", case.budget);
            group.bench_function("full", |b| {
                b.iter_custom(|n| (0..n).map(|_| full.timed_step()).sum())
            });
            group.bench_function(&ark_name, |b| {
                b.iter_custom(|n| (0..n).map(|_| ark.timed_step()).sum())
            });
            let bytes = context * case.shape.kv_bytes_per_token_layer(2) * case.shape.layers;
            let src = vec![1u8; bytes];
            let mut dst = vec![0u8; bytes];
            group.bench_function("memcpy_kv_bytes", |b| {
                b.iter(|| {
                    dst.copy_from_slice(black_box(&src));
                    black_box(&dst);
                })
            });
            group.finish();
            let t_full = full.median_step(15);
            let t_ark = ark.median_step(15);
            let t_copy = median_time(|| dst.copy_from_slice(black_box(&src)), 15);
            rows.push((
                case.name,
                case.budget,
                context,
                t_full,
                t_ark,
                t_copy,
                bytes,
            ));
        }
    }
    println!(
        "\n| case | context | full | arkvale | full / arkvale | full attn GB/s | memcpy GB/s | attn / memcpy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, budget, ctx, tf, ta, tc, bytes) in rows {
        let gbs = |t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
        println!(
            "| {name} | {ctx} | {tf:.2?} | {ta:.2?} (budget {budget}) | {:.2}x | {:.1} | {:.1} | {:.2} |",
            tf.as_secs_f64() / ta.as_secs_f64(),
            gbs(tf),
            gbs(tc),
            gbs(tf) / gbs(tc)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
