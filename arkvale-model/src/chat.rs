//! Chat templates: the Jinja source a model ships (`tokenizer.chat_template` in a GGUF file,
//! `chat_template` in `tokenizer_config.json`) rendered with `minijinja` into the prompt text
//! of a conversation.
//!
//! The environment mirrors what Hugging Face's `apply_chat_template` gives a template:
//! `messages` (a list of `{role, content}` maps), `add_generation_prompt`, `bos_token`,
//! `eos_token`, `trim_blocks` and `lstrip_blocks` on, loop controls (`break` / `continue`),
//! `raise_exception(msg)`, `strftime_now(fmt)` (UTC), and Python string methods
//! (`.strip()`, `.startswith()`, ...). Syntax errors, undefined functions and
//! `raise_exception` are [`ChatError`]s, never panics.
//!
//! ```
//! use arkvale_model::chat::{ChatTemplate, Message};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//! )?;
//! let text = t.render(&[Message::user("hi")], true, "<s>", "</s>")?;
//! assert_eq!(text, "<|user|>hi\n<|assistant|>");
//! # Ok::<(), arkvale_model::chat::ChatError>(())
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use crate::gguf::{GgufError, GgufFile, MetadataValue};

/// The GGUF metadata key holding the chat template.
pub const GGUF_CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// Errors of loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The GGUF file's template entry could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.chat_template` exists but is not a string.
    #[error("GGUF metadata {GGUF_CHAT_TEMPLATE_KEY} is a {found}, expected a string")]
    NotAString {
        /// The type found.
        found: String,
    },
    /// The template does not parse.
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    /// Rendering failed (an undefined function or filter, a type error, `raise_exception`).
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

/// Result with [`ChatError`].
pub type Result<T> = std::result::Result<T, ChatError>;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A parsed chat template, ready to render conversations.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// The template's name inside its environment (appears in error locations).
const NAME: &str = "chat_template";

/// Formats a minijinja error with its cause chain on one line.
fn describe(e: &JinjaError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

impl ChatTemplate {
    /// Parses a Jinja chat template (Hugging Face conventions; see the module docs).
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.into())
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(Self { env })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), or `None` when it has none.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<Self>> {
        match file.metadata().get(GGUF_CHAT_TEMPLATE_KEY) {
            None => Ok(None),
            Some(MetadataValue::String(s)) => Self::new(s.clone()).map(Some),
            Some(other) => Err(ChatError::NotAString {
                found: other.type_name(),
            }),
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the header of an
    /// assistant turn, ready for the model to continue. `bos_token` / `eos_token` are the
    /// token texts the template may insert.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut map = BTreeMap::new();
                map.insert("role".to_string(), Value::from(m.role.as_str()));
                map.insert("content".to_string(), Value::from(m.content.as_str()));
                Value::from(map)
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        tmpl.render(ctx)
            .map_err(|e| ChatError::Render(describe(&e)))
    }
}

/// `raise_exception(msg)`: templates call it to reject a conversation.
fn raise_exception(msg: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `strftime_now(fmt)`: the current UTC time formatted with `%Y %m %d %e %H %M %S %b %B %a %A
/// %j %y %%` (other directives are kept as written).
fn strftime_now(fmt: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs, &fmt)
}

/// The civil date (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era starting on 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `secs` (Unix time, UTC) formatted with the strftime subset of [`strftime_now`].
fn format_utc(secs: u64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let yday = days - days_from_civil_jan1(year) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 of January 1st of `year`.
fn days_from_civil_jan1(year: i64) -> i64 {
    // Inverse of `civil_from_days` for month 1, day 1 (a January date belongs to the
    // previous March-based year).
    let y = year - 1;
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * 10 + 2) / 5; // January is month 10 of the March-based year
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ChatML template written like SmolLM2's: a default system prompt when the
    /// conversation has none.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] \
        != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
        trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + \
        '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if \
        add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_default_system_prompt() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let got = t
            .render(&[Message::user("Hi there")], true, "", "")
            .unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let no_prompt = t
            .render(
                &[
                    Message::system("S"),
                    Message::user("U"),
                    Message::assistant("A"),
                ],
                false,
                "",
                "",
            )
            .unwrap();
        assert_eq!(
            no_prompt,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n\
             <|im_start|>assistant\nA<|im_end|>\n"
        );
    }

    #[test]
    fn hf_features() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'skip' %}{% continue %}\
             {% endif %}{{ m.content.strip().upper() }}|{% endfor %}{{ eos_token }}",
        )
        .unwrap();
        let msgs = [
            Message::user("  a "),
            Message::new("skip", "x"),
            Message::user("b"),
        ];
        assert_eq!(
            t.render(&msgs, false, "<s>", "</s>").unwrap(),
            "<s>A|B|</s>"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}\
             {% endif %}ok",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("x")], true, "", "").unwrap(), "ok");
        let e = t
            .render(&[Message::assistant("x")], true, "", "")
            .unwrap_err();
        assert!(matches!(e, ChatError::Render(_)));
        assert!(e.to_string().contains("first must be user"), "{e}");
    }

    #[test]
    fn bad_templates_are_errors() {
        let e = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(matches!(e, ChatError::Syntax(_)), "{e}");
        let t = ChatTemplate::new("{{ no_such_function() }}").unwrap();
        assert!(matches!(
            t.render(&[], true, "", "").unwrap_err(),
            ChatError::Render(_)
        ));
    }

    #[test]
    fn strftime_subset() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let secs = 1_709_211_909;
        assert_eq!(
            format_utc(secs, "%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %% %e %Q"),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 % 29 %Q"
        );
        assert_eq!(format_utc(0, "%d %b %Y %j"), "01 Jan 1970 001");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}").unwrap();
        assert_eq!(t.render(&[], false, "", "").unwrap().len(), 4);
    }
}
