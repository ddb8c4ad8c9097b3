//! AVX2 + FMA kernels for quantized weights (x86-64, selected at run time).
//!
//! Every block is unpacked into its sub-blocks of 32 signed 8-bit values in one 256-bit
//! register each (nibbles split by a shift and mask, Q5's fifth bits expanded from their
//! `u32` by a byte shuffle and compare, Q6_K's 2-bit highs shifted into place), with the
//! per-half scales as one f32 vector and the optional `min`. A sub-block times a [`Q8Block`]
//! is then `vpmaddubsw` (|q| times the activations carrying q's sign, exact: at most
//! 2 x 128 x 127 per 16-bit lane) and `vpmaddwd` into eight 32-bit sums, converted to f32 and
//! multiply-added with `scale * d_act` into one accumulator per activation row. The types
//! whose integers are non-negative (those with a `min`) skip the sign transfer. Q4_0 and Q5_0
//! (`q - offset` with `q` unsigned) go two blocks per step instead ([`dots_pairs`]): both
//! blocks' nibbles come from one 256-bit load, the unsigned values are multiplied as stored
//! (no sign transfer, no offset subtraction per value) against activations laid out to match
//! ([`Q8Pair`], made once per matmul call), and the offset term `offset · Σ a` is subtracted
//! from the exact integer sums. Every kernel
//! is instantiated per type (`const T`, an index into [`QuantType::ALL`]) so the layout
//! decoding is resolved at compile time, and f16 scales are widened by F16C. Dequantizing
//! uses the same unpacking and a multiply then an add (no FMA), so it is bit-identical to the
//! scalar reference.

use std::arch::x86_64::*;

use arkvale_core::quant::unpack::k_scales_mins;
use arkvale_core::quant::{self, Q8Block, QuantType, SUB_LEN};

use super::type_of;

/// The little-endian f16 at `b[i..i + 2]`, widened (exactly) by F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The two little-endian f16 at `b[0..4]`, widened by one F16C conversion.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_pair_at(b: &[u8]) -> (f32, f32) {
    let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// One unpacked sub-block: `q` (32 x i8), the scale of each half broadcast over the four
/// 32-bit lanes that hold its sums (`[s0; 4]`, `[s1; 4]`), and the min.
#[derive(Clone, Copy)]
struct Sub {
    q: __m256i,
    scale: __m256,
    min: f32,
}

/// The 32 values of 16 bytes of nibbles: low nibbles are values 0..16, high nibbles 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
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
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits(qh: u32) -> __m256i {
    // Byte i takes byte i / 8 of qh (every 32-bit lane of both halves holds qh).
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    bits_as_0x10(_mm256_set1_epi32(qh as i32), spread)
}

/// Byte `i` of each 128-bit half is `0x10` where bit `i` of the `u16` at bytes `FROM`,
/// `FROM + 1` of that half of `qh` is set, else 0 (the fifth bits of 16 values of each of
/// two blocks, one per half).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits_halves<const FROM: i8>(qh: __m256i) -> __m256i {
    let (a, b) = (FROM, FROM + 1);
    let spread = _mm256_setr_epi8(
        a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a, b, b, b, b, b, b,
        b, b,
    );
    bits_as_0x10(qh, spread)
}

/// Byte `i` is `0x10` where bit `i % 8` of byte `spread[i]` of `v` (within its 128-bit half)
/// is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits_as_0x10(v: __m256i, spread: __m256i) -> __m256i {
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// 32 bytes at `b[at..]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load32(b: &[u8], at: usize) -> __m256i {
    let s = &b[at..at + 32];
    // SAFETY: `s` holds 32 bytes.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The low (`high == false`) or high nibbles of 32 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles32(v: __m256i, high: bool) -> __m256i {
    let v = if high { _mm256_srli_epi16::<4>(v) } else { v };
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// A sub-block with one scale for all 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn flat(q: __m256i, d: f32, min: f32) -> Sub {
    Sub {
        q,
        scale: _mm256_set1_ps(d),
        min,
    }
}

/// What the sub-blocks of one block share: its f16 scale and min (or `dmin`) widened, and
/// the K-quants' 6-bit sub-block scales and mins (zero for the other types).
#[derive(Clone, Copy)]
struct Header {
    d: f32,
    m: f32,
    sc: [u8; 8],
    mn: [u8; 8],
}

