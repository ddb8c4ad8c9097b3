//! The two small matrix products of paged attention on one page tile: the scores
//! `S = Q · Kᵀ` of a block of queries against a page's keys, and the weighted values
//! `O = α ⊙ O + W · V`. Each has an AVX2 + FMA path, chosen at run time, and a portable path
//! that is its reference (the tests compare them on random tiles; they differ only in the
//! order of the f32 additions).
//!
//! The scores read a **transposed** key tile (`kt[c * np + i]` = component `c` of key `i`,
//! `np` keys per row padded to [`KEY_PAD`]), so that the vector kernel broadcasts one query
//! component and multiplies it into sixteen keys at once, for four queries at a time: no
//! horizontal sums, and each key component is loaded once per four queries.

use crate::elem::KvElem;

/// The key count of a transposed key tile is padded to a multiple of this.
pub(crate) const KEY_PAD: usize = 16;

/// `kt[c * np + i] = k[i * d + c]` (widened to f32, exactly) for every key `i < n` and
/// component `c < d`; the padding columns `n..np` are left as they are. The keys may be
/// stored narrow (f16/bf16 pool elements): they are widened in registers on the way, so a
/// page is read once and no row-major f32 copy is made.
pub(crate) fn transpose<T: KvElem>(k: &[T], n: usize, d: usize, kt: &mut [f32], np: usize) {
    assert!(k.len() >= n * d && kt.len() >= d * np && n <= np);
    #[cfg(target_arch = "x86_64")]
    if crate::elem::has_avx2_fma_f16c() && d % 8 == 0 {
        // SAFETY: the CPU has AVX2 and F16C; the lengths were checked above.
        unsafe { transpose_avx(k, n, d, kt, np) };
        return;
    }
    transpose_portable(k, 0, n, d, kt, np);
}

/// [`transpose`] of keys `from..n`, one key row (widened) at a time.
fn transpose_portable<T: KvElem>(
    k: &[T],
    from: usize,
    n: usize,
    d: usize,
    kt: &mut [f32],
    np: usize,
) {
    with_row_buffer(d, |row| {
        for i in from..n {
            T::load(&k[i * d..(i + 1) * d], row);
            for (c, &x) in row.iter().enumerate() {
                kt[c * np + i] = x;
            }
        }
    });
}

/// `s[e * np + i] = Σ_c q[e * d + c] · kt[c * np + i]` for every query `e < ne` and key
/// `i < np` (`np` a multiple of [`KEY_PAD`]).
pub(crate) fn scores(q: &[f32], ne: usize, d: usize, kt: &[f32], np: usize, s: &mut [f32]) {
    assert!(np % KEY_PAD == 0 && q.len() >= ne * d && kt.len() >= d * np && s.len() >= ne * np);
    #[cfg(target_arch = "x86_64")]
    if crate::elem::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2 and FMA; the lengths were checked above.
        unsafe { scores_avx2(q, ne, d, kt, np, s) };
        return;
    }
    scores_portable(q, ne, d, kt, np, s);
}

/// [`scores`], one query and key at a time.
fn scores_portable(q: &[f32], ne: usize, d: usize, kt: &[f32], np: usize, s: &mut [f32]) {
    for e in 0..ne {
        let row = &mut s[e * np..(e + 1) * np];
        row.fill(0.0);
        for (c, &x) in q[e * d..(e + 1) * d].iter().enumerate() {
            for (si, &k) in row.iter_mut().zip(&kt[c * np..(c + 1) * np]) {
                *si += x * k;
            }
        }
    }
}

/// Fewest queries per KV head for which [`scores`] on a transposed tile beats
/// [`scores_rows`] on the row-major one (the transpose pays off from four queries on).
pub(crate) const TRANSPOSE_FROM: usize = 4;

