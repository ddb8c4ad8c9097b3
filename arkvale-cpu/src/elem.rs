//! KV storage element types (f32, f16, bf16) and the small f32 kernels every op shares.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// An element type the KV pool can be stored in; arithmetic is always f32. Conversions work
/// on whole slices so that f16 can use the CPU's conversion instructions (F16C on x86, via
/// `half`'s runtime detection) instead of one call per element.
pub(crate) trait KvElem: bytemuck::Pod + Send + Sync {
    /// Widens `src` into `dst` (same length; exact).
    fn load(src: &[Self], dst: &mut [f32]);
    /// Rounds `src` into `dst` (same length; round to nearest even).
    fn store(src: &[f32], dst: &mut [Self]);
    /// The eight elements at `p` widened to f32 (exact, as [`KvElem::load`]): how the AVX2
    /// tile kernels read keys and values straight from the pool.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; eight elements are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has F16C and AVX.
            unsafe { load_f16_f16c(src, dst) };
            return;
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f16_bits_to_f32(s.to_bits());
        }
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps};
        // SAFETY: the caller's contract (eight f16 are 16 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }
}

impl KvElem for bf16 {
    #[inline(always)]
    fn load(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            // bf16 is the upper half of an f32: widening is a shift.
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{
            __m128i, _mm_loadu_si128, _mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_slli_epi32,
        };
        // SAFETY: the caller's contract (eight bf16 are 16 bytes); bf16 is the upper half
        // of an f32, so widening is a zero extension and a shift.
        unsafe {
            let h = _mm_loadu_si128(p.cast::<__m128i>());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

/// Whether this CPU has AVX2, FMA and F16C (the features of the x86-64 fast paths; detected
/// once, then a cached lookup).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// [`KvElem::load`] for f16 by F16C, eight values per instruction (exact, like the portable
/// path); `dst` and `src` have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f16_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in d8.by_ref().zip(s8.by_ref()) {
        // SAFETY: `s` holds 8 f16 (16 bytes) and `d` 8 f32.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast::<__m128i>()));
            _mm256_storeu_ps(d.as_mut_ptr(), v);
        }
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = f16_bits_to_f32(s.to_bits());
    }
}

/// Widens the bits of an f16 to f32, exactly, without branches (so that a loop of it
/// vectorizes on any x86-64 or ARM baseline): the exponent and mantissa are moved into f32
/// position and rescaled by `2^112` (the difference of the exponent biases, which also turns
/// f16 subnormals into the right f32 normals); infinities and NaNs (exponent 31) keep an
/// all-ones exponent; the sign is copied. Checked against `half` on all 65536 inputs.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = (h & 0x7fff) << 13;
    let scaled = (f32::from_bits(em) * f32::from_bits(0x7780_0000)).to_bits(); // x 2^112
    let inf_nan = em | 0x7f80_0000;
    let mag = if em >= 0x0f80_0000 { inf_nan } else { scaled };
    f32::from_bits(mag | sign)
}

/// Asks the CPU to start loading `data` into its caches (one hint per 64-byte line), so that
/// a later pass over it finds it there instead of waiting on memory: attention prefetches the
/// next page's slot while it computes on the current one (a slot is one 4 KiB run, which the
/// hardware prefetchers do not cross into). Only a hint; nothing where the target has none.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr().cast::<i8>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: `off < bytes`, so the address lies inside `data`; a prefetch reads
            // nothing architecturally and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Widens `src` into `dst` (same length).
#[inline(always)]
pub(crate) fn load<T: KvElem>(src: &[T], dst: &mut [f32]) {
    T::load(src, dst);
}

/// Rounds `src` into `dst` (same length).
#[inline]
pub(crate) fn store<T: KvElem>(src: &[f32], dst: &mut [T]) {
    T::store(src, dst);
}

