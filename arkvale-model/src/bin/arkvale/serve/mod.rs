//! `arkvale serve`: an OpenAI-compatible HTTP server over the continuous-batching engine
//! (`arkvale_model::engine`).
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with `"stream":
//! true` as server-sent events ending in `data: [DONE]`), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text). Every error is a JSON body `{"error": {"message",
//! "type", "code"}}`: 400 for malformed JSON, wrong types or a prompt over the limit, 413 for
//! an over-large body, 429 when the queue is full, 504 on timeout, 500 if generation fails.
//! A client that disconnects mid-stream cancels its request (the engine frees the
//! sequence at its next step). SIGINT/SIGTERM stop accepting connections; requests in
//! flight finish first.

pub mod api;
pub mod args;
mod metrics;

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
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::backend::open_device;
use crate::generate::{cache_config, clock_seed};
use crate::model_path::resolve_model;
use api::{ApiError, Prompt, parse_request};
use args::ServeArgs;

/// What every handler shares.
struct AppState {
    engine: EngineHandle,
    model_name: String,
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
            cache: cache_config(&args.cache)?,
            policy: args.cache.policy.clone(),
            kv_bytes: args.kv_memory_mib << 20,
            host_bytes: args.host_memory_mib << 20,
            max_batch: args.max_batch,
            max_queue: args.max_queue,
        },
    )
    .context("cannot start the engine (check --kv-memory-mib against --budget)")?;
    let model_name = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let state = Arc::new(AppState {
        engine,
        model_name,
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
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "[arkvale] serving {} ({} policy) on http://{addr}",
            path.display(),
            args.cache.policy
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")
    })?;
    eprintln!("[arkvale] shutting down: waiting for the engine");
    drop(state);
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
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
    axum::Json(json!({
        "object": "list",
        "data": [{"id": st.model_name, "object": "model", "owned_by": "arkvale"}],
    }))
    .into_response()
}

async fn completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    serve_request(st, body, false).await
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    serve_request(st, body, true).await
}

/// Reads, checks and submits one request, then answers it (streaming or not).
async fn serve_request(st: Arc<AppState>, body: Body, chat: bool) -> Response {
    let (request, stream) = match build_request(&st, body, chat).await {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let rx = match st.engine.submit(request) {
        Ok(rx) => rx,
        Err(e) => {
            let status = match e {
                SubmitError::QueueFull(_) => 429,
                SubmitError::TooLarge { .. } | SubmitError::Invalid(_) => 400,
                SubmitError::ShutDown => 503,
            };
            return error_response(&ApiError {
                status,
                message: e.to_string(),
            });
        }
    };
    let reply = Reply {
        id: format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            st.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: st.model_name.clone(),
        chat,
    };
    let deadline = Instant::now() + st.timeout;
    if stream {
        stream_reply(reply, rx, deadline).into_response()
    } else {
        whole_reply(reply, rx, deadline).await
    }
}

/// The body, parsed, tokenized and checked against the server's limits.
async fn build_request(st: &AppState, body: Body, chat: bool) -> Result<(Request, bool), ApiError> {
    let bytes = axum::body::to_bytes(body, st.max_body)
        .await
        .map_err(|_| ApiError {
            status: 413,
            message: format!(
                "the request body exceeds {} bytes (--max-body-bytes)",
                st.max_body
            ),
        })?;
    let parsed = parse_request(&bytes, chat)?;
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
    let k = parsed.knobs;
    let params = SamplingParams {
        temperature: k.temperature.unwrap_or(1.0),
        top_p: k.top_p.unwrap_or(1.0),
        top_k: k.top_k.unwrap_or(0),
    };
    params.validate().map_err(ApiError::bad_request)?;
    Ok((
        Request {
            prompt: ids,
            max_tokens: k.max_tokens.unwrap_or(st.default_max_tokens),
            params,
            seed: k.seed.unwrap_or_else(clock_seed),
            stop: k.stop.unwrap_or_default(),
            eos: st.eos,
        },
        k.stream,
    ))
}

/// What identifies one reply.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Reply {
    /// One JSON object of the reply: the whole answer (`whole`), or a streamed chunk.
    fn object(&self, text: &str, finish: Option<&str>, whole: bool, first: bool) -> Value {
        let choice = match (self.chat, whole) {
            (true, true) => json!({
                "index": 0,
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
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
            (false, _) => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
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
            "choices": [choice],
        })
    }
}

/// Waits for the whole answer (or the deadline, which cancels the request).
async fn whole_reply(
    reply: Reply,
    mut rx: UnboundedReceiver<Event>,
    deadline: Instant,
) -> Response {
    let mut text = String::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                return error_response(&ApiError {
                    status: 504,
                    message: "the request timed out (--request-timeout); it was cancelled".into(),
                });
            }
            Ok(None) => {
                return error_response(&ApiError {
                    status: 500,
                    message: "the engine stopped before finishing".into(),
                });
            }
            Ok(Some(Event::Text { text: t, .. })) => text.push_str(&t),
            Ok(Some(Event::Failed(m))) => {
                return error_response(&ApiError {
                    status: 500,
                    message: m,
                });
            }
            Ok(Some(Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            })) => {
                let mut obj = reply.object(&text, Some(reason.name()), true, false);
                obj["usage"] = json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                });
                return axum::Json(obj).into_response();
            }
        }
    }
}

/// Where a streamed reply is.
struct StreamState {
    reply: Reply,
    rx: UnboundedReceiver<Event>,
    deadline: Instant,
    first: bool,
    /// The last event was sent; only `[DONE]` is left.
    ending: bool,
    finished: bool,
}

/// Streams the answer as server-sent events, `data: [DONE]` last. Dropping the stream (the
/// client left) drops `rx`, which cancels the request.
fn stream_reply(
    reply: Reply,
    rx: UnboundedReceiver<Event>,
    deadline: Instant,
) -> impl IntoResponse {
    let state = StreamState {
        reply,
        rx,
        deadline,
        first: true,
        ending: false,
        finished: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        if s.ending {
            s.finished = true;
            return Some((Ok::<_, Infallible>(SseEvent::default().data("[DONE]")), s));
        }
        let data = match tokio::time::timeout_at(s.deadline, s.rx.recv()).await {
            Ok(Some(Event::Text { text, .. })) => {
                let obj = s.reply.object(&text, None, false, s.first);
                s.first = false;
                obj
            }
            Ok(Some(Event::Done { reason, .. })) => {
                s.ending = true;
                s.reply.object("", Some(reason.name()), false, s.first)
            }
            Ok(Some(Event::Failed(message))) => {
                s.ending = true;
                ApiError {
                    status: 500,
                    message,
                }
                .body()
            }
            Ok(None) => {
                s.ending = true;
                ApiError {
                    status: 500,
                    message: "the engine stopped before finishing".into(),
                }
                .body()
            }
            Err(_) => {
                s.ending = true;
                ApiError {
                    status: 504,
                    message: "the request timed out (--request-timeout); it was cancelled".into(),
                }
                .body()
            }
        };
        Some((Ok(SseEvent::default().data(data.to_string())), s))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
