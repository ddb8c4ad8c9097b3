//! Shared by the integration tests that use the real SmolLM2 model and the reference fixture
//! (arkvale-model's, and arkvale-cli's, which include this module by path).
#![allow(dead_code)]

pub mod naive;

use std::path::PathBuf;

/// The SmolLM2 GGUF: `$ARKVALE_MODEL`, then `$ARKVALE_SMOLLM2_GGUF`, then
/// `<workspace>/models/SmolLM2-135M-Instruct.Q4_1.gguf`. `None` (after printing a skip line)
/// when it is absent, so developers without the model can run the tests.
pub fn model_path() -> Option<PathBuf> {
    let path = ["ARKVALE_MODEL", "ARKVALE_SMOLLM2_GGUF"]
        .iter()
        .find_map(std::env::var_os)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: SmolLM2 GGUF not found at {} (run `cargo xtask fetch-model` or set \
             ARKVALE_MODEL)",
            path.display()
        );
        None
    }
}

/// The reference fixture (`arkvale-model/tests/fixtures/smollm2_reference.json`; the path goes
/// through the workspace root so that arkvale-cli's tests, which include this module, find it
/// too).
pub fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../arkvale-model/tests/fixtures/smollm2_reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}
