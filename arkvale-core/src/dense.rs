//! Descriptors of the dense model ops of the [`Device`](crate::Device) trait (matmul, RMSNorm,
//! RoPE, SiLU-gating, residual add, embedding lookup, argmax) and the host-side RoPE frequency
//! table.
//!
//! All dense activations are f32 and row-major; only weights and embedding tables may be
//! stored as f16 or bf16 (arithmetic and accumulation stay f32). Every op works on the first
//! elements of its buffers that its descriptor names: a buffer may be larger (a scratch buffer
//! sized for the largest batch), never smaller.

use crate::{Error, Result};

/// The sizes of `out[m, n] = x[m, k] · Wᵀ`, with `W` stored `[n, k]` row-major (one row per
/// output feature, as in PyTorch's `nn.Linear` and GGUF's tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatmulDims {
    /// Rows of `x` and `out` (tokens).
    pub m: usize,
    /// Rows of `W`, columns of `out` (output features).
    pub n: usize,
    /// Columns of `x` and `W` (input features).
    pub k: usize,
}

impl MatmulDims {
    /// Floating-point operations of one matmul (`2 m n k`).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Which pairs of a head's elements one RoPE frequency rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RopeStyle {
    /// Rotate halves: pair `i` is `(x[i], x[i + d/2])` for `i < d/2` (GPT-NeoX, Hugging Face
    /// Llama / Mistral / Qwen2 checkpoints).
    #[default]
    Neox,
    /// Adjacent pairs: pair `i` is `(x[2i], x[2i + 1])` (the original Llama / GPT-J
    /// convention, and what llama.cpp's GGUF files expect for the `llama` architecture, whose
    /// Q/K weights are permuted accordingly).
    Interleaved,
}

/// How a model scales its RoPE frequencies for longer contexts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    #[default]
    None,
    /// Linear position interpolation (LongChat-style "condensing"): every frequency is
    /// divided by `factor`, which is the same as dividing positions by `factor`.
    Linear {
        /// Context extension factor (`> 0`).
        factor: f32,
    },
    /// Llama 3.1 scaling ("NTK-by-parts"). With `wavelen = 2π / f` of a plain frequency `f`,
    /// `lo = original_max_position_embeddings / low_freq_factor` and
    /// `hi = original_max_position_embeddings / high_freq_factor`:
    /// * `wavelen < hi` (high frequencies): `f` unchanged;
    /// * `wavelen > lo` (low frequencies): `f / factor`;
    /// * otherwise a blend: with
    ///   `s = (original_max_position_embeddings / wavelen - low_freq_factor) /
    ///   (high_freq_factor - low_freq_factor)`, the frequency is `(1 - s) f / factor + s f`.
    Llama3 {
        /// Scale of the low frequencies (8 for Llama 3.1).
        factor: f32,
        /// Wavelength bound of the scaled band, as a divisor of the original context (1).
        low_freq_factor: f32,
        /// Wavelength bound of the unscaled band, as a divisor of the original context (4).
        high_freq_factor: f32,
        /// The context length the model was pre-trained with (8192).
        original_max_position_embeddings: u32,
    },
}

/// The `head_dim / 2` inverse frequencies of RoPE with base `theta` and `scaling`, computed in
/// f64 and rounded once to f32: `inv_freq[i] = theta^(-2i / head_dim)`, then scaled as
/// [`RopeScaling`] says. Pair `i` of a token at position `p` is rotated by the angle
/// `p * position_scale * inv_freq[i]` (see [`Rope`]).
///
/// Errors: an odd or zero `head_dim`, `theta <= 1`, a non-positive factor, or llama3 factors
/// with `high_freq_factor <= low_freq_factor` (all [`Error::Config`]).
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: RopeScaling) -> Result<Vec<f32>> {
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(Error::config(format!(
            "RoPE needs an even, non-zero head dimension, got {head_dim}"
        )));
    }
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::config(format!(
            "RoPE base theta must be a finite number > 1, got {theta}"
        )));
    }
    let positive = |name: &str, v: f32| {
        if v > 0.0 && v.is_finite() {
            Ok(v as f64)
        } else {
            Err(Error::config(format!(
                "RoPE scaling {name} must be a finite number > 0, got {v}"
            )))
        }
    };
    let plain = (0..head_dim / 2).map(|i| (theta as f64).powf(-(2.0 * i as f64) / head_dim as f64));
    let freqs: Vec<f64> = match scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::Linear { factor } => {
            let factor = positive("factor", factor)?;
            plain.map(|f| f / factor).collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let factor = positive("factor", factor)?;
            let low = positive("low_freq_factor", low_freq_factor)?;
            let high = positive("high_freq_factor", high_freq_factor)?;
            let ctx = positive(
                "original_max_position_embeddings",
                original_max_position_embeddings as f32,
            )?;
            if high <= low {
                return Err(Error::config(format!(
                    "llama3 RoPE scaling needs high_freq_factor > low_freq_factor, got \
                     {high} <= {low}"
                )));
            }
            let (lo_wavelen, hi_wavelen) = (ctx / low, ctx / high);
            plain
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < hi_wavelen {
                        f
                    } else if wavelen > lo_wavelen {
                        f / factor
                    } else {
                        let s = (ctx / wavelen - low) / (high - low);
                        (1.0 - s) * f / factor + s * f
                    }
                })
                .collect()
        }
    };
    Ok(freqs.into_iter().map(|f| f as f32).collect())
}

