//! The tokenizer of a GGUF model: text to token ids and back, as llama.cpp does it.
//!
//! Supported today: **byte-level BPE** vocabularies (`tokenizer.ggml.model == "gpt2"`), the
//! kind SmolLM2, Llama 3, Qwen2, StarCoder and GPT-2 use, and **SentencePiece-style**
//! vocabularies (`"llama"`, llama.cpp's "SPM", as in Llama 2 and Mistral; see
//! [SentencePiece-style vocabularies](#sentencepiece-style-vocabularies)). Not supported (a
//! clear [`TokenizerError::UnsupportedModel`]): WordPiece and the rest; nor is a Hugging Face
//! `tokenizer.json` read here yet.
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
//! # SentencePiece-style vocabularies
//!
//! Step 1 is the same. There is no pre-tokenization: each stretch of text between verbatim
//! tokens has its spaces written as `▁` (U+2581) and, when `add_space_prefix` is set (the
//! default), one `▁` put in front if the stretch starts the text or follows a verbatim token
//! (as llama.cpp does). Its characters are then merged pairwise, always the adjacent pair whose
//! concatenation is a *normal* token with the highest `tokenizer.ggml.scores` entry (leftmost
//! on a tie), until no pair forms a token; a leftover character that is not a token becomes its
//! UTF-8 bytes as `<0xNN>` *byte* tokens, or the unknown token where a byte token is missing.
//! Decoding writes `▁` as a space and a byte token as its byte, and drops the one leading space
//! that the prefix put at the start of the text ([`Tokenizer::decode`],
//! [`Tokenizer::decode_stream`]; [`Tokenizer::decode_stream_continuing`] keeps it, for tokens
//! that continue a text, such as generated ones).
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
mod spm;
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
        "unsupported tokenizer model {0:?} (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece-style)"
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
    /// An ordinary vocabulary entry (1), written in the byte-level alphabet (BPE) or with `▁`
    /// for a space (SentencePiece).
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
    /// A raw-byte token `<0xNN>` (6; SentencePiece style): decodes to its byte in a
    /// SentencePiece-style vocabulary, to nothing in a BPE one.
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

/// Everything a SentencePiece-style tokenizer is built from, as GGUF stores it. Build one by
/// hand for tests or other file formats; [`Tokenizer::from_gguf`] fills it from a file.
#[derive(Clone, Debug)]
pub struct SpmVocab {
    /// Token strings, a space written as `▁` (U+2581), indexed by id.
    pub tokens: Vec<String>,
    /// The merge priority of each token, higher first (same length as `tokens`).
    pub scores: Vec<f32>,
    /// The type of each token (same length as `tokens`); byte tokens must read `<0xNN>`.
    pub token_types: Vec<TokenType>,
    /// The beginning-of-sequence token, if any.
    pub bos_id: Option<u32>,
    /// The end-of-sequence token, if any.
    pub eos_id: Option<u32>,
    /// The token for a byte that has no byte token, if any.
    pub unk_id: Option<u32>,
    /// Whether [`Tokenizer::encode`] with `add_special` prepends BOS.
    pub add_bos: bool,
    /// Whether [`Tokenizer::encode`] with `add_special` appends EOS.
    pub add_eos: bool,
    /// Whether text gets a leading `▁` before merging (and decoding drops a leading space).
    pub add_space_prefix: bool,
}

/// A special or user-defined token that is matched verbatim in text.
#[derive(Clone, Debug)]
struct VerbatimToken {
    text: String,
    id: u32,
    /// Control (matched only when parsing special tokens) rather than user-defined.
    control: bool,
}

/// How a stretch of plain text (no verbatim tokens) becomes ids.
enum Algorithm {
    /// Byte-level BPE.
    Bpe {
        pre_tokenizer: PreTokenizer,
        bpe: Box<HfTokenizer>,
        /// Bytes that have no symbol in the vocabulary.
        missing_bytes: Box<[bool; 256]>,
    },
    /// SentencePiece-style merging by score.
    Spm(Box<spm::SpmModel>),
}

