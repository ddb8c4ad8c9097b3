//! Differential cases of the dense model ops (matmul, RMSNorm, RoPE, SiLU-gating, add, bias add,
//! embedding, argmax) against [`arkvale_core::reference::dense`], on random shapes with a fresh
//! seed per run (replay with `PROPTEST_RNG_SEED`). Inputs are random and non-zero (magnitudes
//! in [0.05, 1], both signs); outputs are poisoned (NaN, `u32::MAX`) and allocated a few
//! elements larger than needed, which must stay poisoned.
//!
//! Tolerances, `|device - reference| <= tol * (scale + |reference|)`:
//! * `matmul`: `scale = sum_l |x_il| |w_jl|` of the output (accumulation error grows with that
//!   sum, not with the result); [`TOL_F32`] for f32 weights and [`TOL_HALF`] for f16/bf16
//!   weights, where a backend may also round the activations to half precision (tensor
//!   cores). The reference sees the weights as stored (random f32 values rounded to the
//!   weight type), so the tolerance covers only the backend's own arithmetic; the CPU backend
//!   widens half weights exactly and meets 1e-5 there too (its unit tests check that);
//! * `rmsnorm`, `rope`, `silu_mul`: [`TOL_F32`] with `scale = 1`;
//! * `matmul` with block-quantized weights (where the backend supports them; elsewhere
//!   allocating them must fail with [`arkvale_core::Error::UnsupportedWeight`]): against the
//!   reference on the dequantized weights, with [`TOL_F32`] as above plus, for decode-sized
//!   `m` (up to 8 rows), the rounding of activations to 8 bits per 32 values that a backend may
//!   use: `sum_b (max_b |x| / 127 / 2) * sum_{l in b} |w_jl|` over the blocks `b` of 32;
//! * `add`, `add_bias`, `embedding` (any table type: widening is exact), `argmax`: exact.

use std::sync::Arc;

use arkvale_core::quant::{self, QuantType};
use arkvale_core::{
    Buffer, DType, Device, DeviceExt, MatmulDims, Rope, RopeScaling, RopeStyle, reference,
    rope_inv_freq,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::Case;
use crate::datagen::{Gen, err, poisoned, upload};

/// Tolerance of f32 arithmetic against the reference.
pub const TOL_F32: f32 = 1e-5;
/// Tolerance of matmul with f16/bf16 weights, where a backend may round activations to half
/// precision too.
pub const TOL_HALF: f32 = 1e-2;

/// Random problems per case.
const CASES: u32 = 16;
/// Extra poisoned elements past every output.
const PAD: usize = 3;

/// The dense-op cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "dense::matmul_f32",
            run: |d| matmul(d, DType::F32),
        },
        Case {
            name: "dense::matmul_f16",
            run: |d| matmul(d, DType::F16),
        },
        Case {
            name: "dense::matmul_bf16",
            run: |d| matmul(d, DType::BF16),
        },
        Case {
            name: "dense::matmul_quantized",
            run: matmul_quantized,
        },
        Case {
            name: "dense::rmsnorm",
            run: rmsnorm,
        },
        Case {
            name: "dense::rope_neox",
            run: |d| rope(d, RopeStyle::Neox),
        },
        Case {
            name: "dense::rope_interleaved",
            run: |d| rope(d, RopeStyle::Interleaved),
        },
        Case {
            name: "dense::silu_mul_and_add",
            run: silu_add,
        },
        Case {
            name: "dense::embedding",
            run: embedding,
        },
        Case {
            name: "dense::argmax_ties_and_nan",
            run: argmax,
        },
        Case {
            name: "dense::bad_sizes_are_errors",
            run: bad_sizes,
        },
    ]
}

/// Runs `body` on `CASES` random seeds.
fn check(body: impl Fn(u64) -> Result<(), String>) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    runner
        .run(&any::<u64>(), |seed| {
            body(seed).map_err(TestCaseError::fail)
        })
        .map_err(|e| e.to_string())
}

