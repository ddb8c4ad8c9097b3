//! Decode-shaped matmuls (`m` = 1 and 4 rows) with quantized weights kept as stored, against
//! the same product with f32 and f16 weights, all in one run on one thread and on the whole
//! pool. Shapes are SmolLM2-135M's MLP up/gate (`1536 x 576`) and down (`576 x 1536`)
//! projections, its tied output layer (`49152 x 576`) and Qwen2.5-0.5B's MLP up/gate
//! (`4864 x 896`, Q5_0 in its Q4_K_M file) and down (`896 x 4864`) projections; a type whose
//! block does not divide a shape's `k` is skipped there. `ARKVALE_BENCH_CASE=TEXT` runs only
//! the shapes whose name contains `TEXT`.
//!
//! Weights are random blocks (scales patched to small finite f16 values), activations random.
//! After criterion's report a summary prints, per shape and type, the time per call, the
//! weight bytes streamed per second, and the speed-up over f32 weights measured in the same run.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arkvale_core::quant::QuantType;
use arkvale_core::{Buffer, DType, Device, DeviceExt, MatmulDims};
use arkvale_cpu::CpuDevice;
use arkvale_testkit::XorShift;
use common::median_time;
use criterion::{Criterion, criterion_group, criterion_main};
use half::f16;

/// `(name, n, k)` of each weight matrix.
const SHAPES: [(&str, usize, usize); 5] = [
    ("smollm2 mlp up", 1536, 576),
    ("smollm2 mlp down", 576, 1536),
    ("smollm2 lm head", 49152, 576),
    ("qwen2.5 mlp up", 4864, 896),
    ("qwen2.5 mlp down", 896, 4864),
];
const ROWS: [usize; 2] = [1, 4];

/// Offsets of the f16 scales of one block of `ty` (patched so values stay finite).
fn scale_offsets(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q6_K => &[208],
        _ => &[0, 2],
    }
}

fn random_weights(dev: &Arc<dyn Device>, dtype: DType, n: usize, k: usize) -> Buffer {
    let mut state = XorShift(0x9E37_79B9_7F4A_7C15u64 ^ (n * k) as u64);
    match dtype.quant() {
        Some(ty) => {
            let bytes = ty.bytes_for(n * k).expect("whole blocks");
            let mut data: Vec<u8> = (0..bytes).map(|_| state.next_u64() as u8).collect();
            let scale = f16::from_f32(0.01).to_le_bytes();
            for block in data.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_offsets(ty) {
                    block[at..at + 2].copy_from_slice(&scale);
                }
            }
            let buf = dev.alloc(dtype, n * k).expect("alloc");
            dev.write(&buf, 0, &data).expect("write");
            buf
        }
        None => {
            let values: Vec<f32> = (0..n * k)
                .map(|_| (state.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            dev.upload_f32(&values, dtype).expect("upload")
        }
    }
}

fn bench(c: &mut Criterion) {
    let types = [
        DType::F32,
        DType::F16,
        DType::Quant(QuantType::Q4_0),
        DType::Quant(QuantType::Q4_1),
        DType::Quant(QuantType::Q5_0),
        DType::Quant(QuantType::Q8_0),
        DType::Quant(QuantType::Q4_K),
        DType::Quant(QuantType::Q5_K),
        DType::Quant(QuantType::Q6_K),
    ];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut summary = Vec::new();
    let only = std::env::var("ARKVALE_BENCH_CASE").ok();
    for pool in [1, threads] {
        let dev: Arc<dyn Device> = Arc::new(CpuDevice::new(Some(pool)).expect("cpu device"));
        let shapes = SHAPES
            .iter()
            .filter(|(name, ..)| only.as_deref().is_none_or(|t| name.contains(t)));
        for &(name, n, k) in shapes {
            for m in ROWS {
                let mut state = XorShift(7);
                let x: Vec<f32> = (0..m * k)
                    .map(|_| (state.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    .collect();
                let x = dev.upload_f32(&x, DType::F32).expect("x");
                let out = dev.alloc(DType::F32, m * n).expect("out");
                let dims = MatmulDims { m, n, k };
                let mut group = c.benchmark_group(format!("{name} m={m} threads={pool}"));
                group
                    .sample_size(10)
                    .measurement_time(Duration::from_secs(1))
                    .warm_up_time(Duration::from_millis(300));
                let mut f32_time = None;
                for dtype in types {
                    if k % dtype.block_len() != 0 {
                        continue;
                    }
                    let w = random_weights(&dev, dtype, n, k);
                    let mut call = || {
                        dev.matmul(&dims, &x, &w, &out).expect("matmul");
                        black_box(&out);
                    };
                    group.bench_function(format!("{dtype}"), |b| b.iter(&mut call));
                    let t = median_time(&mut call, 21);
                    let base = *f32_time.get_or_insert(t);
                    let bytes = dtype.bytes_for(w.len()).expect("size");
                    summary.push((name, m, pool, dtype, t, bytes, base));
                }
                group.finish();
            }
        }
    }
    println!(
        "\n| shape | m | threads | weights | time | weight GB/s | speed-up vs f32 |\n|---|---|---|---|---|---|---|"
    );
    for (name, m, pool, dtype, t, bytes, base) in summary {
        println!(
            "| {name} | {m} | {pool} | {dtype} | {t:.1?} | {:.1} | {:.2}x |",
            bytes as f64 / t.as_secs_f64() / 1e9,
            base.as_secs_f64() / t.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
