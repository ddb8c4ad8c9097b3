//! The attention shape of a model, as far as the KV cache is concerned.

use crate::{Error, Result};

/// Layers and heads of a decoder-only transformer (what sizes its KV cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelShape {
    /// Decoder layers `L`.
    pub layers: usize,
    /// Query heads `H`.
    pub q_heads: usize,
    /// Key/value heads `Hkv` (GQA when smaller than `H`).
    pub kv_heads: usize,
    /// Head dimension `d`.
    pub head_dim: usize,
}

impl ModelShape {
    /// Checks that every size is positive and that `H` is a multiple of `Hkv`.
    pub fn validate(&self) -> Result<()> {
        if self.layers == 0 || self.q_heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return Err(Error::config(format!(
                "model shape must be positive in every dimension, got {self:?}"
            )));
        }
        if self.q_heads % self.kv_heads != 0 {
            return Err(Error::config(format!(
                "query heads ({}) must be a multiple of KV heads ({})",
                self.q_heads, self.kv_heads
            )));
        }
        Ok(())
    }

    /// Query heads per KV head (the GQA ratio).
    pub fn gqa(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Bytes of K and V for one token in one layer, all KV heads, at `elem_bytes` per element.
    pub fn kv_bytes_per_token_layer(&self, elem_bytes: usize) -> usize {
        2 * self.kv_heads * self.head_dim * elem_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_and_non_multiple_heads() {
        let ok = ModelShape {
            layers: 2,
            q_heads: 8,
            kv_heads: 2,
            head_dim: 4,
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.gqa(), 4);
        assert!(ModelShape { kv_heads: 3, ..ok }.validate().is_err());
        assert!(ModelShape { layers: 0, ..ok }.validate().is_err());
    }
}
