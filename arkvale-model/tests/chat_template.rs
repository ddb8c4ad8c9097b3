//! Chat templates against the SmolLM2 fixture: the fixture's chat prompt is the rendering of
//! SmolLM2's default system prompt plus one user message, both with a hand-written ChatML
//! template (always) and with the template stored in the model file (when the model is
//! present: `$ARKVALE_SMOLLM2_GGUF`, else `models/SmolLM2-135M-Instruct.Q4_1.gguf`).

mod common;

use common::model_path;
use std::path::PathBuf;

use arkvale_model::chat::{ChatTemplate, Message};
use arkvale_model::gguf::GgufFile;
use serde_json::Value;

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// ChatML with SmolLM2's default system prompt.
const CHATML: &str = "{% for message in messages %}\
{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}\
{% endif %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The fixture's rendered chat prompt and the user content inside it.
fn fixture_chat() -> (String, String) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let text = fx["prompts"]["chat"]["text"].as_str().unwrap().to_string();
    let prefix = format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n");
    let suffix = "<|im_end|>\n<|im_start|>assistant\n";
    let user = text
        .strip_prefix(&prefix)
        .and_then(|s| s.strip_suffix(suffix))
        .expect("the fixture's chat prompt is ChatML: system + user + assistant header")
        .to_string();
    (text, user)
}

#[test]
fn handwritten_chatml_renders_the_fixture_prompt() {
    let (want, user) = fixture_chat();
    let t = ChatTemplate::new(CHATML).unwrap();
    assert_eq!(
        t.render(&[Message::user(&user)], true, "", "").unwrap(),
        want
    );
    let explicit = [Message::system(SYSTEM), Message::user(&user)];
    assert_eq!(t.render(&explicit, true, "", "").unwrap(), want);
}

#[test]
fn smollm2_template_renders_the_fixture_prompt() {
    let Some(path) = model_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let t = ChatTemplate::from_gguf(&file)
        .unwrap()
        .expect("SmolLM2 ships a chat template");
    let (want, user) = fixture_chat();
    let got = t
        .render(&[Message::user(&user)], true, "<|im_start|>", "<|im_end|>")
        .unwrap();
    assert_eq!(got, want);
    // Multi-turn: a conversation's rendering extends the previous one plus the reply.
    let turn1 = t.render(&[Message::user("Hi")], true, "", "").unwrap();
    let turn2 = t
        .render(
            &[
                Message::user("Hi"),
                Message::assistant("Hello!"),
                Message::user("Bye"),
            ],
            true,
            "",
            "",
        )
        .unwrap();
    assert!(
        turn2.starts_with(&format!("{turn1}Hello!<|im_end|>\n")),
        "{turn2}"
    );
}

#[test]
fn a_file_without_a_template_has_none() {
    // A minimal GGUF v3: no tensors, one metadata entry that is not a template.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.name";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'x');
    let file = GgufFile::from_bytes(b).unwrap();
    assert!(ChatTemplate::from_gguf(&file).unwrap().is_none());
}
