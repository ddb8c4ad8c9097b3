//! `out[m, n] = x[m, k] · Wᵀ` with `W` block-quantized ([`QuantType`]), kept as stored.
//!
//! * **Decode** (`m <= DECODE_MAX_ROWS`): the `m` activation rows are quantized once per call
//!   to 8 bits per 32 values ([`arkvale_core::quant::q8`]); each weight row is then unpacked
//!   one sub-block at a time (two whole blocks at a time for Q4_0/Q5_0, against activations
//!   rearranged to match once per call, [`Kernel::prepare`]) and dotted with every activation
//!   row by integer multiply-adds
//!   (`dot`: AVX2 where the CPU has it, detected at run time; NEON on aarch64; else the
//!   scalar reference [`arkvale_core::quant::vec_dot`]). Weights are read once per call in
//!   their stored size.
//! * **Prefill** (larger `m`): blocks of `W` rows are dequantized into an f32 tile (at most
//!   256 KiB, so it stays in L2) and multiplied by the single-threaded `gemm` kernel, as the
//!   f16/bf16 path of `matmul` does. Here the result equals dequantize-then-matmul.
//!
//! Both split `W`'s rows into blocks, one task per block on the device pool.

/// The type of kernel instantiation `T` (an index into [`QuantType::ALL`]).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const fn type_of<const T: usize>() -> QuantType {
    QuantType::ALL[T]
}

/// Calls `$f::<T>($args)` with `T` the index of `$ty` in [`QuantType::ALL`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! by_type {
    ($ty:expr, $f:ident ( $($arg:expr),* )) => {
        match $ty {
            QuantType::Q4_0 => $f::<0>($($arg),*),
            QuantType::Q4_1 => $f::<1>($($arg),*),
            QuantType::Q5_0 => $f::<2>($($arg),*),
            QuantType::Q5_1 => $f::<3>($($arg),*),
            QuantType::Q8_0 => $f::<4>($($arg),*),
            QuantType::Q4_K => $f::<5>($($arg),*),
            QuantType::Q5_K => $f::<6>($($arg),*),
            QuantType::Q6_K => $f::<7>($($arg),*),
        }
    };
}

mod dot;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

use arkvale_core::quant::{self, Q8Block, QuantType, SUB_LEN};
use gemm::Parallelism;

use crate::gemm_tile::{OutPtr, TILE_ELEMS, gemm_block};
use crate::par::Par;

pub(crate) use dot::Kernel;

/// Up to this many rows of `x`, the matmul uses quantized activations and integer dots.
pub(crate) const DECODE_MAX_ROWS: usize = 8;

/// `out[..m * n] = x[..m * k] · w[..n rows]ᵀ` for quantized `w` of type `ty`. The caller
/// (`crate::matmul::matmul`, which handles empty products) has checked that `m`, `n`, `k` are
/// positive, that `k` is a multiple of `ty.block_len()`, that `w` holds at least `n` rows of
/// `k` values and that `x` / `out` hold `m * k` / `m * n` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    par: Par,
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    ty: QuantType,
    w: &[u8],
    out: &mut [f32],
) {
    let row_bytes = k / ty.block_len() * ty.block_bytes();
    let (x, w, out) = (&x[..m * k], &w[..n * row_bytes], &mut out[..m * n]);
    let ptr = OutPtr(out.as_mut_ptr());
    if m <= DECODE_MAX_ROWS {
        let subs = k / SUB_LEN;
        let mut acts = vec![Q8Block::default(); m * subs];
        for (xi, ai) in x.chunks_exact(k).zip(acts.chunks_exact_mut(subs)) {
            // Lengths agree by construction (k = 32 * subs).
            let _ = quant::quantize_q8(xi, ai);
        }
        let acts = &kernel.prepare(ty, acts, subs);
        let block = n.div_ceil(par.threads() * 4).clamp(16, 512);
        let blocks: Vec<usize> = (0..n.div_ceil(block)).collect();
        par.for_each(blocks, move |b| {
            let ptr = ptr;
            let mut col = [0f32; DECODE_MAX_ROWS];
            for j in b * block..((b + 1) * block).min(n) {
                let row = &w[j * row_bytes..(j + 1) * row_bytes];
                kernel.dots(ty, row, acts, &mut col[..m]);
                for (i, v) in col[..m].iter().enumerate() {
                    // SAFETY: (i, j) is inside the m x n output and in this task's block of
                    // columns, which no other task writes.
                    unsafe { *ptr.0.add(i * n + j) = *v };
                }
            }
        });
        return;
    }
    let block = (TILE_ELEMS / k).clamp(8, 512).min(n);
    let block = block.min(n.div_ceil(par.threads() * 4).max(8));
    let blocks: Vec<usize> = (0..n.div_ceil(block)).collect();
    par.for_each(blocks, move |b| {
        let ptr = ptr;
        let (j0, j1) = (b * block, ((b + 1) * block).min(n));
        let mut tile = vec![0f32; (j1 - j0) * k];
        kernel.dequantize(ty, &w[j0 * row_bytes..j1 * row_bytes], &mut tile);
        // SAFETY: the destination is columns j0..j1 of the m x n output (row stride n): in
        // bounds, and no other task writes those columns; `tile` is (j1 - j0) x k.
        unsafe { gemm_block(m, j1 - j0, k, x, &tile, ptr.0.add(j0), n, Parallelism::None) };
    });
}

/// Dequantizes rows `ids` of a `[vocab, dim]` quantized table into `out` (`ids.len() * dim`
/// values); ids and `dim` (a multiple of the block length) checked by the caller.
pub(crate) fn embedding(
    par: Par,
    kernel: Kernel,
    dim: usize,
    ty: QuantType,
    table: &[u8],
    ids: &[u32],
    out: &mut [f32],
) {
    let row_bytes = dim / ty.block_len() * ty.block_bytes();
    let items: Vec<_> = ids.iter().zip(out.chunks_exact_mut(dim)).collect();
    par.for_each(items, |(&id, o)| {
        let at = id as usize * row_bytes;
        kernel.dequantize(ty, &table[at..at + row_bytes], o);
    });
}

#[cfg(test)]
mod tests;
