//! The dense ops of `CpuDevice` where the CPU promises more than the cross-backend suite checks,
//! on both execution paths (inline on the calling thread and fanned out over a 3-thread pool),
//! on random non-zero inputs (magnitudes in [0.05, 1], both signs; proptest draws shapes and a
//! fresh seed) with NaN-poisoned outputs a few elements longer than needed.
//!
//! RMSNorm, RoPE, SiLU-gating, add, embedding and argmax have no tests here: the suite's dense
//! cases cover them with the same tolerances, and `tests::suite_cases_pass_inline_and_on_the_pool`
//! runs those cases on both paths.
//!
//! Tolerances, `|cpu - reference| <= tol * (scale + |reference|)`:
//! * `matmul`, f32 weights: `1e-5` with `scale = sum_l |x_il w_jl|` (f32 accumulation error
//!   grows with that sum);
//! * `matmul`, f16/bf16 weights: the same — the CPU widens half weights exactly and the
//!   reference sees the same widened values (the suite allows `1e-2` there, for backends that
//!   also round activations); the same test checks against the **unrounded** f32 weights
//!   within `1e-2` (f16) / `1e-2 * 8` (bf16, 8 mantissa bits);
//! * `matmul` with an empty inner dimension writes zeros (the suite draws `k >= 1`);
//! * quantized weights against the same device on the dequantized weights (see that test).

use std::sync::Arc;

use arkvale_core::{Buffer, DType, Device, DeviceExt, MatmulDims, reference};
use proptest::prelude::*;

use arkvale_testkit::XorShift as Rng;

use crate::CpuDevice;

const TOL: f32 = 1e-5;
const PAD: usize = 3;

/// A device on the inline path and one that always uses its 3-thread pool.
fn devices() -> [Arc<dyn Device>; 2] {
    let mut inline = CpuDevice::new(Some(3)).unwrap();
    inline.set_inline_work(usize::MAX);
    let mut pool = CpuDevice::new(Some(3)).unwrap();
    pool.set_inline_work(0);
    [Arc::new(inline), Arc::new(pool)]
}

fn poisoned(dev: &Arc<dyn Device>, n: usize) -> Buffer {
    dev.upload_f32(&vec![f32::NAN; n + PAD], DType::F32)
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, scale: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for i in 0..got.len() {
        let (a, b) = (got[i], want[i]);
        let s = scale.get(i).copied().unwrap_or(1.0);
        assert!(
            (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (s + b.abs()),
            "{what}: at {i}: cpu {a} vs reference {b}"
        );
    }
}

/// `sum_l |x_il w_jl|` per output.
fn abs_scale(d: &MatmulDims, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut s = Vec::with_capacity(d.m * d.n);
    for i in 0..d.m {
        for j in 0..d.n {
            s.push(
                (0..d.k)
                    .map(|l| (x[i * d.k + l] * w[j * d.k + l]).abs())
                    .sum(),
            );
        }
    }
    s
}

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![DType::F32, DType::F16, DType::BF16])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_reference(
        m in prop_oneof![1usize..=3, 4usize..=37],
        n in 1usize..=150,
        k in prop_oneof![1usize..=70, Just(576usize)],
        dt in dtype(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let dims = MatmulDims { m, n, k };
        let (x, w0) = (rng.values(m * k), rng.values(n * k));
        for dev in devices() {
            let wb = dev.upload_f32(&w0, dt).unwrap();
            let w = dev.download_f32(&wb).unwrap();
            let xb = dev.upload_f32(&x, DType::F32).unwrap();
            let out = poisoned(&dev, m * n);
            dev.matmul(&dims, &xb, &wb, &out).unwrap();
            let mut want = vec![f32::NAN; m * n + PAD];
            reference::matmul(&dims, &x, &w, &mut want);
            let got = dev.download_f32(&out).unwrap();
            assert_close(&got, &want, TOL, &abs_scale(&dims, &x, &w), &format!("{dt:?} {dims:?}"));
            // Against the unrounded weights: the half types' own rounding.
            if dt != DType::F32 {
                reference::matmul(&dims, &x, &w0, &mut want);
                let tol = if dt == DType::F16 { 1e-2 } else { 8e-2 };
                assert_close(&got, &want, tol, &abs_scale(&dims, &x, &w0), "vs f32 weights");
            }
        }
    }

}

#[test]
fn matmul_with_empty_inner_dimension_writes_zeros() {
    for dev in devices() {
        let x = dev.alloc(DType::F32, 0).unwrap();
        let w = dev.alloc(DType::F16, 0).unwrap();
        let out = poisoned(&dev, 6);
        dev.matmul(&MatmulDims { m: 2, n: 3, k: 0 }, &x, &w, &out)
            .unwrap();
        let got = dev.download_f32(&out).unwrap();
        assert!(got[..6].iter().all(|v| *v == 0.0) && got[6..].iter().all(|v| v.is_nan()));
    }
}

