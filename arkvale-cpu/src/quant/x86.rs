//! AVX2 + FMA kernels for quantized weights (x86-64, selected at run time).
//!
//! Every block is unpacked into its sub-blocks of 32 signed 8-bit values in one 256-bit
//! register each (nibbles split by a shift and mask, Q5's fifth bits expanded from their
//! `u32` by a byte shuffle and compare, Q6_K's 2-bit highs shifted into place), with the
//! per-half scales as one f32 vector and the optional `min`. A sub-block times a [`Q8Block`]
//! is then `vpmaddubsw` (|q| times the activations carrying q's sign, exact: at most
//! 2 x 128 x 127 per 16-bit lane) and `vpmaddwd` into eight 32-bit sums, converted to f32 and
//! multiply-added with `scale * d_act` into one accumulator per activation row. Dequantizing
//! uses the same unpacking and a multiply then an add (no FMA), so it is bit-identical to the
//! scalar reference.

use std::arch::x86_64::*;

use arkvale_core::quant::unpack::{f16_at, k_scales_mins};
use arkvale_core::quant::{self, Q8Block, QuantType, SUB_LEN};

/// Whether these kernels run on this CPU.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// One unpacked sub-block: `q` (32 x i8), the scale of each half broadcast over the four
/// 32-bit lanes that hold its sums (`[s0; 4]`, `[s1; 4]`), and the min.
#[derive(Clone, Copy)]
struct Sub {
    q: __m256i,
    scale: __m256,
    min: f32,
}

/// Most sub-blocks in one block (the K-quants' 256 values).
const MAX_SUBS: usize = 8;

/// The 32 values of 16 bytes of nibbles: low nibbles are values 0..16, high nibbles 16..32.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn nibbles16(qs: &[u8]) -> __m256i {
    assert!(qs.len() >= 16);
    // SAFETY: 16 readable bytes (checked above).
    let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(v), m),
        _mm_and_si128(v, m),
    )
}

/// Byte `i` is `0x10` where bit `i` of `qh` is set, else 0.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn fifth_bits(qh: u32) -> __m256i {
    let v = _mm256_set1_epi32(qh as i32);
    // Byte i takes byte i / 8 of qh (every 32-bit lane of both halves holds qh).
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// 32 bytes at `b[at..]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load32(b: &[u8], at: usize) -> __m256i {
    let s = &b[at..at + 32];
    // SAFETY: `s` holds 32 bytes.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The low (`high == false`) or high nibbles of 32 bytes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn nibbles32(v: __m256i, high: bool) -> __m256i {
    let v = if high { _mm256_srli_epi16::<4>(v) } else { v };
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// A sub-block with one scale for all 32 values.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn flat(q: __m256i, d: f32, min: f32) -> Sub {
    Sub {
        q,
        scale: _mm256_set1_ps(d),
        min,
    }
}

/// Unpacks one block of `ty` (`b` holds at least one block) into `out`; returns the number of
/// sub-blocks.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn unpack(ty: QuantType, b: &[u8], out: &mut [Sub; MAX_SUBS]) -> usize {
    let b = &b[..ty.block_bytes()];
    match ty {
        QuantType::Q4_0 => {
            let q = _mm256_sub_epi8(nibbles16(&b[2..18]), _mm256_set1_epi8(8));
            out[0] = flat(q, f16_at(b, 0), 0.0);
        }
        QuantType::Q4_1 => out[0] = flat(nibbles16(&b[4..20]), f16_at(b, 0), f16_at(b, 2)),
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let h = if ty == QuantType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            let q = _mm256_or_si256(nibbles16(&b[h + 4..h + 20]), fifth_bits(qh));
            out[0] = if ty == QuantType::Q5_0 {
                flat(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f16_at(b, 0), 0.0)
            } else {
                flat(q, f16_at(b, 0), f16_at(b, 2))
            };
        }
        QuantType::Q8_0 => out[0] = flat(load32(b, 2), f16_at(b, 0), 0.0),
        QuantType::Q4_K | QuantType::Q5_K => {
            let (sc, mn) = k_scales_mins(&b[4..16]);
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (qs, qh) = if ty == QuantType::Q4_K {
                (16, None)
            } else {
                (48, Some(load32(b, 16)))
            };
            for (s, o) in out.iter_mut().enumerate() {
                let mut q = nibbles32(load32(b, qs + 32 * (s / 2)), s % 2 == 1);
                if let Some(qh) = qh {
                    let bit = _mm256_set1_epi8((1u8 << s) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
                }
                *o = flat(q, d * sc[s] as f32, -(dmin * mn[s] as f32));
            }
        }
        QuantType::Q6_K => {
            let d = f16_at(b, 208);
            for (s, o) in out.iter_mut().enumerate() {
                let (h, r) = (s / 4, s % 4);
                let low = nibbles32(load32(b, 64 * h + 32 * (r % 2)), r >= 2);
                let shift = _mm_cvtsi32_si128(2 * r as i32);
                let high = _mm256_and_si256(
                    _mm256_srl_epi16(load32(b, 128 + 32 * h), shift),
                    _mm256_set1_epi8(3),
                );
                let q = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high));
                let sc = |i: usize| d * (b[192 + 8 * h + 2 * r + i] as i8) as f32;
                let (s0, s1) = (sc(0), sc(1));
                *o = Sub {
                    q: _mm256_sub_epi8(q, _mm256_set1_epi8(32)),
                    scale: _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1),
                    min: 0.0,
                };
            }
        }
    }
    ty.subs()
}

