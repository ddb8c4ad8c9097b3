//! The OpenAI-style request bodies `arkvale serve` accepts and the JSON it answers with.

use serde_json::{Value, json};

use arkvale_model::chat::Message;

/// A request error: HTTP status and message (sent as `{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong, for the client.
    pub message: String,
    /// OpenAI's machine-readable `code` (e.g. `model_not_found`); `None` sends the status.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `message` (its `code` is the status).
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: None,
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, message)
    }

    /// The 404 OpenAI answers for a model it does not serve: code `model_not_found`, and
    /// the names that are served.
    pub fn model_not_found(asked: &str, served: &[String]) -> Self {
        ApiError {
            status: 404,
            message: format!(
                "The model `{asked}` does not exist. This server serves: {} (see GET \
                 /v1/models; more names with `arkvale serve --served-model-name`)",
                served
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            code: Some("model_not_found"),
        }
    }

    /// The JSON body: `{"error": {"message", "type", "code"}}` as OpenAI's API sends it.
    pub fn body(&self) -> Value {
        let kind = match self.status {
            400 | 404 | 413 => "invalid_request_error",
            429 => "rate_limit_error",
            504 => "timeout_error",
            _ => "server_error",
        };
        let code = self.code.map_or_else(|| json!(self.status), |c| json!(c));
        json!({"error": {"message": self.message, "type": kind, "code": code}})
    }
}

