//! Prefill attention of one layer: the last 512 query tokens of a 4096-token prompt against
//! every page up to them (causal), f16 storage, pages of 16, one page table per KV head (the
//! default layout), for the head shapes of SmolLM2-135M (9 query / 3 KV heads × 64) and
//! Qwen2.5-0.5B (14 / 2 × 64). The achieved rate (multiply-adds of `Q·Kᵀ` and `P·V` over the
//! tokens each query sees) is compared in the same run with a dense f32 product of the `gemm`
//! crate (`[512·gqa, 64] × [64, 4096]`, the scores of one KV head without the causal half),
//! on the same threads.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arkvale_core::{
    AttnPage, AttnRow, AttnState, Buffer, DType, Device, DeviceExt, KvDtype, KvLayout,
};
use arkvale_cpu::CpuDevice;
use arkvale_testkit::XorShift;
use common::median_time;
use criterion::{Criterion, criterion_group, criterion_main};

const CONTEXT: usize = 4096;
const QUERIES: usize = 512;
const PAGE: usize = 16;
const HEAD_DIM: usize = 64;

/// `(name, KV heads, query heads per KV head)`.
const SHAPES: [(&str, usize, usize); 2] = [("smollm2_9q_3kv", 3, 3), ("qwen25_14q_2kv", 2, 7)];

struct Setup {
    layout: KvLayout,
    pool: Buffer,
    q: Buffer,
    rows: Vec<AttnRow>,
    pages: Vec<AttnPage>,
    state: AttnState,
    flops: f64,
}

fn setup(dev: &Arc<dyn Device>, kv_heads: usize, gqa: usize) -> Setup {
    let layout = KvLayout {
        kv_dtype: KvDtype::F16,
        heads_per_group: 1,
        gqa,
        page_size: PAGE,
        head_dim: HEAD_DIM,
        groups: kv_heads,
    };
    let slots_per_group = CONTEXT / PAGE;
    let slots = slots_per_group * kv_heads;
    let mut seed = XorShift(0x9E37_79B9_7F4A_7C15_u64);
    let pool_vals = seed.vec(slots * layout.slot_elems(), 1.0);
    let pool = dev.upload_f32(&pool_vals, DType::F16).expect("pool");
    let q_heads = kv_heads * gqa;
    let q = dev
        .upload_f32(&seed.vec(QUERIES * q_heads * HEAD_DIM, 1.0), DType::F32)
        .expect("q");
    let pages: Vec<AttnPage> = (0..slots)
        .map(|s| AttnPage {
            slot: s as u32,
            base_pos: ((s % slots_per_group) * PAGE) as u32,
            len: PAGE as u32,
        })
        .collect();
    let first = CONTEXT - QUERIES;
    let rows: Vec<AttnRow> = (0..kv_heads)
        .flat_map(|g| {
            (0..QUERIES).map(move |i| AttnRow {
                q_row: i as u32,
                group: g as u32,
                pos: (first + i) as u32,
                page_start: (g * slots_per_group) as u32,
                page_count: slots_per_group as u32,
            })
        })
        .collect();
    let state = AttnState {
        acc: dev
            .alloc(DType::F32, QUERIES * q_heads * HEAD_DIM)
            .expect("acc"),
        max: dev.alloc(DType::F32, QUERIES * q_heads).expect("max"),
        sum: dev.alloc(DType::F32, QUERIES * q_heads).expect("sum"),
    };
    let seen: usize = (first..CONTEXT).map(|p| p + 1).sum();
    let flops = (seen * q_heads * HEAD_DIM * 4) as f64;
    Setup {
        layout,
        pool,
        q,
        rows,
        pages,
        state,
        flops,
    }
}

fn run(dev: &Arc<dyn Device>, s: &Setup) {
    dev.prefill_attention(
        &s.layout, &s.pool, &s.q, &s.rows, &s.pages, None, 0.125, &s.state,
    )
    .expect("prefill attention");
    dev.synchronize().expect("sync");
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(threads)).expect("cpu device"));
    let mut table = Vec::new();
    for (name, kv_heads, gqa) in SHAPES {
        let s = setup(&dev, kv_heads, gqa);
        let (m, k, n) = (QUERIES * gqa, HEAD_DIM, CONTEXT);
        let mut seed = XorShift(7);
        let (a, b) = (seed.vec(m * k, 1.0), seed.vec(k * n, 1.0));
        let mut dst = vec![0f32; m * n];
        let mut gemm_once = || {
            // SAFETY: `dst` is m×n, `a` m×k and `b` k×n, all row-major with the strides given.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            };
            black_box(&dst);
        };
        let mut group = c.benchmark_group(format!("prefill_attention_{name}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4));
        group.bench_function("attention", |bch| bch.iter(|| run(&dev, &s)));
        group.bench_function("gemm_f32", |bch| bch.iter(&mut gemm_once));
        group.finish();
        let t_attn = median_time(|| run(&dev, &s), 7);
        let t_gemm = median_time(&mut gemm_once, 7);
        let gflops = |f: f64, t: Duration| f / t.as_secs_f64() / 1e9;
        table.push((
            name,
            t_attn,
            gflops(s.flops, t_attn),
            gflops((2 * m * n * k) as f64, t_gemm),
        ));
    }
    println!(
        "\n{threads} threads, context {CONTEXT}, last {QUERIES} queries, f16 KV, pages of {PAGE}"
    );
    println!("| shape | attention | attention GFLOP/s | gemm f32 GFLOP/s | attention / gemm |");
    println!("|---|---|---|---|---|");
    for (name, t, ga, gg) in table {
        println!("| {name} | {t:.2?} | {ga:.1} | {gg:.1} | {:.2} |", ga / gg);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