/// The dot product of two equally long f32 vectors, with eight partial sums so that the
/// compiler can vectorize it (the order differs from a left fold; within f32 rounding).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        // Fixed-size views: no bounds checks, so the lanes become one vector operation.
        let (x, y): (&[f32; LANES], &[f32; LANES]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `s[i] = e^(s[i] - m)` for every `i`, and 0 where `s[i] - m < -87` (which includes
/// `s[i] = -inf`: masked tokens; the exact value there is below 1.2e-38), eight lanes at a
/// time (AVX2 where the CPU has it; no libm call per element). `e^x` is `2^n e^r` with
/// `n = round(x / ln 2)` and the degree-6 Taylor polynomial of `e^r` on `|r| <= ln(2) / 2`:
/// relative error below 4e-7, about 3 ulp (measured in the tests). The vector path performs
/// the same operations as the portable one and gives the same bits.
#[inline(always)]
pub(crate) fn exp_shifted(s: &mut [f32], m: f32) {
    const LANES: usize = 8;
    let mut chunks = s.chunks_exact_mut(LANES);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        for c in chunks.by_ref() {
            let c: &mut [f32; LANES] = c.try_into().unwrap();
            // SAFETY: the CPU has AVX2.
            unsafe { exp8_avx2(c, m) };
        }
    }
    for c in chunks.by_ref() {
        let c: &mut [f32; LANES] = c.try_into().unwrap();
        for v in c.iter_mut() {
            *v = exp_lane(*v - m);
        }
    }
    for v in chunks.into_remainder() {
        *v = exp_lane(*v - m);
    }
}

/// [`exp_lane`] of `c[l] - m` on all eight lanes with AVX2, operation for operation (no
/// fused multiply-adds, so the bits equal the portable path's).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp8_avx2(c: &mut [f32; 8], m: f32) {
    use std::arch::x86_64::*;
    // SAFETY: `c` holds eight f32.
    let x = _mm256_sub_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, _mm256_set1_ps(m));
    let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let xc = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let shifter = _mm256_set1_ps(EXP_SHIFTER);
    let t = _mm256_add_ps(
        _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        shifter,
    );
    let n = _mm256_sub_ps(t, shifter);
    let ni = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(EXP_SHIFTER.to_bits() as i32),
    );
    let r = _mm256_sub_ps(
        _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_HI))),
        _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_LO)),
    );
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for coef in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_add_ps(_mm256_set1_ps(coef), _mm256_mul_ps(r, p));
    }
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(127),
    )));
    let e = _mm256_andnot_ps(under, _mm256_mul_ps(p, scale));
    // SAFETY: `c` holds eight f32.
    unsafe { _mm256_storeu_ps(c.as_mut_ptr(), e) };
}

/// `ln 2` split so that `n * EXP_LN2_HI` is exact for `|n| < 2^10` ([`exp_lane`]).
const EXP_LN2_HI: f32 = 0.693_145_75;
/// The rest of `ln 2` after [`EXP_LN2_HI`].
const EXP_LN2_LO: f32 = 1.428_606_8e-6;
/// `1.5 * 2^23`: adding it rounds to an integer (to nearest even) held in the low mantissa.
const EXP_SHIFTER: f32 = 12_582_912.0;

