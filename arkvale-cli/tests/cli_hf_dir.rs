//! The `arkvale` binary on a tiny random Hugging Face model directory (written with the model
//! crate's test helpers, `arkvale-model/tests/common/tiny_hf.rs`).

#[path = "../../arkvale-model/tests/common/tiny_hf.rs"]
mod tiny_hf;

use std::process::Command;

use arkvale_core::{CacheConfig, CacheManager, DType, KvDtype, policy_by_name};
use arkvale_model::hf;
use tiny_hf::{TempDir, device, hf_tensors, write_dir};

/// The `arkvale` binary on a Hugging Face directory: `info` describes it, `generate --json`
/// produces the library's greedy tokens, and `--stop` cuts the text at a stop string.
#[test]
fn cli_runs_a_hugging_face_directory() {
    let dir = TempDir::new("cli");
    let tensors = hf_tensors(false);
    write_dir(&dir.0, &tensors, true, false, false);
    let arkvale = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_arkvale"))
            .args(args)
            .env_remove("ARKVALE_MODEL")
            .output()
            .unwrap()
    };
    let model = dir.0.to_str().unwrap();
    let info = arkvale(&["info", "--model", model]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(text.contains("architecture llama"), "{text}");
    assert!(text.contains("Hugging Face"), "{text}");

    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model,
            "--prompt",
            "w3 w4 w5",
            "--json",
            "--max-tokens",
            "6",
            "--policy",
            "full",
            "--kv-dtype",
            "f32",
            "--ignore-eos",
            "--page-size",
            "8",
        ];
        args.extend_from_slice(extra);
        let out = arkvale(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v
    };
    let v = generate(&[]);
    let prompt: Vec<u32> = v["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&prompt[prompt.len() - 3..], &[3, 4, 5]);
    let tokens: Vec<u32> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let (_, lib) = hf::load(&dir.0, device(), DType::F32).unwrap();
    let config = CacheConfig {
        page_size: 8,
        budget_tokens: 256,
        kv_dtype: KvDtype::F32,
        device_bytes: 8 << 20,
        host_bytes: 8 << 20,
        ..Default::default()
    };
    let policy = policy_by_name("full", &config).unwrap();
    let mut cache = CacheManager::new(lib.device().clone(), lib.shape(), config, policy).unwrap();
    let seq = cache.add_sequence();
    let argmax = |l: &[f32]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
    let mut want = vec![argmax(&lib.prefill(&mut cache, seq, &prompt).unwrap())];
    while want.len() < tokens.len() {
        let l = lib
            .decode(&mut cache, &[seq], &[*want.last().unwrap()])
            .unwrap();
        want.push(argmax(&l));
    }
    assert_eq!(tokens, want);

    // A later generated word as a stop string: the text ends before it.
    let text = v["text"].as_str().unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let stop = words
        .iter()
        .skip(1)
        .find(|w| !words[0].contains(*w))
        .unwrap_or_else(|| panic!("no second distinct word in {text:?}"));
    let stopped = generate(&["--stop", stop]);
    let cut = stopped["text"].as_str().unwrap();
    assert_eq!(cut, &text[..text.find(stop).unwrap()], "{text:?}");
    assert_eq!(stopped["stats"]["stop_reason"], "stop_string");
}
