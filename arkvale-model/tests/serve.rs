//! `arkvale serve` over real HTTP on a loopback port (reqwest): completions equal `arkvale
//! generate` for the same seed, streaming equals non-streaming, 16 concurrent requests
//! complete, bad requests get the right 4xx with a JSON error body while the server keeps
//! serving, a client that leaves mid-stream frees its sequence, and SIGTERM lets a request in
//! flight finish before the server exits. Needs the SmolLM2 model
//! (skipped without it).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::model_path;
use serde_json::{Value, json};

/// A running `arkvale serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    Server { child, base }
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
async fn sixteen_concurrent_requests_complete_and_leaving_frees_the_sequence() {
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
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("arkvale_requests_finished_total 16"),
        "{metrics}"
    );
    let batched: f64 = metric(&metrics, "arkvale_decode_steps_total");
    assert!(batched > 0.0);

    // A client that leaves mid-stream: its sequence is freed.
    let mut res = http
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": PROMPT, "max_tokens": 2000, "stream": true, "temperature": 0}))
        .send()
        .await
        .unwrap();
    let first = res.chunk().await.unwrap();
    assert!(first.is_some());
    drop(res);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "arkvale_running_sequences") == 0.0
            && metric(&text, "arkvale_requests_finished_total") == 17.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sequence was not freed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let url = format!("{}/v1/completions", server.base);
    let request = tokio::spawn(async move {
        let body = json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0});
        let res = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 24, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
