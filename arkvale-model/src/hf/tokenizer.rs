//! `tokenizer.json` + `tokenizer_config.json` of a Hugging Face model directory.
//!
//! [`crate::tokenizer::Tokenizer`] is built from a GGUF vocabulary and keeps its own token
//! tables, so it cannot hold a ready-made `tokenizers::Tokenizer`; [`HfTokenizer`] is the
//! `tokenizer.json` counterpart with the same method names and meanings (the vocabulary,
//! normalizer, pre-tokenizer, post-processor and decoder all come from the file).

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer as TkTokenizer;

use super::weights::read_text;
use super::{HfError, Result};

/// The tokenizer of a Hugging Face model directory.
#[derive(Clone)]
pub struct HfTokenizer {
    /// As loaded: added special tokens written in the text are matched.
    tok: TkTokenizer,
    /// The same with special-token matching off (`parse_special = false`).
    plain: TkTokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// A special token of `tokenizer_config.json`: a string or `{"content": "..."}`.
fn token_string(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` (`bos_token`,
    /// `eos_token`, `add_bos_token`, `add_eos_token`, `chat_template`). `fallback_bos` /
    /// `fallback_eos` (e.g. `config.json`'s `bos_token_id` / `eos_token_id`) are used when the
    /// tokenizer config names no such token.
    pub fn from_dir(
        dir: &Path,
        fallback_bos: Option<u32>,
        fallback_eos: Option<u32>,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(HfError::Tokenizer(format!("missing {}", path.display())));
        }
        let tok = TkTokenizer::from_file(&path)
            .map_err(|e| HfError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.is_file() {
            serde_json::from_str(&read_text(&cfg_path)?).map_err(|e| {
                HfError::Tokenizer(format!("{}: invalid JSON: {e}", cfg_path.display()))
            })?
        } else {
            Value::Null
        };
        let lookup = |key: &str| -> Result<Option<u32>> {
            match token_string(cfg.get(key)) {
                None => Ok(None),
                Some(s) => tok.token_to_id(s).map(Some).ok_or_else(|| {
                    HfError::Tokenizer(format!(
                        "{}: {key} {s:?} is not in the vocabulary of {}",
                        cfg_path.display(),
                        path.display()
                    ))
                }),
            }
        };
        let bos_id = lookup("bos_token")?.or(fallback_bos);
        let eos_id = lookup("eos_token")?.or(fallback_eos);
        let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default", else the first.
            Some(Value::Array(list)) => {
                fn named(o: &Value) -> Option<(&str, &str)> {
                    Some((o.get("name")?.as_str()?, o.get("template")?.as_str()?))
                }
                let all: Vec<_> = list.iter().filter_map(named).collect();
                all.iter()
                    .find(|(n, _)| *n == "default")
                    .or(all.first())
                    .map(|(_, t)| t.to_string())
            }
            _ => None,
        };
        let mut plain = tok.clone();
        plain.set_encode_special_tokens(true);
        Ok(HfTokenizer {
            tok,
            plain,
            bos_id,
            eos_id,
            add_bos: flag("add_bos_token"),
            add_eos: flag("add_eos_token"),
            chat_template,
        })
    }

    /// Token ids of `text`. With `add_special`, the file's post-processor adds its special
    /// tokens (BOS for Llama files). With `parse_special`, special tokens written in the text
    /// (e.g. `<|im_start|>`) become their ids; without it they are encoded as plain text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let tok = if parse_special {
            &self.tok
        } else {
            &self.plain
        };
        tok.encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| HfError::Tokenizer(format!("encode: {e}")))
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.tok
            .decode(ids, skip_special)
            .map_err(|e| HfError::Tokenizer(format!("decode: {e}")))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= n) {
            Some(id) => Err(HfError::Tokenizer(format!(
                "token id {id} is out of range (vocabulary size {n})"
            ))),
            None => Ok(()),
        }
    }

    /// An incremental decoder over this tokenizer; see [`HfDecodeStream`].
    pub fn decode_stream(&self, skip_special: bool) -> HfDecodeStream<'_> {
        HfDecodeStream {
            tok: self,
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }

    /// The beginning-of-sequence token id, if the files name one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token id, if the files name one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// `add_bos_token` of `tokenizer_config.json` (false when absent). Informational: what
    /// `encode(.., add_special = true, ..)` adds is decided by `tokenizer.json`'s
    /// post-processor.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// `add_eos_token` of `tokenizer_config.json` (false when absent); see
    /// [`HfTokenizer::add_bos`].
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The number of tokens, added tokens included (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// The id of the token whose vocabulary string is `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    /// The vocabulary string of token `id`.
    pub fn id_to_token(&self, id: u32) -> Result<String> {
        self.tok.id_to_token(id).ok_or_else(|| {
            HfError::Tokenizer(format!(
                "token id {id} is out of range (vocabulary size {})",
                self.vocab_size()
            ))
        })
    }

    /// Whether `id` is an added special token (e.g. `<|im_end|>`); false for other ids.
    pub fn is_control(&self, id: u32) -> bool {
        self.tok
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// The `chat_template` of `tokenizer_config.json` (Jinja source, not rendered here).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &TkTokenizer {
        &self.tok
    }
}

/// Decodes tokens one at a time for streaming output: each [`HfDecodeStream::push`] returns
/// the text completed so far, holding back an unfinished UTF-8 character.
#[derive(Debug)]
pub struct HfDecodeStream<'a> {
    tok: &'a HfTokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl HfDecodeStream<'_> {
    /// Adds token `id` and returns the text it completes (empty while a character is
    /// incomplete). An out-of-range id is an error and leaves the stream as it was.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tok.check_ids(&[id])?;
        tokenizers::step_decode_stream(
            &self.tok.tok,
            vec![id],
            self.skip_special,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map(Option::unwrap_or_default)
        .map_err(|e| HfError::Tokenizer(format!("decode: {e}")))
    }

    /// Ends the stream: the text still held back (an unfinished character, as U+FFFD).
    pub fn finish(self) -> String {
        let full = self
            .tok
            .tok
            .decode(&self.ids, self.skip_special)
            .unwrap_or_default();
        full.get(self.prefix.len()..)
            .unwrap_or_default()
            .to_string()
    }

    /// Whether text of an unfinished character is held back.
    pub fn has_pending(&self) -> bool {
        self.tok
            .tok
            .decode(&self.ids, self.skip_special)
            .is_ok_and(|s| s.len() > self.prefix.len())
    }
}