/// The largest of `s` (`-inf` when empty or all `-inf`), eight lanes at a time so that the
/// compiler vectorizes it. NaN inputs are skipped, as by `f32::max`.
#[inline(always)]
pub(crate) fn max_lanes(s: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = s.chunks_exact(LANES);
    for c in chunks.by_ref() {
        let c: &[f32; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            mx[l] = mx[l].max(c[l]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    mx.iter().fold(tail, |a, &b| a.max(b))
}

/// The sum of `s` with eight partial sums so that the compiler vectorizes it (the order
/// differs from a left fold; within f32 rounding).
#[inline(always)]
pub(crate) fn sum_lanes(s: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let mut chunks = s.chunks_exact(LANES);
    for c in chunks.by_ref() {
        let c: &[f32; LANES] = c.try_into().unwrap();
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `e^x` for `x <= 0` as [`exp_shifted`] describes (branch-free, so it vectorizes).
#[inline(always)]
pub(crate) fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let under = x < -87.0;
    let xc = x.max(-87.0);
    let t = xc * LOG2E + EXP_SHIFTER;
    let n = t - EXP_SHIFTER;
    let ni = (t.to_bits() as i32).wrapping_sub(EXP_SHIFTER.to_bits() as i32);
    let r = (xc - n * EXP_LN2_HI) - n * EXP_LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if under { 0.0 } else { p * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_fold_on_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            assert!((dot(&a, &b) as f64 - plain).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_bit_pattern() {
        // Every pattern, through the portable function and through `load` (the F16C path
        // where the CPU has it; the odd length exercises its scalar tail).
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut loaded = vec![f32::NAN; all.len() - 3];
        load(&all[..all.len() - 3], &mut loaded);
        for (i, h) in all.iter().enumerate() {
            let want = h.to_f32();
            let mut got = vec![f16_bits_to_f32(h.to_bits())];
            got.extend(loaded.get(i));
            for g in got {
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{:#06x}: {g} vs {want}",
                    h.to_bits()
                );
            }
        }
    }

    #[test]
    fn exp_shifted_vector_path_gives_the_portable_bits() {
        let mut rng = arkvale_testkit::XorShift(0x1234_5678_9abc_def1);
        let mut v: Vec<f32> = (0..4099)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * -120.0)
            .collect();
        v[3] = f32::NEG_INFINITY;
        v[17] = f32::NAN;
        v[40] = 0.0;
        let m = 0.25;
        let want: Vec<u32> = v.iter().map(|&x| exp_lane(x - m).to_bits()).collect();
        exp_shifted(&mut v, m);
        let got: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn lane_max_and_sum_match_plain_folds_on_every_length() {
        for n in 0..40 {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.75)
                .collect();
            let want_max = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(max_lanes(&v), want_max, "n = {n}");
            let want_sum: f64 = v.iter().map(|&x| x as f64).sum();
            assert!((sum_lanes(&v) as f64 - want_sum).abs() < 1e-4, "n = {n}");
        }
        assert_eq!(max_lanes(&[f32::NEG_INFINITY, f32::NAN, -3.0]), -3.0);
        assert_eq!(exp_lane(0.0), 1.0);
        assert_eq!(exp_lane(-100.0), 0.0);
    }

    #[test]
    fn exp_shifted_is_within_4e_7_of_exp() {
        let m = 3.5f32;
        let mut xs: Vec<f32> = (0..20_000).map(|i| m - i as f32 * 0.0045).collect();
        xs.extend([f32::NEG_INFINITY, m - 87.5, m - 86.9, m]);
        let mut got = xs.clone();
        exp_shifted(&mut got, m);
        let mut worst = 0f64;
        for (&x, &g) in xs.iter().zip(&got) {
            let want = ((x - m) as f64).exp();
            if x - m < -87.0 {
                assert_eq!(g, 0.0, "{x}");
            } else {
                worst = worst.max(((g as f64 - want) / want).abs());
            }
        }
        eprintln!("exp_shifted: largest relative error {worst:.2e}");
        assert!(worst < 4e-7, "largest relative error {worst:.2e}");
    }

    #[test]
    fn half_types_round_like_core() {
        use arkvale_core::KvDtype;
        let xs = [
            0.1f32,
            -3.3,
            1e-5,
            65000.0,
            1.0 / 3.0,
            -0.0,
            7e-8,
            1e30,
            f32::INFINITY,
        ];
        let mut back = [0f32; 9];
        let mut h = [f16::ZERO; 9];
        store(&xs, &mut h);
        load(&h, &mut back);
        let want: Vec<f32> = xs.iter().map(|&x| KvDtype::F16.round(x)).collect();
        assert_eq!(back.as_slice(), want.as_slice());
        let mut b = [bf16::ZERO; 9];
        store(&xs, &mut b);
        load(&b, &mut back);
        let want: Vec<f32> = xs.iter().map(|&x| KvDtype::BF16.round(x)).collect();
        assert_eq!(back.as_slice(), want.as_slice());
    }
}
