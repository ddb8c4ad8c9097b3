//! `arkvale serve`: an OpenAI-compatible HTTP server over the continuous-batching engine
//! (`arkvale_model::engine`).
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with `"stream":
//! true` as server-sent events ending in `data: [DONE]`, and `stream_options.include_usage`
//! adding a last chunk with empty `choices` and the `usage`), `GET /v1/models`, `GET
//! /health`, `GET /metrics` (Prometheus text). `n` choices are `n` requests to the engine
//! (seeds `seed`, `seed + 1`, ...), decoded together. A request's `model` must be one of the
//! served names ([`args::ServeArgs::served_model_name`]) or absent. Every error is a JSON body
//! `{"error": {"message", "type", "code"}}`: 400 for malformed JSON, wrong types or a prompt
//! over the limit, 404 (`model_not_found`) for a model not served, 413 for an over-large
//! body, 429 when the queue is full, 504 on timeout, 500 if generation fails.
//! A client that disconnects mid-stream cancels its request (the engine frees the
//! sequence at its next step). SIGINT/SIGTERM stop accepting connections; requests in
//! flight finish first.

pub mod api;
pub mod args;
mod metrics;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arkvale_model::engine::{Engine, EngineConfig, EngineHandle, Event, Request, SubmitError};
use arkvale_model::loaded::LoadedModel;
use arkvale_model::sampling::SamplingParams;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll, select_all};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::backend::open_device;
use crate::model_path::resolve_model;
use crate::setup::clock_seed;
use api::{ApiError, Prompt, parse_request};
use args::ServeArgs;

/// What every handler shares.
struct AppState {
    engine: EngineHandle,
    /// The names a request's `model` may use; the first is the one `/v1/models` lists first.
    model_names: Vec<String>,
    /// Most choices (`n`) per request: `--max-batch` (all decoded together), and no more
    /// than `--max-queue` (so they can always be queued).
    max_n: usize,
    max_body: usize,
    max_prompt: usize,
    default_max_tokens: usize,
    timeout: Duration,
    eos: Option<u32>,
    next_id: AtomicU64,
}

/// Runs `arkvale serve` until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 || args.max_body_bytes == 0 {
        anyhow::bail!("--max-batch, --max-queue and --max-body-bytes must be at least 1");
    }
    let path = resolve_model(args.model.as_deref())?;
    let dev = open_device(args.backend, args.threads)?;
    let loaded = Arc::new(LoadedModel::open(&path, dev, args.weights.storage())?);
    let ctx = loaded.model.config().context_length;
    let max_prompt = args.max_prompt_tokens.unwrap_or(ctx - 1).min(ctx - 1);
    let eos = if args.ignore_eos {
        None
    } else {
        loaded.tokenizer.eos_id()
    };
    let engine = Engine::spawn(
        loaded.clone(),
        EngineConfig {
            cache: args.cache.config(loaded.model.shape().kv_heads)?,
            policy: args.cache.policy.clone(),
            kv_bytes: args.kv_memory_mib << 20,
            host_bytes: args.host_memory_mib << 20,
            max_batch: args.max_batch,
            max_queue: args.max_queue,
        },
    )
    .context("cannot start the engine (check --kv-memory-mib against --budget)")?;
    let model_names = args::served_names(&path, path.is_dir(), &args.served_model_name);
    let state = Arc::new(AppState {
        engine,
        model_names,
        max_n: args.max_batch.min(args.max_queue),
        max_body: args.max_body_bytes,
        max_prompt,
        default_max_tokens: args.max_tokens,
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        eos,
        next_id: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Installed before the address is printed: from then on SIGINT/SIGTERM shut down
        // gracefully, never by the default action.
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "[arkvale] serving {} as {} ({} policy) on http://{addr}",
            path.display(),
            state.model_names.join(", "),
            args.cache.policy
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the server failed")
    })?;
    eprintln!("[arkvale] shutting down: waiting for the engine");
    drop(state);
    Ok(())
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed by this
/// call, not when the future is first polled. Must run inside the runtime.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.body())).into_response()
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let body = metrics::prometheus(&st.engine.metrics(), st.engine.uptime_seconds());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = st
        .model_names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "arkvale"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    serve_request(st, body, false).await
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    serve_request(st, body, true).await
}

