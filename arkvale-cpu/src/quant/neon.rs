//! NEON kernels for quantized weights (aarch64, where NEON is part of the base instruction
//! set, so nothing is detected at run time).
//!
//! Every sub-block of a weight row is unpacked into its 32 signed 8-bit values in two 128-bit
//! registers (values 0..16 and 16..32: nibbles split by a mask and a shift, Q5's fifth bits
//! expanded from their bit fields by a bit test per byte, Q6_K's 2-bit highs shifted into
//! place), decoding the same layouts as the scalar reference
//! ([`arkvale_core::quant::unpack`]). A sub-block times a [`Q8Block`] is then two widening
//! multiplies per half (`smull` + `smlal2`: two products of at most 128 · 127 per 16-bit lane,
//! exact) and a pairwise widening add into four 32-bit sums per half, converted to f32 and
//! multiply-added with `scale · d_act` into one vector accumulator per activation row; the
//! types with a `min` add `min · ds` in a scalar sum. The integer sums are exact, so results
//! differ from the reference only in the order of the f32 additions. Dequantizing (the
//! prefill tiles) uses the scalar reference, which is not on the decode path.

use std::arch::aarch64::*;

use arkvale_core::quant::unpack::{f16_at, k_scales_mins};
use arkvale_core::quant::{Q8Block, QuantType, SUB_LEN};

use super::type_of;

/// One unpacked sub-block: values 0..16 (`lo`) and 16..32 (`hi`), the scale of each half and
/// the min (0 for the types without one).
#[derive(Clone, Copy)]
struct Sub {
    lo: int8x16_t,
    hi: int8x16_t,
    scale: [f32; 2],
    min: f32,
}

/// The 16 bytes at `b[at..]`.
#[target_feature(enable = "neon")]
#[inline]
fn load16(b: &[u8], at: usize) -> uint8x16_t {
    let s = &b[at..at + 16];
    // SAFETY: `s` holds 16 readable bytes.
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// The low nibbles of `v`.
#[target_feature(enable = "neon")]
#[inline]
fn low_nibbles(v: uint8x16_t) -> uint8x16_t {
    vandq_u8(v, vdupq_n_u8(0x0F))
}

/// The high nibbles of `v`.
#[target_feature(enable = "neon")]
#[inline]
fn high_nibbles(v: uint8x16_t) -> uint8x16_t {
    vshrq_n_u8::<4>(v)
}

/// Byte `i` is `0x10` where bit `i` of `bits` (16 bits) is set, else 0.
#[target_feature(enable = "neon")]
#[inline]
fn fifth_bits16(bits: u16) -> uint8x16_t {
    let spread = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    bits_as_0x10(
        spread,
        vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201)),
    )
}

/// `0x10` in the bytes of `v` that share a set bit with the same byte of `mask`, else 0.
#[target_feature(enable = "neon")]
#[inline]
fn bits_as_0x10(v: uint8x16_t, mask: uint8x16_t) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, mask), vdupq_n_u8(0x10))
}

/// Signed values `q - offset` of unsigned `q`.
#[target_feature(enable = "neon")]
#[inline]
fn signed(q: uint8x16_t, offset: i8) -> int8x16_t {
    vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(offset))
}

/// A sub-block of unsigned values `lo`, `hi` minus the type's offset, with the scale of each
/// half and the min.
#[target_feature(enable = "neon")]
#[inline]
fn unpacked(ty: QuantType, lo: uint8x16_t, hi: uint8x16_t, scale: [f32; 2], min: f32) -> Sub {
    Sub {
        lo: signed(lo, ty.offset()),
        hi: signed(hi, ty.offset()),
        scale,
        min,
    }
}

/// [`unpacked`] with one scale for all 32 values.
#[target_feature(enable = "neon")]
#[inline]
fn flat(ty: QuantType, lo: uint8x16_t, hi: uint8x16_t, d: f32, min: f32) -> Sub {
    unpacked(ty, lo, hi, [d, d], min)
}

