//! SentencePiece-style tokenization (llama.cpp's "SPM", `tokenizer.ggml.model == "llama"`, as in
//! Llama 2 and Mistral).
//!
//! A stretch of text is written with every space as `▁` (U+2581), with one more `▁` in front
//! when the vocabulary asks for a space prefix. Each UTF-8 character starts as its own symbol;
//! then, over and over, the adjacent pair whose concatenation is a *normal* vocabulary token
//! with the highest score is merged (the leftmost pair on a tie), until no adjacent pair forms a
//! token. Each final symbol is its token; a symbol that is not one (always a single character,
//! since merges only make tokens) is written as its UTF-8 bytes, each the `<0xNN>` byte token
//! (byte fallback), or the unknown token where a byte token is missing.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::{Result, TokenType, TokenizerError};

/// SentencePiece's stand-in for a space, U+2581 LOWER ONE EIGHTH BLOCK.
pub(crate) const SPACE_MARK: char = '\u{2581}';

/// The merge tables of a SentencePiece-style vocabulary.
pub(crate) struct SpmModel {
    /// Normal tokens by text: (id, score). A later duplicate wins, as in the id map.
    pieces: HashMap<String, (u32, f32)>,
    /// The `<0xNN>` byte token of each byte, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    /// The unknown token, for a byte with no byte token.
    unk_id: Option<u32>,
    /// Whether a stretch of text gets a leading `▁` (and decoding drops the leading space).
    pub(crate) add_space_prefix: bool,
}

/// The byte of a byte token's text `<0xNN>` (two hex digits), if it is of that form.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// One symbol of the text being merged: a span of the escaped text, in a linked list.
#[derive(Clone, Copy)]
struct Symbol {
    /// Byte offset in the escaped text.
    start: usize,
    /// Byte length; 0 once merged into the symbol on its left.
    len: usize,
    /// Byte offset of the symbol's first character in the caller's text (for errors).
    origin: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A pair of adjacent symbols whose concatenation is a token.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    /// The pair's combined length when it was found; a mismatch later means it is stale.
    len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    /// Higher score first; on equal scores the leftmost pair (smaller symbol index) first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmModel {
    /// The model of a vocabulary (`tokens`, `token_types` and `scores` of equal length, checked
    /// by the caller). Fails on a byte token whose text is not `<0xNN>`.
    pub(crate) fn new(
        tokens: &[String],
        token_types: &[TokenType],
        scores: &[f32],
        unk_id: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self> {
        let mut pieces = HashMap::new();
        let mut byte_ids = [None; 256];
        for (i, ((text, ty), &score)) in tokens.iter().zip(token_types).zip(scores).enumerate() {
            let id = i as u32;
            match ty {
                TokenType::Normal => {
                    pieces.insert(text.clone(), (id, score));
                }
                TokenType::Byte => {
                    let b = parse_byte_token(text).ok_or_else(|| {
                        TokenizerError::InvalidVocab(format!(
                            "byte token {i} is {text:?}, not of the form <0xNN>"
                        ))
                    })?;
                    byte_ids[usize::from(b)].get_or_insert(id);
                }
                _ => {}
            }
        }
        Ok(Self {
            pieces,
            byte_ids,
            unk_id,
            add_space_prefix,
        })
    }

    /// Appends the ids of `text` (which holds no verbatim token) to `ids`; `prefix`: whether to
    /// put a `▁` in front; `offset`: where `text` starts in the caller's text, for errors.
    pub(crate) fn encode(
        &self,
        text: &str,
        prefix: bool,
        offset: usize,
        ids: &mut Vec<u32>,
    ) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut escaped = String::with_capacity(text.len() + 3);
        let mut symbols = Vec::with_capacity(text.len() + 1);
        let mut push_symbol = |escaped: &mut String, c: char, origin: usize| {
            let start = escaped.len();
            escaped.push(c);
            let k = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                origin,
                prev: k.checked_sub(1),
                next: None,
            });
            if k > 0 {
                symbols[k - 1].next = Some(k);
            }
        };
        if prefix {
            push_symbol(&mut escaped, SPACE_MARK, offset);
        }
        for (i, c) in text.char_indices() {
            let c = if c == ' ' { SPACE_MARK } else { c };
            push_symbol(&mut escaped, c, offset + i);
        }

        let mut queue = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: usize, right: usize| {
            let (l, r) = (symbols[left], symbols[right]);
            let text = &escaped[l.start..r.start + r.len];
            self.pieces.get(text).map(|&(_, score)| Candidate {
                score,
                left,
                right,
                len: l.len + r.len,
            })
        };
        for k in 1..symbols.len() {
            queue.extend(candidate(&symbols, k - 1, k));
        }
        while let Some(c) = queue.pop() {
            let (l, r) = (symbols[c.left], symbols[c.right]);
            if l.len == 0 || r.len == 0 || l.next != Some(c.right) || l.len + r.len != c.len {
                continue; // stale: one side has merged since
            }
            symbols[c.left].len = c.len;
            symbols[c.left].next = r.next;
            symbols[c.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(c.left);
                queue.extend(candidate(&symbols, c.left, n));
            }
            if let Some(p) = l.prev {
                queue.extend(candidate(&symbols, p, c.left));
            }
        }

        let mut k = Some(0);
        while let Some(i) = k {
            let s = symbols[i];
            let piece = &escaped[s.start..s.start + s.len];
            match self.pieces.get(piece) {
                Some(&(id, _)) => ids.push(id),
                None => {
                    for (j, &b) in piece.as_bytes().iter().enumerate() {
                        let id = self.byte_ids[usize::from(b)].or(self.unk_id).ok_or(
                            TokenizerError::UnencodableByte {
                                byte: b,
                                offset: s.origin + j,
                            },
                        )?;
                        ids.push(id);
                    }
                }
            }
            k = s.next;
        }
        Ok(())
    }
}
