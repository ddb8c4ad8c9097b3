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
    F32s(Vec<f32>),
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
            Kv::F32s(a) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&6u32.to_le_bytes());
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
    assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::DigitsThenGpt2));
    assert!(!tok.is_sentencepiece());
    let ids = tok.encode("he<|endoftext|>", true, true).unwrap();
    assert_eq!(ids, [257, 256, 257]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "he");
}

#[test]
fn from_gguf_names_what_it_does_not_support() {
    let err = Tokenizer::from_gguf(&gguf(&gguf_kvs("bert", "default"))).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "bert"),
        "{err}"
    );
    assert!(err.to_string().contains("\"bert\""), "{err}");
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

// ---------------------------------------------------------------------------------------------
// SentencePiece-style ("llama") vocabularies.
//
// The test vocabulary, by id:
//   0 `<unk>` (unknown), 1 `<s>` (control), 2 `</s>` (control),
//   3..=258 the byte tokens `<0x00>`..`<0xFF>` (byte b is id 3 + b),
//   then the normal tokens of `SPM_NORMAL` from id 259 on, with their scores.

/// Normal tokens of the test vocabulary and their scores (ids 259, 260, ...).
const SPM_NORMAL: &[(&str, f32)] = &[
    ("▁", -1.0),   // 259
    ("a", -2.0),   // 260
    ("b", -3.0),   // 261
    ("c", -4.0),   // 262
    ("ab", -5.0),  // 263
    ("bc", -1.5),  // 264: scores above "ab", so "abc" merges as a + bc
    ("▁a", -6.0),  // 265
    ("x", -2.0),   // 266
    ("xx", -1.0),  // 267: "xxx" has two equal "xx" pairs
    ("▁ab", -0.5), // 268
    ("é", -9.0),   // 269, only in `spm_vocab_with_e_acute`
];

const SPM_FIRST_NORMAL: u32 = 259;

/// The id of normal test token `text`.
fn spm_id(text: &str) -> u32 {
    SPM_FIRST_NORMAL + SPM_NORMAL.iter().position(|(t, _)| *t == text).unwrap() as u32
}

/// The id of the byte token of `b`.
fn byte_id(b: u8) -> u32 {
    3 + u32::from(b)
}

/// The test vocabulary without "é"; `with_bytes`: whether it has the 256 byte tokens (without
/// them the ids of the normal tokens shift, so tests of that case look ids up by text).
fn spm_vocab(with_bytes: bool) -> SpmVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    let mut scores = vec![0.0; 3];
    if with_bytes {
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            token_types.push(TokenType::Byte);
            scores.push(0.0);
        }
    }
    for (t, s) in &SPM_NORMAL[..SPM_NORMAL.len() - 1] {
        tokens.push(t.to_string());
        token_types.push(TokenType::Normal);
        scores.push(*s);
    }
    SpmVocab {
        tokens,
        scores,
        token_types,
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
    }
}

/// The test vocabulary as a GGUF file (`tokenizer.ggml.model == "llama"`), with keys replaced
/// or added by `extra`.
fn spm_gguf(extra: Vec<(&str, Kv)>) -> GgufFile {
    let v = spm_vocab(true);
    let types = v
        .token_types
        .iter()
        .map(|t| match t {
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        })
        .collect();
    let mut kvs = vec![
        ("tokenizer.ggml.model", Kv::Str("llama")),
        ("tokenizer.ggml.tokens", Kv::Strs(v.tokens)),
        ("tokenizer.ggml.scores", Kv::F32s(v.scores)),
        ("tokenizer.ggml.token_type", Kv::I32s(types)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Kv::U32(0)),
    ];
    for (k, v) in extra {
        match kvs.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => kvs.push((k, v)),
        }
    }
    gguf(&kvs)
}

fn spm_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&spm_gguf(vec![])).unwrap()
}

