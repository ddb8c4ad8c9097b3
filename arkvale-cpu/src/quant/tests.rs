//! Every quantized kernel against the scalar reference of `arkvale_core::quant`, on random
//! blocks and activations (fresh seeds each run), with poisoned outputs.

use arkvale_core::quant::{self, Q8Block, QuantType, SUB_LEN};
use half::f16;
use proptest::prelude::*;

use super::*;

/// Random blocks of `ty` for `rows` rows of `k` values: random bytes with every f16 scale
/// field replaced by a finite value in `-0.05..0.05` (random bits could be NaN or inf).
fn random_rows(ty: QuantType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = arkvale_testkit::XorShift::new(seed);
    let mut next = move || rng.next_u64();
    let fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
    };
    let bytes = ty.bytes_for(rows * k).unwrap();
    let mut w: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
    for block in w.chunks_exact_mut(ty.block_bytes()) {
        for &at in fields {
            let v = (next() % 10_000) as f32 / 100_000.0 - 0.05;
            block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
        }
    }
    w
}

fn case() -> impl Strategy<Value = (QuantType, usize, usize, usize, u64, Vec<f32>)> {
    (
        proptest::sample::select(QuantType::ALL.to_vec()),
        1usize..=3,
        1usize..=20,
        1usize..=12,
        any::<u64>(),
    )
        .prop_flat_map(|(ty, blocks, n, m, seed)| {
            let k = blocks * ty.block_len();
            (
                Just(ty),
                Just(k),
                Just(n),
                Just(m),
                Just(seed),
                proptest::collection::vec(-3f32..3.0, m * k),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The SIMD dot products equal the scalar reference up to f32 rounding: the integer sums
    /// are exact, only the order of the f32 multiply-adds differs, so the tolerance is
    /// `1e-5 * sum |w_i * xq_i|` over the dequantized weights and activations.
    #[test]
    fn dots_match_the_scalar_reference((ty, k, n, m, seed, x) in case()) {
        let m = m.min(DECODE_MAX_ROWS);
        let w = random_rows(ty, n, k, seed);
        let subs = k / SUB_LEN;
        let mut acts = vec![Q8Block::default(); m * subs];
        for (xi, ai) in x.chunks_exact(k).zip(acts.chunks_exact_mut(subs)) {
            quant::quantize_q8(xi, ai).unwrap();
        }
        let row_bytes = ty.bytes_for(k).unwrap();
        for kernel in Kernel::all() {
            let prepared = kernel.prepare(ty, acts.clone(), subs);
            for (j, row) in w.chunks_exact(row_bytes).enumerate() {
                let mut got = vec![f32::NAN; m];
                kernel.dots(ty, row, &prepared, &mut got);
                let mut wf = vec![0f32; k];
                quant::dequantize(ty, row, &mut wf).unwrap();
                for (i, a) in acts.chunks_exact(subs).enumerate() {
                    let want = quant::vec_dot(ty, row, a).unwrap();
                    let scale: f64 = a
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&q| (b.d * q as f32).abs() as f64))
                        .zip(&wf)
                        .map(|(xa, w)| xa * w.abs() as f64)
                        .sum();
                    prop_assert!(
                        ((got[i] - want) as f64).abs() <= 1e-5 * scale + 1e-30,
                        "{kernel:?} {ty} row {j} act {i}: {} vs {want}", got[i]
                    );
                }
            }
        }
    }

    /// Dequantizing by any kernel is bit-identical to the scalar reference.
    #[test]
    fn dequantize_is_bit_exact((ty, k, n, _m, seed, _x) in case()) {
        let w = random_rows(ty, n, k, seed);
        let mut want = vec![0f32; n * k];
        quant::dequantize(ty, &w, &mut want).unwrap();
        for kernel in Kernel::all() {
            let mut got = vec![f32::NAN; n * k];
            kernel.dequantize(ty, &w, &mut got);
            for (a, b) in got.iter().zip(&want) {
                prop_assert_eq!(a.to_bits(), b.to_bits(), "{:?} {}", kernel, ty);
            }
        }
    }

    /// The whole matmul (decode and prefill paths, inline and on a pool) against the f64
    /// product of the dequantized weights with the exact activations. Decode rows use
    /// activations rounded to 8 bits, each off by at most half a step `d_b / 2`
    /// (`d_b = max |x| / 127` over its block of 32), so their tolerance is
    /// `sum_b (d_b / 2) * sum_{i in b} |w_i|` plus `1e-5 * sum |x_i w_i|` of f32 rounding;
    /// prefill rows (dequantized tiles and `gemm`) only the f32 rounding.
    #[test]
    fn matmul_matches_dequantized_f64((ty, k, n, m, seed, x) in case()) {
        let w = random_rows(ty, n, k, seed);
        let mut wf = vec![0f32; n * k];
        quant::dequantize(ty, &w, &mut wf).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for kernel in Kernel::all() {
            for threads in [1, 3] {
                let mut out = vec![f32::NAN; m * n];
                pool.install(|| {
                    matmul(Par::pool(threads), kernel, m, n, k, &x, ty, &w, &mut out)
                });
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    for j in 0..n {
                        let wj = &wf[j * k..(j + 1) * k];
                        let want: f64 = xi.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let abs: f64 = xi.iter().zip(wj).map(|(&a, &b)| (a * b).abs() as f64).sum();
                        let mut tol = 1e-5 * abs + 1e-30;
                        if m <= DECODE_MAX_ROWS {
                            for (xb, wb) in xi.chunks(SUB_LEN).zip(wj.chunks(SUB_LEN)) {
                                let d = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                                let sw: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                                tol += (d as f64 / 2.0) * sw * 1.0001;
                            }
                        }
                        let got = out[i * n + j] as f64;
                        prop_assert!(
                            (got - want).abs() <= tol,
                            "{kernel:?} {ty} m {m} threads {threads} ({i}, {j}): {got} vs {want}, tol {tol}"
                        );
                    }
                }
            }
        }
    }
}

/// Quantized embedding rows are the dequantized rows, bit for bit.
#[test]
fn embedding_rows_are_dequantized_rows() {
    for ty in QuantType::ALL {
        let (vocab, dim) = (7, 2 * ty.block_len());
        let table = random_rows(ty, vocab, dim, 99);
        let mut full = vec![0f32; vocab * dim];
        quant::dequantize(ty, &table, &mut full).unwrap();
        let ids = [3u32, 0, 6, 3];
        for kernel in Kernel::all() {
            let mut out = vec![f32::NAN; ids.len() * dim];
            embedding(Par::INLINE, kernel, dim, ty, &table, &ids, &mut out);
            for (t, &id) in ids.iter().enumerate() {
                let want = &full[id as usize * dim..(id as usize + 1) * dim];
                let got = &out[t * dim..(t + 1) * dim];
                assert!(
                    want.iter()
                        .zip(got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel:?} {ty}"
                );
            }
        }
    }
}