/// Reads, checks and submits one request (`n` engine requests), then answers it
/// (streaming or not).
async fn serve_request(st: Arc<AppState>, body: Body, chat: bool) -> Response {
    let built = match build_request(&st, body, chat).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let mut receivers = Vec::with_capacity(built.n);
    for i in 0..built.n {
        let mut request = built.request.clone();
        request.seed = request.seed.wrapping_add(i as u64);
        match st.engine.submit(request) {
            Ok(rx) => receivers.push(rx),
            Err(e) => {
                // Returning drops the receivers of the choices already queued: they are
                // cancelled.
                let status = match e {
                    SubmitError::QueueFull(_) => 429,
                    SubmitError::TooLarge { .. } | SubmitError::Invalid(_) => 400,
                    SubmitError::ShutDown => 503,
                };
                return error_response(&ApiError::new(status, e.to_string()));
            }
        }
    }
    let reply = Reply {
        id: format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            st.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: built.model,
        chat,
    };
    let deadline = Instant::now() + st.timeout;
    let n = receivers.len();
    let choices = merge_choices(receivers);
    if built.stream {
        stream_reply(reply, choices, n, built.include_usage, deadline).into_response()
    } else {
        whole_reply(reply, choices, n, deadline).await
    }
}

/// A checked request: what to submit, how many times, and how to answer.
struct BuiltRequest {
    request: Request,
    /// Choices to generate.
    n: usize,
    stream: bool,
    include_usage: bool,
    /// The model name the reply carries: the request's, else the first served name.
    model: String,
}

/// The body, parsed, tokenized and checked against the server's limits.
async fn build_request(st: &AppState, body: Body, chat: bool) -> Result<BuiltRequest, ApiError> {
    let bytes = axum::body::to_bytes(body, st.max_body).await.map_err(|_| {
        ApiError::new(
            413,
            format!(
                "the request body exceeds {} bytes (--max-body-bytes)",
                st.max_body
            ),
        )
    })?;
    let parsed = parse_request(&bytes, chat)?;
    let model_name = match parsed.model {
        Some(m) if !st.model_names.contains(&m) => {
            return Err(ApiError::model_not_found(&m, &st.model_names));
        }
        Some(m) => m,
        None => st.model_names[0].clone(),
    };
    let k = parsed.knobs;
    if k.n > st.max_n {
        return Err(ApiError::bad_request(format!(
            "\"n\" is {} but this server generates at most {} choices per request \
             (--max-batch, --max-queue)",
            k.n, st.max_n
        )));
    }
    let model = st.engine.model();
    let ids = match &parsed.prompt {
        Prompt::Chat(messages) => model.chat_tokens(messages),
        Prompt::Text(text) => model.tokenizer.encode(text, true, true).map_err(Into::into),
    }
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "the prompt is empty after tokenization",
        ));
    }
    if ids.len() > st.max_prompt {
        return Err(ApiError::bad_request(format!(
            "the prompt has {} tokens; the limit is {} (--max-prompt-tokens; the model's \
             context is {})",
            ids.len(),
            st.max_prompt,
            model.model.config().context_length
        )));
    }
    let params = SamplingParams {
        temperature: k.temperature.unwrap_or(1.0),
        top_p: k.top_p.unwrap_or(1.0),
        top_k: k.top_k.unwrap_or(0),
    };
    params.validate().map_err(ApiError::bad_request)?;
    Ok(BuiltRequest {
        request: Request {
            prompt: ids,
            max_tokens: k.max_tokens.unwrap_or(st.default_max_tokens),
            params,
            seed: k.seed.unwrap_or_else(clock_seed),
            stop: k.stop.unwrap_or_default(),
            eos: st.eos,
        },
        n: k.n,
        stream: k.stream,
        include_usage: k.include_usage,
        model: model_name,
    })
}

/// The events of all choices of one request, each with its choice's index, in arrival
/// order. It ends when every choice's channel has; dropping it cancels every choice.
type Choices = SelectAll<BoxStream<'static, (usize, Event)>>;

/// Merges the choices' event channels into one stream.
fn merge_choices(receivers: Vec<UnboundedReceiver<Event>>) -> Choices {
    select_all(receivers.into_iter().enumerate().map(|(index, rx)| {
        futures_util::stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|event| ((index, event), rx))
        })
        .boxed()
    }))
}

