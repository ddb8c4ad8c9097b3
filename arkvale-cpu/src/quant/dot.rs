//! The choice of quantized kernels: the SIMD ones where the CPU has the features, else the
//! scalar reference of `arkvale_core::quant`.

use arkvale_core::quant::{self, Q8Block, QuantType};

/// Which implementation of the quantized kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The scalar reference ([`quant::vec_dot`], [`quant::dequantize`]); runs everywhere.
    Scalar,
    /// x86-64 AVX2 + FMA (only constructed where [`Kernel::detect`] found them).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest implementation this CPU runs.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if crate::elem::has_avx2_fma_f16c() {
            return Kernel::Avx2;
        }
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

    /// `out[i] = row · acts[i * subs .. (i + 1) * subs]` for each of the `out.len()` (at most
    /// 8) activation rows; `row` is one weight row of `32 * subs` values of `ty`.
    pub(crate) fn dots(
        self,
        ty: QuantType,
        row: &[u8],
        acts: &[Q8Block],
        subs: usize,
        out: &mut [f32],
    ) {
        match self {
            Kernel::Scalar => {
                for (o, a) in out.iter_mut().zip(acts.chunks_exact(subs)) {
                    // The caller sized `row` for `subs` sub-blocks; a mismatch would be a bug
                    // and shows as NaN rather than a panic inside the pool.
                    *o = quant::vec_dot(ty, row, a).unwrap_or(f32::NAN);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::x86::dots(ty, row, acts, subs, out),
        }
    }

    /// Dequantizes whole blocks of `ty` from `data` into `out` (`out.len()` values, the same
    /// number `data` holds).
    pub(crate) fn dequantize(self, ty: QuantType, data: &[u8], out: &mut [f32]) {
        match self {
            Kernel::Scalar => {
                if quant::dequantize(ty, data, out).is_err() {
                    out.fill(f32::NAN);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::x86::dequantize(ty, data, out),
        }
    }
}
