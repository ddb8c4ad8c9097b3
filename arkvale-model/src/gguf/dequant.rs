//! Dequantization of ggml tensor data to `f32`.
//!
//! The float types are widened here; the block-quantized types (`Q4_0` ... `Q6_K`, see
//! [`GgmlType::quant`]) are decoded by [`arkvale_core::quant`], where their layouts and the
//! scalar reference live once for the model loader and every backend kernel. Results are
//! bit-identical to ggml's reference dequantization.

use arkvale_core::quant;
use half::{bf16, f16};

use super::error::{GgufError, Result};
use super::tensor::GgmlType;

/// Dequantizes `n_elements` values of type `ty` from `data`, which must be exactly their
/// byte size.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: u64) -> Result<Vec<f32>> {
    let expected = ty.byte_size(n_elements).ok_or(GgufError::BadDataLength {
        ty: ty.name(),
        n: n_elements,
        expected: u64::MAX,
        got: data.len() as u64,
    })?;
    if expected != data.len() as u64 {
        return Err(GgufError::BadDataLength {
            ty: ty.name(),
            n: n_elements,
            expected,
            got: data.len() as u64,
        });
    }
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            name: String::new(),
            ty: ty.name(),
        });
    }
    // n_elements is bounded by data.len() (every supported type has >= 1 byte per 2 values),
    // so this allocation is bounded by the input's size.
    let mut out = vec![0f32; n_elements as usize];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// Dequantizes into `out`; `data` must hold exactly `out.len()` values of type `ty`.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let n = out.len() as u64;
    let expected = ty.byte_size(n);
    if expected != Some(data.len() as u64) {
        return Err(GgufError::BadDataLength {
            ty: ty.name(),
            n,
            expected: expected.unwrap_or(u64::MAX),
            got: data.len() as u64,
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        other => {
            let q = other.quant().ok_or_else(|| GgufError::UnsupportedType {
                name: String::new(),
                ty: other.name(),
            })?;
            // The length was checked above against the same block layout.
            quant::dequantize(q, data, out).map_err(|_| GgufError::BadDataLength {
                ty: ty.name(),
                n,
                expected: expected.unwrap_or(u64::MAX),
                got: data.len() as u64,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_by_hand() {
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2] = 0xF0; // element 0 -> 0 - 8, element 16 -> 15 - 8
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -4.0);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[1], -4.0);
    }

    #[test]
    fn wrong_length_and_unsupported_type_are_errors() {
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &[0u8; 17], 32),
            Err(GgufError::BadDataLength { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &[0u8; 18], 31),
            Err(GgufError::BadDataLength { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q2_K, &[0u8; 84], 256),
            Err(GgufError::UnsupportedType { .. })
        ));
    }
}
