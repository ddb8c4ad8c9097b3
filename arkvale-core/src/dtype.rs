//! Element types of device buffers, and host-side conversions between them.

use half::{bf16, f16};

use crate::quant::{self, QuantType};

/// The element type of a device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 32-bit integers (indices).
    U32,
    /// Bytes (keep-masks).
    U8,
    /// Block-quantized weights (see [`crate::quant`]): a buffer's `len` counts values, always
    /// a whole number of blocks, and offsets into it are whole blocks too.
    Quant(QuantType),
}

impl DType {
    /// Bytes per element — for [`DType::Quant`], bytes per *block* of
    /// [`DType::block_len`] elements (use [`DType::bytes_for`] for byte counts).
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Quant(q) => q.block_bytes(),
        }
    }

    /// Elements per storage unit: 1, or a quantized type's block length.
    pub const fn block_len(self) -> usize {
        match self {
            DType::Quant(q) => q.block_len(),
            _ => 1,
        }
    }

    /// Bytes of `len` elements, or `None` when `len` is not a whole number of blocks or the
    /// size overflows.
    pub const fn bytes_for(self, len: usize) -> Option<usize> {
        if len % self.block_len() != 0 {
            return None;
        }
        (len / self.block_len()).checked_mul(self.size())
    }

    /// Elements in `bytes` bytes, or `None` when they are not a whole number of storage units.
    pub const fn elems_in(self, bytes: usize) -> Option<usize> {
        if bytes % self.size() != 0 {
            return None;
        }
        (bytes / self.size()).checked_mul(self.block_len())
    }

    /// Whether this is one of the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The block type, for quantized weights.
    pub const fn quant(self) -> Option<QuantType> {
        match self {
            DType::Quant(q) => Some(q),
            _ => None,
        }
    }

    /// Whether buffers of this type can hold matmul weights and embedding tables on a backend
    /// with quantized-weight kernels (the float types and every [`QuantType`]).
    pub const fn is_weight(self) -> bool {
        self.is_float() || self.quant().is_some()
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DType::F32 => f.write_str("f32"),
            DType::F16 => f.write_str("f16"),
            DType::BF16 => f.write_str("bf16"),
            DType::U32 => f.write_str("u32"),
            DType::U8 => f.write_str("u8"),
            DType::Quant(q) => write!(f, "{q}"),
        }
    }
}

/// The storage type of keys and values in the KV pool (arithmetic is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvDtype {
    /// f32 storage (tests, exactness).
    F32,
    /// f16 storage (the default, as in the paper).
    #[default]
    F16,
    /// bf16 storage.
    BF16,
}

impl KvDtype {
    /// The buffer element type used for this storage type.
    pub const fn dtype(self) -> DType {
        match self {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::BF16 => DType::BF16,
        }
    }

    /// Bytes per stored element.
    pub const fn size(self) -> usize {
        self.dtype().size()
    }

    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(KvDtype::F32),
            "f16" | "float16" | "half" => Some(KvDtype::F16),
            "bf16" | "bfloat16" => Some(KvDtype::BF16),
            _ => None,
        }
    }

    /// Rounds `x` to this storage type and back (what a store followed by a load yields).
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvDtype::F32 => x,
            KvDtype::F16 => f16::from_f32(x).to_f32(),
            KvDtype::BF16 => bf16::from_f32(x).to_f32(),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::BF16 => "bf16",
        })
    }
}

/// Encodes f32 values as the bytes of `dtype` (a float type), for uploads; `None` for the
/// integer and quantized types (quantizing is not an upload's job).
pub fn encode_f32(values: &[f32], dtype: DType) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => {
            let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
            bytemuck::cast_slice(&v).to_vec()
        }
        DType::BF16 => {
            let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
            bytemuck::cast_slice(&v).to_vec()
        }
        DType::U32 | DType::U8 | DType::Quant(_) => return None,
    })
}

/// Decodes the bytes of `dtype` (a float or quantized type; quantized blocks are dequantized)
/// into f32 values, for downloads. `None` for the integer types and for bytes that are not
/// whole blocks.
pub fn decode_f32(bytes: &[u8], dtype: DType) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::Quant(q) => {
            let mut out = vec![0f32; dtype.elems_in(bytes.len())?];
            quant::dequantize(q, bytes, &mut out).ok()?;
            out
        }
        DType::U32 | DType::U8 => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_through_each_float_type() {
        let xs = [1.5f32, -2.25, 0.0, 1e-3, 65504.0];
        for kv in [KvDtype::F32, KvDtype::F16, KvDtype::BF16] {
            let bytes = encode_f32(&xs, kv.dtype()).unwrap();
            assert_eq!(bytes.len(), xs.len() * kv.size());
            let back = decode_f32(&bytes, kv.dtype()).unwrap();
            for (x, y) in xs.iter().zip(&back) {
                assert_eq!(kv.round(*x), *y);
            }
        }
        assert!(encode_f32(&xs, DType::U32).is_none());
    }

    #[test]
    fn quantized_sizes_count_whole_blocks() {
        let q = DType::Quant(QuantType::Q4_1);
        assert_eq!(q.bytes_for(64), Some(40));
        assert_eq!(q.bytes_for(48), None);
        assert_eq!(q.elems_in(40), Some(64));
        assert_eq!(q.elems_in(30), None);
        assert_eq!(DType::F16.bytes_for(3), Some(6));
        assert_eq!(DType::F16.elems_in(6), Some(3));
        assert!(q.is_weight() && !q.is_float() && !DType::U32.is_weight());
        assert!(encode_f32(&[0.0; 32], q).is_none());
        assert_eq!(decode_f32(&[0u8; 20], q), Some(vec![0.0; 32]));
        assert_eq!(decode_f32(&[0u8; 19], q), None);
    }
}