/// `s[e * np + i] = Σ_c q[e * d + c] · k[i * d + c]` for every query `e < ne` and key
/// `i < n`, from a **row-major** key tile (no transpose): for few queries per KV head
/// (decode), where transposing the tile would cost more than it saves. The keys are read as
/// stored (f32, f16 or bf16; the vector path widens them in registers, so decode reads a
/// page's keys straight from the pool). Entries `n..np` of each row are left as they are.
pub(crate) fn scores_rows<T: KvElem>(
    q: &[f32],
    ne: usize,
    d: usize,
    k: &[T],
    n: usize,
    np: usize,
    s: &mut [f32],
) {
    assert!(n <= np && q.len() >= ne * d && k.len() >= n * d && s.len() >= ne * np);
    #[cfg(target_arch = "x86_64")]
    if crate::elem::has_avx2_fma_f16c() && d % 8 == 0 && ne <= 3 {
        // SAFETY: the CPU has AVX2, FMA and F16C; the lengths were checked above.
        unsafe { scores_rows_avx2(q, ne, d, k, n, np, s) };
        return;
    }
    with_row_buffer(d, |row| {
        for i in 0..n {
            T::load(&k[i * d..(i + 1) * d], row);
            for e in 0..ne {
                s[e * np + i] = crate::elem::dot(&q[e * d..(e + 1) * d], row);
            }
        }
    });
}

/// Runs `f` on a scratch row of `d` f32 (on the stack for the usual head sizes).
fn with_row_buffer(d: usize, f: impl FnOnce(&mut [f32])) {
    const STACK: usize = 256;
    if d <= STACK {
        f(&mut [0f32; STACK][..d]);
    } else {
        f(&mut vec![0f32; d]);
    }
}

/// [`scores_rows`] with AVX2 + FMA for up to three queries: each key row is loaded (and
/// widened) once, eight components at a time, into one accumulator per query, then each
/// accumulator is summed across its lanes.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the lengths are those [`scores_rows`] checks;
/// `d % 8 == 0`, `ne <= 3`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_rows_avx2<T: KvElem>(
    q: &[f32],
    ne: usize,
    d: usize,
    k: &[T],
    n: usize,
    np: usize,
    s: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    for i in 0..n {
        let mut a = [_mm256_setzero_ps(); 3];
        for c in (0..d).step_by(8) {
            // SAFETY: i < n, c + 8 <= d, e < ne: inside `k` and `q`.
            unsafe {
                let kv = T::load8(kp.add(i * d + c));
                for (e, ae) in a.iter_mut().enumerate().take(ne) {
                    *ae = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(e * d + c)), kv, *ae);
                }
            }
        }
        for (e, ae) in a.iter().enumerate().take(ne) {
            let lo = _mm256_castps256_ps128(*ae);
            let hi = _mm256_extractf128_ps::<1>(*ae);
            let x = _mm_add_ps(lo, hi);
            let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
            let x = _mm_add_ss(x, _mm_shuffle_ps::<0x55>(x, x));
            s[e * np + i] = _mm_cvtss_f32(x);
        }
    }
}

/// For every query `e < alpha.len()`: `acc[e] = alpha[e] · acc[e] + Σ_{i < nk} w[e * np + i] ·
/// v[i]`, where `acc[e]` and `v[i]` are the `d` values at `e * d` and `i * d`. The values
/// are read as stored (see [`scores_rows`]).
pub(crate) fn weighted_values<T: KvElem>(
    w: &[f32],
    np: usize,
    nk: usize,
    v: &[T],
    d: usize,
    alpha: &[f32],
    acc: &mut [f32],
) {
    let ne = alpha.len();
    assert!(nk <= np && w.len() >= ne * np && v.len() >= nk * d && acc.len() >= ne * d);
    #[cfg(target_arch = "x86_64")]
    if crate::elem::has_avx2_fma_f16c() && d % 32 == 0 {
        // SAFETY: the CPU has AVX2, FMA and F16C; the lengths were checked above.
        unsafe { weighted_values_avx2(w, np, nk, v, d, alpha, acc) };
        return;
    }
    with_row_buffer(d, |row| {
        for (e, &a) in alpha.iter().enumerate() {
            if a != 1.0 {
                acc[e * d..(e + 1) * d].iter_mut().for_each(|x| *x *= a);
            }
        }
        for i in 0..nk {
            T::load(&v[i * d..(i + 1) * d], row);
            for e in 0..ne {
                let wi = w[e * np + i];
                if wi != 0.0 {
                    for (x, &y) in acc[e * d..(e + 1) * d].iter_mut().zip(row.iter()) {
                        *x += wi * y;
                    }
                }
            }
        }
    });
}

