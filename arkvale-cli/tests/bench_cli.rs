//! `arkvale bench throughput` and `arkvale bench speed` end to end on SmolLM2 at a tiny size
//! (skipped without the model): tables, results.json records, the plot, input errors.

#[path = "../../arkvale-model/tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};

use common::model_path;
use serde_json::Value;

#[test]
fn throughput_writes_table_json_and_plot() {
    let Some(model) = model_path() else { return };
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_arkvale"))
        .args(["bench", "throughput", "--model", model.to_str().unwrap()])
        // Tiny budgets of 8-token pages: the paper's 1 sink + 2 window pages fit in them (the
        // recommended preset's 2 + 4 would not).
        .args(["--context", "160", "--generate", "2", "--page-size", "8"])
        .args(["--preset", "paper"])
        .args([
            "--prefill-chunk",
            "16",
            "--budgets",
            "48,64",
            "--threads",
            "2",
        ])
        .args(["--out", out.path().to_str().unwrap()])
        .env_remove("ARKVALE_MODEL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("| policy | budget | batch |"), "{table}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "full + arkvale at two budgets: {v}");
    let batch = |i: usize| records[i]["batch"].as_u64().unwrap();
    assert_eq!(records[0]["policy"], "full");
    // The default cap holds 3 full sequences; smaller arkvale budgets hold at least as many.
    assert_eq!(batch(0), 3);
    assert!(batch(1) >= batch(2) && batch(2) >= batch(0), "{v}");
    for r in records {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(out.path().join("throughput.png").metadata().unwrap().len() > 1000);
    assert!(out.path().join("table.md").is_file());
}

/// `arkvale bench speed` with prompt ids from a file: one record per context x policy with
/// positive speeds and the greedy tokens, and a malformed id file is a clear error.
#[test]
fn speed_times_prefill_and_decode_per_context_and_policy() {
    let Some(model) = model_path() else { return };
    let out = tempfile::tempdir().unwrap();
    let ids_path = out.path().join("ids.txt");
    // Any valid ids will do; a repeating pattern of common tokens.
    let ids: Vec<String> = (0..200)
        .map(|i| (300 + (i * 37) % 5000).to_string())
        .collect();
    std::fs::write(&ids_path, ids.join(" ")).unwrap();
    let run = |ids: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_arkvale"))
            .args(["bench", "speed", "--model", model.to_str().unwrap()])
            .args([
                "--contexts",
                "96,160",
                "--generate",
                "3",
                "--page-size",
                "8",
            ])
            .args(["--preset", "paper", "--budgets", "48", "--threads", "2"])
            .args(["--prompt-ids", ids.to_str().unwrap()])
            .args(["--out", out.path().to_str().unwrap(), "--no-progress"])
            .env_remove("ARKVALE_MODEL")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = run(&ids_path);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    let table = String::from_utf8_lossy(&ok.stdout);
    assert!(table.contains("| 160 | arkvale@48 |"), "{table}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 4, "2 contexts x (full, arkvale@48): {v}");
    for r in records {
        assert!(r["prefill_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["tokens"].as_array().unwrap().len(), 3, "{r}");
    }

    let bad = out.path().join("bad.txt");
    std::fs::write(&bad, "1 2 three").unwrap();
    let err = run(&bad);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("'three' is not a token id"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}
