//! Activations quantized to 8 bits per 32 values, and the scalar dot product of a quantized
//! weight row with them — the reference of every backend's quantized matmul kernel.
//!
//! A decode matmul multiplies each weight row by a handful of activation rows. Quantizing the
//! activations once per call to `i8` (one f32 scale per 32 values, like ggml's `Q8_0`, plus the
//! sum of the integers for the types with a `min`) turns every sub-block product into an
//! integer dot product of 32 `i8` pairs, scaled once.
//!
//! Error: rounding an activation `x` to `d * round(x / d)` with `d = max|x| / 127` over its
//! block moves it by at most `d / 2`, so a dot product with weights `w` differs from the exact
//! one by at most `sum_blocks (d / 2) * sum |w|` (plus f32 rounding).

use super::{QuantError, QuantType, SUB_LEN, check_len, unpack};

/// 32 activations quantized to `i8` with one scale: value `i` is `d * qs[i]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    /// The scale (`max |x| / 127`).
    pub d: f32,
    /// `sum qs`.
    pub sum: i32,
    /// `d * sum` (the `min` term of the types with an offset is `min * ds`).
    pub ds: f32,
    /// The quantized values, in `-127..=127`.
    pub qs: [i8; SUB_LEN],
}

impl Default for Q8Block {
    fn default() -> Self {
        Q8Block {
            d: 0.0,
            sum: 0,
            ds: 0.0,
            qs: [0; SUB_LEN],
        }
    }
}

/// Quantizes `x` (`32 * out.len()` values) into `out`; values are rounded to nearest (ties
/// away from zero).
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) -> Result<(), QuantError> {
    if x.len() != out.len() * SUB_LEN {
        return Err(QuantError::Activations {
            values: x.len(),
            blocks: out.len(),
        });
    }
    for (xs, o) in x.chunks_exact(SUB_LEN).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(xs) {
            *q = (v * id).round().clamp(-127.0, 127.0) as i8;
            sum += *q as i32;
        }
        o.d = d;
        o.sum = sum;
        o.ds = d * sum as f32;
    }
    Ok(())
}

/// `sum_i w[i] * a[i]` for one row `w` of `a.len() * 32` values of `ty` and activations `a`.
///
/// Per sub-block `j` (32 values): `a_j.d * (scale0 * (q·a)[0..16] + scale1 * (q·a)[16..32])`,
/// plus `min * a_j.ds` (`ds = d * sum`) for the types with an offset, accumulated in f32 in sub-block
/// order. The integer dot products are exact, so a kernel may only differ by f32 rounding.
pub fn vec_dot(ty: QuantType, w: &[u8], a: &[Q8Block]) -> Result<f32, QuantError> {
    check_len(ty, w, a.len() * SUB_LEN)?;
    let mut acc = 0f32;
    for (block, acts) in w.chunks_exact(ty.block_bytes()).zip(a.chunks(ty.subs())) {
        for (s, act) in acts.iter().enumerate() {
            let sb = unpack(ty, block, s);
            let mut halves = [0i32; 2];
            for (i, (&q, &x)) in sb.q.iter().zip(&act.qs).enumerate() {
                halves[i / 16] += q as i32 * x as i32;
            }
            acc += act.d * (sb.scale[0] * halves[0] as f32 + sb.scale[1] * halves[1] as f32);
            if ty.has_min() {
                acc += sb.min * act.ds;
            }
        }
    }
    Ok(acc)
}