/// The [`Header`] of one block of type `T` (`b` holds at least one block).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn header<const T: usize>(b: &[u8]) -> Header {
    let ty = type_of::<T>();
    let b = &b[..ty.block_bytes()];
    let plain = |d, m| Header {
        d,
        m,
        sc: [0; 8],
        mn: [0; 8],
    };
    match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => plain(f16_at(b, 0), 0.0),
        QuantType::Q4_1 | QuantType::Q5_1 => {
            let (d, m) = f16_pair_at(b);
            plain(d, m)
        }
        QuantType::Q4_K | QuantType::Q5_K => {
            let (sc, mn) = k_scales_mins(&b[4..16]);
            let (d, m) = f16_pair_at(b);
            Header { d, m, sc, mn }
        }
        QuantType::Q6_K => plain(f16_at(b, 208), 0.0),
    }
}

/// Sub-block `s` (`< type_of::<T>().subs()`) of one block of type `T` with header `h`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sub<const T: usize>(b: &[u8], s: usize, h: &Header) -> Sub {
    let ty = type_of::<T>();
    let b = &b[..ty.block_bytes()];
    match ty {
        QuantType::Q4_0 => flat(
            _mm256_sub_epi8(nibbles16(&b[2..18]), _mm256_set1_epi8(ty.offset())),
            h.d,
            0.0,
        ),
        QuantType::Q4_1 => flat(nibbles16(&b[4..20]), h.d, h.m),
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let at = if ty == QuantType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let q = _mm256_or_si256(nibbles16(&b[at + 4..at + 20]), fifth_bits(qh));
            if ty == QuantType::Q5_0 {
                flat(_mm256_sub_epi8(q, _mm256_set1_epi8(ty.offset())), h.d, 0.0)
            } else {
                flat(q, h.d, h.m)
            }
        }
        QuantType::Q8_0 => flat(load32(b, 2), h.d, 0.0),
        QuantType::Q4_K | QuantType::Q5_K => {
            let qs = if ty == QuantType::Q4_K { 16 } else { 48 };
            let mut q = nibbles32(load32(b, qs + 32 * (s / 2)), s % 2 == 1);
            if ty == QuantType::Q5_K {
                let bit = _mm256_set1_epi8((1u8 << s) as i8);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(load32(b, 16), bit), bit);
                q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
            }
            flat(q, h.d * h.sc[s] as f32, -(h.m * h.mn[s] as f32))
        }
        QuantType::Q6_K => {
            let (half, r) = (s / 4, s % 4);
            let low = nibbles32(load32(b, 64 * half + 32 * (r % 2)), r >= 2);
            let shift = _mm_cvtsi32_si128(2 * r as i32);
            let high = _mm256_and_si256(
                _mm256_srl_epi16(load32(b, 128 + 32 * half), shift),
                _mm256_set1_epi8(3),
            );
            let q = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high));
            let sc = |i: usize| h.d * (b[192 + 8 * half + 2 * r + i] as i8) as f32;
            let (s0, s1) = (sc(0), sc(1));
            Sub {
                q: _mm256_sub_epi8(q, _mm256_set1_epi8(ty.offset())),
                scale: _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1),
                min: 0.0,
            }
        }
    }
}

/// The eight 32-bit sums of `q · a` (lanes 0..4: values 0..16, lanes 4..8: values 16..32);
/// `UNSIGNED`: every `q` is known to be `>= 0`, so no sign transfer is needed.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sub_dot<const UNSIGNED: bool>(q: __m256i, a: &Q8Block) -> __m256 {
    // SAFETY: `a.qs` holds 32 bytes.
    let av = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
    let p16 = if UNSIGNED {
        _mm256_maddubs_epi16(q, av)
    } else {
        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av, q))
    };
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Running sums of [`dots_m`]: one vector accumulator and one `min` term per activation row.
#[derive(Clone, Copy)]
struct Acc<const M: usize> {
    v: [__m256; M],
    min: [f32; M],
}

