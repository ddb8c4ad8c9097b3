//! `out[m, n] = x[m, k] · Wᵀ` on the CPU, with `W` `[n, k]` in f32, f16 or bf16.
//!
//! * f32 weights with `m >= GEMM_MIN_ROWS`: one call of the `gemm` crate over the whole
//!   problem, multithreaded on the device's rayon pool (`Parallelism::Rayon`).
//! * Everything else is split into blocks of `W` rows (output columns), one task per block on
//!   the pool. With `m >= GEMM_MIN_ROWS`, a block's f16/bf16 rows are widened into an f32
//!   scratch tile (exact; at most 256 KiB, so it stays in L2 and each weight is converted once
//!   per call) and multiplied by single-threaded `gemm`. Below that (decode), each weight row
//!   is dotted with the few rows of `x` by a fused AVX2/FMA/F16C kernel (`fused`: weights
//!   loaded in their storage type and widened in registers) where the CPU has those features,
//!   else widened into an L1-resident buffer for the portable `elem::dot`.
//!
//! Why widen on the fly: half weights keep half the memory, and `gemm`'s own f16 kernels
//! would need f16 activations and an f16 output, i.e. a result rounded to f16, which the
//! contract rules out. Measured on the 2-core dev machine (release,
//! `cargo run --release -p arkvale-cpu --example matmul_bench [-- THREADS]`, `W` 1536 x 576 /
//! 576 x 1536 / 49152 x 576; the machine was shared, so only numbers of one run compare):
//! * m = 512, 2 threads, quiet machine: f32 ~230 GFLOP/s, f16 ~200, bf16 ~205 (the widening
//!   costs ~12%).
//! * m = 1: `gemm` gave only ~20-25 GFLOP/s for f32 (2 threads), half of the dot path, hence
//!   the dot path. One thread, same run, widen-then-SSE-dot vs fused kernels: f32 27 -> 34,
//!   bf16 15 -> 37, f16 (F16C already) ~45 either way; on the 49152 x 576 logits matrix
//!   (beyond the caches, memory-bound) f32 ~15, bf16 15 -> 27, f16 ~31: half weights are the
//!   faster choice for decode.
//!
//! Block-quantized weights go to `crate::quant` (integer dots for decode, dequantized tiles
//! for prefill).
//!
//! Accumulation is f32 throughout (each output is one dot product of length `k`; the order of
//! the additions differs from a left fold, within f32 rounding).

use gemm::Parallelism;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use arkvale_core::QuantType;

use crate::elem::{KvElem, dot};
use crate::gemm_tile::{OutPtr, TILE_ELEMS, gemm_block};
use crate::par::Par;
use crate::quant;

/// Below this many rows of `x`, blocks use dot products instead of `gemm`.
pub(crate) const GEMM_MIN_ROWS: usize = 4;

