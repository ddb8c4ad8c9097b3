//! The tokenizer of a GGUF model: text to token ids and back, as llama.cpp does it.
//!
//! Supported today: **byte-level BPE** vocabularies (`tokenizer.ggml.model == "gpt2"`), the
//! kind SmolLM2, Llama 3, Qwen2, StarCoder and GPT-2 use. Not supported (a clear
//! [`TokenizerError::UnsupportedModel`]): SentencePiece-style vocabularies (`"llama"`, as in
//! Llama 2 and Mistral), WordPiece and the rest; nor is a Hugging Face `tokenizer.json` read
//! here yet.
//!
//! # How text becomes ids
//!
//! 1. **Special tokens.** Tokens whose `tokenizer.ggml.token_type` is *control* (3, e.g.
//!    `<|im_start|>`) are matched verbatim in the text when `parse_special` is set; tokens of
//!    type *user-defined* (4) are always matched. Matching is leftmost-longest. The text between
//!    matches is encoded as below, each stretch on its own.
//! 2. **Pre-tokenization**, chosen by `tokenizer.ggml.pre` (see [`PreTokenizer`]): a regular
//!    expression splits the text into words (for SmolLM2, `"smollm"`, every digit is its own
//!    word first, then the GPT-2 expression), and each word's bytes are written in the
//!    byte-level alphabet (a space is `Ġ`).
//! 3. **BPE** within each word: adjacent symbols are merged by the rank of their pair in
//!    `tokenizer.ggml.merges` (lowest rank first) until no listed pair remains.
//!
//! Steps 2 and 3 are done by the Hugging Face [`tokenizers`] crate (its `BPE` model built in
//! code from the GGUF vocabulary and merges, its `Digits`, `Split` and `ByteLevel`
//! pre-tokenizers), which reproduces llama.cpp's ids on the SmolLM2 reference prompts exactly.
//! Step 1 and decoding are done here, so that both follow llama.cpp's token-type rules.
//!
//! # How ids become text
//!
//! A *normal* token is turned back from the byte-level alphabet into bytes; control and
//! user-defined tokens are their text verbatim (control tokens are dropped when `skip_special`
//! is set); unused, byte and unknown-type tokens are empty. [`Tokenizer::decode`] joins the
//! bytes and replaces invalid UTF-8 with U+FFFD; [`DecodeStream`] does the same one token at a
//! time and holds back an incomplete UTF-8 sequence until the token that completes it arrives,
//! so a streamed character is never split.
//!
//! ```no_run
//! use arkvale_model::gguf::GgufFile;
//! use arkvale_model::tokenizer::Tokenizer;
//!
//! let file = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = Tokenizer::from_gguf(&file)?;
//! let ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n", true, true)?;
//! assert_eq!(tok.decode(&ids, false)?, "<|im_start|>user\nHi<|im_end|>\n");
//!
//! let mut stream = tok.decode_stream(true);
//! for &id in &ids {
//!     print!("{}", stream.push(id)?);
//! }
//! print!("{}", stream.finish());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bytes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use crate::gguf::{GgufError, GgufFile, Metadata};

/// Anything that can go wrong building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A tokenizer key of the GGUF file is missing or has the wrong type.
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    /// `tokenizer.ggml.model` names a kind of tokenizer this crate does not implement.
    #[error(
        "unsupported tokenizer model {0:?} (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE)"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error(
        "unsupported pre-tokenizer {0:?} (tokenizer.ggml.pre); supported: {supported}",
        supported = PreTokenizer::SUPPORTED_NAMES.join(", ")
    )]
    UnsupportedPreTokenizer(String),
    /// The vocabulary is empty, inconsistent, or cannot encode all text.
    #[error("invalid tokenizer vocabulary: {0}")]
    InvalidVocab(String),
    /// A merge rule is not two space-separated tokens of the vocabulary.
    #[error("invalid merge rule #{index} {rule:?}: {reason}")]
    InvalidMerge {
        /// Position of the rule in `tokenizer.ggml.merges` (its rank).
        index: usize,
        /// The rule's text.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A token id that is not in the vocabulary.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    IdOutOfRange {
        /// The id.
        id: u32,
        /// The number of tokens in the vocabulary.
        vocab_size: usize,
    },
    /// The text holds a byte (outside special tokens) that the vocabulary has no symbol for,
    /// so it cannot be encoded (BPE would drop it silently).
    #[error(
        "cannot encode byte 0x{byte:02X} at offset {offset}: the vocabulary has no token for it"
    )]
    UnencodableByte {
        /// The byte.
        byte: u8,
        /// Its offset in the text, in bytes.
        offset: usize,
    },
    /// A BOS or EOS token was to be added, but the file names none (or an id out of range).
    #[error("the tokenizer adds a {which} token but the file names no valid {which} id")]
    MissingSpecialId {
        /// `"BOS"` or `"EOS"`.
        which: &'static str,
    },
    /// The underlying BPE implementation (the `tokenizers` crate) failed.
    #[error("BPE tokenizer: {0}")]
    Bpe(String),
}

