#!/usr/bin/env python3
"""The llama.cpp side of `bench/llama_cpp.sh`, and the table that puts both engines side by side.

Not run in CI. Needs llama-cpp-python (the shell script installs it into a virtual environment).

    vs_llama_cpp.py measure --model M --contexts 1024,4096 --generate 32 --threads 1 \
        --haystack TEXT --ids-out IDS --json OUT
        Tokenizes TEXT with the model's own tokenizer (no BOS, as arkvale does), writes the
        first max(contexts) token ids to IDS (arkvale then reads the same ids), and for each
        context length times the prefill of that many ids (one `eval`, batches of 512) and
        `generate - 1` greedy decode steps after it (the first token comes from the prefill's
        logits). Full KV cache, llama.cpp's default KV type (f16), flash attention off.
    vs_llama_cpp.py table --llama LLAMA_JSON --arkvale ARKVALE_JSON
        Prints the markdown table: per context, llama.cpp's prefill/decode tokens/s beside
        arkvale's for each policy, as ratios to llama.cpp's, and whether the greedy tokens agree.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def measure(a):
    from llama_cpp import Llama, __version__

    contexts = [int(c) for c in a.contexts.split(",")]
    longest = max(contexts)
    llm = Llama(
        model_path=a.model,
        n_ctx=longest + a.generate + 16,
        n_batch=512,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        flash_attn=False,
        logits_all=False,
        verbose=False,
    )
    with open(a.haystack, encoding="utf-8") as f:
        text = f.read()
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if len(ids) < longest:
        sys.exit(f"{a.haystack} has {len(ids)} tokens, {longest} needed")
    with open(a.ids_out, "w") as f:
        f.write(" ".join(str(t) for t in ids[:longest]) + "\n")
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    records = []
    for ctx in contexts:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[:ctx])
        prefill = time.perf_counter() - t0
        tok = int(np.argmax(last_logits()))
        tokens = [tok]
        t1 = time.perf_counter()
        for _ in range(a.generate - 1):
            llm.eval([tok])
            tok = int(np.argmax(last_logits()))
            tokens.append(tok)
        decode = time.perf_counter() - t1
        steps = max(a.generate - 1, 1)
        rec = {
            "context": ctx,
            "prefill_tokens_per_s": ctx / prefill,
            "decode_tokens_per_s": steps / decode,
            "tokens": tokens,
        }
        print(
            f"[llama.cpp] {ctx} tokens: prefill {rec['prefill_tokens_per_s']:.1f} tokens/s, "
            f"decode {rec['decode_tokens_per_s']:.1f} tokens/s",
            file=sys.stderr,
        )
        records.append(rec)
    out = {
        "engine": f"llama.cpp via llama-cpp-python {__version__}",
        "model": os.path.basename(a.model),
        "threads": a.threads,
        "generate": a.generate,
        "records": records,
    }
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)


def common_prefix(x, y):
    n = 0
    for p, q in zip(x, y):
        if p != q:
            break
        n += 1
    return n


def table(a):
    with open(a.llama) as f:
        lc = json.load(f)
    with open(a.arkvale) as f:
        ark = json.load(f)
    policies = []
    for r in ark["records"]:
        if r["policy"] not in policies:
            policies.append(r["policy"])
    load = os.getloadavg()
    print(
        f"{lc['model']}, {lc['threads']} thread(s) each, {lc['generate']} greedy tokens, "
        f"f16 KV both; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at table time {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
        f"{lc['engine']}; arkvale `--weights {ark['weights'].lower()}`.\n"
    )
    head = "| context | llama.cpp prefill / decode tok/s | arkvale prefill tok/s |"
    sep = "|---|---|---|"
    for p in policies:
        head += f" `{p}` decode tok/s |"
        sep += "---|"
    head += " greedy tokens equal to llama.cpp's (common prefix) |"
    sep += "---|"
    print(head)
    print(sep)
    for r in lc["records"]:
        ctx = r["context"]
        rows = {x["policy"]: x for x in ark["records"] if x["context"] == ctx}
        if not rows:
            continue
        pf = next(iter(rows.values()))["prefill_tokens_per_s"]
        line = (
            f"| {ctx} | {r['prefill_tokens_per_s']:.1f} / {r['decode_tokens_per_s']:.1f} "
            f"| {pf:.1f} ({pf / r['prefill_tokens_per_s']:.2f}x) |"
        )
        agree = []
        for p in policies:
            x = rows.get(p)
            if x is None:
                line += " - |"
                continue
            d = x["decode_tokens_per_s"]
            line += f" {d:.1f} ({d / r['decode_tokens_per_s']:.2f}x) |"
            agree.append(f"{p} {common_prefix(x['tokens'], r['tokens'])}/{len(r['tokens'])}")
        line += " " + ", ".join(agree) + " |"
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", required=True)
    m.add_argument("--contexts", default="1024,4096,8192")
    m.add_argument("--generate", type=int, default=32)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--haystack", required=True)
    m.add_argument("--ids-out", required=True)
    m.add_argument("--json", required=True)
    t = sub.add_parser("table")
    t.add_argument("--llama", required=True)
    t.add_argument("--arkvale", required=True)
    a = ap.parse_args()
    if a.cmd == "measure":
        if a.generate < 2:
            sys.exit("--generate must be at least 2")
        measure(a)
    else:
        table(a)


if __name__ == "__main__":
    main()