/// [`weighted_values`] on f32 values, one query and value at a time: the definition the
/// vector paths are tested against.
#[cfg(test)]
fn weighted_values_portable(
    w: &[f32],
    np: usize,
    nk: usize,
    v: &[f32],
    d: usize,
    alpha: &[f32],
    acc: &mut [f32],
) {
    for (e, &a) in alpha.iter().enumerate() {
        let out = &mut acc[e * d..(e + 1) * d];
        if a != 1.0 {
            out.iter_mut().for_each(|x| *x *= a);
        }
        for (i, &wi) in w[e * np..e * np + nk].iter().enumerate() {
            if wi != 0.0 {
                for (x, &y) in out.iter_mut().zip(&v[i * d..(i + 1) * d]) {
                    *x += wi * y;
                }
            }
        }
    }
}

/// [`transpose`] with AVX: eight keys × eight components at a time (widened by
/// [`KvElem::load8`]) by the usual three rounds of shuffles (`d % 8 == 0`); the keys past the
/// last multiple of eight one by one.
///
/// # Safety
/// The CPU has AVX2 and F16C, `k.len() >= n * d`, `kt.len() >= d * np`, `n <= np`,
/// `d % 8 == 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_avx<T: KvElem>(k: &[T], n: usize, d: usize, kt: &mut [f32], np: usize) {
    use std::arch::x86_64::*;
    let (kp, ktp) = (k.as_ptr(), kt.as_mut_ptr());
    let full = n / 8 * 8;
    for i0 in (0..full).step_by(8) {
        for c0 in (0..d).step_by(8) {
            // SAFETY: rows i0..i0+8 < n and components c0..c0+8 <= d are inside `k`; the
            // stores go to rows c0..c0+8 < d, keys i0..i0+8 <= np of `kt`.
            unsafe {
                let r = |j: usize| T::load8(kp.add((i0 + j) * d + c0));
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
                let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let dst = |j: usize| ktp.add((c0 + j) * np + i0);
                _mm256_storeu_ps(dst(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                _mm256_storeu_ps(dst(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                _mm256_storeu_ps(dst(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                _mm256_storeu_ps(dst(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                _mm256_storeu_ps(dst(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                _mm256_storeu_ps(dst(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                _mm256_storeu_ps(dst(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                _mm256_storeu_ps(dst(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
            }
        }
    }
    transpose_portable(k, full, n, d, kt, np);
}

/// [`scores`] with AVX2 + FMA: four queries × sixteen keys per pass (eight accumulators), the
/// one to three remaining queries together in a last pass.
///
/// # Safety
/// The CPU has AVX2 and FMA; the lengths are those [`scores`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(q: &[f32], ne: usize, d: usize, kt: &[f32], np: usize, s: &mut [f32]) {
    let quads = ne / 4 * 4;
    for e in (0..quads).step_by(4) {
        // SAFETY: e + 4 <= ne; the caller's lengths.
        unsafe { scores_pass::<4>(q, e, d, kt, np, s) };
    }
    // The rest in one pass (decode with 5-7 query heads per KV head, as Qwen2.5's 7, would
    // otherwise reload every key vector once per remaining query).
    // SAFETY: quads + (ne - quads) = ne; the caller's lengths.
    unsafe {
        match ne - quads {
            3 => scores_pass::<3>(q, quads, d, kt, np, s),
            2 => scores_pass::<2>(q, quads, d, kt, np, s),
            1 => scores_pass::<1>(q, quads, d, kt, np, s),
            _ => {}
        }
    }
}

/// Scores of queries `e..e + Q` against all `np` keys, sixteen keys at a time (`2 Q`
/// accumulators; each key vector loaded once for the `Q` queries).
///
/// # Safety
/// The CPU has AVX2 and FMA; `e + Q <= ne` and the lengths [`scores`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores_pass<const Q: usize>(
    q: &[f32],
    e: usize,
    d: usize,
    kt: &[f32],
    np: usize,
    s: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (qp, kp, sp) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for i0 in (0..np).step_by(KEY_PAD) {
        let mut a = [[_mm256_setzero_ps(); 2]; Q];
        for c in 0..d {
            // SAFETY: c < d, i0 + 16 <= np, e + Q <= ne: inside `q` and `kt`.
            unsafe {
                let k0 = _mm256_loadu_ps(kp.add(c * np + i0));
                let k1 = _mm256_loadu_ps(kp.add(c * np + i0 + 8));
                for (r, ar) in a.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*qp.add((e + r) * d + c));
                    ar[0] = _mm256_fmadd_ps(b, k0, ar[0]);
                    ar[1] = _mm256_fmadd_ps(b, k1, ar[1]);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            // SAFETY: e + r < ne and i0 + 16 <= np: inside `s`.
            unsafe {
                _mm256_storeu_ps(sp.add((e + r) * np + i0), ar[0]);
                _mm256_storeu_ps(sp.add((e + r) * np + i0 + 8), ar[1]);
            }
        }
    }
}

/// [`weighted_values`] with AVX2 + FMA: two queries × 32 output values per pass (eight
/// accumulators, each value vector loaded once for both queries), an odd last query alone
/// (`d % 32 == 0`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the lengths are those [`weighted_values`] checks;
/// `d % 32 == 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_values_avx2<T: KvElem>(
    w: &[f32],
    np: usize,
    nk: usize,
    v: &[T],
    d: usize,
    alpha: &[f32],
    acc: &mut [f32],
) {
    let pairs = alpha.len() / 2 * 2;
    for e in (0..pairs).step_by(2) {
        // SAFETY: e + 2 <= ne; the caller's lengths.
        unsafe { values_pass::<T, 2>(w, np, nk, v, d, alpha, e, acc) };
    }
    if pairs < alpha.len() {
        // SAFETY: e + 1 <= ne; the caller's lengths.
        unsafe { values_pass::<T, 1>(w, np, nk, v, d, alpha, pairs, acc) };
    }
}

/// Weighted values of queries `e..e + Q`, 32 outputs at a time (`4 Q` accumulators; each
/// value vector loaded once for the `Q` queries).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `e + Q <= alpha.len()`, `d % 32 == 0` and the lengths
/// [`weighted_values`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn values_pass<T: KvElem, const Q: usize>(
    w: &[f32],
    np: usize,
    nk: usize,
    v: &[T],
    d: usize,
    alpha: &[f32],
    e: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (wp, vp, ap) = (w.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    for c0 in (0..d).step_by(32) {
        // SAFETY: e + Q <= ne, c0 + 32 <= d, i < nk: inside `acc`, `w` and `v`.
        unsafe {
            let mut x = [[_mm256_setzero_ps(); 4]; Q];
            for (r, xr) in x.iter_mut().enumerate() {
                let a = _mm256_set1_ps(alpha[e + r]);
                let o = ap.add((e + r) * d + c0);
                for (j, xj) in xr.iter_mut().enumerate() {
                    *xj = _mm256_mul_ps(a, _mm256_loadu_ps(o.add(8 * j)));
                }
            }
            for i in 0..nk {
                let vi = vp.add(i * d + c0);
                let vs = [0, 1, 2, 3].map(|j| T::load8(vi.add(8 * j)));
                for (r, xr) in x.iter_mut().enumerate() {
                    let wr = _mm256_broadcast_ss(&*wp.add((e + r) * np + i));
                    for (xj, vj) in xr.iter_mut().zip(vs) {
                        *xj = _mm256_fmadd_ps(wr, vj, *xj);
                    }
                }
            }
            for (r, xr) in x.iter().enumerate() {
                let o = ap.add((e + r) * d + c0);
                for (j, xj) in xr.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * j), *xj);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
    }

    /// One random tile of the property test: queries, keys (also used as values), weights,
    /// rescale factors and a starting output.
    struct Tile<'a> {
        q: &'a [f32],
        ne: usize,
        d: usize,
        k: &'a [f32],
        n: usize,
        np: usize,
        w: &'a [f32],
        nk: usize,
        alpha: &'a [f32],
        acc: &'a [f32],
    }

    /// The row-major scores and the weighted values reading keys and values stored as `T`
    /// (decode's direct pool reads) equal the portable products of the widened copies
    /// (widening is exact, so the same f32 tolerance), and transposing them widens exactly.
    /// Outputs start poisoned.
    fn narrow_reads_equal_the_widened_ones<T: KvElem + Default>(
        t: &Tile<'_>,
    ) -> Result<(), TestCaseError> {
        let (ne, d, n, np) = (t.ne, t.d, t.n, t.np);
        let mut narrow = vec![T::default(); t.k.len()];
        T::store(t.k, &mut narrow);
        let mut wide = vec![0f32; t.k.len()];
        T::load(&narrow, &mut wide);
        let mut kt = vec![f32::NAN; d * np];
        let mut kt_ref = vec![f32::NAN; d * np];
        transpose(&narrow, n, d, &mut kt, np);
        transpose_portable(&wide, 0, n, d, &mut kt_ref, np);
        for c in 0..d {
            for i in 0..n {
                let (a, b) = (kt[c * np + i], kt_ref[c * np + i]);
                prop_assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "narrow-key transpose {} vs {}",
                    a,
                    b
                );
            }
        }
        if ne < TRANSPOSE_FROM {
            let mut s_ref = vec![f32::NAN; ne * np];
            scores_portable(t.q, ne, d, &kt_ref, np, &mut s_ref);
            let mut s = vec![f32::NAN; ne * np];
            scores_rows(t.q, ne, d, &narrow, n, np, &mut s);
            for e in 0..ne {
                for i in 0..n {
                    let (a, b) = (s[e * np + i], s_ref[e * np + i]);
                    prop_assert!(close(a, b), "narrow-key score {a} vs {b}");
                }
            }
        }
        let (mut acc, mut acc_ref) = (t.acc.to_vec(), t.acc.to_vec());
        weighted_values(t.w, np, t.nk, &narrow, d, t.alpha, &mut acc);
        weighted_values_portable(t.w, np, t.nk, &wide, d, t.alpha, &mut acc_ref);
        for (a, b) in acc.iter().zip(&acc_ref) {
            prop_assert!(close(*a, *b), "narrow value {a} vs {b}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The dispatched kernels (AVX2 where the CPU has it) equal the portable ones on
        /// random tiles: the transpose exactly, the products within f32 rounding (relative
        /// 1e-5: only the order of the additions differs). Outputs start poisoned (NaN) where
        /// the kernel must write.
        #[test]
        fn vector_kernels_equal_the_portable_ones(
            ne in 1usize..13,
            n in 1usize..=64,
            d in proptest::sample::select(vec![8usize, 24, 32, 64, 128]),
            nk_frac in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let np = n.next_multiple_of(KEY_PAD);
            let mut rng = arkvale_testkit::XorShift::new(seed);
            let mut rnd = move || rng.unit();
            let k: Vec<f32> = (0..n * d).map(|_| rnd()).collect();
            let mut kt = vec![f32::NAN; d * np];
            let mut kt_ref = vec![0.0f32; d * np];
            transpose(&k, n, d, &mut kt, np);
            transpose_portable(&k, 0, n, d, &mut kt_ref, np);
            for c in 0..d {
                for i in 0..n {
                    prop_assert_eq!(kt[c * np + i].to_bits(), kt_ref[c * np + i].to_bits());
                }
            }
            let q: Vec<f32> = (0..ne * d).map(|_| rnd()).collect();
            let mut s = vec![f32::NAN; ne * np];
            let mut s_ref = vec![f32::NAN; ne * np];
            scores(&q, ne, d, &kt_ref, np, &mut s);
            scores_portable(&q, ne, d, &kt_ref, np, &mut s_ref);
            for (a, b) in s.iter().zip(&s_ref) {
                prop_assert!(close(*a, *b), "score {a} vs {b}");
            }
            if ne < TRANSPOSE_FROM {
                let mut s_rows = vec![f32::NAN; ne * np];
                scores_rows(&q, ne, d, &k, n, np, &mut s_rows);
                for e in 0..ne {
                    for i in 0..n {
                        let (a, b) = (s_rows[e * np + i], s_ref[e * np + i]);
                        prop_assert!(close(a, b), "row-major score {a} vs {b}");
                    }
                }
            }
            let nk = ((n as f64 * nk_frac) as usize).min(n);
            let w: Vec<f32> = (0..ne * np).map(|_| rnd().abs()).collect();
            let alpha: Vec<f32> = (0..ne).map(|e| if e % 3 == 0 { 1.0 } else { rnd().abs() }).collect();
            let acc0: Vec<f32> = (0..ne * d).map(|_| rnd()).collect();
            let (mut acc, mut acc_ref) = (acc0.clone(), acc0);
            weighted_values(&w, np, nk, &k, d, &alpha, &mut acc);
            weighted_values_portable(&w, np, nk, &k, d, &alpha, &mut acc_ref);
            for (a, b) in acc.iter().zip(&acc_ref) {
                prop_assert!(close(*a, *b), "value {a} vs {b}");
            }
            let tile = Tile { q: &q, ne, d, k: &k, n, np, w: &w, nk, alpha: &alpha, acc: &acc_ref };
            narrow_reads_equal_the_widened_ones::<half::f16>(&tile)?;
            narrow_reads_equal_the_widened_ones::<half::bf16>(&tile)?;
        }
    }

    #[test]
    fn portable_products_are_the_definitions() {
        // Two queries, three keys of two components.
        let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let np = KEY_PAD;
        let mut kt = vec![0.0; 2 * np];
        transpose_portable(&k, 0, 3, 2, &mut kt, np);
        assert_eq!(&kt[..3], &[1.0, 3.0, 5.0]);
        assert_eq!(&kt[np..np + 3], &[2.0, 4.0, 6.0]);
        let q = [1.0, -1.0, 0.5, 2.0];
        let mut s = vec![f32::NAN; 2 * np];
        scores_portable(&q, 2, 2, &kt, np, &mut s);
        assert_eq!(&s[..3], &[-1.0, -1.0, -1.0]);
        assert_eq!(&s[np..np + 3], &[4.5, 9.5, 14.5]);
        let mut w = vec![0.0; 2 * np];
        w[..3].copy_from_slice(&[1.0, 0.0, 2.0]);
        w[np..np + 3].copy_from_slice(&[0.5, 0.5, 0.0]);
        let mut acc = vec![10.0, 20.0, 1.0, 1.0];
        weighted_values_portable(&w, np, 3, &k, 2, &[0.5, 1.0], &mut acc);
        assert_eq!(
            acc,
            vec![5.0 + 1.0 + 10.0, 10.0 + 2.0 + 12.0, 1.0 + 2.0, 1.0 + 3.0]
        );
    }
}