/// An f32 buffer of `n + PAD` NaNs: the padding catches writes past the end.
fn poisoned_padded(dev: &Arc<dyn Device>, n: usize) -> Result<Buffer, String> {
    poisoned(dev, n + PAD)
}

/// `|got - want| <= tol * (scale[i] + |want|)`, NaN matching NaN only (for the padding).
fn close(got: &[f32], want: &[f32], tol: f32, scale: &[f32], what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    for i in 0..got.len() {
        let (a, b) = (got[i], want[i]);
        let s = scale.get(i).copied().unwrap_or(1.0);
        let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (s + b.abs());
        if !ok {
            return Err(format!(
                "{what}: first mismatch at {i} of {}: device {a} vs reference {b} (tol {tol}, \
                 scale {s})",
                got.len()
            ));
        }
    }
    Ok(())
}

/// Random f32 values rounded to a float `dtype`, and the buffer holding them.
fn table(
    dev: &Arc<dyn Device>,
    g: &mut Gen,
    n: usize,
    dtype: DType,
) -> Result<(Buffer, Vec<f32>), String> {
    let buf = dev.upload_f32(&g.values(n), dtype).map_err(err)?;
    let values = dev.download_f32(&buf).map_err(err)?;
    Ok((buf, values))
}

/// `matmul` over decode (`m` 1..=3) and prefill-sized shapes, `k` up to 300, `n` up to 200,
/// and once per run a 576-wide layer.
fn matmul(dev: &Arc<dyn Device>, dtype: DType) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let m = if g.range(0, 1) == 0 {
            g.range(1, 3)
        } else {
            g.range(4, 40)
        };
        let (n, k) = if g.range(0, 7) == 0 {
            (g.range(64, 160), 576)
        } else {
            (g.range(1, 200), g.range(1, 300))
        };
        let dims = MatmulDims { m, n, k };
        let x = g.values(m * k);
        let (wb, w) = table(dev, &mut g, n * k, dtype)?;
        let (xb, out) = (upload(dev, &x)?, poisoned_padded(dev, m * n)?);
        dev.matmul(&dims, &xb, &wb, &out).map_err(err)?;
        let mut want = vec![f32::NAN; m * n + PAD];
        reference::matmul(&dims, &x, &w, &mut want);
        let mut scale = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                scale[i * n + j] = (0..k).map(|l| (x[i * k + l] * w[j * k + l]).abs()).sum();
            }
        }
        let got = dev.download_f32(&out).map_err(err)?;
        let tol = if dtype == DType::F32 {
            TOL_F32
        } else {
            TOL_HALF
        };
        close(
            &got,
            &want,
            tol,
            &scale,
            &format!("matmul {dtype:?} {dims:?}"),
        )
    })
}

