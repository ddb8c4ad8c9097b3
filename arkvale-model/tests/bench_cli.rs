//! `arkvale bench throughput` end to end on SmolLM2 at a tiny size (skipped without the
//! model): the table, results.json with one record per policy x budget, and the plot.

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
