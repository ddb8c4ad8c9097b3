//! The choice of quantized kernels: the SIMD ones where the CPU has the features, else the
//! scalar reference of `arkvale_core::quant`.

use arkvale_core::quant::{self, Q8Block, QuantType};

/// Which implementation of the quantized kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The scalar reference ([`quant::vec_dot`], [`quant::dequantize`]); runs everywhere
    /// (on aarch64, where NEON always exists, only the tests run it).
    #[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
    Scalar,
    /// x86-64 AVX2 + FMA (only constructed where [`Kernel::detect`] found them).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 NEON (part of the base instruction set there).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The fastest implementation this CPU runs.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if crate::elem::has_avx2_fma_f16c() {
            return Kernel::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        return Kernel::Neon;
        #[cfg(not(target_arch = "aarch64"))]
        Kernel::Scalar
    }

    /// Every implementation this CPU runs (for tests).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        if Kernel::detect() != Kernel::Scalar {
            all.push(Kernel::detect());
        }
        all
    }

    /// The activation rows `blocks` (`subs` blocks of 32 values per row) in the form this
    /// kernel reads for weights of type `ty`; made once per matmul call.
    pub(crate) fn prepare(self, ty: QuantType, blocks: Vec<Q8Block>, subs: usize) -> Acts {
        #[cfg(target_arch = "x86_64")]
        let pairs = match self {
            Kernel::Avx2 => super::x86::pairs(ty, &blocks, subs),
            Kernel::Scalar => Vec::new(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = ty;
        Acts {
            blocks,
            subs,
            #[cfg(target_arch = "x86_64")]
            pairs,
        }
    }

    /// `out[i] = row · (activation row i)` for each of the `out.len()` (at most 8, and at most
    /// `acts`' rows) activation rows; `row` is one weight row of `32 * acts.subs` values of
    /// `ty`, and `acts` was prepared by this kernel for `ty`.
    pub(crate) fn dots(self, ty: QuantType, row: &[u8], acts: &Acts, out: &mut [f32]) {
        let subs = acts.subs;
        match self {
            Kernel::Scalar => {
                for (o, a) in out.iter_mut().zip(acts.blocks.chunks_exact(subs)) {
                    // The caller sized `row` for `subs` sub-blocks; a mismatch would be a bug
                    // and shows as NaN rather than a panic inside the pool.
                    *o = quant::vec_dot(ty, row, a).unwrap_or(f32::NAN);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::x86::dots(ty, row, &acts.blocks, &acts.pairs, subs, out),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => super::neon::dots(ty, row, &acts.blocks, subs, out),
        }
    }

    /// Dequantizes whole blocks of `ty` from `data` into `out` (`out.len()` values, the same
    /// number `data` holds).
    pub(crate) fn dequantize(self, ty: QuantType, data: &[u8], out: &mut [f32]) {
        match self {
            // NEON dequantizes with the reference too: only the prefill tiles do, and `gemm`
            // dominates there.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => dequantize_reference(ty, data, out),
            Kernel::Scalar => dequantize_reference(ty, data, out),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::x86::dequantize(ty, data, out),
        }
    }
}

/// [`quant::dequantize`], NaN where the lengths disagree (a bug of the caller, shown rather
/// than a panic inside the pool).
fn dequantize_reference(ty: QuantType, data: &[u8], out: &mut [f32]) {
    if quant::dequantize(ty, data, out).is_err() {
        out.fill(f32::NAN);
    }
}

/// Quantized activation rows, as one kernel reads them (see [`Kernel::prepare`]).
pub(crate) struct Acts {
    /// `rows × subs` blocks of 32 values (the form every kernel can read).
    blocks: Vec<Q8Block>,
    /// Blocks per row.
    subs: usize,
    /// The blocks in pairs for the AVX2 kernels of Q4_0/Q5_0 (empty for other types and
    /// kernels).
    #[cfg(target_arch = "x86_64")]
    pairs: Vec<super::x86::Q8Pair>,
}
