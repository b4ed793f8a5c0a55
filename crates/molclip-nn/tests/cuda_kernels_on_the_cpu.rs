//! molclip's own CUDA kernels (`src/kernels.cu`) run on the CPU, without a GPU: compiled as
//! C++ (a few lines stand in for CUDA's thread indices), each launch's threads run in turn in
//! the configuration `kernels::launch` gives the GPU, grid-stride loops included. The max
//! pooling's backward pass (`pool_argmax`, then `pool_grad`) must give the CPU op's gradient to
//! the bit: it is what a GPU runs, and the kernels claim the CPU's order of sums.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{Device, Tensor, Var};
use molclip_nn::{max_pool3d, Window3d};

/// The kernels, with CUDA's thread indices as globals and `launch(n)` as kernels.rs
/// configures it: ⌈n / 256⌉ blocks, between 1 and 1024, of 256 threads. Reads the pooling's
/// planes, geometry, input and output gradient on stdin; writes the input gradient.
const DRIVER: &str = r#"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__ static
using std::min;
#include "kernels.cu"

template <class F> static void launch(unsigned long long n, F kernel) {
    unsigned long long blocks = std::min(std::max((n + 255) / 256, 1ull), 1024ull);
    gridDim = {(unsigned)blocks, 1, 1};
    blockDim = {256, 1, 1};
    for (unsigned b = 0; b < blocks; b++)
        for (unsigned t = 0; t < 256; t++) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
}

template <class T> static std::vector<T> read() {
    uint64_t n = 0;
    if (fread(&n, 8, 1, stdin) != 1) std::exit(2);
    std::vector<T> v(n);
    if (fread(v.data(), sizeof(T), n, stdin) != n) std::exit(2);
    return v;
}

int main() {
    uint64_t planes = 0;
    struct Pool p;
    if (fread(&planes, 8, 1, stdin) != 1 || fread(&p, sizeof p, 1, stdin) != 1) return 2;
    std::vector<float> x = read<float>(), dy = read<float>();
    unsigned long long n = (unsigned long long)p.ot * p.oh * p.ow, vol = (unsigned long long)p.t * p.h * p.w;
    if (x.size() != planes * vol || dy.size() != planes * n) return 3;
    std::vector<unsigned> arg(planes * n, 0xdeadbeefu);
    std::vector<float> dx(planes * vol, NAN);
    launch(planes * n, [&] { pool_argmax(x.data(), arg.data(), planes, p); });
    launch(planes * vol, [&] { pool_grad(arg.data(), dy.data(), dx.data(), planes, p); });
    fwrite(dx.data(), 4, dx.size(), stdout);
    return 0;
}
"#;

fn compile(dir: &Path) -> PathBuf {
    let source = dir.join("driver.cpp");
    std::fs::write(&source, DRIVER).unwrap();
    let exe = dir.join("driver");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let out = Command::new(&compiler)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-I", src])
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C++ compiler `{compiler}` (set CXX): {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// The input gradient the kernels compute for `max_pool3d(x, window)` and output gradient `dy`.
fn on_the_kernels(exe: &Path, x: &Tensor, window: Window3d, dy: &Tensor) -> Vec<f32> {
    let [b, c, t, h, w]: [usize; 5] = x.dims().try_into().unwrap();
    let out = window.out_dims([t, h, w]).unwrap();
    let mut input = Vec::new();
    input.extend(((b * c) as u64).to_le_bytes());
    for v in [[t, h, w], out, window.kernel, window.stride, window.padding] {
        for d in v {
            input.extend((d as i32).to_le_bytes());
        }
    }
    for values in [x, dy] {
        let values = values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        input.extend((values.len() as u64).to_le_bytes());
        input.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the driver failed: {:?}", out.status);
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The CPU op's input gradient: the backward pass of `(max_pool3d(x) · dy).sum()`.
fn on_the_cpu(x: &Tensor, window: Window3d, dy: &Tensor) -> Vec<f32> {
    let x = Var::from_tensor(x).unwrap();
    let loss = (max_pool3d(x.as_tensor(), window).unwrap() * dy).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Values from `levels` distinct ones (ties), or in [-1, 1) with `levels` 0; a NaN every
/// `nan_every` values (0: none).
fn values(shape: &[usize], seed: u64, levels: u64, nan_every: usize) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if nan_every > 0 && i % nan_every == nan_every - 1 {
                f32::NAN
            } else if levels > 0 {
                (s % levels) as f32
            } else {
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn max_pooling_backward_kernels_give_the_cpu_gradient_to_the_bit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    let cases: [(&str, [usize; 5], Window3d, u64, usize); 5] = [
        // The I3D stem's pooling, then its temporal one.
        ("stem", [2, 3, 4, 9, 9], Window3d::new([1, 3, 3], [1, 2, 2], [0, 1, 1]), 0, 0),
        ("temporal", [1, 2, 7, 5, 6], Window3d::new([3, 1, 1], [2, 1, 1], [1, 0, 0]), 0, 0),
        // Overlapping windows full of ties: the first maximum takes the gradient.
        ("ties", [1, 2, 6, 7, 8], Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]), 3, 0),
        // NaNs win their windows.
        ("nan", [1, 2, 5, 6, 7], Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]), 0, 13),
        // Windows that tile without overlap, the inputs past the last one dropped; more
        // elements than the 1024 x 256 threads of a launch (grid-stride loops).
        ("tiles", [4, 8, 9, 33, 35], Window3d::new([2, 2, 2], [2, 2, 2], [0, 0, 0]), 0, 0),
    ];
    for (k, (name, shape, window, levels, nan_every)) in cases.into_iter().enumerate() {
        let x = values(&shape, 2 * k as u64 + 1, levels, nan_every);
        let [_, _, t, h, w] = shape;
        let out = window.out_dims([t, h, w]).unwrap();
        let dy = values(&[shape[0], shape[1], out[0], out[1], out[2]], 2 * k as u64 + 2, 0, 0);
        let (cpu, gpu) = (on_the_cpu(&x, window, &dy), on_the_kernels(&exe, &x, window, &dy));
        assert_eq!(cpu.len(), gpu.len(), "{name}");
        let differing = cpu.iter().zip(&gpu).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{name}: {differing} of {} gradients differ", cpu.len());
        // Not vacuous: the gradient reached some inputs and not others.
        assert!(cpu.iter().any(|&v| v != 0.0) && cpu.contains(&0.0), "{name}");
    }
}