/// The one sub-block of a block of a one-sub-block type `T` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
#[target_feature(enable = "neon")]
#[inline]
fn single<const T: usize>(b: &[u8]) -> Sub {
    let ty = type_of::<T>();
    let b = &b[..ty.block_bytes()];
    let d = f16_at(b, 0);
    let min = if ty.has_min() { f16_at(b, 2) } else { 0.0 };
    match ty {
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let v = load16(b, if ty == QuantType::Q4_0 { 2 } else { 4 });
            flat(ty, low_nibbles(v), high_nibbles(v), d, min)
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let at = if ty == QuantType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let v = load16(b, at + 4);
            let lo = vorrq_u8(low_nibbles(v), fifth_bits16(qh as u16));
            let hi = vorrq_u8(high_nibbles(v), fifth_bits16((qh >> 16) as u16));
            flat(ty, lo, hi, d, min)
        }
        _ => flat(ty, load16(b, 2), load16(b, 18), d, 0.0),
    }
}

/// Sub-block `s` of a Q4_K / Q5_K block (`T`) whose 6-bit scales and mins are `sc`, `mn` and
/// f16 scales `d`, `dmin`.
#[target_feature(enable = "neon")]
#[inline]
fn k_sub<const T: usize>(b: &[u8], s: usize, sc: &[u8; 8], mn: &[u8; 8], d: f32, dmin: f32) -> Sub {
    let ty = type_of::<T>();
    let at = if ty == QuantType::Q4_K { 16 } else { 48 } + 32 * (s / 2);
    let (v0, v1) = (load16(b, at), load16(b, at + 16));
    let (mut lo, mut hi) = if s % 2 == 0 {
        (low_nibbles(v0), low_nibbles(v1))
    } else {
        (high_nibbles(v0), high_nibbles(v1))
    };
    if ty == QuantType::Q5_K {
        let bit = vdupq_n_u8(1 << s);
        lo = vorrq_u8(lo, bits_as_0x10(load16(b, 16), bit));
        hi = vorrq_u8(hi, bits_as_0x10(load16(b, 32), bit));
    }
    flat(ty, lo, hi, d * sc[s] as f32, -(dmin * mn[s] as f32))
}

/// Sub-block `s` of a Q6_K block with f16 scale `d`.
#[target_feature(enable = "neon")]
#[inline]
fn q6k_sub(b: &[u8], s: usize, d: f32) -> Sub {
    let (half, r) = (s / 4, s % 4);
    let at = 64 * half + 32 * (r % 2);
    let (v0, v1) = (load16(b, at), load16(b, at + 16));
    let (l0, l1) = if r >= 2 {
        (high_nibbles(v0), high_nibbles(v1))
    } else {
        (low_nibbles(v0), low_nibbles(v1))
    };
    let lo = vorrq_u8(l0, q6k_high(load16(b, 128 + 32 * half), r));
    let hi = vorrq_u8(l1, q6k_high(load16(b, 128 + 32 * half + 16), r));
    let sc = |i: usize| d * (b[192 + 8 * half + 2 * r + i] as i8) as f32;
    unpacked(QuantType::Q6_K, lo, hi, [sc(0), sc(1)], 0.0)
}

/// Bits `2r`, `2r + 1` of each byte of `v`, moved to bits 4 and 5 (Q6_K's high bits of
/// sub-block `r` of a half).
#[target_feature(enable = "neon")]
#[inline]
fn q6k_high(v: uint8x16_t, r: usize) -> uint8x16_t {
    let down = vshlq_u8(v, vdupq_n_s8(-2 * r as i8));
    vshlq_n_u8::<4>(vandq_u8(down, vdupq_n_u8(3)))
}

/// The four 32-bit sums of 16 products `w · a` (exact).
#[target_feature(enable = "neon")]
#[inline]
fn half_sums(w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    vpaddlq_s16(vmlal_high_s8(p, w, a))
}

/// Running sums of [`dots_m`]: one vector accumulator and one `min` term per activation row.
struct Acc<const M: usize> {
    v: [float32x4_t; M],
    min: [f32; M],
}

