#!/usr/bin/env bash
# The GPU check of arkvale-cuda, packaged by `cargo xtask device-check --build` into
# target/device/ together with the binaries it runs. On the device machine, from the
# repository root:   bash target/device/run.sh
# It needs no Rust: the differential suite (arkvale-suite), the end-to-end generation test
# (cuda_generate) and the benchmarks (arkvale-cuda-bench) are prebuilt, stripped, release
# binaries; PyTorch (already on the machine) gives the SDPA comparison. Every step has a
# timeout so that the whole run stays under 5 minutes. Logs and tables go to $OUT (or
# target/device/out; at most 7 files, as the device tool brings back 8); the summary is
# printed last.
set -uo pipefail
D=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$D/out}
mkdir -p "$OUT"
TMPD=$(mktemp -d)
START=$SECONDS

# libcuda comes with the driver; NVRTC 13 and cuBLAS from the CUDA toolkit or the nvidia-*
# wheels next to PyTorch.
LIBS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $d ]] && LIBS="$LIBS:$d"
done
PYLIBS=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for pat in ("nvidia/*/lib", "nvidia/cu13/lib", "nvidia/*/lib64"):
        for d in glob.glob(os.path.join(base, pat)):
            if glob.glob(os.path.join(d, "libnvrtc.so*")) or glob.glob(os.path.join(d, "libcublas.so*")):
                dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$LIBS${PYLIBS:+:$PYLIBS}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT/env.txt" 2>&1

step() { # name timeout logfile command...
    local name=$1 limit=$2 log=$3
    shift 3
    local t=$SECONDS
    echo "==> $name"
    timeout "$limit" "$@" >"$OUT/$log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$log"
    echo "<== $name: exit $rc in $((SECONDS - t))s"
    eval "RC_${name//-/_}=$rc; T_${name//-/_}=$((SECONDS - t))"
}

step suite 150 suite.log "$D/arkvale-suite" --backend cuda
step e2e 60 e2e.log "$D/cuda_generate" --nocapture --test-threads 1
step bench 150 bench.log "$D/arkvale-cuda-bench" --out "$OUT" --shapes "$TMPD/attn_shapes.json"
step sdpa 60 sdpa.log python3 "$D/sdpa.py" "$TMPD/attn_shapes.json" "$TMPD/sdpa.md"

{
    echo
    echo "==================== arkvale-cuda device check: summary ===================="
    cat "$D/BUILD.txt" 2>/dev/null
    head -n 2 "$OUT/env.txt" | tail -n 1
    grep -E '^backend cuda:' "$OUT/suite.log" || echo "suite: no summary line (exit $RC_suite)"
    if grep -q 'skipped:' "$OUT/e2e.log"; then
        grep -o 'skipped: .*' "$OUT/e2e.log" | head -n 1 | sed 's/^/e2e (CUDA tokens == CPU tokens): /'
    else
        grep -E '^test result:' "$OUT/e2e.log" | sed 's/^/e2e (CUDA tokens == CPU tokens): /' || echo "e2e: exit $RC_e2e"
        grep -E '^(tokens|max relative|step )' "$OUT/e2e.log"
    fi
    grep -E 'FAILED|panicked' "$OUT/suite.log" "$OUT/e2e.log" | head -n 10
    [[ -f "$OUT/bench.md" ]] && sed -n '/^## (a)/,$p' "$OUT/bench.md"
    [[ -f "$TMPD/sdpa.md" ]] && cat "$TMPD/sdpa.md"
    echo "exit codes: suite $RC_suite, e2e $RC_e2e, bench $RC_bench, sdpa $RC_sdpa; total $((SECONDS - START))s"
} | tee "$OUT/summary.txt"
