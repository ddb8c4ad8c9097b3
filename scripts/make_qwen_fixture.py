#!/usr/bin/env python3
"""Writes arkvale-model/tests/fixtures/qwen25_reference.json: llama.cpp's token ids and greedy
next tokens for Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) on a few prompts.

Not run in CI. Needs llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp from
source) and the model (`cargo xtask fetch-model qwen2.5-coder-0.5b`). Usage, from the
repository root:

    python3 scripts/make_qwen_fixture.py [--model PATH] [--out PATH]

For every prompt it records
  * `token_ids`: llm.tokenize(text.encode(), add_bos=False, special=<prompt's "special">),
  * `top5_next`: the ids and logits of the five largest next-token logits after the whole
    prompt (llama.cpp's CPU forward pass: Q4_K/Q6_K weights with quantized activations, so
    its logits differ from an f32 forward pass by a few hundredths),
  * `greedy`: the greedy (temperature 0, argmax) continuation of GREEDY_STEPS tokens, each
    step's top-1 and the margin between its top-1 and top-2 logits (a small margin is where
    two correct implementations may disagree).
The arkvale-model test `qwen25_llama_cpp` checks our tokenizer and forward pass against it.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")
OUT = os.path.join(ROOT, "arkvale-model", "tests", "fixtures", "qwen25_reference.json")
HAYSTACK = os.path.join(ROOT, "arkvale-eval", "data", "haystack", "persuasion.txt")
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GREEDY_STEPS = 8
N_THREADS = 2


def prose_paragraph(min_chars=1300):
    """The opening of Persuasion (chapter 1) after its heading, cut at the first sentence end
    past `min_chars` characters: about 300 Qwen2 tokens of real prose."""
    with open(HAYSTACK, encoding="utf-8") as f:
        text = f.read()
    body = text.split("\n\n", 1)[1]
    end = body.index(". ", min_chars) + 1
    return body[:end]


def prompts():
    code = (
        "def fibonacci(n: int) -> list[int]:\n"
        '    """Return the first n Fibonacci numbers."""\n'
        "    seq = [0, 1]\n"
        "    while len(seq) < n:\n"
        "        seq.append(seq[-1] + seq[-2])\n"
        "    return seq[:n]\n"
        "\n"
        "\tif __name__ == '__main__':\n"
        "        print(fibonacci(10))  # -> [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n"
        "\n"
        "# Next, a function that checks whether a number is prime:\n"
        "def is_prime("
    )
    unicode = (
        "Grüße aus Zürich — 東京は晴れ 🌤️, naïve café; Ελληνικά 12.5°C at 09:45, "
        "π≈3.14159, 1234567890 apples, 2024-03-15!\n\n   Don't   STOP… I'M here; "
        "we'll see 👩‍💻🚀🇫🇷 ½ + ¼ = ¾   \t\r\nthe end"
    )
    chat = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nWrite a Python one-liner that reverses a "
        "string s.<|im_end|>\n<|im_start|>assistant\n"
    )
    out = [
        ("english", "The quick brown fox jumps over the lazy dog because it was", False),
        ("code", code, False),
        ("unicode", unicode, False),
    ]
    if os.path.exists(HAYSTACK):
        out.append(("prose", prose_paragraph(), False))
    else:
        print(f"note: {HAYSTACK} not found; no prose prompt", file=sys.stderr)
    # Added tokens written as text: user-defined ones (<tool_call>) are matched even without
    # special parsing, control ones (<|fim_prefix|>, <|im_end|>) are not.
    added = '<tool_call>\n{"name": "f"}\n</tool_call> <|fim_prefix|>x = 1<|im_end|>'
    out.append(("added_tokens_as_text", added, False))
    out.append(("chat", chat, True))
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_logits(llm, llama_cpp):
    """The logits of the last evaluated position, as floats."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def top(logits, k):
    idx = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:k]
    return idx, [float(logits[i]) for i in idx]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    import llama_cpp

    got = sha256(args.model)
    if got != MODEL_SHA256:
        sys.exit(f"{args.model}: sha256 {got}, expected {MODEL_SHA256}")
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=1024,
        n_batch=512,
        n_threads=N_THREADS,
        logits_all=False,
        verbose=False,
    )
    meta = llm.metadata
    cases = {}
    for name, text, special in prompts():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        llm.reset()
        llm.eval(ids)
        logits = last_logits(llm, llama_cpp)
        top5_ids, top5_logits = top(logits, 5)
        greedy, margins = [], []
        for step in range(GREEDY_STEPS):
            (a, b), (la, lb) = top(logits, 2)
            greedy.append(a)
            margins.append(round(la - lb, 4))
            if step + 1 < GREEDY_STEPS:
                llm.eval([a])
                logits = last_logits(llm, llama_cpp)
        detok = llm.detokenize(ids, special=special).decode("utf-8")
        if detok != text:
            print(f"note: {name}: llama.cpp's detokenization differs from the text", file=sys.stderr)
        cases[name] = {
            "text": text,
            "special": special,
            "token_ids": ids,
            "top5_next": {"ids": top5_ids, "logits": [round(x, 4) for x in top5_logits]},
            "greedy": {"ids": greedy, "top1_top2_margin": margins},
        }
        print(
            f"{name}: {len(ids)} tokens, next {top5_ids[0]} (margin {margins[0]}), "
            f"greedy {llm.detokenize(greedy).decode('utf-8', 'replace')!r}"
        )

    fixture = {
        "model": os.path.basename(args.model),
        "model_sha256": MODEL_SHA256,
        "reference": (
            f"llama-cpp-python {llama_cpp.__version__} (vendored llama.cpp), CPU "
            f"{platform.machine()}, n_threads={N_THREADS}, n_batch=512, default flash_attn; "
            "made by scripts/make_qwen_fixture.py"
        ),
        "tokenizer": {
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        },
        "tokenization": "llm.tokenize(text.encode(), add_bos=False, special=<case's special>)",
        "prompts": cases,
    }
    text = json.dumps(fixture, ensure_ascii=False, indent=1)
    # Lists of numbers on one line each.
    text = re.sub(r"\[\n[-0-9.,\s]+\]", lambda m: re.sub(r"\s+", " ", m.group(0)), text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
