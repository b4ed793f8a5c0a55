#!/usr/bin/env bash
# Where one training step's GPU time goes, kernel by kernel (README, "Benchmarks on a GPU").
#
#   benches/gpu_profile.sh BIN OUT [MODEL] [PRECISION] [SECONDS]
#
# Runs `BIN bench model-once` (2 steps after a warm-up, 8 x 16 x 1 x 112 x 112) under Nsight
# Compute (`ncu`, from the CUDA toolkit: /usr/local/cuda/bin or PATH), recording each kernel's
# duration only, then sums the last whole step by kernel (benches/ncu_summary.py) into
# OUT/profile-MODEL-PRECISION.md, the trace beside it. MODEL defaults to i3d-resnet18,
# PRECISION to f32. Nsight Compute runs within SECONDS (default 170), the summary after it
# within seconds; MOLCLIP_CUDNN_BENCHMARK=1 profiles measured algorithms.
set -uo pipefail
bin="${1:?usage: benches/gpu_profile.sh BIN OUT [MODEL] [PRECISION]}"
out="${2:?usage: benches/gpu_profile.sh BIN OUT [MODEL] [PRECISION]}"
model="${3:-i3d-resnet18}"
precision="${4:-f32}"
limit="${5:-170}"
mkdir -p "$out"
nvidia="$(python3 -c 'import os, nvidia; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null)"
if [ -n "$nvidia" ]; then
    for lib in "$nvidia"/*/lib; do LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
    export LD_LIBRARY_PATH
fi
ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
trace="$out/profile-$model-$precision.csv"
timeout "$limit" "$ncu" --metrics gpu__time_duration.sum --csv --launch-count 20000 "$bin" bench model-once \
    --model "$model" --batch 8 --frames 16 --size 112 --steps 2 --device cuda --precision "$precision" > "$trace"
{
    printf '# %s, %s, cuDNN algorithms %s\n\n```\n' "$model" "$precision" \
        "$([ "${MOLCLIP_CUDNN_BENCHMARK:-0}" = 1 ] && echo measured || echo heuristic)"
    python3 "$(dirname "$0")/ncu_summary.py" "$trace" 30
    printf '```\n'
} | tee "$out/profile-$model-$precision.md"
