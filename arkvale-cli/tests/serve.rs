//! `arkvale serve` over real HTTP on a loopback port (reqwest): completions equal `arkvale
//! generate` for the same seed, streaming equals non-streaming, 16 concurrent requests
//! complete and are counted in `/metrics` by the time their answers arrive, bad requests get
//! the right 4xx with a JSON error body while the server keeps serving, a client that leaves
//! mid-stream frees its sequence, and SIGTERM lets a request in flight finish before the
//! server exits. No test sleeps to wait for the server: each waits for an answer that can
//! only come after what it checks. Needs the SmolLM2 model
//! (skipped without it).

#[path = "../../arkvale-model/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::model_path;
use serde_json::{Value, json};

/// A running `arkvale serve`, killed on drop.
struct Server {
    /// `None` once [`Server::wait_exit`] has taken it.
    child: Option<Child>,
    base: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Waits for the server process to exit on its own and returns its status. The wait is
    /// event-driven (`Child::wait`); `guard` only turns a hang into a failure.
    async fn wait_exit(&mut self, guard: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let pid = child.id();
        let waiting = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(guard, waiting).await {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("the server did not exit within {guard:?}");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the server on a free port with `extra` options and waits for its address line.
fn start(model: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arkvale"))
        .args(["serve", "--model", model, "--port", "0", "--threads", "2"])
        .args(extra)
        .env_remove("ARKVALE_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("arkvale serve starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child: Some(child),
        base,
    }
}

fn generate_json(model: &str, prompt: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_arkvale"))
        .args([
            "generate",
            "--model",
            model,
            "--prompt",
            prompt,
            "--json",
            "--threads",
            "2",
        ])
        .args(extra)
        .env_remove("ARKVALE_MODEL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON chunks of an SSE body, in order, and whether `data: [DONE]` ended it.
fn sse_chunks(body: &str) -> (Vec<Value>, bool) {
    let mut chunks = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "data after [DONE]: {body}");
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    (chunks, done)
}

/// The concatenated text of choice `index` in `chunks`, and its finish reason.
fn choice_text(chunks: &[Value], chat: bool, index: u64) -> (String, Option<String>) {
    let mut text = String::new();
    let mut finish = None;
    let choices = chunks
        .iter()
        .filter_map(|v| v["choices"].as_array())
        .flatten()
        .filter(|c| c["index"] == index);
    for choice in choices {
        let piece = if chat {
            &choice["delta"]["content"]
        } else {
            &choice["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons for choice {index}");
            finish = Some(f.to_string());
        }
    }
    (text, finish)
}

/// The text of choice 0 of an SSE body, whether it ended with `[DONE]`, and the finish
/// reason.
fn sse_text(body: &str, chat: bool) -> (String, bool, Option<String>) {
    let (chunks, done) = sse_chunks(body);
    let (text, finish) = choice_text(&chunks, chat, 0);
    (text, done, finish)
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let res = http.post(url).json(body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn post_text(http: &reqwest::Client, url: &str, body: &Value) -> String {
    let res = http.post(url).json(body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

const PROMPT: &str = "The three primary colors are";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_match_generate_and_bad_requests_are_4xx() {
    let Some(model) = model_path() else { return };
    let model = model.to_str().unwrap().to_string();
    let server = start(
        &model,
        &[
            "--max-prompt-tokens",
            "200",
            "--max-body-bytes",
            "4096",
            "--served-model-name",
            "smol",
        ],
    );
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.base);

    // Sampled with a seed: the same tokens as `arkvale generate`.
    let want = generate_json(
        &model,
        PROMPT,
        &["--max-tokens", "12", "--temperature", "0.8", "--seed", "42"],
    );
    let body = json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0.8, "seed": 42});
    let got: Value = http
        .post(url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["choices"][0]["text"], want["text"], "{got}");
    assert_eq!(got["object"], "text_completion");
    assert_eq!(
        got["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        want["tokens"].as_array().unwrap().len()
    );

    // Streaming gives the same text, then [DONE].
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let res = http
        .post(url("/v1/completions"))
        .json(&stream_body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (text, done, finish) = sse_text(&res.text().await.unwrap(), false);
    assert_eq!(text, want["text"].as_str().unwrap());
    assert!(done);
    assert!(finish.is_some());

    // n = 2: two choices from seeds 42 and 43, decoded together; choice 0 is the answer
    // above, choice 1 the one request with seed 43 gets; usage sums their tokens.
    let mut two = body.clone();
    two["n"] = json!(2);
    let (status, got2) = post_json(&http, &url("/v1/completions"), &two).await;
    assert_eq!(status, 200, "{got2}");
    let choices = got2["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{got2}");
    assert_eq!(
        (&choices[0]["index"], &choices[1]["index"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(choices[0]["text"], want["text"], "{got2}");
    let mut seed43 = body.clone();
    seed43["seed"] = json!(43);
    let (_, got43) = post_json(&http, &url("/v1/completions"), &seed43).await;
    assert_eq!(choices[1]["text"], got43["choices"][0]["text"], "{got2}");
    assert!(choices.iter().all(|c| c["finish_reason"].is_string()));
    assert_eq!(
        got2["usage"]["completion_tokens"].as_u64().unwrap(),
        got["usage"]["completion_tokens"].as_u64().unwrap()
            + got43["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        got2["usage"]["prompt_tokens"],
        got["usage"]["prompt_tokens"]
    );
    // Streamed, each choice's chunks carry its index and add up to the same texts.
    two["stream"] = json!(true);
    let (chunks, done) = sse_chunks(&post_text(&http, &url("/v1/completions"), &two).await);
    assert!(done);
    for (i, choice) in choices.iter().enumerate() {
        let (text, finish) = choice_text(&chunks, false, i as u64);
        assert_eq!(text, choice["text"].as_str().unwrap(), "choice {i}");
        assert_eq!(finish.as_deref(), choice["finish_reason"].as_str());
    }
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage asked for"
    );

    // Chat, greedy: the same as `generate --chat`.
    let want = generate_json(&model, "What is 2+2?", &["--chat", "--max-tokens", "10"]);
    let chat = json!({"messages": [{"role": "user", "content": "What is 2+2?"}],
                      "max_tokens": 10, "temperature": 0});
    let got: Value = http
        .post(url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["choices"][0]["message"]["content"], want["text"],
        "{got}"
    );
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    let body = http
        .post(url("/v1/chat/completions"))
        .json(&chat_stream)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse_text(&body, true).0, want["text"].as_str().unwrap());
    // stream_options.include_usage: `"usage": null` in every chunk, then one chunk with no
    // choices and the same usage as the whole reply, then [DONE].
    chat_stream["stream_options"] = json!({"include_usage": true});
    let (chunks, done) =
        sse_chunks(&post_text(&http, &url("/v1/chat/completions"), &chat_stream).await);
    assert!(done);
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["usage"], got["usage"], "{last}");
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert_eq!(choice_text(rest, true, 0).0, want["text"].as_str().unwrap());

    // The served names: the file's stem first, then the file name and --served-model-name.
    let models: Value = http
        .get(url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let stem = std::path::Path::new(&model)
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(ids.first(), Some(&stem), "{models}");
    assert!(ids.contains(&"smol"), "{models}");
    for name in [stem, "smol"] {
        let mut named = chat.clone();
        named["model"] = json!(name);
        named["max_tokens"] = json!(2);
        let (status, v) = post_json(&http, &url("/v1/chat/completions"), &named).await;
        assert_eq!(status, 200, "{name}: {v}");
        assert_eq!(v["model"], name);
    }
    // An unknown model: OpenAI's 404 model_not_found, naming what is served.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let mut unknown = if path == "/v1/completions" {
            json!({"prompt": PROMPT, "max_tokens": 2})
        } else {
            chat.clone()
        };
        unknown["model"] = json!("gpt-4o");
        let (status, v) = post_json(&http, &url(path), &unknown).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("gpt-4o") && msg.contains("`smol`"), "{msg}");
    }

    // Bad requests: the right status and a JSON error body.
    let long_prompt = "word ".repeat(400);
    for (path, body, status, needle) in [
        (
            "/v1/completions",
            "{not json".to_string(),
            400,
            "invalid JSON",
        ),
        (
            "/v1/completions",
            r#"{"prompt": 42}"#.to_string(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": "ten"}"#.to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": "hello"}"#.to_string(),
            400,
            "messages",
        ),
        (
            "/v1/completions",
            json!({"prompt": long_prompt}).to_string(),
            400,
            "the limit is 200",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(5000)}).to_string(),
            413,
            "4096 bytes",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "n": 0}"#.to_string(),
            400,
            "\"n\" must be at least 1",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "n": 33}"#.to_string(),
            400,
            "at most 32 choices",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}],
                   "stream_options": {"include_usage": true}})
            .to_string(),
            400,
            "only allowed when",
        ),
    ] {
        let res = http
            .post(url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{needle}");
        let v: Value = res.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }

    // Still serving.
    let health: Value = http
        .get(url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: Value = http
        .get(url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["object"], "model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_complete_and_are_counted() {
    let Some(model) = model_path() else { return };
    let model = model.to_str().unwrap().to_string();
    let server = start(
        &model,
        &["--max-batch", "16", "--budget", "256", "--page-size", "16"],
    );
    let http = reqwest::Client::new();
    let base = server.base.clone();

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/v1/completions");
            tokio::spawn(async move {
                let body = json!({"prompt": format!("Count from {i}:"), "max_tokens": 6,
                                  "temperature": 0, "stream": i % 2 == 0});
                let res = http.post(url).json(&body).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.text().await.unwrap()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let body = t.await.unwrap();
        if i % 2 == 0 {
            assert!(sse_text(&body, false).1, "request {i} streamed to [DONE]");
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(v["choices"][0]["finish_reason"].is_string(), "{v}");
        }
    }
    // Every answer is in, so every request is counted: the engine updates its counters
    // before it sends a request's last event.
    let metrics = get_text(&http, &format!("{base}/metrics")).await;
    assert_eq!(
        metric(&metrics, "arkvale_requests_finished_total"),
        16.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arkvale_running_sequences"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arkvale_queued_requests"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arkvale_requests_cancelled_total"),
        0.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "arkvale_decode_steps_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_frees_its_sequence() {
    let Some(model) = model_path() else { return };
    // One sequence at a time: the next request is admitted only once the one before it has
    // left the engine, so its answer is the signal that the first one is gone.
    let server = start(model.to_str().unwrap(), &["--max-batch", "1"]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/completions", server.base);
    let max_tokens = 2000;
    let mut res = http
        .post(&url)
        .json(
            &json!({"prompt": PROMPT, "max_tokens": max_tokens, "stream": true,
                      "temperature": 0, "seed": 1}),
        )
        .send()
        .await
        .unwrap();
    let first = res.chunk().await.unwrap();
    assert!(first.is_some());
    drop(res);

    let next: Value = http
        .post(&url)
        .json(&json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["usage"]["completion_tokens"], 4, "{next}");
    let metrics = get_text(&http, &format!("{}/metrics", server.base)).await;
    assert_eq!(
        metric(&metrics, "arkvale_requests_cancelled_total"),
        1.0,
        "the first request was not cancelled: {metrics}"
    );
    assert_eq!(
        metric(&metrics, "arkvale_requests_finished_total"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arkvale_running_sequences"),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "arkvale_generated_tokens_total") < f64::from(max_tokens),
        "{metrics}"
    );
}

async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish() {
    let Some(model) = model_path() else { return };
    let mut server = start(model.to_str().unwrap(), &[]);
    let body = json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let mut res = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The first streamed bytes: the request is in the engine, generating.
    let mut received = res.chunk().await.unwrap().expect("a first chunk").to_vec();
    let killed = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while let Some(chunk) = res.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    let received = String::from_utf8(received).unwrap();
    let (chunks, done) = sse_chunks(&received);
    assert!(done, "{received}");
    let (text, finish) = choice_text(&chunks, false, 0);
    assert_eq!(finish.as_deref(), Some("length"), "{received}");
    assert!(!text.is_empty(), "{received}");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 24, "{received}");
    let exit = server.wait_exit(Duration::from_secs(60)).await;
    assert!(exit.success(), "{exit:?}");
}
