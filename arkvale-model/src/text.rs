//! One tokenizer type over both model sources: the GGUF file's own tokenizer
//! ([`Tokenizer`]) and a Hugging Face directory's `tokenizer.json` ([`HfTokenizer`]), so that
//! generation, chat, evaluation and serving are written once.

use crate::hf::{HfDecodeStream, HfError, HfTokenizer};
use crate::tokenizer::{DecodeStream, Tokenizer, TokenizerError};

/// A failure of either tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The GGUF tokenizer failed.
    #[error(transparent)]
    Gguf(#[from] TokenizerError),
    /// The Hugging Face tokenizer failed.
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, TextError>;

/// The tokenizer of a loaded model, whichever file it came from.
#[derive(Debug)]
// One tokenizer per loaded model: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum TextTokenizer {
    /// From GGUF metadata (byte-level BPE or SentencePiece-style).
    Gguf(Tokenizer),
    /// From a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).
    Hf(HfTokenizer),
}

impl TextTokenizer {
    /// Token ids of `text`; `add_special`: the BOS/EOS the file asks for, `parse_special`:
    /// special-token text (e.g. `<|im_start|>`) becomes its id instead of plain text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        Ok(match self {
            TextTokenizer::Gguf(t) => t.encode(text, add_special, parse_special)?,
            TextTokenizer::Hf(t) => t.encode(text, add_special, parse_special)?,
        })
    }

    /// The text of `ids` (special tokens left out with `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        Ok(match self {
            TextTokenizer::Gguf(t) => t.decode(ids, skip_special)?,
            TextTokenizer::Hf(t) => t.decode(ids, skip_special)?,
        })
    }

    /// An incremental decoder for tokens that continue a prompt (generated tokens): no
    /// leading space is dropped from the first one where the tokenizer can tell (GGUF
    /// SentencePiece vocabularies; a Hugging Face tokenizer decodes as its decoder does).
    pub fn decode_stream_continuing(&self, skip_special: bool) -> TextDecodeStream<'_> {
        match self {
            TextTokenizer::Gguf(t) => {
                TextDecodeStream::Gguf(t.decode_stream_continuing(skip_special))
            }
            TextTokenizer::Hf(t) => TextDecodeStream::Hf(t.decode_stream(skip_special)),
        }
    }

    /// The beginning-of-sequence id, if the files name one.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            TextTokenizer::Gguf(t) => t.bos_id(),
            TextTokenizer::Hf(t) => t.bos_id(),
        }
    }

    /// The end-of-sequence id, if the files name one.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            TextTokenizer::Gguf(t) => t.eos_id(),
            TextTokenizer::Hf(t) => t.eos_id(),
        }
    }

    /// Number of tokens (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Gguf(t) => t.vocab_size(),
            TextTokenizer::Hf(t) => t.vocab_size(),
        }
    }

    /// The vocabulary string of token `id` (e.g. `"<|im_end|>"`), `None` out of range.
    pub fn token_text(&self, id: u32) -> Option<String> {
        match self {
            TextTokenizer::Gguf(t) => t.id_to_token(id).ok().map(str::to_string),
            TextTokenizer::Hf(t) => t.id_to_token(id).ok(),
        }
    }

    /// A short description: the kind of tokenizer and where it came from.
    pub fn describe(&self) -> String {
        match self {
            TextTokenizer::Gguf(t) if t.is_sentencepiece() => "GGUF SentencePiece-style".into(),
            TextTokenizer::Gguf(t) => match t.pre_tokenizer() {
                Some(p) => format!("GGUF byte-level BPE (pre-tokenizer {p:?})"),
                None => "GGUF byte-level BPE".into(),
            },
            TextTokenizer::Hf(_) => "Hugging Face tokenizer.json".into(),
        }
    }
}

/// Decodes generated tokens one at a time; see [`TextTokenizer::decode_stream_continuing`].
#[derive(Debug)]
pub enum TextDecodeStream<'a> {
    /// Over a GGUF tokenizer.
    Gguf(DecodeStream<'a>),
    /// Over a Hugging Face tokenizer.
    Hf(HfDecodeStream<'a>),
}

impl TextDecodeStream<'_> {
    /// Adds token `id`; returns the text it completes (empty while a UTF-8 character is
    /// incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        Ok(match self {
            TextDecodeStream::Gguf(s) => s.push(id)?,
            TextDecodeStream::Hf(s) => s.push(id)?,
        })
    }

    /// Ends the stream, returning the text still held back.
    pub fn finish(self) -> String {
        match self {
            TextDecodeStream::Gguf(s) => s.finish(),
            TextDecodeStream::Hf(s) => s.finish(),
        }
    }
}
