//! `arkvale eval` end to end on the default model with tiny sweeps (a CI smoke test): each of
//! the five experiments runs, writes results.json (with the record schema), results.csv,
//! summary.md and PNG plots; bad options fail with a clear message.
//!
//! The model is `$ARKVALE_MODEL`, else `$ARKVALE_SMOLLM2_GGUF`, else
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root; without it every test
//! prints a skip line and passes. The real text of fidelity, digest-recall and recalls is the
//! repository's README.

#[path = "../../arkvale-model/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn arkvale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arkvale"))
        .args(args)
        .env_remove("ARKVALE_MODEL")
        .stdin(Stdio::null())
        .output()
        .expect("the arkvale binary runs")
}

fn readme() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../README.md")
        .display()
        .to_string()
}

/// Runs `arkvale eval <args> --model M --out DIR` and checks the output files; returns the
/// records.
fn run_eval(args: &[&str]) -> Option<Vec<Value>> {
    let model = common::model_path()?;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    let (m, o) = (model.display().to_string(), out.display().to_string());
    all.extend_from_slice(&["--model", &m, "--out", &o, "--no-progress"]);
    let res = arkvale(&all);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "arkvale {all:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("### "),
        "a markdown table on stdout: {stdout}"
    );
    Some(check_files(&out))
}

fn check_files(out: &Path) -> Vec<Value> {
    for f in ["results.json", "results.csv", "summary.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let pngs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert!(!pngs.is_empty(), "no plots in {}", out.display());
    for p in &pngs {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            p.display()
        );
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let records = json["records"].as_array().expect("records array").clone();
    assert!(!records.is_empty());
    for r in &records {
        for k in [
            "task",
            "policy",
            "budget",
            "page_size",
            "context",
            "depth",
            "key",
            "output",
            "correct",
        ] {
            assert!(r.get(k).is_some(), "record without {k}: {r}");
        }
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("task,policy,budget,page_size,context,depth,key,output,correct"));
    assert_eq!(csv_rows(&csv), records.len() + 1);
    records
}

/// Rows of a CSV text (newlines inside quoted cells do not count).
fn csv_rows(csv: &str) -> usize {
    let mut quoted = false;
    let mut rows = 0;
    for c in csv.chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => rows += 1,
            _ => {}
        }
    }
    rows
}

/// `full`, the default `arkvale` (the recommended preset: pages of 16) and the paper's rules
/// (pages of 32) through a policy spec, at one budget that evicts.
const SWEEP: [&str; 4] = [
    "--policies",
    "full,arkvale,arkvale:preset=paper",
    "--budgets",
    "256",
];

#[test]
fn passkey_smoke() {
    let mut args = vec!["passkey", "--contexts", "512", "--depths", "0.2,0.7"];
    args.extend_from_slice(&SWEEP);
    let Some(records) = run_eval(&args) else {
        return;
    };
    assert_eq!(records.len(), 2 * 3);
    assert!(
        records
            .iter()
            .any(|r| r["policy"] == "arkvale:preset=paper")
    );
    for r in &records {
        assert_eq!(r["task"], "passkey");
        assert_eq!(r["key"].as_str().unwrap().len(), 5);
        assert!(r["context"].as_u64().unwrap() <= 512);
        assert!(r["correct"].is_boolean());
    }
    // Prefill is exact for every policy and the budget holds most of the prompt: full and
    // arkvale agree on the first generated tokens.
    let full: Vec<_> = records.iter().filter(|r| r["policy"] == "full").collect();
    assert!(full.iter().all(|r| r["budget"].is_null()));
}

#[test]
fn niah_smoke() {
    let mut args = vec![
        "niah",
        "--variants",
        "single,multikey",
        "--contexts",
        "512",
        "--depths",
        "0.5",
        "--distractors",
        "1",
    ];
    args.extend_from_slice(&SWEEP);
    let Some(records) = run_eval(&args) else {
        return;
    };
    assert_eq!(records.len(), 2 * 3);
    assert!(records.iter().any(|r| r["task"] == "niah-multikey"));
}

#[test]
fn fidelity_smoke() {
    let text = readme();
    let mut args = vec![
        "fidelity",
        "--text-file",
        &text,
        "--prefill",
        "384",
        "--decode",
        "12",
    ];
    args.extend_from_slice(&SWEEP);
    let Some(records) = run_eval(&args) else {
        return;
    };
    assert_eq!(records.len(), 3);
    let full = &records[0];
    assert_eq!(full["policy"], "full");
    assert_eq!(full["top1_agreement"], 1.0);
    let ark = &records[1];
    let agree = ark["top1_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agree));
    assert!(ark["kl"].as_f64().unwrap() >= 0.0);
    assert!(ark["perplexity"].as_f64().unwrap() > 1.0);
}

#[test]
fn digest_recall_smoke() {
    let text = readme();
    let args = [
        "digest-recall",
        "--text-file",
        &text,
        "--context",
        "512",
        "--page-size",
        "16",
        "--queries",
        "3",
        "--max-k",
        "8",
    ];
    let Some(records) = run_eval(&args) else {
        return;
    };
    // 7 digest kinds x 2 rankings x k = 1..=8.
    assert_eq!(records.len(), 7 * 2 * 8);
    for r in &records {
        let x = r["recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{r}");
    }
}

#[test]
fn recalls_smoke() {
    let text = readme();
    let args = [
        "recalls",
        "--text-file",
        &text,
        "--prefill",
        "512",
        "--decode",
        "8",
        "--page-size",
        "16",
        "--capacities",
        "256,384",
        "--ks",
        "32,64",
    ];
    let Some(records) = run_eval(&args) else {
        return;
    };
    assert_eq!(records.len(), 4);
    for r in &records {
        assert!(r["recalls_per_step"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn bad_options_fail_clearly() {
    let Some(model) = common::model_path() else {
        return;
    };
    let m = model.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().display().to_string();
    for (args, expect) in [
        (
            vec!["passkey", "--contexts", "100000", "--policies", "full"],
            "context length",
        ),
        (
            vec![
                "passkey",
                "--contexts",
                "512",
                "--budgets",
                "64",
                "--policies",
                "arkvale",
            ],
            "budget",
        ),
        (
            vec!["passkey", "--contexts", "512", "--policies", "lru"],
            "unknown policy",
        ),
        (vec!["passkey", "--depths", "1.5"], "outside [0, 1]"),
        (
            vec!["fidelity", "--text-file", "/nonexistent/text.txt"],
            "/nonexistent/text.txt",
        ),
    ] {
        let mut all = vec!["eval"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--model", &m, "--out", &o, "--no-progress"]);
        let out = arkvale(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
