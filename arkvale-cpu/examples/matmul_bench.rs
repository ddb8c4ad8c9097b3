//! Matmul throughput of `CpuDevice` on SmolLM2-135M-sized layers (`W` 1536 x 576 and
//! 576 x 1536) for decode (`m = 1`) and prefill (`m = 512`), plus the tied-embedding logits
//! matrix (49152 x 576, larger than the caches), with f32, f16 and bf16 weights.
//!
//! `cargo run --release -p arkvale-cpu --example matmul_bench [-- THREADS]`

use std::time::{Duration, Instant};

use arkvale_core::{DType, Device, DeviceExt, MatmulDims};
use arkvale_cpu::CpuDevice;
use arkvale_testkit::XorShift;

fn main() -> arkvale_core::Result<()> {
    let threads = std::env::args().nth(1).and_then(|s| s.parse().ok());
    let dev = CpuDevice::new(threads)?;
    println!("threads: {}", dev.threads());
    println!("| n x k | m | weights | GFLOP/s | ms/call |");
    println!("|---|---|---|---|---|");
    for (n, k) in [(1536usize, 576usize), (576, 1536), (49152, 576)] {
        for m in [1usize, 512] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let dims = MatmulDims { m, n, k };
                let x = dev.upload_f32(&values(m * k, 1), DType::F32)?;
                let w = dev.upload_f32(&values(n * k, 2), dtype)?;
                let out = dev.alloc(DType::F32, m * n)?;
                dev.matmul(&dims, &x, &w, &out)?; // warm-up
                let (mut calls, start) = (0u32, Instant::now());
                while start.elapsed() < Duration::from_millis(700) || calls < 3 {
                    dev.matmul(&dims, &x, &w, &out)?;
                    calls += 1;
                }
                let secs = start.elapsed().as_secs_f64() / calls as f64;
                println!(
                    "| {n} x {k} | {m} | {dtype:?} | {:.1} | {:.3} |",
                    dims.flops() / secs / 1e9,
                    secs * 1e3
                );
            }
        }
    }
    Ok(())
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    XorShift::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).vec(n, 1.0)
}