/// The eight 32-bit sums of `q · a` (lanes 0..4: values 0..16, lanes 4..8: values 16..32).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sub_dot(q: __m256i, a: &Q8Block) -> __m256 {
    // SAFETY: `a.qs` holds 32 bytes.
    let av = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// See [`super::Kernel::dots`]; `M` activation rows at once.
#[target_feature(enable = "avx2,fma")]
fn dots_m<const M: usize>(ty: QuantType, row: &[u8], acts: &[Q8Block], subs: usize) -> [f32; M] {
    let mut acc = [_mm256_setzero_ps(); M];
    let mut mins = [0f32; M];
    let mut unpacked = [Sub {
        q: _mm256_setzero_si256(),
        scale: _mm256_setzero_ps(),
        min: 0.0,
    }; MAX_SUBS];
    let per = ty.subs();
    for (bi, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let n = unpack(ty, block, &mut unpacked);
        for (s, sub) in unpacked[..n].iter().enumerate() {
            let j = bi * per + s;
            for i in 0..M {
                let a = &acts[i * subs + j];
                let sums = sub_dot(sub.q, a);
                let scale = _mm256_mul_ps(sub.scale, _mm256_set1_ps(a.d));
                acc[i] = _mm256_fmadd_ps(sums, scale, acc[i]);
                if ty.has_min() {
                    mins[i] += sub.min * a.d * a.sum as f32;
                }
            }
        }
    }
    let mut out = [0f32; M];
    for i in 0..M {
        out[i] = hsum(acc[i]) + mins[i];
    }
    out
}

/// See [`super::Kernel::dots`] (only called where [`available`]).
pub(super) fn dots(ty: QuantType, row: &[u8], acts: &[Q8Block], subs: usize, out: &mut [f32]) {
    let blocks = subs * SUB_LEN / ty.block_len();
    let row = &row[..blocks * ty.block_bytes()];
    let acts = &acts[..out.len() * subs];
    macro_rules! run {
        ($($m:literal)*) => {
            match out.len() {
                $($m => {
                    // SAFETY: `Kernel::Avx2` exists only where the CPU has AVX2 and FMA.
                    let r = unsafe { dots_m::<$m>(ty, row, acts, subs) };
                    out.copy_from_slice(&r);
                })*
                _ => {
                    for (o, a) in out.iter_mut().zip(acts.chunks_exact(subs)) {
                        // SAFETY: as above.
                        *o = unsafe { dots_m::<1>(ty, row, a, subs) }[0];
                    }
                }
            }
        };
    }
    run!(1 2 3 4 5 6 7 8);
}

/// Dequantizes one block into `out` (`ty.block_len()` values): `scale * q`, then `+ min` for
/// the types with one, in f32 as the reference does.
#[target_feature(enable = "avx2,fma")]
fn dequantize_block(ty: QuantType, block: &[u8], out: &mut [f32]) {
    let mut unpacked = [Sub {
        q: _mm256_setzero_si256(),
        scale: _mm256_setzero_ps(),
        min: 0.0,
    }; MAX_SUBS];
    let n = unpack(ty, block, &mut unpacked);
    for (sub, o) in unpacked[..n].iter().zip(out.chunks_exact_mut(SUB_LEN)) {
        let mut q = [0i8; SUB_LEN];
        // SAFETY: `q` holds 32 bytes.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), sub.q) };
        let mut scales = [0f32; 8];
        // SAFETY: `scales` holds 8 f32.
        unsafe { _mm256_storeu_ps(scales.as_mut_ptr(), sub.scale) };
        let min = _mm256_set1_ps(sub.min);
        for (c, o) in o.chunks_exact_mut(8).enumerate() {
            // SAFETY: 8 bytes of `q` from 8 * c (c < 4).
            let q8 = unsafe { _mm_loadl_epi64(q.as_ptr().add(8 * c).cast()) };
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            let mut y = _mm256_mul_ps(_mm256_set1_ps(scales[4 * (c / 2)]), v);
            if ty.has_min() {
                y = _mm256_add_ps(y, min);
            }
            // SAFETY: `o` holds 8 f32.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), y) };
        }
    }
}

/// See [`super::Kernel::dequantize`] (only called where [`available`]).
pub(super) fn dequantize(ty: QuantType, data: &[u8], out: &mut [f32]) {
    if quant::check_len(ty, data, out.len()).is_err() {
        out.fill(f32::NAN);
        return;
    }
    for (block, o) in data
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()))
    {
        // SAFETY: only called where the CPU has AVX2 and FMA.
        unsafe { dequantize_block(ty, block, o) };
    }
}
