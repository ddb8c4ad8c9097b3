//! `arkvale generate --chat` and `arkvale chat` end to end on SmolLM2 (skipped with a line
//! when the model is absent: `$ARKVALE_MODEL`, else `$ARKVALE_SMOLLM2_GGUF`, else
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root).

#[path = "../../arkvale-model/tests/common/mod.rs"]
mod common;

use common::{fixture, model_path};
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Runs the binary with `stdin` piped in; returns (status ok, stdout, stderr).
fn arkvale(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arkvale"))
        .args(args)
        .env_remove("ARKVALE_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the arkvale binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_chat_tokenizes_the_fixture_chat_prompt() {
    let Some(model) = model_path() else { return };
    let fx = fixture();
    let chat = &fx["prompts"]["chat"];
    let text = chat["text"].as_str().unwrap();
    let prefix = format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n");
    let user = text
        .strip_prefix(&prefix)
        .and_then(|s| s.strip_suffix("<|im_end|>\n<|im_start|>assistant\n"))
        .expect("ChatML fixture");
    let (ok, stdout, stderr) = arkvale(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--chat",
            "--prompt",
            user,
            "--json",
            "--max-tokens",
            "2",
        ],
        "",
    );
    assert!(ok, "arkvale failed: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["prompt_tokens"], chat["token_ids"]);
}

#[test]
fn chat_two_turns_reuse_the_cache() {
    let Some(model) = model_path() else { return };
    let (ok, stdout, stderr) = arkvale(
        &[
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "16",
            "--policy",
            "full",
        ],
        "What is the capital of France?\nAnd of Germany?\n",
    );
    assert!(ok, "arkvale chat failed: {stderr}");
    let stats: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("[arkvale] policy"))
        .collect();
    assert_eq!(stats.len(), 2, "one statistics line per turn: {stderr}");
    assert!(
        !stderr.contains("prefilling the whole conversation again"),
        "the second turn extends the cached tokens: {stderr}"
    );
    let replies: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(replies.len() >= 2, "two replies: {stdout:?}");
}

#[test]
fn chat_reset_and_exit() {
    let Some(model) = model_path() else { return };
    let (ok, _stdout, stderr) = arkvale(
        &[
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "4",
        ],
        "Hi\n/reset\nHello\n/exit\nnever read\n",
    );
    assert!(ok, "arkvale chat failed: {stderr}");
    assert!(stderr.contains("conversation cleared"), "{stderr}");
    let turns = stderr
        .lines()
        .filter(|l| l.starts_with("[arkvale] policy"))
        .count();
    assert_eq!(turns, 2, "{stderr}");
}