/// What identifies one reply.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Reply {
    /// One choice: of the whole answer (`whole`), or of a streamed chunk (`first`: the
    /// choice's first chunk, which carries the chat role).
    fn choice(
        &self,
        index: usize,
        text: &str,
        finish: Option<&str>,
        whole: bool,
        first: bool,
    ) -> Value {
        match (self.chat, whole) {
            (true, true) => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }),
            (true, false) => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": index, "delta": delta, "finish_reason": finish})
            }
            (false, _) => json!({
                "index": index,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }

    /// One JSON object of the reply (the whole answer, or a streamed chunk) holding
    /// `choices`.
    fn object(&self, choices: Vec<Value>, whole: bool) -> Value {
        let object = match (self.chat, whole) {
            (true, true) => "chat.completion",
            (true, false) => "chat.completion.chunk",
            (false, _) => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// Token counts of a request, summed over its choices (the prompt counted once, as OpenAI
/// counts it).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Usage {
    fn add(&mut self, prompt_tokens: usize, completion_tokens: usize) {
        self.prompt_tokens = prompt_tokens;
        self.completion_tokens += completion_tokens;
    }

    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

fn timeout_error() -> ApiError {
    ApiError::new(
        504,
        "the request timed out (--request-timeout); it was cancelled",
    )
}

fn engine_stopped() -> ApiError {
    ApiError::new(500, "the engine stopped before finishing")
}

/// Waits for every choice's whole answer (or the deadline, which cancels the request).
async fn whole_reply(reply: Reply, mut choices: Choices, n: usize, deadline: Instant) -> Response {
    let mut texts = vec![String::new(); n];
    let mut finishes: Vec<Option<&'static str>> = vec![None; n];
    let mut usage = Usage::default();
    let mut left = n;
    while left > 0 {
        match tokio::time::timeout_at(deadline, choices.next()).await {
            Err(_) => return error_response(&timeout_error()),
            Ok(None) => return error_response(&engine_stopped()),
            Ok(Some((i, Event::Text { text, .. }))) => texts[i].push_str(&text),
            Ok(Some((_, Event::Failed(m)))) => return error_response(&ApiError::new(500, m)),
            Ok(Some((
                i,
                Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                },
            ))) => {
                finishes[i] = Some(reason.name());
                usage.add(prompt_tokens, completion_tokens);
                left -= 1;
            }
        }
    }
    let list = (0..n)
        .map(|i| reply.choice(i, &texts[i], finishes[i], true, false))
        .collect();
    let mut obj = reply.object(list, true);
    obj["usage"] = usage.json();
    axum::Json(obj).into_response()
}

/// Where a streamed reply is.
struct StreamState {
    reply: Reply,
    choices: Choices,
    deadline: Instant,
    /// Per choice: nothing sent for it yet.
    first: Vec<bool>,
    /// Choices not done yet.
    left: usize,
    include_usage: bool,
    usage: Usage,
    /// Events to send before reading more (the end of the stream, once known).
    pending: VecDeque<String>,
    /// Nothing is read after `pending`.
    ending: bool,
}

impl StreamState {
    /// A chunk with one choice (and `"usage": null`, as OpenAI sends it, when the usage
    /// chunk is coming).
    fn chunk(&mut self, index: usize, text: &str, finish: Option<&str>) -> String {
        let first = std::mem::replace(&mut self.first[index], false);
        let choice = self.reply.choice(index, text, finish, false, first);
        let mut obj = self.reply.object(vec![choice], false);
        if self.include_usage {
            obj["usage"] = Value::Null;
        }
        obj.to_string()
    }

    /// Queues `last` (if any), the usage chunk when asked for, and `[DONE]`.
    fn end(&mut self, last: Option<String>, with_usage: bool) {
        self.pending.extend(last);
        if with_usage && self.include_usage {
            let mut obj = self.reply.object(Vec::new(), false);
            obj["usage"] = self.usage.json();
            self.pending.push_back(obj.to_string());
        }
        self.pending.push_back("[DONE]".into());
        self.ending = true;
    }

    /// The next event's data, `None` at the end.
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                return Some(data);
            }
            if self.ending {
                return None;
            }
            match tokio::time::timeout_at(self.deadline, self.choices.next()).await {
                Ok(Some((i, Event::Text { text, .. }))) => return Some(self.chunk(i, &text, None)),
                Ok(Some((
                    i,
                    Event::Done {
                        reason,
                        prompt_tokens,
                        completion_tokens,
                    },
                ))) => {
                    self.usage.add(prompt_tokens, completion_tokens);
                    self.left -= 1;
                    let data = self.chunk(i, "", Some(reason.name()));
                    if self.left > 0 {
                        return Some(data);
                    }
                    self.end(Some(data), true);
                }
                Ok(Some((_, Event::Failed(message)))) => {
                    self.end(Some(ApiError::new(500, message).body().to_string()), false);
                }
                Ok(None) => self.end(Some(engine_stopped().body().to_string()), false),
                Err(_) => self.end(Some(timeout_error().body().to_string()), false),
            }
        }
    }
}

/// Streams the answer as server-sent events: one chunk per piece of text of a choice, one
/// with each choice's `finish_reason`, the usage chunk when `include_usage`, `data: [DONE]`
/// last. Dropping the stream (the client left) drops the choices' receivers, which cancels
/// them.
fn stream_reply(
    reply: Reply,
    choices: Choices,
    n: usize,
    include_usage: bool,
    deadline: Instant,
) -> impl IntoResponse {
    let state = StreamState {
        reply,
        choices,
        deadline,
        first: vec![true; n],
        left: n,
        include_usage,
        usage: Usage::default(),
        pending: VecDeque::new(),
        ending: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        let data = s.next_data().await?;
        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
