//! Block-quantized weight formats (ggml's `Q4_0` ... `Q6_K`): their layouts, scalar
//! dequantization, and the scalar quantized dot product every backend kernel is checked
//! against.
//!
//! A quantized tensor is a sequence of fixed-size **blocks**, each holding
//! [`QuantType::block_len`] values in [`QuantType::block_bytes`] bytes. Rows of a weight matrix
//! `W [n, k]` are whole blocks (`k` a multiple of the block length), row-major, exactly as GGUF
//! files store them, so a file's bytes are a valid device buffer.
//!
//! The layouts are decoded in one place, [`unpack`]: every block is read as sub-blocks of 32
//! values, each an integer vector `q` (`i8`), a scale per half (16 values) and, for the types
//! with an offset, a `min`, so that value `i` is `scale[i / 16] * q[i] (+ min)`. Dequantization
//! ([`dequantize`]) and the quantized dot product ([`q8`]) are both written against that view,
//! so the layouts are described once.
//!
//! | type | block | bytes | layout                                                             |
//! |------|-------|-------|--------------------------------------------------------------------|
//! | Q4_0 | 32    | 18    | f16 d, 16 B nibbles: x = (q - 8) * d                               |
//! | Q4_1 | 32    | 20    | f16 d, f16 m, 16 B nibbles: x = q * d + m                          |
//! | Q5_0 | 32    | 22    | f16 d, u32 high bits, 16 B nibbles: x = (q - 16) * d               |
//! | Q5_1 | 32    | 24    | f16 d, f16 m, u32 high bits, 16 B nibbles: x = q * d + m           |
//! | Q8_0 | 32    | 34    | f16 d, 32 x i8: x = q * d                                          |
//! | Q4_K | 256   | 144   | f16 d, f16 dmin, 12 B packed 6-bit scales/mins, 128 B nibbles      |
//! | Q5_K | 256   | 176   | as Q4_K plus 32 B high bits (between scales and nibbles)           |
//! | Q6_K | 256   | 210   | 128 B low nibbles, 64 B 2-bit highs, 16 x i8 scales, f16 d (last)  |
//!
//! In the 32-element types, byte `j` of the nibbles holds element `j` (low nibble) and element
//! `j + 16` (high nibble); in Q5_0/Q5_1 bit `i` of the little-endian `u32` is element `i`'s
//! fifth bit. Dequantized values are bit-identical to ggml's reference (same f32 operations in
//! the same order).

pub mod q8;
pub mod unpack;

pub use q8::{Q8Block, quantize_q8, vec_dot};
pub use unpack::{SubBlock, unpack};

/// Values in one sub-block (the unit of [`unpack`] and of a [`Q8Block`]).
pub const SUB_LEN: usize = 32;

/// A block-quantized element type.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32 4-bit values with an f16 scale.
    Q4_0,
    /// 32 4-bit values with an f16 scale and min.
    Q4_1,
    /// 32 5-bit values with an f16 scale.
    Q5_0,
    /// 32 5-bit values with an f16 scale and min.
    Q5_1,
    /// 32 8-bit values with an f16 scale.
    Q8_0,
    /// 256 4-bit values in 8 sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// 256 5-bit values in 8 sub-blocks with 6-bit scales and mins.
    Q5_K,
    /// 256 6-bit values in 16 groups of 16 with 8-bit scales.
    Q6_K,
}

impl QuantType {
    /// Every supported type.
    pub const ALL: [QuantType; 8] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// Values per block.
    pub const fn block_len(self) -> usize {
        match self {
            QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q8_0 => 32,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q8_0 => 34,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// Sub-blocks of [`SUB_LEN`] values per block.
    pub const fn subs(self) -> usize {
        self.block_len() / SUB_LEN
    }

    /// Whether values carry an additive `min` (`x = scale * q + min`).
    pub const fn has_min(self) -> bool {
        matches!(
            self,
            QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K
        )
    }

    /// What is subtracted from the stored unsigned integers to get the signed values
    /// (`q - offset`): 8 for Q4_0, 16 for Q5_0, 32 for Q6_K; 0 for Q8_0 (stored signed) and
    /// for the types with a `min` (stored unsigned, no offset).
    pub const fn offset(self) -> i8 {
        match self {
            QuantType::Q4_0 => 8,
            QuantType::Q5_0 => 16,
            QuantType::Q6_K => 32,
            _ => 0,
        }
    }

    /// The ggml name (`"Q4_K"`).
    pub const fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    /// Parses a ggml name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        QuantType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// Bytes of `elems` values, or `None` when `elems` is not a whole number of blocks (or the
    /// size overflows).
    pub const fn bytes_for(self, elems: usize) -> Option<usize> {
        if elems % self.block_len() != 0 {
            return None;
        }
        (elems / self.block_len()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantized buffer whose size does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// `elems` values are not a whole number of blocks, or need a different byte count.
    #[error("{ty}: {elems} values do not fill {bytes} bytes of whole {block}-value blocks")]
    Length {
        /// The block type.
        ty: QuantType,
        /// Values requested.
        elems: usize,
        /// Bytes given.
        bytes: usize,
        /// Values per block.
        block: usize,
    },
    /// Activations and their quantized blocks do not match (`32` values per block).
    #[error("{values} activations do not fill {blocks} blocks of 32")]
    Activations {
        /// Values given.
        values: usize,
        /// Blocks given.
        blocks: usize,
    },
}

/// Checks that `data` holds exactly `elems` values of `ty`.
pub fn check_len(ty: QuantType, data: &[u8], elems: usize) -> Result<(), QuantError> {
    if ty.bytes_for(elems) == Some(data.len()) {
        Ok(())
    } else {
        Err(QuantError::Length {
            ty,
            elems,
            bytes: data.len(),
            block: ty.block_len(),
        })
    }
}

/// Dequantizes `out.len()` values of `ty` from `data`, which must hold exactly that many.
pub fn dequantize(ty: QuantType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, data, out.len())?;
    for (block, o) in data
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()))
    {
        dequantize_block(ty, block, o);
    }
    Ok(())
}

/// Dequantizes one block (`block_bytes` bytes) into `out` (`block_len` values).
///
/// # Panics
/// If the slices are shorter than one block (callers check lengths first; [`dequantize`] is
/// the checked entry point).
pub fn dequantize_block(ty: QuantType, block: &[u8], out: &mut [f32]) {
    for (s, o) in out.chunks_exact_mut(SUB_LEN).enumerate().take(ty.subs()) {
        let sb = unpack(ty, block, s);
        for (i, (o, &q)) in o.iter_mut().zip(&sb.q).enumerate() {
            let v = sb.scale[i / 16] * q as f32;
            *o = if ty.has_min() { v + sb.min } else { v };
        }
    }
}

#[cfg(test)]
mod tests;
