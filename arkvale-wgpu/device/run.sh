#!/usr/bin/env bash
# The GPU check of arkvale-wgpu, packaged by `cargo xtask device-check --build` into
# target/device/run-wgpu.sh with its two binaries. On the device machine, from the repository
# root (carry ["target/device", ".gl"]):   bash target/device/run-wgpu.sh
# It runs the differential suite on the wgpu backend through Vulkan on the NVIDIA GPU and the
# bandwidth benchmark (paged decode attention against a buffer copy in the same run), and
# writes one markdown file, $OUT/wgpu.md (adapter name, suite summary, the table), ready to be
# copied to docs/results/wgpu.md. Vulkan loaders: if `ldconfig -p` has no libvulkan, the debs
# in .gl/ (see the device tool's README) are unpacked first.
set -uo pipefail
D=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$D/out}
mkdir -p "$OUT"
START=$SECONDS

if ! ldconfig -p | grep -q libvulkan; then
    for f in .gl/*.deb; do [[ -f $f ]] && dpkg -x "$f" /; done
    ldconfig
fi
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[[ -f $ICD && -z "${VK_DRIVER_FILES:-}" ]] && export VK_DRIVER_FILES=$ICD
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/arkvale-xdg}
mkdir -p "$XDG_RUNTIME_DIR"

LOG=$(mktemp)
timeout 240 "$D/arkvale-suite-wgpu" --backend wgpu >"$LOG" 2>&1
RC_SUITE=$?
BW=$(mktemp)
timeout 120 "$D/arkvale-wgpu-bandwidth" 8192 4 >"$BW" 2>&1
RC_BW=$?
{
    echo "# arkvale-wgpu device check"
    echo
    echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
    echo
    grep -m1 '^adapter:' "$BW" || echo "adapter: (bandwidth run failed, exit $RC_BW)"
    echo
    echo "## Differential suite (\`arkvale-suite --backend wgpu\`)"
    echo
    grep -E '^backend wgpu:' "$LOG" || echo "no summary line (exit $RC_SUITE)"
    grep -E 'FAILED|panicked|skipped' "$LOG" | head -n 20
    echo
    echo "## Bandwidth (\`examples/bandwidth.rs\`, 8192 tokens, batch 4, f16 KV)"
    echo
    grep -E '^\|' "$BW" || tail -n 20 "$BW"
    echo
    echo "exit codes: suite $RC_SUITE, bandwidth $RC_BW; total $((SECONDS - START))s"
} | tee "$OUT/wgpu.md"
