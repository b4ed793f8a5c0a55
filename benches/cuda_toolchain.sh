#!/usr/bin/env bash
# A CUDA 13 toolchain from PyPI's wheels, for `cargo build --release --features cudnn` on a
# machine without a system CUDA toolkit, or without a GPU (README, "Building for CUDA").
#
#   benches/cuda_toolchain.sh PREFIX
#   eval "$(benches/cuda_toolchain.sh PREFIX --env)"    # the variables the build reads
#
# PREFIX receives nvcc and the headers (candle's kernels are compiled with them) and the
# libraries the binary links to: cuBLAS, cuRAND, NVRTC and cuDNN, with the unversioned names
# the linker looks for (and the CUDA runtime, which candle's mixture-of-experts kernels use). Where no driver is installed (a build machine without a GPU), the
# driver's library is stood in for by a stub that exports the driver API's names and nothing
# else: it is for the linker only, the binary loads the real libcuda.so.1 where it runs.
set -euo pipefail
prefix="${1:?usage: benches/cuda_toolchain.sh PREFIX [--env]}"
cu="$prefix/nvidia/cu13"
if [ "${2:-}" = "--env" ]; then
    echo "export PATH=$cu/bin:\$PATH CUDA_ROOT=$cu CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
    echo "export NVCC_APPEND_FLAGS=\"-I$cu/include -I$cu/include/cccl\""
    exit 0
fi
python3 -m pip install --quiet --target "$prefix" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25 nvidia-cudnn-cu13==9.28.1.4

lib="$cu/lib"
link() { # link NAME TARGET: the unversioned name the linker asks for
    [ -e "$2" ] || { echo "cuda_toolchain: $2 is missing" >&2; exit 1; }
    ln -sf "$2" "$lib/$1"
}
link libcublas.so "$lib/libcublas.so.13"
link libcublasLt.so "$lib/libcublasLt.so.13"
link libcurand.so "$lib/libcurand.so.10"
link libnvrtc.so "$lib/libnvrtc.so.13"
link libcudart.so "$lib/libcudart.so.13"
link libcudnn.so "$prefix/nvidia/cudnn/lib/libcudnn.so.9"

driver="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')"
if [ -n "$driver" ]; then
    link libcuda.so "$driver"
else
    # The driver API's names, from the cudarc bindings the build uses.
    sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -1)"
    [ -f "$sys" ] || { echo "cuda_toolchain: run 'cargo fetch' first (cudarc's sources give the stub its names)" >&2; exit 1; }
    grep -o 'fn cu[A-Za-z0-9_]*' "$sys" | sed 's/^fn //' | sort -u | awk '{print "void " $1 "(void) {}"}' >"$lib/cuda_stub.c"
    cc -shared -fPIC -o "$lib/libcuda.so" -Wl,-soname,libcuda.so.1 "$lib/cuda_stub.c"
    rm "$lib/cuda_stub.c"
fi
echo "CUDA toolchain in $prefix; now: eval \"\$($0 $prefix --env)\" && cargo build --release --features cudnn"
