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
cargo build --release -p arkvale-cli --bin arkvale
bin="${CARGO_TARGET_DIR:-target}/release/arkvale"
out=docs/results/eval
text=$out/gpl-3.0.txt
# Round 1 (the paper's rules on the built-in filler and the GPL text): `--preset paper` and
# `--haystack filler` keep these runs what they were before the defaults changed.
paper=(--preset paper)
"$bin" eval passkey "${paper[@]}" --haystack filler --out "$out/passkey"
"$bin" eval niah "${paper[@]}" --haystack filler --contexts 4096 --out "$out/niah"
"$bin" eval niah "${paper[@]}" --contexts 4096 --haystack-file "$text" --haystack-start beginning --variants single,multikey --out "$out/niah-text"
"$bin" eval fidelity "${paper[@]}" --text-file "$text" --out "$out/fidelity"
"$bin" eval digest-recall --text-file "$text" --out "$out/digest-recall"
"$bin" eval recalls "${paper[@]}" --text-file "$text" --out "$out/recalls"

# Round 2 (real prose: the built-in public-domain novels of arkvale-eval/data/haystack/):
# the recommended preset (the default) beside the paper's rules and the ablation between them.
prose=arkvale-eval/data/haystack/persuasion.txt
ablation="full,arkvale,arkvale:preset=paper,arkvale:preset=paper+victims=attention+prefill=attention"
ablation="$ablation,arkvale:preset=paper+victims=attention+prefill=attention+groups=kv+agg=max,streaming"
"$bin" eval fidelity --text-file "$prose" --prefill 4096 --decode 256 --policies "$ablation" \
    --budgets 512,1024,2048 --out "$out/fidelity-real"
"$bin" eval fidelity --text-file "$text" --prefill 4096 --decode 256 \
    --policies "full,arkvale,arkvale:preset=paper" --budgets 512,1024,2048 --out "$out/fidelity-gpl-round2"
"$bin" eval passkey --contexts 4096 --depths 0.1,0.3,0.5,0.7,0.9 --haystack moby-dick \
    --policies "full,arkvale,arkvale:preset=paper,arkvale:preset=paper+victims=attention+prefill=attention,streaming" \
    --budgets 512 --haystack-start beginning --out "$out/passkey-real"

# Qwen2.5-Coder-0.5B-Instruct, 32k context (`cargo xtask fetch-model qwen2.5-coder-0.5b`):
# passkey at 8k on Persuasion, every policy at four budgets, weights kept as stored (native).
qwen=models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
"$bin" eval passkey --model "$qwen" --weights native --contexts 8192 --depths 5 \
    --haystack persuasion --haystack-start beginning \
    --policies full,arkvale,arkvale:preset=paper,streaming,h2o,tova \
    --budgets 256,512,1024,2048 --out "$out/passkey-real-qwen-sweep"
# The same at 16k (H2O and TOVA left out: their prefill computes every token's attention
# weights, which at 16k costs more than the rest of the run together).
"$bin" eval passkey --model "$qwen" --weights native --contexts 16384 --depths 5 \
    --haystack persuasion --haystack-start beginning \
    --policies full,arkvale,arkvale:preset=paper,streaming \
    --budgets 256,512,1024,2048 --out "$out/passkey-real-qwen-16k"

# Round 5: every prompt's haystack starts at its own paragraph of the novel (the default
# `--haystack-start random`, drawn from --seed), so a sweep samples many passages; SmolLM2
# passkey at 2k and 4k x 10 depths, every policy, four budgets, and the ablation between the
# paper's rules and the recommended ones.
P=arkvale:preset=paper
"$bin" eval passkey --threads 1 \
    --policies "full,arkvale,$P,$P+victims=attention,$P+prefill=attention,$P+victims=attention+prefill=attention,$P+victims=attention+prefill=attention+groups=kv+agg=max,streaming,h2o,tova,quest" \
    --budgets 256,512,1024,2048 --contexts 2048,4096 --depths 10 --out "$out/passkey-real-smollm2"

# Round 6: the Qwen passkey with each prompt's haystack at its own paragraph (the default
# `--haystack-start random`): 8k, every policy, four budgets; 16k at budget 512.
"$bin" eval passkey --threads 1 --model "$qwen" --weights native --contexts 8192 --depths 5 \
    --haystack persuasion --policies full,arkvale,arkvale:preset=paper,streaming,h2o,tova \
    --budgets 256,512,1024,2048 --out "$out/passkey-real-qwen-8k-random"
"$bin" eval passkey --threads 1 --model "$qwen" --weights native --contexts 16384 --depths 5 \
    --haystack persuasion --policies full,arkvale,arkvale:preset=paper,streaming \
    --budgets 512 --out "$out/passkey-real-qwen-16k-random"
"$bin" eval passkey --threads 1 --seed 1 --model "$qwen" --weights native --contexts 8192 \
    --depths 5 --haystack persuasion --policies full,arkvale,arkvale:preset=paper,streaming \
    --budgets 256,512 --out "$out/passkey-real-qwen-8k-seed1"
# 32k (the model's context less the 8 generated tokens), one depth: one prefill is ~30 minutes.
"$bin" eval passkey --threads 1 --model "$qwen" --weights native --contexts 32760 --depths 0.5 \
    --haystack persuasion --policies full,arkvale,arkvale:preset=paper,streaming \
    --budgets 512,2048 --out "$out/passkey-real-qwen-32k"

# Round 7: SmolLM2 at 6k on real prose (round 5's sweep), NIAH on real prose, fidelity over
# four windows of Persuasion, digest recall on Persuasion (pages of 32 and of 16).
"$bin" eval passkey --threads 1 \
    --policies "full,arkvale,$P,$P+victims=attention,$P+prefill=attention,$P+victims=attention+prefill=attention,$P+victims=attention+prefill=attention+groups=kv+agg=max,streaming,h2o,tova,quest" \
    --budgets 256,512,1024,2048 --contexts 6144 --depths 10 --out "$out/passkey-real-smollm2-6k"
"$bin" eval niah --threads 1 --contexts 4096 \
    --policies full,arkvale,arkvale:preset=paper,streaming,h2o,tova,quest --budgets 512,1024 \
    --out "$out/niah-real"
"$bin" eval fidelity --threads 1 --text-file "$prose" --prefill 4096 --decode 256 --samples 4 \
    --policies full,arkvale,arkvale:preset=paper,streaming --budgets 512,1024,2048 \
    --out "$out/fidelity-real-4win"
"$bin" eval digest-recall --threads 1 --text-file "$prose" --out "$out/digest-recall-real"
"$bin" eval digest-recall --threads 1 --text-file "$prose" --page-size 16 --sinks 2 --window 4 \
    --out "$out/digest-recall-real-p16"