/// A byte-level BPE or SentencePiece-style tokenizer; see the [module documentation](self).
pub struct Tokenizer {
    tokens: Vec<String>,
    token_types: Vec<TokenType>,
    token_ids: HashMap<String, u32>,
    /// What each token decodes to.
    pieces: Vec<Box<[u8]>>,
    /// Verbatim tokens grouped by first byte, longest first within a group.
    verbatim: HashMap<u8, Vec<VerbatimToken>>,
    algorithm: Algorithm,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("pre_tokenizer", &self.pre_tokenizer())
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

/// The `tokenizer.ggml.token_type` array (absent: all normal).
fn token_types_of(md: &Metadata, n: usize) -> Result<Vec<TokenType>> {
    if md.get("tokenizer.ggml.token_type").is_none() {
        return Ok(vec![TokenType::Normal; n]);
    }
    md.get_i32_array("tokenizer.ggml.token_type")?
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            TokenType::from_gguf(t).ok_or_else(|| {
                TokenizerError::InvalidVocab(format!("token {i} has unknown token_type {t}"))
            })
        })
        .collect()
}

/// Checks what every vocabulary must satisfy and returns its token-to-id map (a later duplicate
/// wins, as in llama.cpp's).
fn index_tokens(tokens: &[String], token_types: &[TokenType]) -> Result<HashMap<String, u32>> {
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
    let mut token_ids = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        token_ids.insert(t.clone(), i as u32);
    }
    Ok(token_ids)
}

/// An error if special token `id` (`which`: `"BOS"`, ...) is not below `n`.
fn check_special_id(id: Option<u32>, which: &str, n: usize) -> Result<()> {
    match id {
        Some(id) if id as usize >= n => Err(TokenizerError::InvalidVocab(format!(
            "{which} id {id} is out of range (vocabulary size {n})"
        ))),
        _ => Ok(()),
    }
}

