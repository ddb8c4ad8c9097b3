"""PyTorch's scaled_dot_product_attention on the shapes of arkvale-cuda's attention benchmark
(bench (a)): one query token per sequence against `context` keys/values, f16, 32 heads x 128.
Reads the shapes and arkvale's times from attn_shapes.json (written by arkvale-cuda-bench)
and writes a markdown table comparing the two (ratio > 1: arkvale faster)."""
import json
import sys
import time

import torch
import torch.nn.functional as F


def main():
    shapes = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    rows = ["## (a') paged decode attention vs torch SDPA (same shapes, f16, contiguous KV)", "",
            "| batch | context | SDPA (us) | arkvale (us) | SDPA GB/s | arkvale / SDPA speed |",
            "|---|---|---|---|---|---|"]
    for s in shapes:
        b, l, h, d = s["batch"], s["context"], s["heads"], s["head_dim"]
        q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.float16)
        k = torch.randn(b, h, l, d, device="cuda", dtype=torch.float16)
        v = torch.randn(b, h, l, d, device="cuda", dtype=torch.float16)
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        n = 20
        t0 = time.perf_counter()
        for _ in range(n):
            F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        t = (time.perf_counter() - t0) / n
        gbs = 2 * b * h * l * d * 2 / t / 1e9
        ours = s["seconds"]
        rows.append(f"| {b} | {l} | {t * 1e6:.1f} | {ours * 1e6:.1f} | {gbs:.0f} | {t / ours:.2f} |")
    text = "\n".join(rows) + "\n"
    print(text)
    open(out, "w").write(text)


if __name__ == "__main__":
    main()
