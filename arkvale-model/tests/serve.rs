//! `arkvale serve` over real HTTP on a loopback port (reqwest): completions equal `arkvale
//! generate` for the same seed, streaming equals non-streaming, 16 concurrent requests
//! complete and are counted in `/metrics` by the time their answers arrive, bad requests get
//! the right 4xx with a JSON error body while the server keeps serving, a client that leaves
//! mid-stream frees its sequence, and SIGTERM lets a request in flight finish before the
//! server exits. No test sleeps to wait for the server: each waits for an answer that can
//! only come after what it checks. Needs the SmolLM2 model
//! (skipped without it).

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

/// The concatenated text of an SSE body and whether it ended with `[DONE]`.
fn sse_text(body: &str, chat: bool) -> (String, bool, Option<String>) {
    let mut text = String::new();
    let mut done = false;
    let mut finish = None;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        let choice = &v["choices"][0];
        let piece = if chat {
            &choice["delta"]["content"]
        } else {
            &choice["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, done, finish)
}

const PROMPT: &str = "The three primary colors are";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_match_generate_and_bad_requests_are_4xx() {
    let Some(model) = model_path() else { return };
    let model = model.to_str().unwrap().to_string();
    let server = start(
        &model,
        &["--max-prompt-tokens", "200", "--max-body-bytes", "4096"],
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
    let body = json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": true});
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
    let (text, done, finish) = sse_text(&received, false);
    assert!(done, "{received}");
    assert_eq!(finish.as_deref(), Some("length"), "{received}");
    assert!(!text.is_empty(), "{received}");
    let exit = server.wait_exit(Duration::from_secs(60)).await;
    assert!(exit.success(), "{exit:?}");
}