/// Random blocks of `ty` holding `n` values: random bytes, every f16 scale field replaced by a
/// finite value in `[-0.05, 0.05]` (random bits could be NaN or inf).
fn quant_blocks(g: &mut Gen, ty: QuantType, n: usize) -> Vec<u8> {
    let bytes = ty.bytes_for(n).unwrap_or(0);
    let mut data: Vec<u8> = (0..bytes).map(|_| g.below(256) as u8).collect();
    let fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
    };
    for block in data.chunks_exact_mut(ty.block_bytes()) {
        for &at in fields {
            let v = half::f16::from_f32(g.value() * 0.05);
            block[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    data
}

/// `matmul` with every block-quantized weight type over decode (`m` 1..=8) and prefill sizes.
fn matmul_quantized(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let ty = QuantType::ALL[g.below(QuantType::ALL.len())];
        let dtype = DType::Quant(ty);
        let m = if g.range(0, 1) == 0 {
            g.range(1, 8)
        } else {
            g.range(9, 40)
        };
        let (n, k) = (g.range(1, 100), g.range(1, 3) * ty.block_len());
        if !dev.supports_weight_dtype(dtype) {
            return match dev.alloc(dtype, n * k) {
                Err(arkvale_core::Error::UnsupportedWeight { .. }) => Ok(()),
                other => Err(format!(
                    "{dtype}: unsupported, yet alloc gave {other:?} instead of UnsupportedWeight"
                )),
            };
        }
        let dims = MatmulDims { m, n, k };
        let x = g.values(m * k);
        let data = quant_blocks(&mut g, ty, n * k);
        let wb = dev.alloc(dtype, n * k).map_err(err)?;
        dev.write(&wb, 0, &data).map_err(err)?;
        let mut w = vec![0f32; n * k];
        quant::dequantize(ty, &data, &mut w).map_err(|e| e.to_string())?;
        let (xb, out) = (upload(dev, &x)?, poisoned_padded(dev, m * n)?);
        dev.matmul(&dims, &xb, &wb, &out).map_err(err)?;
        let mut want = vec![f32::NAN; m * n + PAD];
        reference::matmul(&dims, &x, &w, &mut want);
        let got = dev.download_f32(&out).map_err(err)?;
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            for j in 0..n {
                let wj = &w[j * k..(j + 1) * k];
                let abs: f32 = xi.iter().zip(wj).map(|(a, b)| (a * b).abs()).sum();
                let mut tol = TOL_F32 * (abs + want[i * n + j].abs());
                if m <= 8 {
                    for (xb, wb) in xi.chunks(32).zip(wj.chunks(32)) {
                        let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        tol += step / 2.0 * wb.iter().map(|v| v.abs()).sum::<f32>() * 1.001;
                    }
                }
                let (a, b) = (got[i * n + j], want[i * n + j]);
                if (a - b).abs().is_nan() || (a - b).abs() > tol {
                    return Err(format!(
                        "matmul {dtype} {dims:?} at ({i}, {j}): device {a} vs reference {b} \
                         (tol {tol})"
                    ));
                }
            }
        }
        close(&got[m * n..], &want[m * n..], 0.0, &[], "matmul padding")
    })
}

fn rmsnorm(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let (rows, dim) = (g.range(1, 9), g.range(1, 600));
        let eps = [1e-5f32, 1e-6, 0.0][g.range(0, 2)];
        let (x, w) = (g.values(rows * dim), g.values(dim));
        let (xb, wb, out) = (
            upload(dev, &x)?,
            upload(dev, &w)?,
            poisoned_padded(dev, rows * dim)?,
        );
        dev.rmsnorm(rows, dim, eps, &xb, &wb, &out).map_err(err)?;
        let mut want = vec![f32::NAN; rows * dim + PAD];
        reference::rmsnorm(rows, dim, eps, &x, &w, &mut want);
        let got = dev.download_f32(&out).map_err(err)?;
        close(&got, &want, TOL_F32, &[], &format!("rmsnorm {rows}x{dim}"))
    })
}

/// `rope` with plain, linear and llama3 frequency tables, positions up to 33k, random head
/// counts and even head dims; the buffer's padding must be left alone.
fn rope(dev: &Arc<dyn Device>, style: RopeStyle) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let (tokens, heads, d) = (g.range(1, 7), g.range(1, 5), 2 * g.range(1, 40));
        let scaling = match g.range(0, 2) {
            0 => RopeScaling::None,
            1 => RopeScaling::Linear { factor: 4.0 },
            _ => RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        };
        let theta = [10000.0f32, 500000.0, 100000.0][g.range(0, 2)];
        let inv_freq = rope_inv_freq(d, theta, scaling).map_err(err)?;
        let position_scale = [1.0f32, 0.5][g.range(0, 1)];
        let r = Rope {
            style,
            heads,
            head_dim: d,
            inv_freq: &inv_freq,
            position_scale,
        };
        let positions: Vec<u32> = (0..tokens).map(|_| g.range(0, 33000) as u32).collect();
        let mut x = g.values(tokens * heads * d);
        x.extend([7.0f32; PAD]);
        let xb = upload(dev, &x)?;
        dev.rope(&r, &positions, &xb).map_err(err)?;
        reference::rope(&r, &positions, &mut x);
        let got = dev.download_f32(&xb).map_err(err)?;
        close(
            &got,
            &x,
            TOL_F32,
            &[],
            &format!("rope {style:?} {tokens}x{heads}x{d} {scaling:?}"),
        )
    })
}

