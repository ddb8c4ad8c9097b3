//! Page digests: the scalar reference of `summarize` and `score` (DESIGN.md §2, paper §5.2).
//!
//! For the keys `k_1..k_n` of one page and one KV head (all operations elementwise over the
//! head dimension), with `c = (max k + min k) / 2`:
//!
//! * cuboid kinds store `[b_max (d), b_min (d)]` with `b_max = c + r`, `b_min = c - r` and
//!   radius vector `r_max = max |c - k|`, `r_center = (min |c - k| + r_max) / 2`,
//!   `r_mean = mean |c - k|`. Score: `sum_i max(q_i * b_max_i, q_i * b_min_i)`.
//! * sphere kinds store `[c (d), r]` with the scalar `r` the `max`, `center` or `mean` of
//!   `||c - k||`. Score: `q . c + r * ||q||`.
//! * centroid stores `[mean k (d)]`. Score: `q . mean`.
//!
//! Arithmetic is f32, in the order written here; backends must agree within f32 rounding.

use crate::DigestKind;

/// Writes the digest of `keys` (`n` rows of `d`, row-major, `n >= 1`) into `out`
/// (`kind.len(d)` values).
pub fn summarize(kind: DigestKind, keys: &[f32], d: usize, out: &mut [f32]) {
    let n = keys.len() / d;
    debug_assert!(n >= 1 && out.len() == kind.len(d));
    let rows = || keys.chunks_exact(d);
    let mut c = vec![0f32; d];
    for (i, ci) in c.iter_mut().enumerate() {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for k in rows() {
            lo = lo.min(k[i]);
            hi = hi.max(k[i]);
        }
        *ci = (hi + lo) / 2.0;
    }
    match kind {
        DigestKind::CuboidMax | DigestKind::CuboidCenter | DigestKind::CuboidMean => {
            let (b_max, b_min) = out.split_at_mut(d);
            for i in 0..d {
                let (mut lo, mut hi, mut sum) = (f32::INFINITY, 0f32, 0f32);
                for k in rows() {
                    let a = (c[i] - k[i]).abs();
                    lo = lo.min(a);
                    hi = hi.max(a);
                    sum += a;
                }
                let r = match kind {
                    DigestKind::CuboidMax => hi,
                    DigestKind::CuboidCenter => (lo + hi) / 2.0,
                    _ => sum / n as f32,
                };
                b_max[i] = c[i] + r;
                b_min[i] = c[i] - r;
            }
        }
        DigestKind::SphereMax | DigestKind::SphereCenter | DigestKind::SphereMean => {
            let (mut lo, mut hi, mut sum) = (f32::INFINITY, 0f32, 0f32);
            for k in rows() {
                let dist = k
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (b - a) * (b - a))
                    .sum::<f32>()
                    .sqrt();
                lo = lo.min(dist);
                hi = hi.max(dist);
                sum += dist;
            }
            out[..d].copy_from_slice(&c);
            out[d] = match kind {
                DigestKind::SphereMax => hi,
                DigestKind::SphereCenter => (lo + hi) / 2.0,
                _ => sum / n as f32,
            };
        }
        DigestKind::Centroid => {
            for (i, o) in out.iter_mut().enumerate() {
                let s: f32 = rows().map(|k| k[i]).sum();
                *o = s / n as f32;
            }
        }
    }
}

/// The estimated importance of a page for query `q` (length `d`) given its digest.
pub fn score(kind: DigestKind, q: &[f32], digest: &[f32]) -> f32 {
    let d = q.len();
    match kind {
        DigestKind::CuboidMax | DigestKind::CuboidCenter | DigestKind::CuboidMean => {
            let (b_max, b_min) = digest.split_at(d);
            q.iter()
                .zip(b_max.iter().zip(b_min))
                .map(|(&qi, (&hi, &lo))| (qi * hi).max(qi * lo))
                .sum()
        }
        DigestKind::SphereMax | DigestKind::SphereCenter | DigestKind::SphereMean => {
            let dot: f32 = q.iter().zip(&digest[..d]).map(|(a, b)| a * b).sum();
            let norm = q.iter().map(|a| a * a).sum::<f32>().sqrt();
            dot + digest[d] * norm
        }
        DigestKind::Centroid => q.iter().zip(digest).map(|(a, b)| a * b).sum(),
    }
}

/// Ranks `scores` best first and returns the first `k` indices; ties go to the lower index and
/// NaN ranks below every number. This is the selection rule every backend's top-k must match.
pub fn topk_indices(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    idx.sort_by(|&a, &b| rank_cmp(scores[a as usize], a, scores[b as usize], b));
    idx.truncate(k);
    idx
}

