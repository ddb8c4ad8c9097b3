//! A naive f64 forward pass of a Llama-family decoder over host weights: the reference the
//! cache-backed model is checked against in tests (no cache, no chunking, no device).

use arkvale_core::{RopeScaling, RopeStyle};
use arkvale_model::llama::{LlamaConfig, LlamaHostWeights};

/// `out[r] = Σ_c w[r, c] · x[c]` for `w` `[rows, x.len()]`, plus `bias[r]` when given.
fn linear(w: &[f32], x: &[f64], bias: &[f32]) -> Vec<f64> {
    w.chunks(x.len())
        .enumerate()
        .map(|(r, row)| {
            let dot: f64 = row.iter().zip(x).map(|(a, b)| *a as f64 * b).sum();
            dot + bias.get(r).map_or(0.0, |b| *b as f64)
        })
        .collect()
}

fn rmsnorm(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * *w as f64).collect()
}

/// Rotates every head of `x` (`heads * d` values) by position `pos`.
fn rope(x: &mut [f64], d: usize, theta: f32, style: RopeStyle, pos: usize) {
    for head in x.chunks_mut(d) {
        for i in 0..d / 2 {
            let freq = (theta as f64).powf(-2.0 * i as f64 / d as f64);
            let (s, c) = (pos as f64 * freq).sin_cos();
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + d / 2),
            };
            let (xa, xb) = (head[a], head[b]);
            head[a] = xa * c - xb * s;
            head[b] = xa * s + xb * c;
        }
    }
}

/// The logits of every position of `ids` (`[ids.len()][vocab]`), computed from scratch with
/// causal attention over all earlier tokens. Only `RopeScaling::None` without frequency
/// factors is supported.
pub fn naive_logits(
    c: &LlamaConfig,
    w: &LlamaHostWeights,
    style: RopeStyle,
    ids: &[u32],
) -> Vec<Vec<f32>> {
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert!(c.rope_freq_factors.is_none());
    let (d, hd) = (c.d_model, c.head_dim);
    let gqa = c.q_heads / c.kv_heads;
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| {
            let row = &w.embedding[t as usize * d..(t as usize + 1) * d];
            row.iter().map(|v| *v as f64).collect()
        })
        .collect();
    for l in &w.layers {
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let h = rmsnorm(x, &l.attn_norm, c.rms_eps);
            let mut q = linear(&l.wq, &h, &l.bq);
            let mut k = linear(&l.wk, &h, &l.bk);
            rope(&mut q, hd, c.rope_theta, style, pos);
            rope(&mut k, hd, c.rope_theta, style, pos);
            qs.push(q);
            ks.push(k);
            vs.push(linear(&l.wv, &h, &l.bv));
        }
        for (t, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0.0f64; d];
            for head in 0..c.q_heads {
                let kvh = head / gqa;
                let q = &qs[t][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    let v = &vs[j][kvh * hd..(kvh + 1) * hd];
                    for (o, v) in attn[head * hd..(head + 1) * hd].iter_mut().zip(v) {
                        *o += p / z * v;
                    }
                }
            }
            for (a, o) in x.iter_mut().zip(linear(&l.wo, &attn, &[])) {
                *a += o;
            }
            let h = rmsnorm(x, &l.ffn_norm, c.rms_eps);
            let gate = linear(&l.w_gate, &h, &[]);
            let up = linear(&l.w_up, &h, &[]);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            for (a, o) in x.iter_mut().zip(linear(&l.w_down, &act, &[])) {
                *a += o;
            }
        }
    }
    let out = w.output.as_ref().unwrap_or(&w.embedding);
    xs.iter()
        .map(|x| {
            let h = rmsnorm(x, &w.output_norm, c.rms_eps);
            linear(out, &h, &[]).iter().map(|v| *v as f32).collect()
        })
        .collect()
}
