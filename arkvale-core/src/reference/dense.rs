//! Scalar references of the dense model ops (see [`crate::dense`]): plain loops in f64 (or
//! exact f32 where the op has no rounding to speak of), rounded to f32 once per output.
//! Weights and embedding tables are given as their f32 **values** (already widened from
//! f16/bf16, which is exact). Like the rest of [`crate::reference`], these trust their inputs
//! and panic on slices that are too short.

use crate::dense::{MatmulDims, Rope, RopeStyle};

/// `out[i, j] = sum_l x[i, l] * w[j, l]` for `x` `[m, k]`, `w` `[n, k]`, `out` `[m, n]`, all
/// row-major, accumulated in f64.
pub fn matmul(dims: &MatmulDims, x: &[f32], w: &[f32], out: &mut [f32]) {
    let MatmulDims { m, n, k } = *dims;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for l in 0..k {
                acc += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = acc as f32;
        }
    }
}

/// RMSNorm of each row of `x` `[rows, dim]`:
/// `out[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * weight[i]`, in f64.
pub fn rmsnorm(rows: usize, dim: usize, eps: f32, x: &[f32], weight: &[f32], out: &mut [f32]) {
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..dim {
            out[r * dim + i] = (row[i] as f64 * inv * weight[i] as f64) as f32;
        }
    }
}

/// The element indices of RoPE pair `i` of a head of `d` elements.
pub fn rope_pair(style: RopeStyle, d: usize, i: usize) -> (usize, usize) {
    match style {
        RopeStyle::Neox => (i, i + d / 2),
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
    }
}

/// Rotates `x` (`[positions.len(), rope.heads, rope.head_dim]`) in place, token `t` by
/// position `positions[t]`, as [`Rope`] defines it (angle, cos and sin in f64).
pub fn rope(rope: &Rope<'_>, positions: &[u32], x: &mut [f32]) {
    let d = rope.head_dim;
    for (t, &p) in positions.iter().enumerate() {
        for h in 0..rope.heads {
            let head = &mut x[(t * rope.heads + h) * d..][..d];
            for (i, &f) in rope.inv_freq.iter().enumerate() {
                let a = p as f64 * rope.position_scale as f64 * f as f64;
                let (sin, cos) = a.sin_cos();
                let (i0, i1) = rope_pair(rope.style, d, i);
                let (x0, x1) = (head[i0] as f64, head[i1] as f64);
                head[i0] = (x0 * cos - x1 * sin) as f32;
                head[i1] = (x0 * sin + x1 * cos) as f32;
            }
        }
    }
}

/// `out[i] = silu(gate[i]) * up[i]` with `silu(g) = g / (1 + exp(-g))`, in f64, for the
/// first `out.len()` elements.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let g = gate[i] as f64;
        *o = (g / (1.0 + (-g).exp()) * up[i] as f64) as f32;
    }
}

/// `x[i] += y[i]` (one f32 rounding, as any backend's) for the first `x.len()` elements.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// `x[r, c] += bias[c]` over the rows of `bias.len()` values in `x` (one f32 rounding each).
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len().max(1)) {
        add(row, bias);
    }
}

/// `out[t, :] = table[ids[t], :]` for a table of rows of `dim` values.
pub fn embedding(dim: usize, table: &[f32], ids: &[u32], out: &mut [f32]) {
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        out[t * dim..(t + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
    }
}

/// `out[r]` = the column of the largest value of row `r` of `logits` `[rows, cols]` (ties: the
/// lower index; NaN ranks below every number; a row of NaN only gives 0).
pub fn argmax(rows: usize, cols: usize, logits: &[f32], out: &mut [u32]) {
    for r in 0..rows {
        let row = &logits[r * cols..(r + 1) * cols];
        let mut best: Option<usize> = None;
        for (j, v) in row.iter().enumerate() {
            if v.is_nan() {
                continue;
            }
            if best.is_none_or(|b| *v > row[b]) {
                best = Some(j);
            }
        }
        out[r] = best.unwrap_or(0) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_is_x_times_w_transposed() {
        // x = [[1, 2]], w = [[3, 4], [5, 6], [7, 8]] -> [11, 17, 23]
        let mut out = [0f32; 3];
        matmul(
            &MatmulDims { m: 1, n: 3, k: 2 },
            &[1.0, 2.0],
            &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            &mut out,
        );
        assert_eq!(out, [11.0, 17.0, 23.0]);
    }

    #[test]
    fn rope_styles_pair_different_elements() {
        let inv = [1.0f32, 0.5];
        let quarter = std::f32::consts::FRAC_PI_2;
        for (style, want) in [
            (RopeStyle::Neox, [0.0f32, 0.0, 1.0, 0.0]),
            (RopeStyle::Interleaved, [0.0f32, 1.0, 0.0, 0.0]),
        ] {
            // Position scale pi/2 at position 1: pair 0 turns by 90 degrees, moving x[0] onto
            // its partner (x[2] for Neox, x[1] for Interleaved); pair 1 holds zeros.
            let r = Rope {
                style,
                heads: 1,
                head_dim: 4,
                inv_freq: &inv,
                position_scale: quarter,
            };
            let mut x = [1.0f32, 0.0, 0.0, 0.0];
            rope(&r, &[1], &mut x);
            for (a, b) in x.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{style:?}: {x:?}");
            }
        }
    }

    #[test]
    fn argmax_prefers_lower_index_and_skips_nan() {
        let mut out = [9u32; 3];
        let logits = [
            1.0,
            3.0,
            3.0,
            f32::NAN,
            5.0,
            f32::NAN,
            f32::NAN,
            f32::NAN,
            f32::NAN,
        ];
        argmax(3, 3, &logits, &mut out);
        assert_eq!(out, [1, 1, 0]);
    }

    #[test]
    fn rmsnorm_and_silu_on_known_values() {
        let mut out = [0f32; 2];
        rmsnorm(1, 2, 0.0, &[3.0, 4.0], &[1.0, 2.0], &mut out);
        let rms = (12.5f64).sqrt();
        assert!((out[0] as f64 - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] as f64 - 8.0 / rms).abs() < 1e-6);
        let mut s = [0f32; 1];
        silu_mul(&[0.0], &[5.0], &mut s);
        assert_eq!(s, [0.0]);
    }
}