/// [`rank_cmp`] as one integer: `rank_key(sa, a) < rank_key(sb, b)` exactly when
/// `rank_cmp(sa, a, sb, b)` is `Less` (equal keys, equal ranks). Backends sort these plain
/// `u64`s instead of calling a comparator: the high half orders the scores descending (both
/// zeros equal, NaN after `-inf`), the low half is the index.
pub fn rank_key(score: f32, index: u32) -> u64 {
    let high = if score.is_nan() {
        u32::MAX
    } else {
        // `+ 0.0` turns -0.0 into +0.0. An f32's bits ordered as a signed-magnitude number:
        // flipping every bit of a negative and only the sign of a positive gives an unsigned
        // ascending order; the complement of that is descending (-inf maps below u32::MAX).
        let bits = (score + 0.0).to_bits();
        let ascending = if bits >> 31 == 1 {
            !bits
        } else {
            bits | 1 << 31
        };
        !ascending
    };
    (u64::from(high) << 32) | u64::from(index)
}

/// The total order of the top-k rule: higher score first, NaN last, then lower index first.
pub fn rank_cmp(sa: f32, a: u32, sb: f32, b: u32) -> std::cmp::Ordering {
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    key(sb)
        .partial_cmp(&key(sa))
        .unwrap_or(std::cmp::Ordering::Equal)
        .then_with(|| sa.is_nan().cmp(&sb.is_nan()))
        .then(a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys_strategy() -> impl Strategy<Value = (usize, Vec<f32>, Vec<f32>)> {
        (1usize..9, 1usize..33).prop_flat_map(|(d, n)| {
            (
                Just(d),
                proptest::collection::vec(-4.0f32..4.0, n * d),
                proptest::collection::vec(-4.0f32..4.0, d),
            )
        })
    }

    proptest! {
        #[test]
        fn cuboid_max_bounds_the_true_max_dot((d, keys, q) in keys_strategy()) {
            let mut dg = vec![0f32; DigestKind::CuboidMax.len(d)];
            summarize(DigestKind::CuboidMax, &keys, d, &mut dg);
            let est = score(DigestKind::CuboidMax, &q, &dg);
            let truth = keys.chunks_exact(d)
                .map(|k| k.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(est >= truth - 1e-4 * (1.0 + truth.abs()), "{est} < {truth}");
        }

        #[test]
        fn sphere_max_bounds_the_true_max_dot((d, keys, q) in keys_strategy()) {
            let mut dg = vec![0f32; DigestKind::SphereMax.len(d)];
            summarize(DigestKind::SphereMax, &keys, d, &mut dg);
            let est = score(DigestKind::SphereMax, &q, &dg);
            let truth = keys.chunks_exact(d)
                .map(|k| k.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(est >= truth - 1e-4 * (1.0 + truth.abs()), "{est} < {truth}");
        }

        #[test]
        fn radii_are_ordered_mean_center_max((d, keys, _q) in keys_strategy()) {
            let get = |k: DigestKind| { let mut o = vec![0f32; k.len(d)]; summarize(k, &keys, d, &mut o); o };
            let (mx, ce) = (get(DigestKind::CuboidMax), get(DigestKind::CuboidCenter));
            let me = get(DigestKind::CuboidMean);
            for i in 0..d {
                prop_assert!(mx[i] >= ce[i] - 1e-6 && mx[i] >= me[i] - 1e-6);
            }
        }
    }

    #[test]
    fn single_key_page_is_exact_for_every_kind() {
        let k = [1.0f32, -2.0, 0.5];
        let q = [0.3f32, 0.7, -1.1];
        let truth: f32 = k.iter().zip(&q).map(|(a, b)| a * b).sum();
        for kind in DigestKind::ALL {
            let mut dg = vec![0f32; kind.len(3)];
            summarize(kind, &k, 3, &mut dg);
            assert!((score(kind, &q, &dg) - truth).abs() < 1e-6, "{kind:?}");
        }
    }

    proptest! {
        /// Ordering by [`rank_key`] is exactly [`rank_cmp`], on scores drawn with many
        /// ties, both zeros, infinities and NaN.
        #[test]
        fn rank_keys_order_as_rank_cmp(
            picks in proptest::collection::vec(0usize..12, 1..64),
            extra in any::<f32>(),
        ) {
            let pool = [
                0.0, -0.0, 1.5, -1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN,
                f32::MAX, f32::MIN_POSITIVE, -f32::MIN_POSITIVE * 0.5, extra,
            ];
            let scores: Vec<f32> = picks.iter().map(|&i| pool[i]).collect();
            for (a, &sa) in scores.iter().enumerate() {
                for (b, &sb) in scores.iter().enumerate() {
                    let (a, b) = (a as u32, b as u32);
                    prop_assert_eq!(
                        rank_key(sa, a).cmp(&rank_key(sb, b)),
                        rank_cmp(sa, a, sb, b),
                        "{} #{} vs {} #{}", sa, a, sb, b
                    );
                }
            }
        }
    }

    #[test]
    fn topk_breaks_ties_toward_lower_index_and_sinks_nan() {
        let s = [1.0, 3.0, f32::NAN, 3.0, 2.0, 3.0];
        assert_eq!(topk_indices(&s, 4), vec![1, 3, 5, 4]);
        assert_eq!(topk_indices(&s, 6), vec![1, 3, 5, 4, 0, 2]);
    }
}