/// A RoPE rotation applied in place to f32 `[tokens, heads, head_dim]` (queries or keys),
/// one position per token. Pair `i` (see [`RopeStyle`]) of a token at position `p` is rotated
/// by `a = p * position_scale * inv_freq[i]`:
/// `(x0, x1) -> (x0 cos a - x1 sin a, x0 sin a + x1 cos a)`.
/// The angle is defined in f64 (`p`, `position_scale` and `inv_freq[i]` widened first), so
/// that large positions lose no precision; backends compute each token's cos/sin table once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope<'a> {
    /// Pairing convention.
    pub style: RopeStyle,
    /// Heads per token.
    pub heads: usize,
    /// Elements per head (even; `inv_freq.len() == head_dim / 2`).
    pub head_dim: usize,
    /// Inverse frequencies, `head_dim / 2` of them (see [`rope_inv_freq`]).
    pub inv_freq: &'a [f32],
    /// Multiplies every position (1 for none; linear scaling may be given here as
    /// `1 / factor` instead of in `inv_freq`).
    pub position_scale: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_frequencies_are_powers_of_theta() {
        let f = rope_inv_freq(8, 10000.0, RopeScaling::None).unwrap();
        let want = [1.0f32, 0.1, 0.01, 0.001];
        for (a, b) in f.iter().zip(want) {
            assert!((a - b).abs() <= 1e-7 * b, "{a} vs {b}");
        }
        let lin = rope_inv_freq(8, 10000.0, RopeScaling::Linear { factor: 4.0 }).unwrap();
        for (a, b) in lin.iter().zip(&f) {
            assert!((a * 4.0 - b).abs() <= 1e-7 * b);
        }
    }

    #[test]
    fn llama3_keeps_high_scales_low_and_blends_between() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let d = 128;
        let plain = rope_inv_freq(d, 500000.0, RopeScaling::None).unwrap();
        let scaled = rope_inv_freq(d, 500000.0, scaling).unwrap();
        let two_pi = 2.0 * std::f64::consts::PI;
        let mut seen = [false; 3];
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = two_pi / *p as f64;
            let ratio = *s as f64 / *p as f64;
            if wavelen < 2048.0 {
                assert!((ratio - 1.0).abs() < 1e-6);
                seen[0] = true;
            } else if wavelen > 8192.0 {
                assert!((ratio - 0.125).abs() < 1e-6);
                seen[1] = true;
            } else {
                assert!(ratio > 0.125 - 1e-6 && ratio < 1.0 + 1e-6);
                seen[2] = true;
            }
        }
        assert_eq!(
            seen, [true; 3],
            "every band occurs for Llama 3.1's settings"
        );
        // Monotonic: scaling never reorders frequencies.
        assert!(scaled.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn bad_rope_settings_are_errors() {
        assert!(rope_inv_freq(7, 10000.0, RopeScaling::None).is_err());
        assert!(rope_inv_freq(0, 10000.0, RopeScaling::None).is_err());
        assert!(rope_inv_freq(8, 1.0, RopeScaling::None).is_err());
        assert!(rope_inv_freq(8, f32::NAN, RopeScaling::None).is_err());
        assert!(rope_inv_freq(8, 1e4, RopeScaling::Linear { factor: 0.0 }).is_err());
        let bad = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 4.0,
            high_freq_factor: 1.0,
            original_max_position_embeddings: 8192,
        };
        assert!(rope_inv_freq(8, 1e4, bad).is_err());
    }
}
