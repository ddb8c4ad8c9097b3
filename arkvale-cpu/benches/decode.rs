//! Decode attention of one layer over a long context: `full` vs `arkvale` (2048-token budget),
//! and the attention's achieved bandwidth against a plain memcpy of the same bytes, all in
//! the same run. Shapes follow the issue: 32 query heads, 8 KV heads, head dim 128, f16
//! storage, batch 1, contexts of 8k and 32k tokens.
//!
//! The context is loaded with `CacheManager::load_layer` (random post-RoPE keys with a
//! per-page offset so attention is not uniform), then each iteration runs one real
//! `decode_layer` — append, digest/backup when a page fills, estimate, top-k, recalls,
//! attention — so the sequence grows by one token per iteration (a few percent over a run,
//! equally for both policies). After criterion's report, a summary table prints the ratios.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arkvale_core::{
    Buffer, CacheConfig, CacheManager, DType, Device, DeviceExt, KvDtype, ModelShape, SeqId,
    policy_by_name,
};
use arkvale_cpu::CpuDevice;
use common::{median_time, rand_vec};
use criterion::{Criterion, criterion_group, criterion_main};

const SHAPE: ModelShape = ModelShape {
    layers: 1,
    q_heads: 32,
    kv_heads: 8,
    head_dim: 128,
};
const CONTEXTS: [usize; 2] = [8192, 32768];
const BUDGET: usize = 2048;

struct Setup {
    cache: CacheManager,
    seq: SeqId,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    out: Buffer,
}

fn setup(dev: &Arc<dyn Device>, policy: &str, context: usize) -> Setup {
    let config = CacheConfig {
        page_size: 32,
        budget_tokens: BUDGET,
        dense_layers: 0,
        kv_dtype: KvDtype::F16,
        device_bytes: 1 << 30,
        host_bytes: 2 << 30,
        prefill_chunk_tokens: 4096,
        ..CacheConfig::default()
    };
    let policy = policy_by_name(policy, &config).expect("policy");
    let mut cache = CacheManager::new(dev.clone(), SHAPE, config, policy).expect("cache");
    let seq = cache.add_sequence();
    let row = SHAPE.kv_heads * SHAPE.head_dim;
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut k = rand_vec(&mut state, context * row);
    let v = rand_vec(&mut state, context * row);
    // A per-page offset makes some pages matter more than others, as in real models.
    for (t, key) in k.chunks_mut(row).enumerate() {
        let bias = ((t / 32) as f32 * 0.37).sin();
        key.iter_mut().for_each(|x| *x += bias);
    }
    let qv = rand_vec(&mut state, SHAPE.q_heads * SHAPE.head_dim);
    let q = dev.upload_f32(&qv, DType::F32).expect("q");
    cache.load_layer(0, seq, &k, &v, &q).expect("load");
    let k1 = dev
        .upload_f32(&rand_vec(&mut state, row), DType::F32)
        .expect("k");
    let v1 = dev
        .upload_f32(&rand_vec(&mut state, row), DType::F32)
        .expect("v");
    let out = dev.alloc(DType::F32, qv.len()).expect("out");
    Setup {
        cache,
        seq,
        q,
        k: k1,
        v: v1,
        out,
    }
}

fn step(s: &mut Setup) {
    s.cache
        .decode_layer(0, &[s.seq], &s.q, &s.k, &s.v, &s.out)
        .expect("decode");
    black_box(&s.out);
}

fn bench(c: &mut Criterion) {
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(None).expect("cpu device"));
    let mut rows = Vec::new();
    for context in CONTEXTS {
        let mut full = setup(&dev, "full", context);
        let mut ark = setup(&dev, "arkvale", context);
        let mut group = c.benchmark_group(format!("decode_layer_{}k", context / 1024));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(4));
        group.bench_function("full", |b| b.iter(|| step(&mut full)));
        group.bench_function("arkvale_2048", |b| b.iter(|| step(&mut ark)));
        let bytes = context * SHAPE.kv_bytes_per_token_layer(2);
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        group.bench_function("memcpy_kv_bytes", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        group.finish();
        let t_full = median_time(|| step(&mut full), 15);
        let t_ark = median_time(|| step(&mut ark), 15);
        let t_copy = median_time(|| dst.copy_from_slice(black_box(&src)), 15);
        rows.push((context, t_full, t_ark, t_copy, bytes));
    }
    println!(
        "\n| context | full | arkvale (2048) | full / arkvale | full attn GB/s | memcpy GB/s | attn / memcpy |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (ctx, tf, ta, tc, bytes) in rows {
        let gbs = |t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
        println!(
            "| {ctx} | {tf:.2?} | {ta:.2?} | {:.2}x | {:.1} | {:.1} | {:.2} |",
            tf.as_secs_f64() / ta.as_secs_f64(),
            gbs(tf),
            gbs(tc),
            gbs(tf) / gbs(tc)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
