//! KV storage element types (f32, f16, bf16) and the small f32 kernels every op shares.

use half::{bf16, f16};

/// An element type the KV pool can be stored in; arithmetic is always f32.
pub(crate) trait KvElem: bytemuck::Pod + Send + Sync {
    /// Rounds an f32 to this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl KvElem for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Widens `src` into `dst` (same length).
#[inline]
pub(crate) fn load<T: KvElem>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Rounds `src` into `dst` (same length).
#[inline]
pub(crate) fn store<T: KvElem>(src: &[f32], dst: &mut [T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = T::from_f32(*s);
    }
}

/// The dot product of two equally long f32 vectors, with eight partial sums so that the
/// compiler can vectorize it (the order differs from a left fold; within f32 rounding).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `acc += w * x`, elementwise.
#[inline]
pub(crate) fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}

/// `acc *= w`, elementwise.
#[inline]
pub(crate) fn scale(acc: &mut [f32], w: f32) {
    for a in acc.iter_mut() {
        *a *= w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_fold_on_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!((dot(&a, &b) as f64 - plain).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn half_types_round_like_core() {
        use arkvale_core::KvDtype;
        for x in [0.1f32, -3.3, 1e-5, 65000.0, 1.0 / 3.0] {
            assert_eq!(f16::from_f32(x).to_f32(), KvDtype::F16.round(x));
            assert_eq!(
                <bf16 as KvElem>::from_f32(x).to_f32(),
                KvDtype::BF16.round(x)
            );
        }
    }
}
