#!/usr/bin/env bash
# Side-by-side CPU benchmark: llama.cpp (via llama-cpp-python) and arkvale on the same GGUF,
# the same prompt token ids (the first N tokens of Austen's *Persuasion*, tokenized by
# llama.cpp) and the same thread count, in one run. Prints a markdown table (also written to
# target/bench/llama_cpp/<model>/table.md). Not part of CI.
#
#   bench/llama_cpp.sh [MODEL] [CONTEXTS]
#     MODEL     GGUF file [default: models/SmolLM2-135M-Instruct.Q4_1.gguf]
#     CONTEXTS  comma-separated prompt lengths [default: 1024,4096,8192]
#   Environment: THREADS (default 1), GENERATE (greedy tokens, default 32), BUDGETS (arkvale
#   budgets, default 512,2048), LLAMA_VENV (a virtual environment with llama-cpp-python;
#   default target/llama-cpp-venv, created and filled on first use: pip builds llama.cpp from
#   source, which takes long on a small machine).
#
# Run it on a quiet machine: both engines are timed one after the other, and other load
# distorts the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
CONTEXTS=${2:-1024,4096,8192}
THREADS=${THREADS:-1}
GENERATE=${GENERATE:-32}
BUDGETS=${BUDGETS:-512,2048}
VENV=${LLAMA_VENV:-target/llama-cpp-venv}
HAYSTACK=arkvale-eval/data/haystack/persuasion.txt

[ -f "$MODEL" ] || { echo "no model at $MODEL (cargo xtask fetch-model)" >&2; exit 1; }
if ! "$VENV/bin/python" -c "import llama_cpp, numpy" 2>/dev/null; then
    echo "[bench] installing llama-cpp-python into $VENV (builds llama.cpp; slow)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy
fi
OUT=target/bench/llama_cpp/$(basename "$MODEL" .gguf)
mkdir -p "$OUT"
cargo build --release --quiet -p arkvale-cli --bin arkvale

"$VENV/bin/python" bench/vs_llama_cpp.py measure --model "$MODEL" --contexts "$CONTEXTS" \
    --generate "$GENERATE" --threads "$THREADS" --haystack "$HAYSTACK" \
    --ids-out "$OUT/ids.txt" --json "$OUT/llama_cpp.json"
target/release/arkvale bench speed --model "$MODEL" --weights native --threads "$THREADS" \
    --contexts "$CONTEXTS" --generate "$GENERATE" --budgets "$BUDGETS" \
    --prompt-ids "$OUT/ids.txt" --out "$OUT/arkvale" --no-progress
"$VENV/bin/python" bench/vs_llama_cpp.py table --llama "$OUT/llama_cpp.json" \
    --arkvale "$OUT/arkvale/results.json" | tee "$OUT/table.md"