/// The sampling and stopping options shared by both endpoints; `None` means the server's
/// default (its command-line options).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// `max_tokens`.
    pub max_tokens: Option<usize>,
    /// `temperature`.
    pub temperature: Option<f32>,
    /// `top_p`.
    pub top_p: Option<f32>,
    /// `top_k` (an extension).
    pub top_k: Option<usize>,
    /// `seed`.
    pub seed: Option<u64>,
    /// `stop`: a string or a list of up to 4 strings.
    pub stop: Option<Vec<String>>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`: end the stream with a chunk holding the usage (and
    /// `"usage": null` in every other chunk).
    pub include_usage: bool,
    /// `n`: how many choices to generate (at least 1).
    pub n: usize,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `/v1/completions`: raw text.
    Text(String),
    /// `/v1/chat/completions`: messages, rendered with the chat template.
    Chat(Vec<Message>),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// The options.
    pub knobs: Knobs,
    /// `model`, when given (checked against the served names by the server).
    pub model: Option<String>,
}

/// Parses the body of `/v1/completions` (`chat == false`) or `/v1/chat/completions`.
pub fn parse_request(body: &[u8], chat: bool) -> Result<ParsedRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let prompt = if chat {
        let list = obj
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad_request("\"messages\" must be an array"))?;
        if list.is_empty() {
            return Err(ApiError::bad_request("\"messages\" must not be empty"));
        }
        let mut messages = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let field = |k: &str| {
                m.get(k).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(format!("messages[{i}].{k} must be a string"))
                })
            };
            messages.push(Message::new(field("role")?, field("content")?));
        }
        Prompt::Chat(messages)
    } else {
        match obj.get("prompt") {
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request(
                    "\"prompt\" as a list must hold exactly one string (batches are not \
                     supported; send one request per prompt)",
                ));
            }
            _ => return Err(ApiError::bad_request("\"prompt\" must be a string")),
        }
    };
    if let Prompt::Text(t) = &prompt
        && t.is_empty()
    {
        return Err(ApiError::bad_request("\"prompt\" must not be empty"));
    }
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(ApiError::bad_request("\"model\" must be a string")),
    };
    Ok(ParsedRequest {
        prompt,
        knobs: parse_knobs(obj)?,
        model,
    })
}

fn parse_knobs(obj: &serde_json::Map<String, Value>) -> Result<Knobs, ApiError> {
    let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let uint = |k: &str| -> Result<Option<u64>, ApiError> {
        present(k)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    ApiError::bad_request(format!("\"{k}\" must be a non-negative integer"))
                })
            })
            .transpose()
    };
    let float = |k: &str| -> Result<Option<f32>, ApiError> {
        present(k)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| ApiError::bad_request(format!("\"{k}\" must be a number")))
            })
            .transpose()
    };
    let stop = match present("stop") {
        None => None,
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(a)) => {
            let list: Option<Vec<String>> =
                a.iter().map(|x| x.as_str().map(str::to_string)).collect();
            let list = list.ok_or_else(|| {
                ApiError::bad_request("\"stop\" must be a string or a list of strings")
            })?;
            if list.len() > 4 {
                return Err(ApiError::bad_request("\"stop\" takes at most 4 strings"));
            }
            Some(list)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "\"stop\" must be a string or a list of strings",
            ));
        }
    };
    let stream = match present("stream") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| ApiError::bad_request("\"stream\" must be a boolean"))?,
    };
    let include_usage = match present("stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::bad_request(
                "\"stream_options\" is only allowed when \"stream\" is true",
            ));
        }
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "\"stream_options.include_usage\" must be a boolean",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "\"stream_options\" must be an object",
            ));
        }
    };
    // `max_completion_tokens` is the newer name OpenAI's chat API and SDKs use.
    let max_tokens = match (uint("max_tokens")?, uint("max_completion_tokens")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "\"max_tokens\" and \"max_completion_tokens\" disagree; give one",
            ));
        }
        (a, b) => a.or(b).map(|n| n as usize),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::bad_request("\"max_tokens\" must be at least 1"));
    }
    let n = uint("n")?.unwrap_or(1) as usize;
    if n == 0 {
        return Err(ApiError::bad_request("\"n\" must be at least 1"));
    }
    Ok(Knobs {
        max_tokens,
        temperature: float("temperature")?,
        top_p: float("top_p")?,
        top_k: uint("top_k")?.map(|n| n as usize),
        seed: uint("seed")?,
        stop,
        stream,
        include_usage,
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_body() {
        let r = parse_request(
            br#"{"prompt": "hi", "max_tokens": 5, "temperature": 0.5, "seed": 7,
                "stop": ["\n"], "stream": true, "model": "x"}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.knobs.max_tokens, Some(5));
        assert_eq!(r.knobs.temperature, Some(0.5));
        assert_eq!(r.knobs.seed, Some(7));
        assert_eq!(r.knobs.stop, Some(vec!["\n".to_string()]));
        assert!(r.knobs.stream);
        assert!(!r.knobs.include_usage);
        assert_eq!(r.knobs.n, 1);
        assert_eq!(r.model.as_deref(), Some("x"));
    }

    #[test]
    fn n_include_usage_and_max_completion_tokens() {
        let r = parse_request(
            br#"{"messages": [{"role": "user", "content": "hi"}], "n": 3, "stream": true,
                "stream_options": {"include_usage": true}, "max_completion_tokens": 9}"#,
            true,
        )
        .unwrap();
        assert_eq!(r.knobs.n, 3);
        assert!(r.knobs.include_usage);
        assert_eq!(r.knobs.max_tokens, Some(9));
        assert_eq!(r.model, None);
    }

    #[test]
    fn model_not_found_is_openais_404() {
        let e = ApiError::model_not_found("gpt-4o", &["smol".into(), "alias".into()]);
        assert_eq!(e.status, 404);
        let body = e.body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("`gpt-4o`") && msg.contains("`smol`, `alias`"),
            "{msg}"
        );
        assert_eq!(ApiError::bad_request("x").body()["error"]["code"], 400);
    }

    #[test]
    fn chat_body() {
        let r = parse_request(
            br#"{"messages": [{"role": "user", "content": "hello"}], "stop": "END"}"#,
            true,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Chat(vec![Message::user("hello")]));
        assert_eq!(r.knobs.stop, Some(vec!["END".to_string()]));
        assert!(!r.knobs.stream);
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (body, chat, want) in [
            (&b"{"[..], false, "invalid JSON"),
            (b"[1]", false, "JSON object"),
            (br#"{"prompt": 3}"#, false, "\"prompt\""),
            (br#"{"prompt": ""}"#, false, "empty"),
            (
                br#"{"prompt": "a", "max_tokens": "many"}"#,
                false,
                "max_tokens",
            ),
            (br#"{"prompt": "a", "max_tokens": 0}"#, false, "max_tokens"),
            (
                br#"{"prompt": "a", "temperature": "hot"}"#,
                false,
                "temperature",
            ),
            (br#"{"prompt": "a", "stop": [1]}"#, false, "stop"),
            (br#"{"prompt": "a", "stream": "yes"}"#, false, "stream"),
            (br#"{"prompt": "a", "n": 0}"#, false, "\"n\""),
            (br#"{"prompt": "a", "n": -2}"#, false, "\"n\""),
            (br#"{"prompt": "a", "model": 5}"#, false, "model"),
            (
                br#"{"prompt": "a", "stream_options": {"include_usage": true}}"#,
                false,
                "only allowed when",
            ),
            (
                br#"{"prompt": "a", "stream": true, "stream_options": {"include_usage": 1}}"#,
                false,
                "include_usage",
            ),
            (
                br#"{"prompt": "a", "max_tokens": 3, "max_completion_tokens": 4}"#,
                false,
                "disagree",
            ),
            (br#"{"messages": []}"#, true, "messages"),
            (br#"{"messages": [{"role": "user"}]}"#, true, "content"),
        ] {
            let e = parse_request(body, chat).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(want), "{}: {}", want, e.message);
        }
    }
}