#[test]
fn spm_from_gguf_reads_the_keys_and_defaults() {
    let tok = spm_tokenizer();
    assert!(tok.is_sentencepiece());
    assert_eq!(tok.pre_tokenizer(), None);
    assert_eq!(tok.vocab_size(), 259 + SPM_NORMAL.len() - 1);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    // Llama 2's defaults: BOS added, EOS not.
    assert!(tok.add_bos() && !tok.add_eos());
    assert_eq!(tok.token_to_id("▁a"), Some(265));
    assert_eq!(tok.token_type(3 + 0x41).unwrap(), TokenType::Byte);

    let tok = Tokenizer::from_gguf(&spm_gguf(vec![
        ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Kv::Bool(true)),
    ]))
    .unwrap();
    assert!(!tok.add_bos() && tok.add_eos());
}

#[test]
fn spm_merges_the_highest_scoring_pair_first() {
    let tok = spm_tokenizer();
    // "abc" -> "▁abc": symbols ▁ a b c. Pairs in the vocabulary: "▁a" (-6), "ab" (-5) and
    // "bc" (-1.5). "bc" scores highest: ▁ a bc. Then "▁a" (-6) merges ("abc" is no token):
    // ▁a bc = [265, 264]. Merging by "ab" first would have given ▁ab c = [268, 262].
    assert_eq!(tok.encode("abc", false, false).unwrap(), [265, 264]);
    assert_eq!(spm_id("▁a"), 265);
    assert_eq!(spm_id("bc"), 264);
    // "ab" -> ▁ a b: pairs "▁a" (-6) and "ab" (-5); "ab" wins: ▁ ab; then "▁ab" (-0.5): [268].
    assert_eq!(tok.encode("ab", false, false).unwrap(), [268]);
    // Without the space prefix, "abc" is a b c -> a bc = [260, 264].
    let mut v = spm_vocab(true);
    v.add_space_prefix = false;
    let plain = Tokenizer::from_spm_vocab(v).unwrap();
    assert_eq!(plain.encode("abc", false, false).unwrap(), [260, 264]);
    assert_eq!(plain.decode(&[260, 264], false).unwrap(), "abc");
}

#[test]
fn spm_equal_scores_merge_the_leftmost_pair() {
    let tok = spm_tokenizer();
    // "xxx" -> ▁ x x x; "▁x" is no token; the two "xx" pairs score -1 each; the leftmost
    // merges: ▁ xx x = [259, 267, 266] (the rightmost would give ▁ x xx = [259, 266, 267]).
    assert_eq!(tok.encode("xxx", false, false).unwrap(), [259, 267, 266]);
    // "xxxx" -> ▁ xx xx: after the leftmost merge the pair (xx, x) is no token, (x, x) is.
    assert_eq!(tok.encode("xxxx", false, false).unwrap(), [259, 267, 267]);
}