/// Result type of the tokenizer.
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// The role of a token, as in GGUF's `tokenizer.ggml.token_type` (llama.cpp's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// An ordinary vocabulary entry (1), written in the byte-level alphabet.
    Normal,
    /// The unknown token (2).
    Unknown,
    /// A control token such as `<|im_start|>` (3): matched in text only when special tokens are
    /// parsed, dropped by decoding when special tokens are skipped.
    Control,
    /// A user-defined token (4): always matched verbatim in text, always decoded verbatim.
    UserDefined,
    /// A reserved, unused slot (5): never produced, decodes to nothing.
    Unused,
    /// A raw-byte token (6; SentencePiece style): decodes to nothing here.
    Byte,
}

impl TokenType {
    /// The type of GGUF value `v`; `None` for a value llama.cpp does not define.
    pub fn from_gguf(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// The pre-tokenizer: how text is split into words before BPE, named by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// Every digit alone, then the GPT-2 expression (`"smollm"`, `"starcoder"`, `"refact"`,
    /// `"command-r"`, `"codeshell"`, `"exaone"`, `"minerva"`). Checked against llama.cpp on
    /// SmolLM2.
    DigitsThenGpt2,
    /// The GPT-2 expression alone (`"gpt-2"`, `"mpt"`, `"olmo"`, `"jais"`).
    Gpt2,
    /// The Llama 3 expression (numbers in groups of up to three), with whole words found in the
    /// vocabulary taken as they are (`"llama3"`, `"llama-v3"`, `"llama-bpe"`, `"falcon3"`).
    Llama3,
    /// The Qwen2 expression (every digit alone) (`"qwen2"`, `"stablelm2"`).
    Qwen2,
}

/// Llama 3's word-splitting expression (from its `tokenizer.json`, as llama.cpp applies it).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's word-splitting expression: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    /// Every `tokenizer.ggml.pre` name that [`PreTokenizer::from_name`] accepts.
    pub const SUPPORTED_NAMES: &'static [&'static str] = &[
        "smollm",
        "starcoder",
        "refact",
        "command-r",
        "codeshell",
        "exaone",
        "minerva",
        "gpt-2",
        "mpt",
        "olmo",
        "jais",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "qwen2",
        "stablelm2",
    ];

    /// The pre-tokenizer that llama.cpp uses for `tokenizer.ggml.pre == name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Self::DigitsThenGpt2,
            "gpt-2" | "mpt" | "olmo" | "jais" => Self::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => Self::Llama3,
            "qwen2" | "stablelm2" => Self::Qwen2,
            _ => return Err(TokenizerError::UnsupportedPreTokenizer(name.to_string())),
        })
    }

    fn build(self) -> Result<PreTokenizerWrapper> {
        let split = |pattern: &str| {
            Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Bpe(e.to_string()))
        };
        // ByteLevel(add_prefix_space = false, trim_offsets = true, use_regex).
        Ok(match self {
            Self::DigitsThenGpt2 => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])),
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
            Self::Llama3 | Self::Qwen2 => {
                let pattern = if self == Self::Llama3 {
                    LLAMA3_PATTERN
                } else {
                    QWEN2_PATTERN
                };
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    split(pattern)?.into(),
                    ByteLevel::new(false, true, false).into(),
                ]))
            }
        })
    }

    /// Whether a whole word found in the vocabulary is taken as one token without merging
    /// (llama.cpp's `ignore_merges`, set for Llama 3).
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }
}

