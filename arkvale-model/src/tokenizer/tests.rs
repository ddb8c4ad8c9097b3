//! Tokenizer tests on tiny hand-built vocabularies (no model file needed).

use proptest::prelude::*;

use super::*;

/// A vocabulary of the 256 byte symbols (id = position in alphabet order), then `extra` normal
/// tokens, then `specials` (text, type), with `merges`.
fn vocab(extra: &[&str], merges: &[&str], specials: &[(&str, TokenType)]) -> BpeVocab {
    let mut tokens: Vec<String> = bytes::byte_to_char_table()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut token_types = vec![TokenType::Normal; 256];
    for t in extra {
        tokens.push(t.to_string());
        token_types.push(TokenType::Normal);
    }
    for (t, ty) in specials {
        tokens.push(t.to_string());
        token_types.push(*ty);
    }
    BpeVocab {
        tokens,
        token_types,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        pre_tokenizer: PreTokenizer::DigitsThenGpt2,
        bos_id: None,
        eos_id: None,
        add_bos: false,
        add_eos: false,
    }
}

fn tokens_of(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.id_to_token(id).unwrap().to_string())
        .collect()
}

/// The chat-style test tokenizer: a few merges, two control tokens and one user-defined token.
fn chat_tokenizer() -> Tokenizer {
    let v = vocab(
        &["he", "ll", "hell", "hello", "Ġw", "Ġwo", "12", "oĠ"],
        &["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "1 2", "o Ġ"],
        &[
            ("<|im_start|>", TokenType::Control),
            ("<|im_end|>", TokenType::Control),
            ("<tool>", TokenType::UserDefined),
            ("<|im", TokenType::Control),
        ],
    );
    Tokenizer::from_vocab(v).unwrap()
}

#[test]
fn merges_are_applied_by_rank() {
    let a = Tokenizer::from_vocab(vocab(&["ab", "bc"], &["a b", "b c"], &[])).unwrap();
    let ids = a.encode("abc", false, false).unwrap();
    assert_eq!(tokens_of(&a, &ids), ["ab", "c"]);

    let b = Tokenizer::from_vocab(vocab(&["ab", "bc"], &["b c", "a b"], &[])).unwrap();
    let ids = b.encode("abc", false, false).unwrap();
    assert_eq!(tokens_of(&b, &ids), ["a", "bc"]);
}

#[test]
fn merges_chain_within_words_but_not_across_them() {
    let tok = chat_tokenizer();
    let ids = tok.encode("hello wo", false, false).unwrap();
    // "o Ġ" is a merge, but " wo" is its own word, so "oĠ" never forms.
    assert_eq!(tokens_of(&tok, &ids), ["hello", "Ġwo"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello wo");
}

#[test]
fn digits_are_split_individually() {
    let tok = chat_tokenizer();
    // "1 2" is a merge, yet every digit stays alone; the space before digits stands alone.
    let ids = tok.encode("a 12345", false, false).unwrap();
    assert_eq!(tokens_of(&tok, &ids), ["a", "Ġ", "1", "2", "3", "4", "5"]);
    // Unicode digits too (U+0663 ARABIC-INDIC DIGIT THREE is two bytes, no merge).
    let ids = tok.encode("\u{663}\u{663}", false, false).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(tok.decode(&ids, false).unwrap(), "\u{663}\u{663}");
}

#[test]
fn control_tokens_are_split_out_only_when_parsing_special() {
    let tok = chat_tokenizer();
    let start = tok.token_to_id("<|im_start|>").unwrap();
    let end = tok.token_to_id("<|im_end|>").unwrap();
    let text = "<|im_start|>hello<|im_end|>\n";

    let ids = tok.encode(text, false, true).unwrap();
    let hello = tok.token_to_id("hello").unwrap();
    let nl = tok.token_to_id("Ċ").unwrap();
    assert_eq!(ids, [start, hello, end, nl]);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello\n");

    let plain = tok.encode(text, false, false).unwrap();
    assert!(!plain.contains(&start) && !plain.contains(&end));
    assert_eq!(tok.decode(&plain, false).unwrap(), text);
}

#[test]
fn longest_special_token_wins_at_a_position() {
    let tok = chat_tokenizer();
    let im = tok.token_to_id("<|im").unwrap();
    let start = tok.token_to_id("<|im_start|>").unwrap();
    let ids = tok.encode("<|im_start|><|imx", false, true).unwrap();
    assert_eq!(ids[0], start);
    assert_eq!(ids[1], im);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|><|imx");
}

#[test]
fn user_defined_tokens_are_always_matched_and_never_skipped() {
    let tok = chat_tokenizer();
    let tool = tok.token_to_id("<tool>").unwrap();
    for parse_special in [false, true] {
        let ids = tok.encode("a<tool>b", false, parse_special).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[1], tool);
        assert_eq!(tok.decode(&ids, true).unwrap(), "a<tool>b");
    }
    assert_eq!(tok.token_type(tool).unwrap(), TokenType::UserDefined);
    assert!(!tok.is_control(tool));
}

#[test]
fn bos_and_eos_follow_the_vocabulary_flags() {
    let mut v = vocab(
        &[],
        &[],
        &[("<s>", TokenType::Control), ("</s>", TokenType::Control)],
    );
    v.bos_id = Some(256);
    v.eos_id = Some(257);
    v.add_bos = true;
    let tok = Tokenizer::from_vocab(v.clone()).unwrap();
    assert_eq!(tok.bos_id(), Some(256));
    assert_eq!(tok.eos_id(), Some(257));
    assert_eq!(
        tok.encode("a", true, false).unwrap(),
        [256, u32::from(b'a')]
    );
    assert_eq!(tok.encode("a", false, false).unwrap().len(), 1);
    assert_eq!(tok.encode("", true, false).unwrap(), [256]);

    v.add_eos = true;
    let tok = Tokenizer::from_vocab(v.clone()).unwrap();
    assert_eq!(tok.encode("", true, false).unwrap(), [256, 257]);

    v.bos_id = None;
    let tok = Tokenizer::from_vocab(v.clone()).unwrap();
    let err = tok.encode("a", true, false).unwrap_err();
    assert!(
        matches!(err, TokenizerError::MissingSpecialId { which: "BOS" }),
        "{err}"
    );
    assert!(tok.encode("a", false, false).is_ok());

    v.bos_id = Some(9999);
    let err = Tokenizer::from_vocab(v).unwrap_err();
    assert!(
        err.to_string().contains("BOS id 9999 is out of range"),
        "{err}"
    );
}

#[test]
fn out_of_range_ids_are_errors() {
    let tok = chat_tokenizer();
    let n = tok.vocab_size() as u32;
    let want = format!("token id {n} is out of range (vocabulary size {n})");
    assert_eq!(tok.decode(&[0, n], false).unwrap_err().to_string(), want);
    assert_eq!(tok.id_to_token(n).unwrap_err().to_string(), want);
    assert_eq!(tok.decode_piece(n, true).unwrap_err().to_string(), want);
    assert!(tok.token_type(u32::MAX).is_err());
    assert!(!tok.is_control(u32::MAX));
    let mut s = tok.decode_stream(false);
    assert!(s.push(n).is_err());
    assert_eq!(s.push(tok.token_to_id("hello").unwrap()).unwrap(), "hello");
}

#[test]
fn bad_vocabularies_are_errors() {
    let mut v = vocab(&["ab"], &["a b"], &[]);
    v.merges.push("a".into());
    let err = Tokenizer::from_vocab(v).unwrap_err();
    assert!(
        err.to_string().contains("invalid merge rule #1 \"a\""),
        "{err}"
    );

    let v = vocab(&[], &["a b"], &[]);
    let err = Tokenizer::from_vocab(v).unwrap_err();
    assert!(
        err.to_string().contains("\"ab\" is not in the vocabulary"),
        "{err}"
    );

    let mut v = vocab(&[], &[], &[("<|\u{4}|>", TokenType::Control)]);
    v.tokens[4] = "unused".into();
    let tok = Tokenizer::from_vocab(v).unwrap();
    let err = tok.encode("ab\u{4}c", false, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot encode byte 0x04 at offset 2: the vocabulary has no token for it"
    );
    assert!(tok.encode("abc", false, false).is_ok());
    // Inside a special token the byte is fine.
    assert_eq!(tok.encode("<|\u{4}|>", false, true).unwrap(), [256]);
    let err = tok.encode("x<|\u{4}|>", false, false).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnencodableByte { byte: 4, offset: 3 }),
        "{err}"
    );

    let mut v = vocab(&[], &[], &[]);
    v.token_types.pop();
    assert!(Tokenizer::from_vocab(v).is_err());

    let mut v = vocab(&[], &[], &[]);
    v.tokens.clear();
    v.token_types.clear();
    assert!(Tokenizer::from_vocab(v).is_err());
}