/// Adds block `block` (the `bi`-th of its row, type `T`) times the activation rows to the
/// sums: its even sub-blocks to `even`, its odd ones to `odd`. The K-quants (8 or 16
/// sub-blocks, always an even count) go two sub-blocks per step, so which accumulator a
/// sub-block feeds is known at compile time and the compiler can keep both in registers
/// (choosing one per sub-block at run time, through a reference, kept them in memory).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn accumulate<const M: usize, const T: usize>(
    block: &[u8],
    bi: usize,
    acts: &[Q8Block],
    subs: usize,
    even: &mut Acc<M>,
    odd: &mut Acc<M>,
) {
    let ty = type_of::<T>();
    let h = header::<T>(block);
    let first = bi * ty.subs();
    if ty.subs() == 1 {
        add_sub::<M, T>(sub::<T>(block, 0, &h), &acts[first..], subs, even);
        return;
    }
    for s in (0..ty.subs()).step_by(2) {
        add_sub::<M, T>(sub::<T>(block, s, &h), &acts[first + s..], subs, even);
        add_sub::<M, T>(
            sub::<T>(block, s + 1, &h),
            &acts[first + s + 1..],
            subs,
            odd,
        );
    }
}

/// Adds one unpacked sub-block of type `T` times the activation rows to `acc`: row `i`'s
/// block is `acts[i * subs]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn add_sub<const M: usize, const T: usize>(
    sub: Sub,
    acts: &[Q8Block],
    subs: usize,
    acc: &mut Acc<M>,
) {
    let ty = type_of::<T>();
    for i in 0..M {
        let a = &acts[i * subs];
        // The types with a min store non-negative integers.
        let sums = if ty.has_min() {
            sub_dot::<true>(sub.q, a)
        } else {
            sub_dot::<false>(sub.q, a)
        };
        let scale = _mm256_mul_ps(sub.scale, _mm256_set1_ps(a.d));
        acc.v[i] = _mm256_fmadd_ps(sums, scale, acc.v[i]);
        if ty.has_min() {
            acc.min[i] = sub.min.mul_add(a.ds, acc.min[i]);
        }
    }
}

/// Whether `ty` has a paired kernel ([`dots_pairs`]): Q4_0 and Q5_0, one sub-block per block
/// and values `q - offset` with `q` unsigned.
const fn paired(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_0 | QuantType::Q5_0)
}

/// Two consecutive activation blocks `A`, `B` laid out the way [`unpack_pair`] unpacks two
/// weight blocks of Q4_0/Q5_0: `lo` holds values 0..16 of `A` then of `B`, `hi` values
/// 16..32 of each; `d` is `A`'s scale in the four 32-bit lanes that sum `A`'s products and
/// `B`'s in the other four; `bias` is `offset * sum` of `A` in lane 0 and of `B` in lane 4
/// (the offset term `Σ offset · a`, subtracted from the unsigned integer sums, exactly).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Q8Pair {
    lo: [i8; 32],
    hi: [i8; 32],
    d: [f32; 8],
    bias: [i32; 8],
}

/// `blocks` (rows of `subs` blocks) as [`Q8Pair`]s, `subs / 2` per row (an odd last block of
/// a row is left out: the kernel takes it unpaired), for a type with a paired kernel; empty
/// for the other types.
pub(super) fn pairs(ty: QuantType, blocks: &[Q8Block], subs: usize) -> Vec<Q8Pair> {
    if !paired(ty) {
        return Vec::new();
    }
    let offset = ty.offset() as i32;
    let mut out = Vec::with_capacity(blocks.len() / subs * (subs / 2));
    for row in blocks.chunks_exact(subs) {
        for ab in row.chunks_exact(2) {
            let (a, b) = (&ab[0], &ab[1]);
            let mut p = Q8Pair {
                lo: [0; 32],
                hi: [0; 32],
                d: [a.d, a.d, a.d, a.d, b.d, b.d, b.d, b.d],
                bias: [offset * a.sum, 0, 0, 0, offset * b.sum, 0, 0, 0],
            };
            p.lo[..16].copy_from_slice(&a.qs[..16]);
            p.lo[16..].copy_from_slice(&b.qs[..16]);
            p.hi[..16].copy_from_slice(&a.qs[16..]);
            p.hi[16..].copy_from_slice(&b.qs[16..]);
            out.push(p);
        }
    }
    out
}