/// Everything a byte-level BPE tokenizer is built from, as GGUF stores it. Build one by hand
/// for tests or other file formats; [`Tokenizer::from_gguf`] fills it from a file.
#[derive(Clone, Debug)]
pub struct BpeVocab {
    /// Token strings in the byte-level alphabet, indexed by id.
    pub tokens: Vec<String>,
    /// The type of each token (same length as `tokens`).
    pub token_types: Vec<TokenType>,
    /// Merge rules `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// The pre-tokenizer.
    pub pre_tokenizer: PreTokenizer,
    /// The beginning-of-sequence token, if any.
    pub bos_id: Option<u32>,
    /// The end-of-sequence token, if any.
    pub eos_id: Option<u32>,
    /// Whether [`Tokenizer::encode`] with `add_special` prepends BOS.
    pub add_bos: bool,
    /// Whether [`Tokenizer::encode`] with `add_special` appends EOS.
    pub add_eos: bool,
}

/// A special or user-defined token that is matched verbatim in text.
#[derive(Clone, Debug)]
struct VerbatimToken {
    text: String,
    id: u32,
    /// Control (matched only when parsing special tokens) rather than user-defined.
    control: bool,
}

/// A byte-level BPE tokenizer; see the [module documentation](self).
pub struct Tokenizer {
    tokens: Vec<String>,
    token_types: Vec<TokenType>,
    token_ids: HashMap<String, u32>,
    /// What each token decodes to.
    pieces: Vec<Box<[u8]>>,
    /// Verbatim tokens grouped by first byte, longest first within a group.
    verbatim: HashMap<u8, Vec<VerbatimToken>>,
    pre_tokenizer: PreTokenizer,
    bpe: HfTokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Bytes that have no symbol in the vocabulary.
    missing_bytes: [bool; 256],
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("pre_tokenizer", &self.pre_tokenizer)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// An optional `u32` metadata value: absent is `None`, present must be an unsigned integer.
fn optional_u32(md: &Metadata, key: &str) -> Result<Option<u32>> {
    if md.get(key).is_none() {
        return Ok(None);
    }
    let v = md.get_uint(key)?;
    u32::try_from(v)
        .map(Some)
        .map_err(|_| TokenizerError::InvalidVocab(format!("{key} = {v} does not fit in u32")))
}

/// An optional bool metadata value, `default` when absent.
fn optional_bool(md: &Metadata, key: &str, default: bool) -> Result<bool> {
    if md.get(key).is_none() {
        return Ok(default);
    }
    Ok(md.get_bool(key)?)
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata: `model` (must be
    /// `"gpt2"`), `pre`, `tokens`, `merges`, `token_type` (absent: all normal),
    /// `bos_token_id`, `eos_token_id`, `add_bos_token` and `add_eos_token` (absent: false).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let model = md.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre_tokenizer = PreTokenizer::from_name(md.get_str("tokenizer.ggml.pre")?)?;
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?.to_vec();
        let token_types = if md.get("tokenizer.ggml.token_type").is_some() {
            md.get_i32_array("tokenizer.ggml.token_type")?
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    TokenType::from_gguf(t).ok_or_else(|| {
                        TokenizerError::InvalidVocab(format!(
                            "token {i} has unknown token_type {t}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![TokenType::Normal; tokens.len()]
        };
        let merges = md.get_str_array("tokenizer.ggml.merges")?.to_vec();
        Self::from_vocab(BpeVocab {
            tokens,
            token_types,
            merges,
            pre_tokenizer,
            bos_id: optional_u32(md, "tokenizer.ggml.bos_token_id")?,
            eos_id: optional_u32(md, "tokenizer.ggml.eos_token_id")?,
            add_bos: optional_bool(md, "tokenizer.ggml.add_bos_token", false)?,
            add_eos: optional_bool(md, "tokenizer.ggml.add_eos_token", false)?,
        })
    }

    /// A tokenizer from its parts. Fails if the vocabulary is empty, larger than `u32` ids
    /// allow, or if a merge rule is malformed or names tokens not in the vocabulary. A
    /// vocabulary may lack the symbols of some bytes (SmolLM2 has none for most ASCII control
    /// characters); encoding text with such a byte is then an error.
    pub fn from_vocab(vocab: BpeVocab) -> Result<Self> {
        let BpeVocab {
            tokens,
            token_types,
            merges,
            pre_tokenizer,
            bos_id,
            eos_id,
            add_bos,
            add_eos,
        } = vocab;
        if tokens.is_empty() {
            return Err(TokenizerError::InvalidVocab("no tokens".into()));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} tokens do not fit u32 ids",
                tokens.len()
            )));
        }
        if token_types.len() != tokens.len() {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} tokens but {} token types",
                tokens.len(),
                token_types.len()
            )));
        }

        // Later duplicates win, as in llama.cpp's token-to-id map.
        let mut token_ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            token_ids.insert(t.clone(), i as u32);
        }

        // Bytes without a symbol cannot be encoded; `encode` refuses text that has them (BPE
        // would drop them silently). SmolLM2, for one, has no symbol for most control bytes.
        let alphabet = bytes::byte_to_char_table();
        let mut missing_bytes = [false; 256];
        for (b, c) in alphabet.iter().enumerate() {
            missing_bytes[b] = !token_ids.contains_key(c.to_string().as_str());
        }

        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (index, rule) in merges.iter().enumerate() {
            let bad = |reason: String| TokenizerError::InvalidMerge {
                index,
                rule: rule.clone(),
                reason,
            };
            let (l, r) = rule
                .split_once(' ')
                .ok_or_else(|| bad("no space between the two tokens".into()))?;
            if l.is_empty() || r.is_empty() || r.contains(' ') {
                return Err(bad("not exactly two non-empty tokens".into()));
            }
            for part in [l, r, &format!("{l}{r}")] {
                if !token_ids.contains_key(part) {
                    return Err(bad(format!("{part:?} is not in the vocabulary")));
                }
            }
            merge_pairs.push((l.to_string(), r.to_string()));
        }

        let vocab_map: tokenizers::models::bpe::Vocab =
            token_ids.iter().map(|(k, &v)| (k.clone(), v)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab_map, merge_pairs)
            .ignore_merges(pre_tokenizer.ignore_merges())
            .build()
            .map_err(|e| TokenizerError::Bpe(e.to_string()))?;
        let mut hf = HfTokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(pre_tokenizer.build()?));

        let n = tokens.len();
        let check_id = |id: Option<u32>, which| match id {
            Some(id) if id as usize >= n => Err(TokenizerError::InvalidVocab(format!(
                "{which} id {id} is out of range (vocabulary size {n})"
            ))),
            _ => Ok(()),
        };
        check_id(bos_id, "BOS")?;
        check_id(eos_id, "EOS")?;

        let pieces = tokens
            .iter()
            .zip(&token_types)
            .map(|(t, ty)| match ty {
                TokenType::Normal => bytes::decode_token_text(t).into_boxed_slice(),
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                    t.as_bytes().into()
                }
                TokenType::Unused | TokenType::Byte => Box::default(),
            })
            .collect();

        let mut verbatim: HashMap<u8, Vec<VerbatimToken>> = HashMap::new();
        for (i, (t, ty)) in tokens.iter().zip(&token_types).enumerate() {
            let control = match ty {
                TokenType::Control => true,
                TokenType::UserDefined => false,
                _ => continue,
            };
            // A duplicate string is matched as the id the token-to-id map gives it.
            if t.is_empty() || token_ids[t] != i as u32 {
                continue;
            }
            verbatim
                .entry(t.as_bytes()[0])
                .or_default()
                .push(VerbatimToken {
                    text: t.clone(),
                    id: i as u32,
                    control,
                });
        }
        for group in verbatim.values_mut() {
            group.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        }

        Ok(Self {
            tokens,
            token_types,
            token_ids,
            pieces,
            verbatim,
            pre_tokenizer,
            bpe: hf,
            bos_id,
            eos_id,
            add_bos,
            add_eos,
            missing_bytes,
        })
    }

    /// Token ids of `text`. With `add_special`, BOS is prepended and EOS appended where the
    /// file says so (`add_bos_token`, `add_eos_token`). With `parse_special`, control tokens
    /// written in the text (e.g. `<|im_start|>`) become their ids; without it they are encoded
    /// as plain text. User-defined tokens are always matched. Text with a byte the vocabulary
    /// cannot represent is a [`TokenizerError::UnencodableByte`] (llama.cpp would drop it).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.push(
                self.bos_id
                    .ok_or(TokenizerError::MissingSpecialId { which: "BOS" })?,
            );
        }
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            match self.find_verbatim(rest, parse_special) {
                Some((start, tok)) => {
                    self.encode_plain(&rest[..start], pos, &mut ids)?;
                    ids.push(tok.id);
                    pos += start + tok.text.len();
                }
                None => {
                    self.encode_plain(rest, pos, &mut ids)?;
                    break;
                }
            }
        }
        if add_special && self.add_eos {
            ids.push(
                self.eos_id
                    .ok_or(TokenizerError::MissingSpecialId { which: "EOS" })?,
            );
        }
        Ok(ids)
    }

    /// The leftmost verbatim token in `text` (the longest one at that position).
    fn find_verbatim(&self, text: &str, parse_special: bool) -> Option<(usize, &VerbatimToken)> {
        if self.verbatim.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        for (start, b) in bytes.iter().enumerate() {
            let Some(group) = self.verbatim.get(b) else {
                continue;
            };
            let found = group.iter().find(|t| {
                (parse_special || !t.control) && bytes[start..].starts_with(t.text.as_bytes())
            });
            if let Some(t) = found {
                return Some((start, t));
            }
        }
        None
    }

    /// Pre-tokenization and BPE of text that holds no verbatim token (`offset`: where it starts
    /// in the caller's text, for errors).
    fn encode_plain(&self, text: &str, offset: usize, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if let Some(i) = text
            .bytes()
            .position(|b| self.missing_bytes[usize::from(b)])
        {
            return Err(TokenizerError::UnencodableByte {
                byte: text.as_bytes()[i],
                offset: offset + i,
            });
        }
        let enc = self
            .bpe
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Bpe(e.to_string()))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// The text of `ids`. With `skip_special`, control (and unknown-type) tokens are left out.
    /// Bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.decode_piece(id, skip_special)?);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The bytes that token `id` decodes to (possibly part of a UTF-8 character, possibly
    /// empty). With `skip_special`, a control or unknown-type token gives no bytes.
    pub fn decode_piece(&self, id: u32, skip_special: bool) -> Result<&[u8]> {
        let ty = self.token_type(id)?;
        if skip_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
            return Ok(&[]);
        }
        Ok(&self.pieces[id as usize])
    }

    /// An incremental decoder over this tokenizer; see [`DecodeStream`].
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// The beginning-of-sequence token id, if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token id, if the file names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The number of tokens in the vocabulary (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The pre-tokenizer in use.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre_tokenizer
    }

    /// The id of the token whose vocabulary string is `token` (in the byte-level alphabet for
    /// normal tokens, e.g. `"ĠHello"`; verbatim for special ones, e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.token_ids.get(token).copied()
    }

    /// The vocabulary string of token `id` (see [`Tokenizer::token_to_id`]).
    pub fn id_to_token(&self, id: u32) -> Result<&str> {
        self.check(id)?;
        Ok(&self.tokens[id as usize])
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Result<TokenType> {
        self.check(id)?;
        Ok(self.token_types[id as usize])
    }

    /// Whether `id` is a control token (e.g. `<|im_end|>`); false for an out-of-range id.
    pub fn is_control(&self, id: u32) -> bool {
        matches!(self.token_type(id), Ok(TokenType::Control))
    }

    fn check(&self, id: u32) -> Result<()> {
        if (id as usize) < self.tokens.len() {
            Ok(())
        } else {
            Err(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.tokens.len(),
            })
        }
    }
}

/// Decodes tokens one at a time, for streaming output: each [`DecodeStream::push`] returns the
/// text that is complete so far and holds back the bytes of a UTF-8 character that the next
/// token may finish. Bytes that can never become valid UTF-8 come out as U+FFFD, so the
/// concatenation of every `push` and the final [`DecodeStream::finish`] equals
/// [`Tokenizer::decode`] of the same ids.
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl DecodeStream<'_> {
    /// Adds token `id` and returns the text it completes (often the token's own text, empty
    /// while a multi-byte character is still incomplete). An out-of-range id is an error and
    /// leaves the stream as it was.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.tokenizer.decode_piece(id, self.skip_special)?;
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let s = std::str::from_utf8(&self.pending[start..start + valid])
                        .expect("valid_up_to is valid");
                    out.push_str(s);
                    start += valid;
                    match e.error_len() {
                        // Invalid whatever follows: replace, as `from_utf8_lossy` does.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                        // A character cut short by the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// Ends the stream: the bytes still held back (an unfinished character) as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }

    /// Whether bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