/// The weights of a matmul, in their storage type.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// f32 `[n, k]`.
    F32(&'a [f32]),
    /// f16 `[n, k]`.
    F16(&'a [f16]),
    /// bf16 `[n, k]`.
    BF16(&'a [bf16]),
    /// Block-quantized `[n, k]`, rows of whole blocks (see `crate::quant`).
    Quant(QuantType, &'a [u8]),
}

/// `out[..m * n] = x[..m * k] · w[..n * k]ᵀ` (lengths checked by the caller).
pub(crate) fn matmul(
    par: Par,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    if let Weights::Quant(ty, w) = w {
        quant::matmul(par, quant::Kernel::detect(), m, n, k, x, ty, w, out);
        return;
    }
    let (x, out) = (&x[..m * k], &mut out[..m * n]);
    if let Weights::F32(w) = w {
        if m >= GEMM_MIN_ROWS {
            let threads = par.threads();
            let p = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            // gemm's Rayon parallelism runs on the current pool, i.e. the device's own.
            // SAFETY: `out` is m x n (row stride n), `x` is m x k (row stride k) and `w` is
            // n x k, read as the k x n matrix Wᵀ (row stride 1, column stride k); all three
            // slices have exactly those lengths and `out` is borrowed mutably (no aliasing).
            unsafe { gemm_block(m, n, k, x, &w[..n * k], out.as_mut_ptr(), n, p) };
            return;
        }
    }
    let block = (TILE_ELEMS / k).clamp(8, 512).min(n);
    // Enough blocks for every thread to stay busy, as long as blocks keep >= 8 rows.
    let block = block.min(n.div_ceil(par.threads() * 4).max(8));
    let blocks: Vec<usize> = (0..n.div_ceil(block)).collect();
    let ptr = OutPtr(out.as_mut_ptr());
    par.for_each(blocks, move |b| {
        // Capture the whole `OutPtr` (Send + Sync), not just its raw-pointer field.
        let ptr = ptr;
        let (j0, j1) = (b * block, ((b + 1) * block).min(n));
        let nb = j1 - j0;
        let mut tile = Vec::new();
        if m >= GEMM_MIN_ROWS {
            let wb: &[f32] = match w {
                Weights::F32(w) => &w[j0 * k..j1 * k],
                Weights::F16(w) => widen(&w[j0 * k..j1 * k], &mut tile),
                Weights::BF16(w) => widen(&w[j0 * k..j1 * k], &mut tile),
                Weights::Quant(..) => unreachable!("quantized weights are handled above"),
            };
            // SAFETY: the destination is columns j0..j1 of the m x n output (row stride n):
            // in bounds, and no other task writes those columns; `wb` is nb x k.
            unsafe { gemm_block(m, nb, k, x, wb, ptr.0.add(j0), n, Parallelism::None) };
        } else {
            // Decode-sized: one weight row at a time (see `decode_column`).
            let fast = fused::available();
            let mut col = vec![0f32; m];
            for j in j0..j1 {
                decode_column(fast, k, x, w, j, &mut tile, &mut col);
                for (i, v) in col.iter().enumerate() {
                    // SAFETY: (i, j) is inside the m x n output and in this task's column
                    // block, which no other task writes.
                    unsafe { *ptr.0.add(i * n + j) = *v };
                }
            }
        }
    });
}

/// `col[i] = x_i · w_j` for the `col.len()` rows of `x` (`k` values each): by the fused
/// kernels when `fast` (only where [`fused::available`]), else by widening row `j` into `tile`
/// for the portable `elem::dot`.
fn decode_column(
    fast: bool,
    k: usize,
    x: &[f32],
    w: Weights,
    j: usize,
    tile: &mut Vec<f32>,
    col: &mut [f32],
) {
    let (a, b) = (j * k, (j + 1) * k);
    if fast {
        for (i, c) in col.iter_mut().enumerate() {
            let xi = &x[i * k..(i + 1) * k];
            *c = match w {
                Weights::F32(w) => fused::dot_f32(xi, &w[a..b]),
                Weights::F16(w) => fused::dot_f16(xi, &w[a..b]),
                Weights::BF16(w) => fused::dot_bf16(xi, &w[a..b]),
                Weights::Quant(..) => unreachable!("quantized weights are handled in `matmul`"),
            };
        }
        return;
    }
    let wj: &[f32] = match w {
        Weights::F32(w) => &w[a..b],
        Weights::F16(w) => widen(&w[a..b], tile),
        Weights::BF16(w) => widen(&w[a..b], tile),
        Weights::Quant(..) => unreachable!("quantized weights are handled in `matmul`"),
    };
    for (i, c) in col.iter_mut().enumerate() {
        *c = dot(&x[i * k..(i + 1) * k], wj);
    }
}

/// A half-precision weight type and its fastest exact widening to f32.
trait HalfWeight: Copy {
    /// Widens `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl HalfWeight for f16 {
    /// `half`'s slice conversion: F16C / NEON instructions when the CPU has them (detected at
    /// run time), 40% faster here than the portable loop of `elem`.
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

impl HalfWeight for bf16 {
    /// A shift per element (see `elem`), which vectorizes.
    fn widen(src: &[Self], dst: &mut [f32]) {
        <bf16 as KvElem>::load(src, dst);
    }
}

/// Widens a half-precision weight block into `tile` and returns it.
fn widen<'t, T: HalfWeight>(src: &[T], tile: &'t mut Vec<f32>) -> &'t [f32] {
    tile.resize(src.len(), 0.0);
    T::widen(src, tile);
    tile
}

/// Fused dot products for x86-64 CPUs with AVX2, FMA and F16C (detected at run time): eight
/// weights at a time are loaded and widened in a register (`vcvtph2ps` for f16, a 16-bit shift
/// for bf16) and multiply-added into f32 lanes, so the decode path reads the weights once in
/// their storage type and never stores widened values. (The portable `elem::dot` is built for
/// the x86-64 baseline, SSE2 without FMA.)
mod fused {
    use half::{bf16, f16};

    /// Whether the AVX2 kernels run on this CPU (else the `dot_*` fall back to plain loops).
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// One kernel: 16 weights per iteration in two accumulators, then a scalar tail.
    /// `$load` turns a pointer to 8 weights into 8 f32 lanes.
    macro_rules! kernel {
        ($name:ident, $t:ty, |$p:ident| $load:expr) => {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $name(x: &[f32], w: &[$t]) -> f32 {
                use std::arch::x86_64::*;
                let n = x.len().min(w.len());
                let full = n / 16 * 16;
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut l = 0;
                while l < full {
                    // SAFETY: l + 16 <= n, so every (unaligned) load is inside both slices.
                    unsafe {
                        let w0 = {
                            let $p = w.as_ptr().add(l);
                            $load
                        };
                        let w1 = {
                            let $p = w.as_ptr().add(l + 8);
                            $load
                        };
                        let x0 = _mm256_loadu_ps(x.as_ptr().add(l));
                        let x1 = _mm256_loadu_ps(x.as_ptr().add(l + 8));
                        a0 = _mm256_fmadd_ps(x0, w0, a0);
                        a1 = _mm256_fmadd_ps(x1, w1, a1);
                    }
                    l += 16;
                }
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds eight f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1)) };
                let tail: f32 = x[full..n]
                    .iter()
                    .zip(&w[full..n])
                    .map(|(a, b)| a * f32::from(*b))
                    .sum();
                lanes.iter().sum::<f32>() + tail
            }
        };
    }

    kernel!(dot_f32_avx, f32, |p| _mm256_loadu_ps(p));
    kernel!(dot_f16_avx, f16, |p| _mm256_cvtph_ps(_mm_loadu_si128(
        p.cast()
    )));
    kernel!(dot_bf16_avx, bf16, |p| _mm256_castsi256_ps(
        _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))
    ));

    /// Defines a safe entry point that runs its kernel where [`available`], else a plain loop.
    macro_rules! entry {
        ($name:ident, $kernel:ident, $t:ty) => {
            /// `sum_l x[l] * w[l]` over the common length, in f32.
            pub(super) fn $name(x: &[f32], w: &[$t]) -> f32 {
                #[cfg(target_arch = "x86_64")]
                if available() {
                    // SAFETY: the CPU has the kernel's target features (checked just now);
                    // the kernel reads only inside the two slices.
                    return unsafe { $kernel(x, w) };
                }
                x.iter().zip(w).map(|(a, b)| a * f32::from(*b)).sum()
            }
        };
    }

    entry!(dot_f32, dot_f32_avx, f32);
    entry!(dot_f16, dot_f16_avx, f16);
    entry!(dot_bf16, dot_bf16_avx, bf16);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_and_fused_decode_columns_agree_for_every_weight_type() {
        let (m, n, k) = (3, 5, 37);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.71).sin()).collect();
        let w32: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.13).cos()).collect();
        let w16: Vec<f16> = w32.iter().map(|v| f16::from_f32(*v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|v| bf16::from_f32(*v)).collect();
        let mut tile = Vec::new();
        for w in [Weights::F32(&w32), Weights::F16(&w16), Weights::BF16(&wb)] {
            for j in 0..n {
                let (mut fast, mut portable) = (vec![f32::NAN; m], vec![f32::NAN; m]);
                decode_column(fused::available(), k, &x, w, j, &mut tile, &mut fast);
                decode_column(false, k, &x, w, j, &mut tile, &mut portable);
                for (a, b) in fast.iter().zip(&portable) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn fused_dots_match_f64_on_every_tail_length() {
        for n in 0..70 {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f16> = (0..n)
                .map(|i| f16::from_f32((i as f32 * 0.11).cos()))
                .collect();
            let mut wide = vec![0f32; n];
            <f16 as HalfWeight>::widen(&w, &mut wide);
            let want: f64 = x
                .iter()
                .zip(&wide)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let scale: f64 = x
                .iter()
                .zip(&wide)
                .map(|(a, b)| (*a * *b).abs() as f64)
                .sum();
            let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wb: Vec<bf16> = w32.iter().map(|v| bf16::from_f32(*v)).collect();
            let want_b: f64 = x.iter().zip(&wb).map(|(a, b)| *a as f64 * b.to_f64()).sum();
            for (what, got, want) in [
                ("f16", fused::dot_f16(&x, &w), want),
                ("f32", fused::dot_f32(&x, &w32), want),
                ("bf16", fused::dot_bf16(&x, &wb), want_b),
            ] {
                let got = got as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + scale),
                    "{what}, n = {n}: {got} vs {want}"
                );
            }
        }
    }
}