/// Two consecutive blocks `A`, `B` of type `T` (Q4_0 or Q5_0) at `b`, unpacked as stored
/// (unsigned, the offset not yet subtracted): values 0..16 of `A` then of `B` (`lo`), values
/// 16..32 of each (`hi`), and the scales, `A`'s in lanes 0..4 and `B`'s in lanes 4..8. One
/// 256-bit load, shift and two masks unpack both blocks' nibbles.
///
/// # Safety
/// `b` points to two readable blocks of `T`; the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_pair<const T: usize>(b: *const u8) -> (__m256i, __m256i, __m256) {
    let ty = type_of::<T>();
    let bytes = ty.block_bytes();
    let qs = if ty == QuantType::Q5_0 { 6 } else { 2 };
    // SAFETY: every read is inside the two blocks (caller's contract).
    unsafe {
        let v = _mm256_loadu2_m128i(b.add(bytes + qs).cast(), b.add(qs).cast());
        let m = _mm256_set1_epi8(0x0F);
        let mut lo = _mm256_and_si256(v, m);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
        if ty == QuantType::Q5_0 {
            let qh = |at: usize| _mm_cvtsi32_si128(b.add(at).cast::<i32>().read_unaligned());
            let qh = _mm256_set_m128i(qh(bytes + 2), qh(2));
            lo = _mm256_or_si256(lo, fifth_bits_halves::<0>(qh));
            hi = _mm256_or_si256(hi, fifth_bits_halves::<2>(qh));
        }
        let f16 = |at: usize| b.add(at).cast::<u16>().read_unaligned() as i32;
        let d = _mm_cvtph_ps(_mm_insert_epi16::<1>(_mm_cvtsi32_si128(f16(0)), f16(bytes)));
        let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let d = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), spread);
        (lo, hi, d)
    }
}

/// The vector sums of the first `2 * per_row` blocks of `row` (type `T`, Q4_0 or Q5_0) times
/// `M` rows of paired activations (`pairs`, `per_row` per row), two blocks per step: the
/// unsigned weights times the activations by `vpmaddubsw` (at most 2 · 31 · 127 per 16-bit
/// lane, and the two halves' sums added in 16 bits stay below 2^15), `vpmaddwd` into eight
/// 32-bit sums, the offset term subtracted (exact integers), then one multiply-add with the
/// two blocks' scales.
#[target_feature(enable = "avx2,fma,f16c")]
fn dots_pairs<const M: usize, const T: usize>(
    row: &[u8],
    pairs: &[Q8Pair],
    per_row: usize,
) -> [__m256; M] {
    let bytes = type_of::<T>().block_bytes();
    assert!(row.len() >= 2 * per_row * bytes && pairs.len() >= M * per_row);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); M];
    for p in 0..per_row {
        // SAFETY: blocks 2p, 2p + 1 of `row` are readable (asserted above).
        let (lo, hi, dw) = unsafe { unpack_pair::<T>(row.as_ptr().add(2 * p * bytes)) };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i * per_row + p < M * per_row <= pairs.len() (asserted above); the
            // fields are 32-byte aligned (`repr(align(32))`, offsets multiples of 32).
            unsafe {
                let a = pairs.get_unchecked(i * per_row + p);
                let al = _mm256_load_si256(a.lo.as_ptr().cast());
                let ah = _mm256_load_si256(a.hi.as_ptr().cast());
                let p16 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, al), _mm256_maddubs_epi16(hi, ah));
                let bias = _mm256_load_si256(a.bias.as_ptr().cast());
                let sums = _mm256_sub_epi32(_mm256_madd_epi16(p16, ones), bias);
                let scale = _mm256_mul_ps(dw, _mm256_load_ps(a.d.as_ptr()));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, *acc);
            }
        }
    }
    acc
}