#[test]
fn unknown_pre_tokenizer_is_named_in_the_error() {
    let err = PreTokenizer::from_name("tekken").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"tekken\"") && msg.contains("smollm"),
        "{msg}"
    );
    assert_eq!(
        PreTokenizer::from_name("smollm").unwrap(),
        PreTokenizer::DigitsThenGpt2
    );
    for name in PreTokenizer::SUPPORTED_NAMES {
        PreTokenizer::from_name(name).unwrap();
    }
}

#[test]
fn every_pre_tokenizer_builds_and_round_trips() {
    for pre in [
        PreTokenizer::DigitsThenGpt2,
        PreTokenizer::Gpt2,
        PreTokenizer::Llama3,
        PreTokenizer::Qwen2,
    ] {
        let mut v = vocab(&["12", "123"], &["1 2", "12 3"], &[]);
        v.pre_tokenizer = pre;
        let tok = Tokenizer::from_vocab(v).unwrap();
        let text = "It's 12345 o'clock,\r\n  new\tlines \u{1F600}!";
        let ids = tok.encode(text, false, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre:?}");
        let digits: Vec<_> = tokens_of(&tok, &tok.encode("12345", false, false).unwrap());
        match pre {
            PreTokenizer::DigitsThenGpt2 | PreTokenizer::Qwen2 => {
                assert_eq!(digits, ["1", "2", "3", "4", "5"], "{pre:?}")
            }
            PreTokenizer::Llama3 => assert_eq!(digits, ["123", "4", "5"]),
            PreTokenizer::Gpt2 => assert_eq!(digits, ["123", "4", "5"]),
        }
    }
}