#[test]
fn foreign_handles_are_errors_not_panics() {
    // Bad sizes, dtypes and aliasing are rejected by core's checked `Device` layer before the
    // backend runs (tested once in `arkvale-core`); a handle of another device is the
    // backend's to reject.
    let dev = CpuDevice::new(Some(2)).unwrap();
    let other = CpuDevice::new(Some(1)).unwrap();
    let x = dev.upload_f32(&[0.5; 8], DType::F32).unwrap();
    let w = dev.upload_f32(&[0.5; 8], DType::BF16).unwrap();
    let out = dev.alloc(DType::F32, 8).unwrap();
    let foreign = other.alloc(DType::F32, 8).unwrap();
    let dims = MatmulDims { m: 2, n: 2, k: 4 };
    let is_device =
        |r: arkvale_core::Result<()>| matches!(r, Err(arkvale_core::Error::Device { .. }));
    assert!(dev.matmul(&dims, &x, &w, &out).is_ok());
    assert!(is_device(dev.matmul(&dims, &x, &w, &foreign)));
    assert!(is_device(dev.rmsnorm(2, 4, 1e-5, &x, &out, &foreign)));
    assert!(is_device(dev.add(8, &out, &foreign)));
    assert!(is_device(dev.embedding(4, &w, &[1], &foreign)));
}

/// The device matmul and embedding with weights kept quantized against the same device on
/// the dequantized weights uploaded as f32: prefill-sized `m` within `1e-5 * sum |x w|`
/// (dequantized tiles through `gemm`: only the f32 summation order differs), decode-sized
/// `m` (<= 8) within that plus the activations' 8-bit rounding,
/// `sum_b (max_b |x| / 127 / 2) * sum_{l in b} |w_jl|` over blocks `b` of 32; the embedding
/// exactly. Outputs are poisoned. (Rows that are not whole blocks are rejected by core's
/// checked `Device` layer, tested in `arkvale-core`.)
#[test]
fn quantized_weights_match_dequantized_f32_weights() {
    use arkvale_core::quant::{self, QuantType};
    for dev in devices() {
        for (t, ty) in QuantType::ALL.into_iter().enumerate() {
            let dtype = DType::Quant(ty);
            assert!(dev.supports_weight_dtype(dtype));
            let (n, k) = (37, 2 * ty.block_len());
            let mut rng = Rng(0x9E37_79B9 + t as u64);
            let mut data: Vec<u8> = (0..ty.bytes_for(n * k).unwrap())
                .map(|_| rng.next_u64() as u8)
                .collect();
            let scale_at: &[usize] = if ty == QuantType::Q6_K {
                &[208]
            } else {
                &[0, 2]
            };
            for block in data.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_at {
                    let v = half::f16::from_f32(rng.value() * 0.02);
                    block[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            let wq = dev.alloc(dtype, n * k).unwrap();
            dev.write(&wq, 0, &data).unwrap();
            assert_eq!(wq.bytes(), data.len());
            let w = dev.download_f32(&wq).unwrap();
            let mut want_w = vec![0f32; n * k];
            quant::dequantize(ty, &data, &mut want_w).unwrap();
            assert_eq!(w, want_w, "{ty}: download dequantizes");
            let wf = dev.upload_f32(&w, DType::F32).unwrap();
            for m in [1, 3, 8, 9, 33] {
                let dims = MatmulDims { m, n, k };
                let x: Vec<f32> = (0..m * k).map(|_| rng.value()).collect();
                let xb = dev.upload_f32(&x, DType::F32).unwrap();
                let (got_b, want_b) = (poisoned(&dev, m * n), poisoned(&dev, m * n));
                dev.matmul(&dims, &xb, &wq, &got_b).unwrap();
                dev.matmul(&dims, &xb, &wf, &want_b).unwrap();
                let got = dev.download_f32(&got_b).unwrap();
                let want = dev.download_f32(&want_b).unwrap();
                assert!(
                    got[m * n..].iter().all(|v| v.is_nan()),
                    "{ty}: padding written"
                );
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    for j in 0..n {
                        let wj = &w[j * k..(j + 1) * k];
                        let abs: f32 = xi.iter().zip(wj).map(|(a, b)| (a * b).abs()).sum();
                        let mut tol = TOL * abs;
                        if m <= 8 {
                            for (xb, wb) in xi.chunks(32).zip(wj.chunks(32)) {
                                let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                                tol += step / 2.0 * wb.iter().map(|v| v.abs()).sum::<f32>() * 1.001;
                            }
                        }
                        let (a, b) = (got[i * n + j], want[i * n + j]);
                        assert!((a - b).abs() <= tol, "{ty} m {m} ({i}, {j}): {a} vs {b}");
                    }
                }
            }
            let ids = [5u32, 0, 36];
            let out = poisoned(&dev, ids.len() * k);
            dev.embedding(k, &wq, &ids, &out).unwrap();
            let got = dev.download_f32(&out).unwrap();
            for (r, &id) in ids.iter().enumerate() {
                let want = &w[id as usize * k..(id as usize + 1) * k];
                assert_eq!(&got[r * k..(r + 1) * k], want, "{ty} embedding row {id}");
            }
        }
    }
}
