//! ggml tensor types and tensor infos.

use arkvale_core::{DType, QuantType};

use super::error::{GgufError, Result};
use super::reader::Reader;

/// ggml supports at most this many tensor dimensions.
pub const MAX_DIMS: u32 = 4;

macro_rules! ggml_types {
    ($($(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $size:expr;)*) => {
        /// A ggml tensor element type (`ggml_type`), with its block layout.
        ///
        /// All types ggml currently defines are recognised, so that the byte size (and bounds)
        /// of every tensor in a file can be checked; only some can be dequantized (see
        /// [`GgmlType::can_dequantize`]). Variants keep ggml's spelling (`Q4_K`, `IQ2_XXS`) so
        /// they match file dumps and llama.cpp docs.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $($(#[$doc])* $variant,)*
        }

        impl GgmlType {
            /// The type for a stored id, or `None` for an unknown (or removed) id.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// The id stored in files.
            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$variant => $id,)*
                }
            }

            /// The ggml name (`"Q4_K"`, `"F16"`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$variant => $name,)*
                }
            }

            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> u64 {
                match self {
                    $(GgmlType::$variant => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self {
                    $(GgmlType::$variant => $size,)*
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit float.
    F32 = 0, "F32", 1, 4;
    /// IEEE half.
    F16 = 1, "F16", 1, 2;
    /// 32 4-bit values with an f16 scale.
    Q4_0 = 2, "Q4_0", 32, 2 + 16;
    /// 32 4-bit values with an f16 scale and min.
    Q4_1 = 3, "Q4_1", 32, 2 + 2 + 16;
    /// 32 5-bit values with an f16 scale.
    Q5_0 = 6, "Q5_0", 32, 2 + 4 + 16;
    /// 32 5-bit values with an f16 scale and min.
    Q5_1 = 7, "Q5_1", 32, 2 + 2 + 4 + 16;
    /// 32 8-bit values with an f16 scale.
    Q8_0 = 8, "Q8_0", 32, 2 + 32;
    /// 32 8-bit values with f32 scale and sum.
    Q8_1 = 9, "Q8_1", 32, 4 + 4 + 32;
    /// 2-bit K-quant.
    Q2_K = 10, "Q2_K", 256, 2 + 2 + 16 + 64;
    /// 3-bit K-quant.
    Q3_K = 11, "Q3_K", 256, 2 + 64 + 32 + 12;
    /// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins.
    Q4_K = 12, "Q4_K", 256, 2 + 2 + 12 + 128;
    /// 5-bit K-quant: as Q4_K plus one high bit per value.
    Q5_K = 13, "Q5_K", 256, 2 + 2 + 12 + 32 + 128;
    /// 6-bit K-quant: 16 sub-blocks of 16 with 8-bit scales.
    Q6_K = 14, "Q6_K", 256, 128 + 64 + 16 + 2;
    /// 8-bit K-quant (intermediate type).
    Q8_K = 15, "Q8_K", 256, 4 + 256 + 32;
    /// i-quant.
    IQ2_XXS = 16, "IQ2_XXS", 256, 2 + 64;
    /// i-quant.
    IQ2_XS = 17, "IQ2_XS", 256, 2 + 64 + 8;
    /// i-quant.
    IQ3_XXS = 18, "IQ3_XXS", 256, 2 + 64 + 32;
    /// i-quant.
    IQ1_S = 19, "IQ1_S", 256, 2 + 32 + 16;
    /// i-quant.
    IQ4_NL = 20, "IQ4_NL", 32, 2 + 16;
    /// i-quant.
    IQ3_S = 21, "IQ3_S", 256, 2 + 64 + 32 + 8 + 4;
    /// i-quant.
    IQ2_S = 22, "IQ2_S", 256, 2 + 64 + 16;
    /// i-quant.
    IQ4_XS = 23, "IQ4_XS", 256, 2 + 2 + 128 + 4;
    /// 8-bit integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit integer.
    I64 = 27, "I64", 1, 8;
    /// 64-bit float.
    F64 = 28, "F64", 1, 8;
    /// i-quant.
    IQ1_M = 29, "IQ1_M", 256, 32 + 16 + 8;
    /// bfloat16.
    BF16 = 30, "BF16", 1, 2;
    /// ternary quant.
    TQ1_0 = 34, "TQ1_0", 256, 2 + 4 * 13;
    /// ternary quant.
    TQ2_0 = 35, "TQ2_0", 256, 2 + 64;
    /// microscaling fp4.
    MXFP4 = 39, "MXFP4", 32, 1 + 16;
}

impl GgmlType {
    /// Whether [`dequantize`](super::dequantize) supports this type.
    pub fn can_dequantize(self) -> bool {
        self.dtype().is_some()
    }

    /// The block-quantized type of [`arkvale_core::quant`] this is, if any.
    pub fn quant(self) -> Option<QuantType> {
        Some(match self {
            GgmlType::Q4_0 => QuantType::Q4_0,
            GgmlType::Q4_1 => QuantType::Q4_1,
            GgmlType::Q5_0 => QuantType::Q5_0,
            GgmlType::Q5_1 => QuantType::Q5_1,
            GgmlType::Q8_0 => QuantType::Q8_0,
            GgmlType::Q4_K => QuantType::Q4_K,
            GgmlType::Q5_K => QuantType::Q5_K,
            GgmlType::Q6_K => QuantType::Q6_K,
            _ => return None,
        })
    }

    /// The device buffer type that holds this type's data as stored (bytes unchanged), if
    /// any: the float types and the block-quantized ones.
    pub fn dtype(self) -> Option<DType> {
        match self {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            other => other.quant().map(DType::Quant),
        }
    }

    /// Bytes occupied by `n_elements` elements, or `None` when `n_elements` is not a whole
    /// number of blocks or the size overflows.
    pub fn byte_size(self, n_elements: u64) -> Option<u64> {
        if n_elements % self.block_size() != 0 {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's description from the tensor-info section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one, so a PyTorch
    /// `[rows, cols]` matrix is stored as `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Parses one tensor info at the cursor (name, dims, type, offset) and checks its shape
    /// against its type; data bounds are checked later, once the data section is known.
    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self> {
        let name = r.string("tensor name")?;
        let n_dims = r.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                name,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64("tensor dimension")?);
        }
        let type_id = r.u32("tensor type")?;
        let offset = r.u64("tensor data offset")?;
        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownGgmlType { name, type_id });
        };
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| GgufError::DimsOverflow {
                name: name.clone(),
                dims: dims.clone(),
            })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % ty.block_size() != 0 {
            return Err(GgufError::BadBlockShape {
                name,
                ty: ty.name(),
                ne0,
                block: ty.block_size(),
            });
        }
        let n_bytes = ty
            .byte_size(n_elements)
            .ok_or_else(|| GgufError::DimsOverflow {
                name: name.clone(),
                dims: dims.clone(),
            })?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_elements,
            n_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_types_agree_with_core() {
        for id in 0..40 {
            let Some(ty) = GgmlType::from_id(id) else {
                continue;
            };
            if let Some(q) = ty.quant() {
                assert_eq!(ty.block_size() as usize, q.block_len(), "{ty}");
                assert_eq!(ty.type_size() as usize, q.block_bytes(), "{ty}");
                assert_eq!(q.name(), ty.name());
            }
        }
    }
}
