//! Tiny Llama models for tests that need a whole forward pass but no model file: a
//! configuration small enough to run in milliseconds and random weights scaled so that
//! activations stay of order one through every layer.

use arkvale_core::RopeScaling;
use arkvale_model::llama::{HostLayer, LlamaConfig, LlamaHostWeights};

use crate::XorShift;

/// A three-layer Llama of width 32 (four query heads, two KV heads of dim 8, a feed-forward of
/// 48, a vocabulary of 64, context 256), tied embeddings, no biases.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        arch: "llama".into(),
        layers: 3,
        d_model: 32,
        d_ff: 48,
        q_heads: 4,
        kv_heads: 2,
        head_dim: 8,
        vocab: 64,
        context_length: 256,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_freq_factors: None,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qkv_bias: false,
    }
}

/// SmolLM2-135M's shape (30 layers, width 576, nine query heads and three KV heads of dim 64,
/// a vocabulary of 49152, context 8192): real sizes for end-to-end tests on random weights.
pub fn smollm2_config() -> LlamaConfig {
    LlamaConfig {
        layers: 30,
        d_model: 576,
        d_ff: 1536,
        q_heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49152,
        context_length: 8192,
        rope_theta: 100000.0,
        ..tiny_config()
    }
}

/// Random weights for `c` from `seed`: embeddings (and an untied output) in `[-1, 1)`, norms in
/// `[0.8, 1.2)`, each matrix scaled by `1.5 / sqrt(fan_in)`, q/k/v biases (when `c` has them)
/// in `[-0.8, 0.8)`.
pub fn random_weights(c: &LlamaConfig, seed: u64) -> LlamaHostWeights {
    random_weights_with_qk_gain(c, seed, 1.0)
}

/// [`random_weights`] with the query and key projections `qk_gain` times larger: a gain above
/// 1 makes attention peakier, so that which pages a policy keeps changes the output.
pub fn random_weights_with_qk_gain(c: &LlamaConfig, seed: u64, qk_gain: f32) -> LlamaHostWeights {
    let mut r = XorShift::new(seed);
    let (d, kv, f) = (c.d_model, c.kv_heads * c.head_dim, c.d_ff);
    let s = |k: usize| 1.5 / (k as f32).sqrt();
    LlamaHostWeights {
        embedding: r.vec(c.vocab * d, 1.0),
        layers: (0..c.layers)
            .map(|_| {
                let mut layer = HostLayer {
                    attn_norm: r.norm(d),
                    wq: r.vec(d * d, qk_gain * s(d)),
                    wk: r.vec(kv * d, qk_gain * s(d)),
                    wv: r.vec(kv * d, s(d)),
                    wo: r.vec(d * d, s(d)),
                    ffn_norm: r.norm(d),
                    w_gate: r.vec(f * d, s(d)),
                    w_up: r.vec(f * d, s(d)),
                    w_down: r.vec(d * f, s(f)),
                    ..Default::default()
                };
                if c.qkv_bias {
                    (layer.bq, layer.bk, layer.bv) =
                        (r.vec(d, 0.8), r.vec(kv, 0.8), r.vec(kv, 0.8));
                }
                layer
            })
            .collect(),
        output_norm: r.norm(d),
        output: (!c.tied_embeddings).then(|| r.vec(c.vocab * d, 1.0)),
    }
}
