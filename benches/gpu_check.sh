#!/usr/bin/env bash
# The GPU figures in one run, for the README's GPU table (README, "Benchmarks on a GPU").
#
#   benches/gpu_check.sh BIN OUT [DRUGS]
#
# BIN: molclip built with `--features cudnn` (README, "Building for CUDA"); OUT: a folder that
# receives gpu_check.md (every table) and bench/ (the simulated bench preset, removed at the
# end); DRUGS: the drug table the bench preset is simulated from (default
# ../shared/data/launched_drugs.tsv; a copy travels where ../shared does not). Run from the repository root, on a machine with an NVIDIA GPU, python3 with a CUDA
# build of PyTorch (the reference side), and the CUDA libraries molclip loads at run time
# (cuBLAS, cuRAND, NVRTC, cuDNN): the lib folders of PyTorch's nvidia-* wheels are put on the library
# path. Each step has its own time limit (40 + 3 x 65 + 2 x 70 + 20 + 80 s), and Nsight Compute
# profiles of i3d-resnet50 in TF32, i3d-resnet18 in bf16 and frame-vit in float32 (whether
# fused softmax and layer norm kernels would pay) take what is left of 470 s (each only with
# a minute or more left): the whole script ends within 8 minutes, whatever the
# machine. MOLCLIP_CUDNN_BENCHMARK=1 picks molclip's cuDNN
# algorithms by measurement, and the PyTorch references set cudnn.benchmark alike.
set -uo pipefail
bin="${1:?usage: benches/gpu_check.sh BIN OUT [DRUGS]}"
out="${2:?usage: benches/gpu_check.sh BIN OUT [DRUGS]}"
drugs="${3:-../shared/data/launched_drugs.tsv}"
mkdir -p "$out"
table="$out/gpu_check.md"

nvidia="$(python3 -c 'import os, nvidia; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null)"
if [ -n "$nvidia" ]; then
    for lib in "$nvidia"/*/lib; do LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
    export LD_LIBRARY_PATH
fi

step() { # step SECONDS TITLE COMMAND...: one section of the table, within SECONDS
    local limit="$1" title="$2"
    shift 2
    printf '\n## %s\n\n```\n$ %s\n' "$title" "$*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1
    local rc=$?
    printf '```\n(%s s, exit %s)\n' "$((SECONDS - start))" "$rc"
}

{
    printf '# molclip on the GPU, %s\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch; print("PyTorch", torch.__version__, "cuDNN", torch.backends.cudnn.version())'
    step 40 "Agreement with the CPU" "$bin" bench device-check --device cuda
    for precision in f32 tf32 bf16; do
        step 65 "Training steps against PyTorch eager, $precision, cuDNN's heuristic algorithms" "$bin" bench model \
            --device cuda --models i3d-resnet18,i3d-resnet50,frame-vit --steps 10 --rounds 1 --precision "$precision" --quiet
    done
    for precision in tf32 bf16; do
        step 70 "Training steps against PyTorch eager, $precision, measured algorithms (cudnn.benchmark on both sides)" \
            env MOLCLIP_CUDNN_BENCHMARK=1 "$bin" bench model --device cuda --models i3d-resnet18,i3d-resnet50,frame-vit \
            --steps 10 --rounds 1 --precision "$precision" --quiet
    done
    step 20 "The bench preset" "$bin" simulate --preset bench --drugs "$drugs" --out "$out/bench" --quiet
    # The recipe measures the algorithms (cudnn_benchmark = true, as MitoReID), both sides.
    step 80 "An epoch's first steps, end to end (MitoReID's recipe in TF32, measured algorithms on both sides)" \
        "$bin" bench train --device cuda --data "$out/bench" \
        --config configs/mitoreid.toml --set precision=tf32 --steps 12 --quiet
    # Where the like-for-like steps' GPU time goes, in whatever is left of the 8 minutes
    # (steps seldom use their whole limits): gpu_profile.sh under the time that remains. Its
    # own limit on Nsight Compute leaves 10 s for its summary: a `timeout` inside another
    # starts a process group of its own, which the outer one's kill would not reach.
    for profile in "i3d-resnet50 tf32" "i3d-resnet18 bf16" "frame-vit f32"; do
        left=$((470 - SECONDS))
        if [ "$left" -gt 60 ]; then
            # shellcheck disable=SC2086 # the model and the precision, two words
            step "$left" "Where the step's GPU time goes: $profile, measured algorithms" \
                env MOLCLIP_CUDNN_BENCHMARK=1 benches/gpu_profile.sh "$bin" "$out" $profile $((left - 10))
        fi
    done
} | tee "$table"
rm -rf "$out/bench"