#[test]
fn stream_holds_back_an_unfinished_character() {
    let tok = chat_tokenizer();
    let ids = tok.encode("é€", false, false).unwrap();
    assert_eq!(ids.len(), 5);
    let mut s = tok.decode_stream(false);
    let out: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out, ["", "é", "", "", "€"]);
    assert!(!s.has_pending());
    assert_eq!(s.finish(), "");

    // A character that never finishes comes out as U+FFFD at the end.
    let mut s = tok.decode_stream(false);
    assert_eq!(s.push(ids[2]).unwrap(), "");
    assert!(s.has_pending());
    assert_eq!(s.finish(), "\u{FFFD}");
}

/// A GGUF v3 file with no tensors and the given metadata (strings, string arrays, i32 arrays,
/// u32s and bools).
enum Kv<'a> {
    Str(&'a str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    U32(u32),
    Bool(bool),
}

fn gguf(kvs: &[(&str, Kv)]) -> GgufFile {
    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut b, k);
        match v {
            Kv::Str(s) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            Kv::Strs(a) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for s in a {
                    put_str(&mut b, s);
                }
            }
            Kv::I32s(a) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
            Kv::U32(x) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            Kv::Bool(x) => {
                b.extend_from_slice(&7u32.to_le_bytes());
                b.push(u8::from(*x));
            }
        }
    }
    GgufFile::from_bytes(b).unwrap()
}

