//! The tokenizer on the real default model against llama.cpp's ids (the shared reference
//! fixture `tests/fixtures/smollm2_reference.json`, made with llama-cpp-python on the same
//! GGUF: special tokens parsed, no BOS).
//!
//! The model is read from `ARKVALE_SMOLLM2_GGUF`, else from
//! `<workspace>/models/SmolLM2-135M-Instruct.Q4_1.gguf` (where `.ci/run` and
//! `cargo xtask fetch-model` put it). Without either the tests print a skip line and pass.

mod common;

use common::{fixture, model_path};

use arkvale_model::gguf::GgufFile;
use arkvale_model::tokenizer::{PreTokenizer, TokenType, Tokenizer};
use serde_json::Value;

fn tokenizer() -> Option<Tokenizer> {
    let Some(path) = model_path() else {
        eprintln!(
            "skipped: no SmolLM2 model (set ARKVALE_SMOLLM2_GGUF or run `cargo xtask fetch-model`)"
        );
        return None;
    };
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Some(Tokenizer::from_gguf(&file).unwrap())
}

/// Every (name, text, ids) case of the fixture: the two prompts, the passkey pieces and the two
/// assembled passkey prompts.
fn cases(fx: &Value) -> Vec<(String, String, Vec<u32>)> {
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect()
    };
    let mut out = Vec::new();
    for name in ["plain", "chat"] {
        let p = &fx["prompts"][name];
        out.push((
            format!("prompts.{name}"),
            p["text"].as_str().unwrap().to_string(),
            ids(&p["token_ids"]),
        ));
    }
    let pk = &fx["passkey_template"];
    for (name, p) in pk["pieces"].as_object().unwrap() {
        out.push((
            format!("passkey_template.pieces.{name}"),
            p["text"].as_str().unwrap().to_string(),
            ids(&p["ids"]),
        ));
    }
    for name in ["example_raw_prompt", "example_chat_prompt"] {
        let p = &pk[name];
        out.push((
            format!("passkey_template.{name}"),
            p["text"].as_str().unwrap().to_string(),
            ids(&p["ids"]),
        ));
    }
    out
}

#[test]
fn smollm2_encodes_every_fixture_text_exactly_as_llama_cpp() {
    let Some(tok) = tokenizer() else { return };
    let fx = fixture();
    let cases = cases(&fx);
    assert!(cases.len() >= 15, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        let got = tok.encode(text, false, true).unwrap();
        if &got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b);
            failures.push(format!(
                "{name}: {} ids vs {} expected, first difference at {at:?}",
                got.len(),
                want.len()
            ));
        }
        assert_eq!(&tok.decode(want, false).unwrap(), text, "{name}: decode");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "{} fixture texts encode to llama.cpp's ids exactly",
        cases.len()
    );
}

#[test]
fn smollm2_vocabulary_and_special_tokens() {
    let Some(tok) = tokenizer() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::DigitsThenGpt2));
    // The fixture's own statement: add_bos_token = false.
    assert!(!tok.add_bos());
    let bos = tok.bos_id().unwrap();
    let eos = tok.eos_id().unwrap();
    eprintln!(
        "bos {bos} {:?}, eos {eos} {:?}",
        tok.id_to_token(bos).unwrap(),
        tok.id_to_token(eos).unwrap()
    );
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_type(1).unwrap(), TokenType::Control);
    assert_eq!(tok.id_to_token(198).unwrap(), "Ċ");
    assert_eq!(tok.decode_piece(198, false).unwrap(), b"\n");
    assert_eq!(tok.decode_piece(2, true).unwrap(), b"");

    // With add_special the file's add_bos_token (false) is honoured: nothing is added.
    let text = "What is the pass key?";
    assert_eq!(
        tok.encode(text, true, true).unwrap(),
        tok.encode(text, false, true).unwrap()
    );
    // Without parse_special the chat markers are plain text.
    let ids = tok.encode("<|im_end|>", false, false).unwrap();
    assert!(ids.len() > 1 && !ids.contains(&2), "{ids:?}");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_end|>");

    let n = tok.vocab_size() as u32;
    assert!(tok.decode(&[n], false).is_err());
    assert!(tok.id_to_token(n).is_err());
}

#[test]
fn smollm2_streamed_decoding_equals_decode_and_round_trips_unicode() {
    let Some(tok) = tokenizer() else { return };
    let text = "Grüße aus Zürich — 東京は晴れ 🌤️, naïve café; Ελληνικά 12.5°C\n<|im_end|>";
    let ids = tok.encode(text, false, true).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let mut s = tok.decode_stream(true);
    let mut streamed = String::new();
    for &id in &ids {
        let piece = s.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "broken character in {piece:?}");
        streamed.push_str(&piece);
    }
    streamed.push_str(&s.finish());
    assert_eq!(streamed, tok.decode(&ids, true).unwrap());
    assert_eq!(streamed, text.trim_end_matches("<|im_end|>"));
}
