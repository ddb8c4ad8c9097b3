#!/usr/bin/env python3
"""Checks a running `arkvale serve` with the official `openai` Python SDK.

Not part of CI (it needs the SDK and a running server); the reqwest tests in
arkvale-cli/tests/serve.rs cover the same ground. Usage:

    pip install openai
    arkvale serve --port 8080 &          # or: cargo run --release -p arkvale-cli -- serve --port 8080
    python3 scripts/openai_sdk_check.py [--base-url http://127.0.0.1:8080/v1] [--model NAME]

Without --model the first id of GET /v1/models is used. Checks, in order: a chat
completion; a streamed chat completion with stream_options.include_usage (text deltas, then
one chunk with empty choices and the usage); n=2 (two choices, one index each); the plain
completions endpoint; an unknown model (404 model_not_found). Prints one line per check and
exits 1 at the first failure.
"""

import argparse
import sys

try:
    import openai
except ImportError:
    sys.exit("the openai package is missing: pip install openai")


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", help="model name (default: the first of /v1/models)")
    args = parser.parse_args()

    # arkvale serve does not check keys; the SDK insists on one.
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0)
    models = [m.id for m in client.models.list()]
    check("models.list", bool(models), ", ".join(models))
    model = args.model or models[0]
    messages = [{"role": "user", "content": "What is 2+2?"}]

    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0
    )
    text = r.choices[0].message.content
    check(
        "chat",
        len(r.choices) == 1 and bool(text) and r.usage.completion_tokens > 0,
        repr(text),
    )

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )
    last = chunks[-1]
    check("stream text equals chat text", streamed == text, repr(streamed))
    check(
        "stream include_usage: last chunk has usage and no choices",
        last.choices == [] and last.usage is not None,
        str(last.usage),
    )
    check(
        "stream include_usage: same counts as the whole reply",
        last.usage.completion_tokens == r.usage.completion_tokens
        and last.usage.prompt_tokens == r.usage.prompt_tokens,
    )
    check(
        "stream include_usage: only the last chunk carries usage",
        all(c.usage is None for c in chunks[:-1]),
    )

    r2 = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0.9, seed=3, n=2
    )
    check(
        "n=2 gives two choices",
        sorted(c.index for c in r2.choices) == [0, 1],
        str([c.message.content for c in r2.choices]),
    )

    c = client.completions.create(
        model=model, prompt="The three primary colors are", max_tokens=8, temperature=0
    )
    check("completions", bool(c.choices[0].text), repr(c.choices[0].text))

    try:
        client.chat.completions.create(
            model="no-such-model", messages=messages, max_tokens=4
        )
        check("unknown model is refused", False, "it was served")
    except openai.NotFoundError as e:
        code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
        check("unknown model: 404 model_not_found", code == "model_not_found", str(e))

    print("all checks passed")


if __name__ == "__main__":
    main()