/// The control and user-defined tokens, grouped by first byte, longest first in a group.
fn verbatim_tokens(
    tokens: &[String],
    token_types: &[TokenType],
    token_ids: &HashMap<String, u32>,
) -> HashMap<u8, Vec<VerbatimToken>> {
    let mut verbatim: HashMap<u8, Vec<VerbatimToken>> = HashMap::new();
    for (i, (t, ty)) in tokens.iter().zip(token_types).enumerate() {
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
    verbatim
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// `model` picks the kind. For `"gpt2"` (byte-level BPE): `pre`, `tokens`, `merges`,
    /// `token_type` (absent: all normal), `bos_token_id`, `eos_token_id`, `add_bos_token` and
    /// `add_eos_token` (absent: false). For `"llama"` (SentencePiece-style): `tokens`, `scores`
    /// (absent: all 0), `token_type` (absent: all normal), `bos_token_id`, `eos_token_id` and
    /// `unknown_token_id` (absent: 1, 2 and 0, llama.cpp's defaults, where in range),
    /// `add_bos_token` (absent: true), `add_eos_token` (absent: false) and `add_space_prefix`
    /// (absent: true).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let model = md.get_str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => {}
            "llama" => return Self::spm_from_gguf(md),
            _ => return Err(TokenizerError::UnsupportedModel(model.to_string())),
        }
        let pre_tokenizer = PreTokenizer::from_name(md.get_str("tokenizer.ggml.pre")?)?;
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?.to_vec();
        let token_types = token_types_of(md, tokens.len())?;
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

    /// The SentencePiece-style tokenizer of `tokenizer.ggml.model == "llama"`.
    fn spm_from_gguf(md: &Metadata) -> Result<Self> {
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?.to_vec();
        let n = tokens.len();
        let token_types = token_types_of(md, n)?;
        let scores = if md.get("tokenizer.ggml.scores").is_some() {
            md.get_f32_array("tokenizer.ggml.scores")?.to_vec()
        } else {
            vec![0.0; n]
        };
        // llama.cpp's defaults for SentencePiece vocabularies, where the file names none.
        let special = |key: &str, default: u32| -> Result<Option<u32>> {
            Ok(optional_u32(md, key)?.or(((default as usize) < n).then_some(default)))
        };
        Self::from_spm_vocab(SpmVocab {
            tokens,
            scores,
            token_types,
            bos_id: special("tokenizer.ggml.bos_token_id", 1)?,
            eos_id: special("tokenizer.ggml.eos_token_id", 2)?,
            unk_id: special("tokenizer.ggml.unknown_token_id", 0)?,
            add_bos: optional_bool(md, "tokenizer.ggml.add_bos_token", true)?,
            add_eos: optional_bool(md, "tokenizer.ggml.add_eos_token", false)?,
            add_space_prefix: optional_bool(md, "tokenizer.ggml.add_space_prefix", true)?,
        })
    }

    /// A SentencePiece-style tokenizer from its parts. Fails if the vocabulary is empty, larger
    /// than `u32` ids allow, if `scores` or `token_types` differ in length from `tokens`, if a
    /// byte token's text is not `<0xNN>`, or if a special id is out of range. A vocabulary may
    /// lack some byte tokens; a character that needs one then encodes as the unknown token, or
    /// is a [`TokenizerError::UnencodableByte`] where there is none.
    pub fn from_spm_vocab(vocab: SpmVocab) -> Result<Self> {
        let SpmVocab {
            tokens,
            scores,
            token_types,
            bos_id,
            eos_id,
            unk_id,
            add_bos,
            add_eos,
            add_space_prefix,
        } = vocab;
        let token_ids = index_tokens(&tokens, &token_types)?;
        if scores.len() != tokens.len() {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} tokens but {} scores",
                tokens.len(),
                scores.len()
            )));
        }
        let n = tokens.len();
        check_special_id(bos_id, "BOS", n)?;
        check_special_id(eos_id, "EOS", n)?;
        check_special_id(unk_id, "unknown", n)?;
        let model = spm::SpmModel::new(&tokens, &token_types, &scores, unk_id, add_space_prefix)?;
        let pieces = tokens
            .iter()
            .zip(&token_types)
            .map(|(t, ty)| match ty {
                TokenType::Normal => t
                    .replace(spm::SPACE_MARK, " ")
                    .into_bytes()
                    .into_boxed_slice(),
                // `SpmModel::new` has checked the form of every byte token.
                TokenType::Byte => spm::parse_byte_token(t)
                    .map(|b| Box::from([b]))
                    .unwrap_or_default(),
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown => {
                    t.as_bytes().into()
                }
                TokenType::Unused => Box::default(),
            })
            .collect();
        let verbatim = verbatim_tokens(&tokens, &token_types, &token_ids);
        Ok(Self {
            tokens,
            token_types,
            token_ids,
            pieces,
            verbatim,
            algorithm: Algorithm::Spm(Box::new(model)),
            bos_id,
            eos_id,
            add_bos,
            add_eos,
        })
    }

    /// A byte-level BPE tokenizer from its parts. Fails if the vocabulary is empty, larger than
    /// `u32` ids allow, or if a merge rule is malformed or names tokens not in the vocabulary.
    /// A vocabulary may lack the symbols of some bytes (SmolLM2 has none for most ASCII control
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
        let token_ids = index_tokens(&tokens, &token_types)?;

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
        check_special_id(bos_id, "BOS", n)?;
        check_special_id(eos_id, "EOS", n)?;

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

        let verbatim = verbatim_tokens(&tokens, &token_types, &token_ids);
        Ok(Self {
            tokens,
            token_types,
            token_ids,
            pieces,
            verbatim,
            algorithm: Algorithm::Bpe {
                pre_tokenizer,
                bpe: Box::new(hf),
                missing_bytes: Box::new(missing_bytes),
            },
            bos_id,
            eos_id,
            add_bos,
            add_eos,
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

    /// Pre-tokenization and BPE, or SentencePiece-style merging, of text that holds no
    /// verbatim token and so starts the text or follows a verbatim token (`offset`: where it
    /// starts in the caller's text, for errors).
    fn encode_plain(&self, text: &str, offset: usize, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let (bpe, missing_bytes) = match &self.algorithm {
            Algorithm::Bpe {
                bpe, missing_bytes, ..
            } => (bpe, missing_bytes),
            Algorithm::Spm(model) => {
                return model.encode(text, model.add_space_prefix, offset, ids);
            }
        };
        if let Some(i) = text.bytes().position(|b| missing_bytes[usize::from(b)]) {
            return Err(TokenizerError::UnencodableByte {
                byte: text.as_bytes()[i],
                offset: offset + i,
            });
        }
        let enc = bpe
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Bpe(e.to_string()))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// The text of `ids`. With `skip_special`, control (and unknown-type) tokens are left out.
    /// Bytes that do not form valid UTF-8 become U+FFFD.
    ///
    /// For a SentencePiece-style vocabulary with `add_space_prefix`, the leading space of the
    /// first token that gives any bytes is dropped (the one encoding put there).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut out = Vec::new();
        let mut strip = self.strips_leading_space();
        for &id in ids {
            let mut piece = self.decode_piece(id, skip_special)?;
            if strip && !piece.is_empty() {
                strip = false;
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            out.extend_from_slice(piece);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Whether decoding drops the leading space that a SentencePiece space prefix introduced.
    fn strips_leading_space(&self) -> bool {
        matches!(&self.algorithm, Algorithm::Spm(m) if m.add_space_prefix)
    }

    /// The bytes that token `id` decodes to (possibly part of a UTF-8 character, possibly
    /// empty), with no leading space dropped. With `skip_special`, a control or unknown-type
    /// token gives no bytes.
    pub fn decode_piece(&self, id: u32, skip_special: bool) -> Result<&[u8]> {
        let ty = self.token_type(id)?;
        if skip_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
            return Ok(&[]);
        }
        Ok(&self.pieces[id as usize])
    }

    /// An incremental decoder over this tokenizer for a whole text, as [`Tokenizer::decode`]
    /// decodes it (so a SentencePiece space prefix is dropped); see [`DecodeStream`].
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special,
            pending: Vec::new(),
            strip_space: self.strips_leading_space(),
        }
    }

    /// An incremental decoder for tokens that continue an earlier text (such as tokens
    /// generated after a prompt): no leading space is ever dropped, so a SentencePiece token
    /// `▁Paris` comes out as `" Paris"`. For a BPE vocabulary this is [`Tokenizer::decode_stream`].
    pub fn decode_stream_continuing(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            strip_space: false,
            ..self.decode_stream(skip_special)
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

    /// The pre-tokenizer in use; `None` for a SentencePiece-style vocabulary, which has none.
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        match &self.algorithm {
            Algorithm::Bpe { pre_tokenizer, .. } => Some(*pre_tokenizer),
            Algorithm::Spm(_) => None,
        }
    }

    /// Whether the vocabulary is SentencePiece-style (`tokenizer.ggml.model == "llama"`) rather
    /// than byte-level BPE.
    pub fn is_sentencepiece(&self) -> bool {
        matches!(self.algorithm, Algorithm::Spm(_))
    }

    /// The id of the token whose vocabulary string is `token` (in the byte-level alphabet for
    /// normal BPE tokens, e.g. `"ĠHello"`, with `▁` for a space for SentencePiece ones, e.g.
    /// `"▁Hello"`; verbatim for special ones, e.g. `"<|im_end|>"`).
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
/// [`Tokenizer::decode`] of the same ids (for a stream from [`Tokenizer::decode_stream`]).
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
    /// Whether the leading space of the first non-empty piece is still to be dropped.
    strip_space: bool,
}

impl DecodeStream<'_> {
    /// Adds token `id` and returns the text it completes (often the token's own text, empty
    /// while a multi-byte character is still incomplete). An out-of-range id is an error and
    /// leaves the stream as it was.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let mut piece = self.tokenizer.decode_piece(id, self.skip_special)?;
        if self.strip_space && !piece.is_empty() {
            self.strip_space = false;
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
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