fn gguf_kvs<'a>(model: &'a str, pre: &'a str) -> Vec<(&'a str, Kv<'a>)> {
    let v = vocab(&["he"], &["h e"], &[("<|endoftext|>", TokenType::Control)]);
    let types = v
        .token_types
        .iter()
        .map(|t| if *t == TokenType::Control { 3 } else { 1 })
        .collect();
    vec![
        ("tokenizer.ggml.model", Kv::Str(model)),
        ("tokenizer.ggml.pre", Kv::Str(pre)),
        ("tokenizer.ggml.tokens", Kv::Strs(v.tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(types)),
        ("tokenizer.ggml.merges", Kv::Strs(v.merges)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(257)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(257)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(true)),
    ]
}

#[test]
fn from_gguf_reads_the_tokenizer_keys() {
    let tok = Tokenizer::from_gguf(&gguf(&gguf_kvs("gpt2", "smollm"))).unwrap();
    assert_eq!(tok.vocab_size(), 258);
    assert_eq!(tok.bos_id(), Some(257));
    assert_eq!(tok.eos_id(), Some(257));
    assert!(tok.add_bos() && !tok.add_eos());
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::DigitsThenGpt2);
    let ids = tok.encode("he<|endoftext|>", true, true).unwrap();
    assert_eq!(ids, [257, 256, 257]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "he");
}

#[test]
fn from_gguf_names_what_it_does_not_support() {
    let err = Tokenizer::from_gguf(&gguf(&gguf_kvs("llama", "default"))).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"),
        "{err}"
    );
    assert!(err.to_string().contains("\"llama\""), "{err}");

    let err = Tokenizer::from_gguf(&gguf(&gguf_kvs("gpt2", "deepseek-coder"))).unwrap_err();
    assert!(err.to_string().contains("\"deepseek-coder\""), "{err}");

    let mut kvs = gguf_kvs("gpt2", "smollm");
    kvs.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    let err = Tokenizer::from_gguf(&gguf(&kvs)).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

    let mut kvs = gguf_kvs("gpt2", "smollm");
    kvs[3].1 = Kv::I32s(vec![1; 3]);
    let err = Tokenizer::from_gguf(&gguf(&kvs)).unwrap_err();
    assert!(
        err.to_string().contains("258 tokens but 3 token types"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_round_trips(text in any::<String>(), parse_special in any::<bool>()) {
        let tok = chat_tokenizer();
        let ids = tok.encode(&text, false, parse_special).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn text_with_specials_round_trips(
        parts in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                Just("<|im_start|>".to_string()),
                Just("<|im_end|>".to_string()),
                Just("<tool>".to_string()),
                "[ he1lo23<|>]{0,12}",
            ],
            0..8,
        )
    ) {
        let tok = chat_tokenizer();
        let text = parts.concat();
        for parse_special in [false, true] {
            let ids = tok.encode(&text, false, parse_special).unwrap();
            prop_assert_eq!(tok.decode(&ids, false).unwrap(), text.clone());
        }
    }

    #[test]
    fn stream_concatenation_equals_decode(ids in proptest::collection::vec(0u32..268, 0..40)) {
        let tok = chat_tokenizer();
        for skip in [false, true] {
            let mut s = tok.decode_stream(skip);
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&s.push(id).unwrap());
            }
            streamed.push_str(&s.finish());
            prop_assert_eq!(streamed, tok.decode(&ids, skip).unwrap());
        }
    }
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Tokenizer>();
    shareable::<DecodeStream<'static>>();
}
