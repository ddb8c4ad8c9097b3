//! `out[m, n] = x[m, k] · Wᵀ` on the CPU, with `W` `[n, k]` in f32, f16 or bf16.
//!
//! * f32 weights with `m >= GEMM_MIN_ROWS`: one call of the `gemm` crate over the whole
//!   problem, multithreaded on the device's rayon pool (`Parallelism::Rayon`).
//! * Everything else is split into blocks of `W` rows (output columns), one task per block on
//!   the pool. With `m >= GEMM_MIN_ROWS`, a block's f16/bf16 rows are widened into an f32
//!   scratch tile (exact; at most 256 KiB, so it stays in L2 and each weight is converted once
//!   per call) and multiplied by single-threaded `gemm`. Below that (decode), each weight row
//!   is widened into an L1-resident buffer and dotted with the few rows of `x`.
//!
//! Why widen on the fly: half weights keep half the memory, and `gemm`'s own f16 kernels
//! would need f16 activations and an f16 output, i.e. a result rounded to f16, which the
//! contract rules out. Measured on this 2-core dev machine (release,
//! `cargo run --release -p arkvale-cpu --example matmul_bench`; `W` 1536 x 576 and 576 x 1536):
//! m = 512: f32 ~230 GFLOP/s, f16 ~200, bf16 ~205 (widening costs ~12%). m = 1 (decode):
//! `gemm` itself gave only ~20-25 GFLOP/s for f32, hence the dot-product path: f32 ~40, bf16
//! ~25 (widen, then dot), f16 ~75 with the fused F16C kernel (`f16c`: weights widened in
//! registers, half the bytes of f32; ~17 before it). For the 49152 x 576 logits matrix
//! (beyond the caches, memory-bound) m = 1 gives f32 ~22, bf16 ~26, f16 ~56. Without F16C,
//! f16 rows are widened with `half`'s slice conversion. (Timings vary ±30% with the
//! machine's load.)
//!
//! Accumulation is f32 throughout (each output is one dot product of length `k`; the order of
//! the additions differs from a left fold, within f32 rounding).

use gemm::Parallelism;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::elem::{KvElem, dot};
use crate::par::Par;

/// Below this many rows of `x`, blocks use dot products instead of `gemm`.
pub(crate) const GEMM_MIN_ROWS: usize = 4;

/// Target size in elements of one widened weight tile (256 KiB of f32).
const TILE_ELEMS: usize = 1 << 16;

/// The weights of a matmul, in their storage type.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// f32 `[n, k]`.
    F32(&'a [f32]),
    /// f16 `[n, k]`.
    F16(&'a [f16]),
    /// bf16 `[n, k]`.
    BF16(&'a [bf16]),
}

/// A raw pointer to the output that tasks writing disjoint columns share.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks only write through the pointer to disjoint column blocks of the output (see
// `matmul`), while the `&mut [f32]` it came from is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

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
            };
            // SAFETY: the destination is columns j0..j1 of the m x n output (row stride n):
            // in bounds, and no other task writes those columns; `wb` is nb x k.
            unsafe { gemm_block(m, nb, k, x, wb, ptr.0.add(j0), n, Parallelism::None) };
        } else {
            // Decode-sized: one weight row at a time, widened into an L1-resident buffer
            // (f16 on x86-64 with F16C + FMA: widened in registers instead, see `f16c`).
            if let Weights::F16(w) = w
                && f16c::available()
            {
                for j in j0..j1 {
                    let wj = &w[j * k..(j + 1) * k];
                    for i in 0..m {
                        let v = f16c::dot(&x[i * k..(i + 1) * k], wj);
                        // SAFETY: as below.
                        unsafe { *ptr.0.add(i * n + j) = v };
                    }
                }
                return;
            }
            for j in j0..j1 {
                let wj: &[f32] = match w {
                    Weights::F32(w) => &w[j * k..(j + 1) * k],
                    Weights::F16(w) => widen(&w[j * k..(j + 1) * k], &mut tile),
                    Weights::BF16(w) => widen(&w[j * k..(j + 1) * k], &mut tile),
                };
                for i in 0..m {
                    // SAFETY: (i, j) is inside the m x n output and in this task's column
                    // block, which no other task writes.
                    unsafe { *ptr.0.add(i * n + j) = dot(&x[i * k..(i + 1) * k], wj) };
                }
            }
        }
    });
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

/// `dst[i, j] = sum_l x[i, l] w[j, l]` for an m x nb block whose element (i, j) is at
/// `dst + i * dst_rs + j`.
///
/// # Safety
/// `x` holds m x k and `w` nb x k values; `dst` must be valid for writes of every element of
/// the block, and nothing else may access those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    m: usize,
    nb: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    dst: *mut f32,
    dst_rs: usize,
    p: Parallelism,
) {
    debug_assert!(x.len() >= m * k && w.len() >= nb * k);
    // SAFETY: by the caller's contract; strides describe x (m x k, row-major), Wᵀ (k x nb,
    // element (l, j) at w[j * k + l]) and the destination block.
    unsafe {
        gemm::gemm(
            m,
            nb,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            p,
        )
    }
}

/// A fused f16-weight dot product for x86-64 CPUs with F16C and FMA (detected at run time):
/// eight weights are widened in a register (`vcvtph2ps`) and multiplied into eight f32 lanes,
/// so the decode path reads half the bytes of f32 weights and never stores widened values.
mod f16c {
    use half::f16;

    /// Whether [`dot`] may be called on this CPU.
    pub(super) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("avx")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `sum_l x[l] * w[l]` over the common length, in f32 (a plain loop where
    /// [`available`] is false).
    pub(super) fn dot(x: &[f32], w: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has the features `dot_avx` is compiled for (checked just now);
            // it reads only inside the two slices.
            return unsafe { dot_avx(x, w) };
        }
        x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,f16c,fma")]
    fn dot_avx(x: &[f32], w: &[f16]) -> f32 {
        use std::arch::x86_64::*;
        let n = x.len().min(w.len());
        let full = n / 16 * 16;
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut l = 0;
        while l < full {
            // SAFETY: l + 16 <= n: every load is inside both slices (unaligned loads).
            unsafe {
                let h0 = _mm_loadu_si128(w.as_ptr().add(l).cast());
                let h1 = _mm_loadu_si128(w.as_ptr().add(l + 8).cast());
                let x0 = _mm256_loadu_ps(x.as_ptr().add(l));
                let x1 = _mm256_loadu_ps(x.as_ptr().add(l + 8));
                a0 = _mm256_fmadd_ps(x0, _mm256_cvtph_ps(h0), a0);
                a1 = _mm256_fmadd_ps(x1, _mm256_cvtph_ps(h1), a1);
            }
            l += 16;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1)) };
        let tail: f32 = x[full..n]
            .iter()
            .zip(&w[full..n])
            .map(|(a, b)| a * b.to_f32())
            .sum();
        lanes.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_f16_dot_matches_widen_then_dot_on_every_tail_length() {
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
            let got = f16c::dot(&x, &w) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + scale),
                "n = {n}: {got} vs {want}"
            );
        }
    }
}
