//! The block layouts, decoded: one 32-value sub-block at a time as integers plus scales.

use half::f16;

use super::{QuantType, SUB_LEN};

/// One sub-block of 32 values: value `i` is `scale[i / 16] * q[i]`, plus `min` for the types
/// with an offset ([`QuantType::has_min`]; `min` is 0 for the others).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubBlock {
    /// The integer values, offsets such as Q4_0's `- 8` already applied.
    pub q: [i8; SUB_LEN],
    /// The scale of values `0..16` and of values `16..32` (equal except in Q6_K).
    pub scale: [f32; 2],
    /// The additive offset (`m` of Q4_1/Q5_1, `-dmin * min` of the K-quants).
    pub min: f32,
}

/// Reads the little-endian f16 at `b[i..i + 2]` as f32.
#[inline]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Unpacks the 12-byte K-quant scale block into 8 six-bit scales and 8 six-bit mins.
///
/// Bytes 0..4 hold the low 6 bits of scales 0..4 (top 2 bits: high bits of scales 4..8);
/// bytes 4..8 likewise for mins 0..4 / mins 4..8; bytes 8..12 hold the low 4 bits of scale
/// 4+i (low nibble) and min 4+i (high nibble).
#[inline]
pub fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
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

/// Sub-block `sub` (`0..ty.subs()`) of one block of `ty` (`block` holds at least
/// `ty.block_bytes()` bytes).
///
/// # Panics
/// If `block` is shorter than one block or `sub` is out of range (callers check sizes).
pub fn unpack(ty: QuantType, block: &[u8], sub: usize) -> SubBlock {
    let b = &block[..ty.block_bytes()];
    let mut q = [0i8; SUB_LEN];
    let (scale, min) = match ty {
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let offset = ty.offset();
            let (qs, min) = if ty == QuantType::Q4_0 {
                (&b[2..18], 0.0)
            } else {
                (&b[4..20], f16_at(b, 2))
            };
            for j in 0..16 {
                q[j] = (qs[j] & 0x0F) as i8 - offset;
                q[j + 16] = (qs[j] >> 4) as i8 - offset;
            }
            (f16_at(b, 0), min)
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let offset = ty.offset();
            let (h, min) = if ty == QuantType::Q5_0 {
                (2, 0.0)
            } else {
                (4, f16_at(b, 2))
            };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            let qs = &b[h + 4..h + 20];
            for j in 0..16 {
                let h0 = (((qh >> j) & 1) << 4) as u8;
                let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
                q[j] = ((qs[j] & 0x0F) | h0) as i8 - offset;
                q[j + 16] = ((qs[j] >> 4) | h1) as i8 - offset;
            }
            (f16_at(b, 0), min)
        }
        QuantType::Q8_0 => {
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
            (f16_at(b, 0), 0.0)
        }
        QuantType::Q4_K | QuantType::Q5_K => {
            let (sc, mn) = k_scales_mins(&b[4..16]);
            // 64-value chunk `sub / 2` uses 32 bytes: low nibbles are the even sub-block, high
            // nibbles the odd one; in Q5_K bit `sub` of qh[l] is value l's fifth bit.
            let (qs, qh) = if ty == QuantType::Q4_K {
                (&b[16..144], None)
            } else {
                (&b[48..176], Some(&b[16..48]))
            };
            let bytes = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
            let shift = 4 * (sub % 2);
            for (l, o) in q.iter_mut().enumerate() {
                let high = qh.map_or(0, |qh| ((qh[l] >> sub) & 1) << 4);
                *o = (((bytes[l] >> shift) & 0x0F) | high) as i8;
            }
            let d = f16_at(b, 0) * sc[sub] as f32;
            let m = f16_at(b, 2) * mn[sub] as f32;
            (d, -m)
        }
        QuantType::Q6_K => {
            // Half `h` (128 values) uses 64 bytes of low nibbles and 32 bytes of 2-bit highs;
            // its sub-block `r` takes the low (r < 2) or high nibbles of bytes 32 * (r % 2)..,
            // and bits 2r, 2r+1 of the highs. Value v of the block uses scale v / 16.
            let (h, r) = (sub / 4, sub % 4);
            let ql = &b[64 * h + 32 * (r % 2)..64 * h + 32 * (r % 2) + 32];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let nib = 4 * (r / 2);
            for (l, o) in q.iter_mut().enumerate() {
                let v = ((ql[l] >> nib) & 0x0F) | (((qh[l] >> (2 * r)) & 3) << 4);
                *o = v as i8 - ty.offset();
            }
            let d = f16_at(b, 208);
            let s = |i: usize| d * (b[192 + 8 * h + 2 * r + i] as i8) as f32;
            return SubBlock {
                q,
                scale: [s(0), s(1)],
                min: 0.0,
            };
        }
    };
    SubBlock {
        q,
        scale: [scale, scale],
        min,
    }
}
