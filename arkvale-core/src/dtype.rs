//! Element types of device buffers, and host-side conversions between them.

use half::{bf16, f16};

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
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// Whether this is one of the floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
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

/// Encodes f32 values as the bytes of `dtype` (a float type), for uploads.
///
/// # Panics
/// Never for float types; integer types are rejected by returning `None`.
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
        DType::U32 | DType::U8 => return None,
    })
}

/// Decodes the bytes of `dtype` (a float type) into f32 values, for downloads.
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
}