/// See [`super::Kernel::dots`]; `M` activation rows at once, weights of type `T`. Q4_0 and
/// Q5_0 take two blocks per step ([`dots_pairs`], with `pairs` made by [`pairs`]) and any odd
/// last block alone. The other types go block by block, alternating blocks (one-sub-block
/// types) or sub-blocks (K-quants) between two independent accumulators, so consecutive
/// multiply-adds do not wait on each other.
#[target_feature(enable = "avx2,fma,f16c")]
fn dots_m<const M: usize, const T: usize>(
    row: &[u8],
    acts: &[Q8Block],
    pairs: &[Q8Pair],
    subs: usize,
) -> [f32; M] {
    let ty = type_of::<T>();
    let bytes = ty.block_bytes();
    let zero = Acc {
        v: [_mm256_setzero_ps(); M],
        min: [0f32; M],
    };
    let (mut even, mut odd) = (zero, zero);
    if paired(ty) {
        let per_row = subs / 2;
        even.v = dots_pairs::<M, T>(row, pairs, per_row);
        if subs % 2 == 1 {
            let last = &row[(subs - 1) * bytes..subs * bytes];
            accumulate::<M, T>(last, subs - 1, acts, subs, &mut odd, &mut even);
        }
    } else if ty.subs() == 1 {
        // Whole blocks alternate between the two accumulators.
        let mut blocks = row.chunks_exact(2 * bytes);
        for (p, pair) in blocks.by_ref().enumerate() {
            accumulate::<M, T>(&pair[..bytes], 2 * p, acts, subs, &mut even, &mut odd);
            accumulate::<M, T>(&pair[bytes..], 2 * p + 1, acts, subs, &mut odd, &mut even);
        }
        let last = blocks.remainder();
        if !last.is_empty() {
            accumulate::<M, T>(last, subs - 1, acts, subs, &mut even, &mut odd);
        }
    } else {
        // The K-quants: one call site, so that the compiler inlines the (large) block body
        // (two call sites left it out of line, spilling the accumulators per block); the
        // even and odd sub-blocks of each block feed the two accumulators.
        for (bi, block) in row.chunks_exact(bytes).enumerate() {
            accumulate::<M, T>(block, bi, acts, subs, &mut even, &mut odd);
        }
    }
    std::array::from_fn(|i| hsum(_mm256_add_ps(even.v[i], odd.v[i])) + (even.min[i] + odd.min[i]))
}

/// See [`super::Kernel::dots`] (only called where the CPU has AVX2, FMA and F16C); `pairs`
/// as [`pairs`] made them from `acts`.
pub(super) fn dots(
    ty: QuantType,
    row: &[u8],
    acts: &[Q8Block],
    pairs: &[Q8Pair],
    subs: usize,
    out: &mut [f32],
) {
    by_type!(ty, dots_typed(row, acts, pairs, subs, out))
}

/// [`dots`] for weights of type `T`.
fn dots_typed<const T: usize>(
    row: &[u8],
    acts: &[Q8Block],
    pairs: &[Q8Pair],
    subs: usize,
    out: &mut [f32],
) {
    let ty = type_of::<T>();
    let blocks = subs * SUB_LEN / ty.block_len();
    let row = &row[..blocks * ty.block_bytes()];
    let acts = &acts[..out.len() * subs];
    let per_row = if paired(ty) { subs / 2 } else { 0 };
    macro_rules! run {
        ($($m:literal)*) => {
            match out.len() {
                $($m => {
                    // SAFETY: `Kernel::Avx2` exists only where the CPU has AVX2, FMA, F16C.
                    let r = unsafe { dots_m::<$m, T>(row, acts, pairs, subs) };
                    out.copy_from_slice(&r);
                })*
                _ => {
                    for (i, o) in out.iter_mut().enumerate() {
                        let a = &acts[i * subs..(i + 1) * subs];
                        let p = &pairs[i * per_row..(i + 1) * per_row];
                        // SAFETY: as above.
                        *o = unsafe { dots_m::<1, T>(row, a, p, subs) }[0];
                    }
                }
            }
        };
    }
    run!(1 2 3 4 5 6 7 8);
}

/// Dequantizes one block into `out` (`ty.block_len()` values): `scale * q`, then `+ min` for
/// the types with one, in f32 as the reference does.
#[target_feature(enable = "avx2,fma,f16c")]
fn dequantize_block<const T: usize>(block: &[u8], out: &mut [f32]) {
    let ty = type_of::<T>();
    let h = header::<T>(block);
    for (s, o) in out.chunks_exact_mut(SUB_LEN).enumerate().take(ty.subs()) {
        let sub = sub::<T>(block, s, &h);
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

/// See [`super::Kernel::dequantize`] (only called where the CPU has AVX2, FMA and F16C).
pub(super) fn dequantize(ty: QuantType, data: &[u8], out: &mut [f32]) {
    by_type!(ty, dequantize_typed(data, out))
}

/// [`dequantize`] for type `T`.
fn dequantize_typed<const T: usize>(data: &[u8], out: &mut [f32]) {
    let ty = type_of::<T>();
    if quant::check_len(ty, data, out.len()).is_err() {
        out.fill(f32::NAN);
        return;
    }
    for (block, o) in data
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()))
    {
        // SAFETY: only called where the CPU has AVX2, FMA and F16C.
        unsafe { dequantize_block::<T>(block, o) };
    }
}