fn silu_add(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let len = g.range(1, 70000);
        let (gate, up) = (g.values(len), g.values(len));
        let gate: Vec<f32> = gate.iter().map(|v| v * 8.0).collect(); // both silu tails
        let (gb, ub, out) = (
            upload(dev, &gate)?,
            upload(dev, &up)?,
            poisoned_padded(dev, len)?,
        );
        dev.silu_mul(len, &gb, &ub, &out).map_err(err)?;
        let mut want = vec![f32::NAN; len + PAD];
        reference::silu_mul(&gate, &up, &mut want[..len]);
        let got = dev.download_f32(&out).map_err(err)?;
        close(&got, &want, TOL_F32, &[], &format!("silu_mul of {len}"))?;

        let mut x = g.values(len);
        x.extend([7.0f32; PAD]);
        let xb = upload(dev, &x)?;
        dev.add(len, &xb, &ub).map_err(err)?;
        reference::add(&mut x[..len], &up);
        let got = dev.download_f32(&xb).map_err(err)?;
        close(&got, &x, 0.0, &[0.0; 0], &format!("add of {len}"))?;

        let (rows, cols) = (g.range(1, 300), g.range(1, 900));
        let bias = g.values(cols);
        let mut x = g.values(rows * cols);
        x.extend([7.0f32; PAD]);
        let (xb, bb) = (upload(dev, &x)?, upload(dev, &bias)?);
        dev.add_bias(rows, cols, &xb, &bb).map_err(err)?;
        reference::add_bias(&mut x[..rows * cols], &bias);
        let got = dev.download_f32(&xb).map_err(err)?;
        close(&got, &x, 0.0, &[0.0; 0], &format!("add_bias {rows}x{cols}"))
    })
}

fn embedding(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let dtype = [DType::F32, DType::F16, DType::BF16][g.range(0, 2)];
        let (vocab, dim, n) = (g.range(1, 300), g.range(1, 200), g.range(1, 40));
        let (tb, t) = table(dev, &mut g, vocab * dim, dtype)?;
        let ids: Vec<u32> = (0..n).map(|_| g.range(0, vocab - 1) as u32).collect();
        let out = poisoned_padded(dev, n * dim)?;
        dev.embedding(dim, &tb, &ids, &out).map_err(err)?;
        let mut want = vec![f32::NAN; n * dim + PAD];
        reference::embedding(dim, &t, &ids, &mut want);
        let got = dev.download_f32(&out).map_err(err)?;
        close(
            &got,
            &want,
            0.0,
            &[0.0; 0],
            &format!("embedding {dtype:?} {vocab}x{dim}"),
        )
    })
}

/// `argmax` over values from a small set (ties everywhere), some NaN and some all-NaN rows.
fn argmax(dev: &Arc<dyn Device>) -> Result<(), String> {
    check(|seed| {
        let mut g = Gen::new(seed);
        let (rows, cols) = (g.range(1, 9), g.range(1, 5000));
        let mut logits: Vec<f32> = (0..rows * cols)
            .map(|_| match g.range(0, 9) {
                0 => f32::NAN,
                v => (v as f32 - 5.0) * 0.5,
            })
            .collect();
        if rows > 1 {
            logits[..cols].fill(f32::NAN);
        }
        let lb = upload(dev, &logits)?;
        let out = dev.alloc(DType::U32, rows + PAD).map_err(err)?;
        dev.write(&out, 0, &u32_bytes(&vec![u32::MAX; rows + PAD]))
            .map_err(err)?;
        dev.argmax(rows, cols, &lb, &out).map_err(err)?;
        let mut want = vec![u32::MAX; rows + PAD];
        reference::argmax(rows, cols, &logits, &mut want);
        let got = dev.download_u32(&out, 0, rows + PAD).map_err(err)?;
        if got != want {
            return Err(format!(
                "argmax {rows}x{cols}: device {got:?} vs reference {want:?}"
            ));
        }
        Ok(())
    })
}

