//! The elementwise and row-wise dense model ops on the CPU: RMSNorm, RoPE, SiLU-gating,
//! residual add, embedding lookup and argmax (the matmul is in `matmul`). Lengths are checked
//! by core's checked `Device` layer; each kernel splits its output into disjoint row chunks
//! and runs them through [`Par`]. Arithmetic is f32, except the RoPE angles and their
//! cos/sin (f64, once per token and pair, as [`arkvale_core::Rope`] defines them).

use arkvale_core::Rope;
use arkvale_core::reference::rope_pair;

use crate::elem::KvElem;
use crate::par::Par;

/// Elements per parallel item of the elementwise ops.
const CHUNK: usize = 1 << 14;

/// RMSNorm of `rows` rows of `dim` values.
pub(crate) fn rmsnorm(par: Par, dim: usize, eps: f32, x: &[f32], w: &[f32], out: &mut [f32]) {
    let items: Vec<(&[f32], &mut [f32])> =
        x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)).collect();
    par.for_each(items, |(xr, or)| {
        let ss: f32 = crate::elem::dot(xr, xr);
        let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    });
}

/// RoPE in place over `x` (`[positions.len(), heads, head_dim]`).
pub(crate) fn rope(par: Par, r: &Rope<'_>, positions: &[u32], x: &mut [f32]) {
    let (d, half) = (r.head_dim, r.head_dim / 2);
    let token = r.heads * d;
    let items: Vec<(&u32, &mut [f32])> = positions.iter().zip(x.chunks_exact_mut(token)).collect();
    par.for_each(items, |(&p, xt)| {
        let mut cs = vec![(0f32, 0f32); half];
        for (c, &f) in cs.iter_mut().zip(r.inv_freq) {
            let (sin, cos) = (p as f64 * r.position_scale as f64 * f as f64).sin_cos();
            *c = (cos as f32, sin as f32);
        }
        for head in xt.chunks_exact_mut(d) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (i0, i1) = rope_pair(r.style, d, i);
                let (x0, x1) = (head[i0], head[i1]);
                head[i0] = x0 * cos - x1 * sin;
                head[i1] = x0 * sin + x1 * cos;
            }
        }
    });
}

/// `out = silu(gate) * up`, elementwise over `out.len()` values.
pub(crate) fn silu_mul(par: Par, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let items: Vec<_> = out
        .chunks_mut(CHUNK)
        .zip(gate.chunks(CHUNK).zip(up.chunks(CHUNK)))
        .collect();
    par.for_each(items, |(o, (g, u))| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
}

/// `x += y`, elementwise over `x.len()` values.
pub(crate) fn add(par: Par, x: &mut [f32], y: &[f32]) {
    let items: Vec<_> = x.chunks_mut(CHUNK).zip(y.chunks(CHUNK)).collect();
    par.for_each(items, |(x, y)| {
        for (a, &b) in x.iter_mut().zip(y) {
            *a += b;
        }
    });
}

/// `x[r, c] += bias[c]` for rows of `bias.len()` values (non-empty) of `x`.
pub(crate) fn add_bias(par: Par, x: &mut [f32], bias: &[f32]) {
    let rows_per_item = (CHUNK / bias.len()).max(1);
    let items: Vec<_> = x.chunks_mut(rows_per_item * bias.len()).collect();
    par.for_each(items, |x| {
        for row in x.chunks_mut(bias.len()) {
            for (a, &b) in row.iter_mut().zip(bias) {
                *a += b;
            }
        }
    });
}

/// `out[t] = table[ids[t]]` (widened to f32), rows of `dim` values; ids checked by the caller.
pub(crate) fn embedding<T: KvElem>(
    par: Par,
    dim: usize,
    table: &[T],
    ids: &[u32],
    out: &mut [f32],
) {
    let items: Vec<_> = ids.iter().zip(out.chunks_exact_mut(dim)).collect();
    par.for_each(items, |(&id, o)| {
        let at = id as usize * dim;
        T::load(&table[at..at + dim], o);
    });
}

/// The index of the largest value of each row of `cols` values (ties: lower index; NaN
/// below every number; all NaN: 0).
pub(crate) fn argmax(par: Par, cols: usize, logits: &[f32], out: &mut [u32]) {
    let items: Vec<_> = logits.chunks_exact(cols).zip(out.iter_mut()).collect();
    par.for_each(items, |(row, o)| {
        let mut best = 0usize;
        let mut best_v = f32::NAN;
        for (j, &v) in row.iter().enumerate() {
            // `!(v <= best_v)` would prefer NaN; compare so that a NaN never wins and a number
            // always beats a NaN incumbent.
            if v > best_v || (best_v.is_nan() && !v.is_nan()) {
                best = j;
                best_v = v;
            }
        }
        *o = best as u32;
    });
}
