#!/usr/bin/env bash
# Regenerates every table and plot of docs/results/eval.md: the default `arkvale eval` sweeps
# on the default model (models/SmolLM2-135M-Instruct.Q4_1.gguf, `cargo xtask fetch-model`),
# in release, on the CPU backend. Run from the repository root:
#
#     bash docs/results/eval/regenerate.sh
#
# Each experiment writes results.json, results.csv, summary.md and PNGs into
# docs/results/eval/<experiment>/; passkey and niah also save their finished cases after every
# prompt, and `arkvale eval plot DIR` redraws the plots and tables of a sweep stopped part-way. The real text of fidelity, digest-recall, recalls and the
# real-text NIAH run is the GNU GPL v3 (gpl-3.0.txt beside this script, ~8k tokens).
set -euo pipefail
cargo build --release -p arkvale-model
bin="${CARGO_TARGET_DIR:-target}/release/arkvale"
out=docs/results/eval
text=$out/gpl-3.0.txt
"$bin" eval passkey --out "$out/passkey"
"$bin" eval niah --contexts 4096 --out "$out/niah"
"$bin" eval niah --contexts 4096 --haystack-file "$text" --variants single,multikey --out "$out/niah-text"
"$bin" eval fidelity --text-file "$text" --out "$out/fidelity"
"$bin" eval digest-recall --text-file "$text" --out "$out/digest-recall"
"$bin" eval recalls --text-file "$text" --out "$out/recalls"
