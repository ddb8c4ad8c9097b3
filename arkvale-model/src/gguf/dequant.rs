//! Dequantization of ggml tensor data to `f32`.
//!
//! Written from the ggml block-format descriptions. Each block type is a fixed number of bytes
//! holding `block_size` values; the functions below decode one block into a `block_size`-long
//! output slice. Arithmetic is done in `f32` in the same order as ggml's reference
//! (`(d * scale) * q - (dmin * min)`), so results are bit-identical to it.
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
//! fifth bit.

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
    let block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            return Ok(());
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
            return Ok(());
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
            return Ok(());
        }
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        other => {
            return Err(GgufError::UnsupportedType {
                name: String::new(),
                ty: other.name(),
            });
        }
    };
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    for (b, o) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        block(b, o);
    }
    Ok(())
}

/// Reads the little-endian f16 at `b[i..i + 2]` as f32.
#[inline]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        y[j] = (((qs[j] & 0x0F) | (h0 << 4)) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | (h1 << 4)) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        y[j] = ((qs[j] & 0x0F) | (h0 << 4)) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | (h1 << 4)) as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// Unpacks the 12-byte K-quant scale block into 8 six-bit scales and 8 six-bit mins.
///
/// Bytes 0..4 hold the low 6 bits of scales 0..4 (top 2 bits: high bits of scales 4..8);
/// bytes 4..8 likewise for mins 0..4 / mins 4..8; bytes 8..12 hold the low 4 bits of scale
/// 4+i (low nibble) and min 4+i (high nibble).
fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for i in 0..4 {
        sc[i] = s[i] & 0x3F;
        mn[i] = s[i + 4] & 0x3F;
        sc[i + 4] = (s[i + 8] & 0x0F) | ((s[i] >> 6) << 4);
        mn[i + 4] = (s[i + 8] >> 4) | ((s[i + 4] >> 6) << 4);
    }
    (sc, mn)
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qs = &b[16..144];
    // Four chunks of 64 values; chunk c uses 32 bytes: low nibbles are sub-block 2c, high
    // nibbles sub-block 2c + 1.
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let (sc, mn) = k_scales_mins(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    // As Q4_K; bit s of qh[l] is the fifth bit of value l of sub-block s.
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (s1, s2) = (2 * c, 2 * c + 1);
        let (d1, m1) = (d * sc[s1] as f32, dmin * mn[s1] as f32);
        let (d2, m2) = (d * sc[s2] as f32, dmin * mn[s2] as f32);
        let out = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = ((qh[l] >> s1) & 1) << 4;
            let h2 = ((qh[l] >> s2) & 1) << 4;
            out[l] = d1 * ((q[l] & 0x0F) | h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let scales = &b[192..208];
    let d = half_at(b, 208);
    // Two halves of 128 values, each from 64 bytes of low nibbles and 32 bytes of 2-bit highs;
    // value k of the block uses scale k / 16.
    for h in 0..2 {
        let ql = &ql_all[64 * h..64 * h + 64];
        let qh = &qh_all[32 * h..32 * h + 32];
        let out = &mut y[128 * h..128 * h + 128];
        let sc = |k: usize| d * (scales[8 * h + k / 16] as i8) as f32;
        for l in 0..32 {
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = sc(l) * q1 as f32;
            out[l + 32] = sc(l + 32) * q2 as f32;
            out[l + 64] = sc(l + 64) * q3 as f32;
            out[l + 96] = sc(l + 96) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_scale_unpacking_round_trips_six_bit_values() {
        // Pack known 6-bit scales/mins the way the format describes, then unpack.
        let sc: [u8; 8] = [1, 63, 17, 42, 5, 60, 33, 0];
        let mn: [u8; 8] = [62, 3, 48, 9, 31, 14, 63, 22];
        let mut s = [0u8; 12];
        for i in 0..4 {
            s[i] = sc[i] | ((sc[i + 4] >> 4) << 6);
            s[i + 4] = mn[i] | ((mn[i + 4] >> 4) << 6);
            s[i + 8] = (sc[i + 4] & 0x0F) | ((mn[i + 4] & 0x0F) << 4);
        }
        assert_eq!(k_scales_mins(&s), (sc, mn));
    }

    #[test]
    fn q4_0_block_by_hand() {
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
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
