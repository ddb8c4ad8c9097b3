use half::f16;
use proptest::prelude::*;

use super::*;

/// A random block of `ty`: random bytes, with every f16 scale field replaced by a finite value
/// of moderate size (random bits could be NaN or inf).
fn random_block(ty: QuantType, bytes: &[u8], scales: &[f32]) -> Vec<u8> {
    let mut b = bytes[..ty.block_bytes()].to_vec();
    let fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
    };
    for (&at, &v) in fields.iter().zip(scales) {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
    }
    b
}

fn block_strategy() -> impl Strategy<Value = (QuantType, Vec<u8>)> {
    (
        proptest::sample::select(QuantType::ALL.to_vec()),
        proptest::collection::vec(any::<u8>(), 256),
        proptest::collection::vec(-0.05f32..0.05, 2),
    )
        .prop_map(|(ty, bytes, scales)| (ty, random_block(ty, &bytes, &scales)))
}

#[test]
fn sizes_match_ggml() {
    for ty in QuantType::ALL {
        assert_eq!(ty.subs() * SUB_LEN, ty.block_len());
        assert_eq!(QuantType::parse(ty.name()), Some(ty));
        assert_eq!(ty.bytes_for(ty.block_len() * 3), Some(3 * ty.block_bytes()));
        assert_eq!(ty.bytes_for(ty.block_len() + 1), None);
    }
}

#[test]
fn q4_0_block_by_hand() {
    let mut b = vec![0u8; 18];
    b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
    b[2] = 0xF0; // element 0 -> 0 - 8, element 16 -> 15 - 8
    let mut y = [0f32; 32];
    dequantize(QuantType::Q4_0, &b, &mut y).unwrap();
    assert_eq!((y[0], y[16], y[1]), (-4.0, 3.5, -4.0));
}

#[test]
fn q6_k_block_by_hand() {
    let mut b = vec![0u8; 210];
    b[208..210].copy_from_slice(&f16::from_f32(2.0).to_bits().to_le_bytes());
    b[192 + 9] = (-3i8) as u8; // scale of values 144..160 (half 1, group 1)
    // Value 144 = half 1, l = 16, sub-block r = 0: low nibble of ql[64 + 16], bits 0-1 of
    // qh[32 + 16].
    b[64 + 16] = 0x05;
    b[128 + 32 + 16] = 0b10;
    let mut y = [0f32; 256];
    dequantize(QuantType::Q6_K, &b, &mut y).unwrap();
    // q = (5 | 2 << 4) - 32 = 5; x = 2 * -3 * 5.
    assert_eq!(y[144], -30.0);
    assert_eq!(y[145], 2.0 * -3.0 * -32.0);
    assert_eq!(y[0], 0.0);
}

#[test]
fn k_scale_unpacking_round_trips_six_bit_values() {
    let sc: [u8; 8] = [1, 63, 17, 42, 5, 60, 33, 0];
    let mn: [u8; 8] = [62, 3, 48, 9, 31, 14, 63, 22];
    let mut s = [0u8; 12];
    for i in 0..4 {
        s[i] = sc[i] | ((sc[i + 4] >> 4) << 6);
        s[i + 4] = mn[i] | ((mn[i + 4] >> 4) << 6);
        s[i + 8] = (sc[i + 4] & 0x0F) | ((mn[i + 4] & 0x0F) << 4);
    }
    assert_eq!(unpack::k_scales_mins(&s), (sc, mn));
}

#[test]
fn bad_lengths_are_errors() {
    let mut y = [0f32; 32];
    assert!(dequantize(QuantType::Q4_0, &[0u8; 17], &mut y).is_err());
    assert!(dequantize(QuantType::Q4_0, &[0u8; 18], &mut y[..31]).is_err());
    assert!(vec_dot(QuantType::Q4_K, &[0u8; 144], &[Q8Block::default(); 7]).is_err());
    assert!(quantize_q8(&[0f32; 33], &mut [Q8Block::default(); 1]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The quantized dot of a block equals the f64 dot of its dequantized values with the
    /// dequantized activations, up to f32 rounding (relative to `sum |w| |a|`).
    #[test]
    fn vec_dot_matches_dequantized_f64_dot(
        (ty, block) in block_strategy(),
        x in proptest::collection::vec(-4f32..4.0, 256),
    ) {
        let k = ty.block_len();
        let mut a = vec![Q8Block::default(); k / SUB_LEN];
        quantize_q8(&x[..k], &mut a).unwrap();
        let mut w = vec![0f32; k];
        dequantize(ty, &block, &mut w).unwrap();
        let xa: Vec<f64> = a
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| b.d as f64 * q as f64))
            .collect();
        let want: f64 = w.iter().zip(&xa).map(|(&w, &x)| w as f64 * x).sum();
        let scale: f64 = w.iter().zip(&xa).map(|(&w, &x)| (w as f64 * x).abs()).sum();
        let got = vec_dot(ty, &block, &a).unwrap() as f64;
        prop_assert!((got - want).abs() <= 1e-5 * scale + 1e-30, "{ty}: {got} vs {want}");
    }

    /// Activation quantization moves each value by at most half a step.
    #[test]
    fn q8_error_is_at_most_half_a_step(x in proptest::collection::vec(-100f32..100.0, 64)) {
        let mut a = [Q8Block::default(); 2];
        quantize_q8(&x, &mut a).unwrap();
        for (xs, b) in x.chunks(32).zip(&a) {
            prop_assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
            prop_assert_eq!(b.ds, b.d * b.sum as f32);
            for (&v, &q) in xs.iter().zip(&b.qs) {
                prop_assert!((v - b.d * q as f32).abs() <= b.d * 0.5001 + 1e-6);
            }
        }
    }
}