/// The bytes of u32 values (little-endian, as device buffers hold them).
fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every op rejects buffers that are too small, wrong dtypes, out-of-range ids, bad RoPE
/// tables and aliased outputs with an error (and does not panic).
fn bad_sizes(dev: &Arc<dyn Device>) -> Result<(), String> {
    let f = |n: usize| upload(dev, &vec![0.5f32; n]);
    let (x, w, out) = (f(6)?, f(6)?, f(4)?);
    let u = dev.alloc(DType::U32, 4).map_err(err)?;
    let rope = |d: usize, inv: &'static [f32]| Rope {
        style: RopeStyle::Neox,
        heads: 1,
        head_dim: d,
        inv_freq: inv,
        position_scale: 1.0,
    };
    let checks: Vec<(&str, arkvale_core::Result<()>)> = vec![
        (
            "matmul x too small",
            dev.matmul(&MatmulDims { m: 2, n: 2, k: 4 }, &x, &w, &out),
        ),
        (
            "matmul out too small",
            dev.matmul(&MatmulDims { m: 3, n: 3, k: 2 }, &x, &w, &out),
        ),
        (
            "matmul out aliases x",
            dev.matmul(&MatmulDims { m: 1, n: 1, k: 1 }, &x, &w, &x),
        ),
        (
            "matmul u32 weights",
            dev.matmul(&MatmulDims { m: 1, n: 1, k: 1 }, &x, &u, &out),
        ),
        (
            "matmul overflow",
            dev.matmul(
                &MatmulDims {
                    m: usize::MAX,
                    n: 2,
                    k: 2,
                },
                &x,
                &w,
                &out,
            ),
        ),
        (
            "rmsnorm weight too small",
            dev.rmsnorm(1, 6, 1e-5, &x, &out, &w),
        ),
        ("rmsnorm zero dim", dev.rmsnorm(1, 0, 1e-5, &x, &w, &out)),
        ("rmsnorm aliased", dev.rmsnorm(1, 4, 1e-5, &x, &w, &x)),
        ("rope odd head_dim", dev.rope(&rope(3, &[1.0]), &[0], &x)),
        (
            "rope wrong table",
            dev.rope(&rope(6, &[1.0, 0.1]), &[0], &x),
        ),
        (
            "rope x too small",
            dev.rope(&rope(4, &[1.0, 0.1]), &[0, 1], &x),
        ),
        ("silu_mul too long", dev.silu_mul(5, &x, &w, &out)),
        ("silu_mul aliased", dev.silu_mul(4, &x, &w, &w)),
        ("add same buffer", dev.add(4, &x, &x)),
        ("add too long", dev.add(5, &x, &out)),
        ("add_bias same buffer", dev.add_bias(1, 4, &x, &x)),
        ("add_bias x too small", dev.add_bias(2, 4, &x, &w)),
        ("add_bias bias too small", dev.add_bias(1, 5, &x, &out)),
        ("add_bias zero cols", dev.add_bias(1, 0, &x, &w)),
        (
            "embedding id outside vocab",
            dev.embedding(2, &w, &[3], &out),
        ),
        (
            "embedding out too small",
            dev.embedding(2, &w, &[0, 1, 2], &out),
        ),
        ("embedding zero dim", dev.embedding(0, &w, &[0], &out)),
        ("argmax zero cols", dev.argmax(1, 0, &x, &u)),
        ("argmax f32 out", dev.argmax(1, 6, &x, &out)),
        ("argmax out too small", dev.argmax(6, 1, &x, &u)),
    ];
    for (what, r) in checks {
        if r.is_ok() {
            return Err(format!("{what}: accepted"));
        }
    }
    Ok(())
}