#[test]
fn spm_spaces_become_the_space_mark() {
    let tok = spm_tokenizer();
    // "a  b" -> "▁a▁▁b": ▁ a ▁ ▁ b; "▁a" (-6) is the only pair: ▁a ▁ ▁ b.
    let ids = tok.encode("a  b", false, false).unwrap();
    assert_eq!(ids, [265, 259, 259, 261]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a  b");
    // A leading space: "▁▁a" -> ▁ ▁a (the pair "▁▁" is no token).
    let ids = tok.encode(" a", false, false).unwrap();
    assert_eq!(ids, [259, 265]);
    assert_eq!(tok.decode(&ids, false).unwrap(), " a");
}

#[test]
fn spm_unknown_characters_fall_back_to_bytes() {
    let tok = spm_tokenizer();
    // "é" (C3 A9) -> ▁ é; "é" is no token, so its bytes: [▁, <0xC3>, <0xA9>].
    let ids = tok.encode("é", false, false).unwrap();
    assert_eq!(ids, [259, byte_id(0xC3), byte_id(0xA9)]);
    assert_eq!(ids, [259, 198, 172]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "é");
    // "aé€" -> ▁a, <0xC3> <0xA9>, <0xE2> <0x82> <0xAC>.
    let ids = tok.encode("aé€", false, false).unwrap();
    assert_eq!(
        ids,
        [265, 198, 172, byte_id(0xE2), byte_id(0x82), byte_id(0xAC)]
    );
    assert_eq!(tok.decode(&ids, false).unwrap(), "aé€");

    // Where "é" is a token it is used.
    let mut v = spm_vocab(true);
    let (t, s) = SPM_NORMAL[SPM_NORMAL.len() - 1];
    v.tokens.push(t.into());
    v.scores.push(s);
    v.token_types.push(TokenType::Normal);
    let with_e = Tokenizer::from_spm_vocab(v).unwrap();
    assert_eq!(
        with_e.encode("é", false, false).unwrap(),
        [259, spm_id("é")]
    );

    // Without byte tokens, each byte is the unknown token.
    let no_bytes = Tokenizer::from_spm_vocab(spm_vocab(false)).unwrap();
    let space = no_bytes.token_to_id("▁").unwrap();
    assert_eq!(no_bytes.encode("é", false, false).unwrap(), [space, 0, 0]);
    // ... and without an unknown token it is an error naming the byte.
    let mut v = spm_vocab(false);
    v.unk_id = None;
    let err = Tokenizer::from_spm_vocab(v)
        .unwrap()
        .encode("aé", false, false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::UnencodableByte {
                byte: 0xC3,
                offset: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn spm_bos_and_eos_follow_the_file() {
    let tok = spm_tokenizer();
    // add_bos_token absent: true for SentencePiece. "a" -> ▁a.
    assert_eq!(tok.encode("a", true, false).unwrap(), [1, 265]);
    assert_eq!(tok.encode("a", false, false).unwrap(), [265]);
    // Empty text: no space prefix, just BOS.
    assert_eq!(tok.encode("", true, false).unwrap(), [1]);
    assert_eq!(tok.encode("", false, false).unwrap(), [] as [u32; 0]);
    let ids = tok.encode("abc", true, false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "abc");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s> abc");

    let tok = Tokenizer::from_gguf(&spm_gguf(vec![
        ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Kv::Bool(true)),
    ]))
    .unwrap();
    assert_eq!(tok.encode("a", true, false).unwrap(), [265, 2]);
}

#[test]
fn spm_control_tokens_are_parsed_only_with_parse_special() {
    let tok = spm_tokenizer();
    // With parse_special: "a", <s>, "b"; each stretch of text gets the prefix, as llama.cpp
    // does after a special token: "▁a" = [265], <s> = 1, "▁b" -> ▁ b = [259, 261].
    let ids = tok.encode("a<s>b", false, true).unwrap();
    assert_eq!(ids, [265, 1, 259, 261]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a<s> b");
    assert_eq!(tok.decode(&ids, true).unwrap(), "a b");
    // Without: "▁a<s>b" -> ▁a, then '<' 's' '>' are no tokens: bytes 3C 73 3E, then b.
    let ids = tok.encode("a<s>b", false, false).unwrap();
    assert_eq!(ids, [265, byte_id(b'<'), byte_id(b's'), byte_id(b'>'), 261]);
    assert_eq!(ids, [265, 63, 118, 65, 261]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "a<s>b");
    // Special tokens never come out of merging, even where the pieces would form one.
    assert!(
        !tok.encode("<s></s><unk>", false, false)
            .unwrap()
            .contains(&1)
    );
}

#[test]
fn spm_stream_decodes_byte_tokens_and_drops_the_prefix_space() {
    let tok = spm_tokenizer();
    let ids = tok.encode("aé €", true, false).unwrap();
    // <s>, ▁a, <0xC3> <0xA9>, ▁, <0xE2> <0x82> <0xAC>
    assert_eq!(ids, [1, 265, 198, 172, 259, 229, 133, 175]);
    let mut s = tok.decode_stream(true);
    let out: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out, ["", "a", "", "é", " ", "", "", "€"]);
    assert_eq!(s.finish(), "");

    // A continuation keeps the space: "▁a" is " a".
    let mut s = tok.decode_stream_continuing(true);
    assert_eq!(s.push(265).unwrap(), " a");
    assert_eq!(s.push(264).unwrap(), "bc");
    // An unfinished byte sequence comes out as U+FFFD at the end.
    assert_eq!(s.push(198).unwrap(), "");
    assert!(s.has_pending());
    assert_eq!(s.finish(), "\u{FFFD}");
}

#[test]
fn spm_bad_vocabularies_are_errors() {
    let mut v = spm_vocab(true);
    v.scores.pop();
    let err = Tokenizer::from_spm_vocab(v).unwrap_err();
    assert!(err.to_string().contains("tokens but"), "{err}");

    let mut v = spm_vocab(true);
    v.tokens[3] = "<0x0G>".into();
    let err = Tokenizer::from_spm_vocab(v).unwrap_err();
    assert!(err.to_string().contains("\"<0x0G>\""), "{err}");

    let mut v = spm_vocab(true);
    v.unk_id = Some(100_000);
    let err = Tokenizer::from_spm_vocab(v).unwrap_err();
    assert!(err.to_string().contains("unknown id 100000"), "{err}");

    let mut v = spm_vocab(true);
    v.tokens.clear();
    v.scores.clear();
    v.token_types.clear();
    assert!(Tokenizer::from_spm_vocab(v).is_err());

    // Scores of the wrong type in the file are named.
    let err = Tokenizer::from_gguf(&spm_gguf(vec![(
        "tokenizer.ggml.scores",
        Kv::I32s(vec![0; 3]),
    )]))
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.scores"), "{err}");
}

/// The merging of `text` (no verbatim tokens) done the slow, obvious way, as token texts.
fn spm_reference(tok: &Tokenizer, text: &str, prefix: bool) -> Vec<u32> {
    let normal: HashMap<&str, (u32, f32)> = SPM_NORMAL[..SPM_NORMAL.len() - 1]
        .iter()
        .map(|(t, s)| (*t, (tok.token_to_id(t).unwrap(), *s)))
        .collect();
    if text.is_empty() {
        return Vec::new();
    }
    let escaped = format!("{}{}", if prefix { "▁" } else { "" }, text).replace(' ', "▁");
    let mut syms: Vec<String> = escaped.chars().map(String::from).collect();
    loop {
        let mut best: Option<(usize, f32)> = None;
        for i in 1..syms.len() {
            let pair = format!("{}{}", syms[i - 1], syms[i]);
            if let Some(&(_, score)) = normal.get(pair.as_str()) {
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i - 1, score));
                }
            }
        }
        let Some((i, _)) = best else { break };
        let right = syms.remove(i + 1);
        syms[i].push_str(&right);
    }
    let mut ids = Vec::new();
    for s in syms {
        match normal.get(s.as_str()) {
            Some(&(id, _)) => ids.push(id),
            None => ids.extend(s.bytes().map(byte_id)),
        }
    }
    ids
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn spm_merging_equals_the_obvious_algorithm(text in "[abcx é▁]{0,24}") {
        let tok = spm_tokenizer();
        prop_assert_eq!(tok.encode(&text, false, false).unwrap(), spm_reference(&tok, &text, true));
    }

    // Any text without U+2581 (which SentencePiece itself decodes as a space) round-trips.
    #[test]
    fn spm_any_text_round_trips(
        text in any::<String>().prop_map(|s| s.replace('\u{2581}', "")),
        mixed in "[abcx é<s>]{0,24}",
        add_special in any::<bool>(),
    ) {
        let tok = spm_tokenizer();
        for t in [&text, &mixed] {
            let ids = tok.encode(t, add_special, false).unwrap();
            prop_assert_eq!(&tok.decode(&ids, true).unwrap(), t);
            let mut s = tok.decode_stream(true);
            let mut streamed = String::new();
            for &id in &ids {
                streamed.push_str(&s.push(id).unwrap());
            }
            streamed.push_str(&s.finish());
            prop_assert_eq!(&streamed, t);
        }
    }

    #[test]
    fn spm_stream_concatenation_equals_decode(ids in proptest::collection::vec(0u32..269, 0..40)) {
        let tok = spm_tokenizer();
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
