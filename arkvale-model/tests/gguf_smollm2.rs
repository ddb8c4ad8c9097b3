//! The reader on the real default model, when it is available: set `ARKVALE_SMOLLM2_GGUF` to
//! the path of `SmolLM2-135M-Instruct.Q4_1.gguf` (e.g. `models/SmolLM2-135M-Instruct.Q4_1.gguf`).
//! Without the variable the test prints a skip line and passes.

use arkvale_model::gguf::{GgmlType, GgufFile};

#[test]
fn smollm2_q4_1_opens_and_dequantizes() {
    let Some(path) = std::env::var_os("ARKVALE_SMOLLM2_GGUF") else {
        eprintln!("skipped: ARKVALE_SMOLLM2_GGUF is not set");
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    let n_layer = md.get_uint("llama.block_count").unwrap();
    let n_embd = md.get_uint("llama.embedding_length").unwrap();
    let vocab = md.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert!(md.get_str("tokenizer.ggml.model").is_ok());
    eprintln!(
        "{}: GGUF v{}, {} metadata pairs, {} tensors, {n_layer} layers, d_model {n_embd}, vocab {}",
        path.to_string_lossy(),
        f.version(),
        md.len(),
        f.tensors().len(),
        vocab.len()
    );

    let mut types = std::collections::BTreeMap::<&str, usize>::new();
    for t in f.tensors() {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    eprintln!("tensor types: {types:?}");

    let t = f
        .tensors()
        .iter()
        .find(|t| t.ty == GgmlType::Q4_1)
        .expect("a Q4_1 tensor");
    let x = f.tensor_f32(&t.name).unwrap();
    assert_eq!(x.len() as u64, t.n_elements);
    assert!(x.iter().all(|v| v.is_finite()));
    let mean_abs = x.iter().map(|v| f64::from(v.abs())).sum::<f64>() / x.len() as f64;
    assert!(mean_abs > 0.0 && mean_abs < 10.0, "mean |x| = {mean_abs}");
    eprintln!(
        "{} {:?} {}: {} values, mean |x| {mean_abs:.6}, fnv1a of bits {:016x}",
        t.name,
        t.dims,
        t.ty,
        x.len(),
        fnv1a(&x)
    );

    // Every tensor whose type we support dequantizes to finite values of the right length.
    for t in f.tensors().iter().filter(|t| t.ty.can_dequantize()) {
        let x = f.tensor_f32(&t.name).unwrap();
        assert_eq!(x.len() as u64, t.n_elements, "{}", t.name);
        assert!(x.iter().all(|v| v.is_finite()), "{}", t.name);
    }
}

/// FNV-1a over the f32 bit patterns (little-endian), to compare with other readers by hand.
fn fnv1a(x: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in x {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