impl<const M: usize> Acc<M> {
    /// Adds sub-block `sub` times the `j`-th block of each of the `M` activation rows.
    #[target_feature(enable = "neon")]
    #[inline]
    fn add(&mut self, ty: QuantType, sub: &Sub, acts: &[Q8Block], subs: usize, j: usize) {
        for i in 0..M {
            let a = &acts[i * subs + j];
            // SAFETY: `a.qs` holds 32 readable bytes.
            let (al, ah) = unsafe { (vld1q_s8(a.qs.as_ptr()), vld1q_s8(a.qs.as_ptr().add(16))) };
            let (sl, sh) = (half_sums(sub.lo, al), half_sums(sub.hi, ah));
            // Only Q6_K scales the two halves apart (known at compile time per type).
            self.v[i] = if ty != QuantType::Q6_K {
                let sums = vcvtq_f32_s32(vaddq_s32(sl, sh));
                vfmaq_n_f32(self.v[i], sums, sub.scale[0] * a.d)
            } else {
                let v = vfmaq_n_f32(self.v[i], vcvtq_f32_s32(sl), sub.scale[0] * a.d);
                vfmaq_n_f32(v, vcvtq_f32_s32(sh), sub.scale[1] * a.d)
            };
            if ty.has_min() {
                self.min[i] = sub.min.mul_add(a.ds, self.min[i]);
            }
        }
    }
}

/// See [`super::Kernel::dots`]; `M` activation rows at once, weights of type `T`.
#[target_feature(enable = "neon")]
fn dots_m<const M: usize, const T: usize>(row: &[u8], acts: &[Q8Block], subs: usize) -> [f32; M] {
    let ty = type_of::<T>();
    let mut acc = Acc::<M> {
        v: [vdupq_n_f32(0.0); M],
        min: [0.0; M],
    };
    for (bi, b) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let j = bi * ty.subs();
        match ty {
            QuantType::Q4_K | QuantType::Q5_K => {
                let (sc, mn) = k_scales_mins(&b[4..16]);
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                for s in 0..ty.subs() {
                    let sub = k_sub::<T>(b, s, &sc, &mn, d, dmin);
                    acc.add(ty, &sub, acts, subs, j + s);
                }
            }
            QuantType::Q6_K => {
                let d = f16_at(b, 208);
                for s in 0..ty.subs() {
                    acc.add(ty, &q6k_sub(b, s, d), acts, subs, j + s);
                }
            }
            _ => acc.add(ty, &single::<T>(b), acts, subs, j),
        }
    }
    std::array::from_fn(|i| vaddvq_f32(acc.v[i]) + acc.min[i])
}

/// See [`super::Kernel::dots`]: `out[i] = row · (activation row i)` for the `out.len()`
/// activation rows of `acts` (`subs` blocks each).
pub(super) fn dots(ty: QuantType, row: &[u8], acts: &[Q8Block], subs: usize, out: &mut [f32]) {
    by_type!(ty, dots_typed(row, acts, subs, out))
}

/// [`dots`] for weights of type `T`.
fn dots_typed<const T: usize>(row: &[u8], acts: &[Q8Block], subs: usize, out: &mut [f32]) {
    let ty = type_of::<T>();
    let row = &row[..subs * SUB_LEN / ty.block_len() * ty.block_bytes()];
    let acts = &acts[..out.len() * subs];
    macro_rules! run {
        ($($m:literal)*) => {
            // SAFETY (both): NEON is part of every aarch64 target this code compiles for.
            match out.len() {
                $($m => out.copy_from_slice(&unsafe { dots_m::<$m, T>(row, acts, subs) }),)*
                _ => {
                    for (o, a) in out.iter_mut().zip(acts.chunks_exact(subs)) {
                        *o = unsafe { dots_m::<1, T>(row, a, subs) }[0];
                    }
                }
            }
        };
    }
    run!(1 2 3 4 5 6 7 8);
}
