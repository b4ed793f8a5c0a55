//! molclip's own CUDA kernels (`src/kernels.cu`) run on the CPU, without a GPU: compiled as
//! C++ (a few lines stand in for CUDA's thread indices), each launch's threads run in turn in
//! the configuration `kernels::launch` gives the GPU, grid-stride loops included, and each
//! kernel compiled twice: every multiply and add rounded apart, and fused into FMAs where the
//! compiler sees fit, as NVRTC does. Each must give the CPU op's values to the bit, which
//! the kernels claim: max pooling's backward pass (`pool_argmax`, then `pool_grad`), AdamW's
//! update, ReLU, its gradient and the residual sum with ReLU. (`bn_running` takes cuDNN's
//! saved statistics, which the CPU does not make; `bench device-check` compares it on a GPU.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{Device, Tensor, Var};
use molclip_nn::{adamw_in_place, add_relu, max_pool3d, relu, AdamWStep, Window3d};

/// The kernels, with CUDA's thread indices as globals and `launch(n)` as kernels.rs
/// configures it: ⌈n / 256⌉ blocks, between 1 and 1024, of 256 threads. Reads the pooling's
/// planes, geometry, input and output gradient on stdin; writes the input gradient.
const DRIVER: &str = r#"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
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

static std::vector<float> floats() { return read<float>(); }
static void write(const std::vector<float>& v) { fwrite(v.data(), 4, v.size(), stdout); }

int main(int argc, char** argv) {
    std::string kernel = argc > 1 ? argv[1] : "";
    if (kernel == "pool") {
        uint64_t planes = 0;
        struct Pool p;
        if (fread(&planes, 8, 1, stdin) != 1 || fread(&p, sizeof p, 1, stdin) != 1) return 2;
        std::vector<float> x = floats(), dy = floats();
        unsigned long long n = (unsigned long long)p.ot * p.oh * p.ow, vol = (unsigned long long)p.t * p.h * p.w;
        if (x.size() != planes * vol || dy.size() != planes * n) return 3;
        std::vector<unsigned> arg(planes * n, 0xdeadbeefu);
        std::vector<float> dx(planes * vol, NAN);
        launch(planes * n, [&] { pool_argmax(x.data(), arg.data(), planes, p); });
        launch(planes * vol, [&] { pool_grad(arg.data(), dy.data(), dx.data(), planes, p); });
        write(dx);
    } else if (kernel == "adamw") {
        /* keep and take of each moment, then unbias, eps, decay and rate (update.rs) */
        std::vector<float> c = floats(), p = floats(), g = floats(), m = floats(), v = floats();
        unsigned long long n = p.size();
        launch(n, [&] { adamw_moment(m.data(), g.data(), n, c[0], c[1], 0); });
        launch(n, [&] { adamw_moment(v.data(), g.data(), n, c[2], c[3], 1); });
        launch(n, [&] { adamw_step(p.data(), m.data(), v.data(), n, c[4], c[5], c[6], c[7]); });
        write(p), write(m), write(v);
    } else if (kernel == "relu") {
        std::vector<float> x = floats(), dy = floats(), y(x.size(), NAN), dx(x.size(), NAN);
        launch(x.size(), [&] { relu(x.data(), y.data(), x.size()); });
        launch(x.size(), [&] { relu_grad(y.data(), dy.data(), dx.data(), x.size()); });
        write(y), write(dx);
    } else if (kernel == "add_relu") {
        std::vector<float> a = floats(), b = floats(), y(a.size(), NAN);
        launch(a.size(), [&] { add_relu(a.data(), b.data(), y.data(), a.size()); });
        write(y);
    } else {
        return 4;
    }
    return 0;
}
"#;

/// The driver, compiled as C++ once per way of rounding: each multiply and add rounded
/// apart (`-ffp-contract=off`), and fused where the compiler sees fit (as NVRTC does by
/// default, with the CPU's FMA): the kernels are written so that their results do not depend
/// on it.
fn compile(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let source = dir.join("driver.cpp");
    std::fs::write(&source, DRIVER).unwrap();
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut fused = vec!["-ffp-contract=fast"];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        fused.push("-mfma");
    }
    [("each rounded", vec!["-ffp-contract=off"]), ("fused", fused)]
        .into_iter()
        .map(|(name, flags)| {
            let exe = dir.join(format!("driver-{}", name.replace(' ', "-")));
            let out = Command::new(&compiler)
                .args(["-std=c++17", "-O2", "-I", src])
                .args(&flags)
                .arg(&source)
                .arg("-o")
                .arg(&exe)
                .output()
                .unwrap_or_else(|e| panic!("running the C++ compiler `{compiler}` (set CXX): {e}"));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (name, exe)
        })
        .collect()
}

/// Appends `values`, length first, as the driver reads them.
fn put(input: &mut Vec<u8>, values: &[f32]) {
    input.extend((values.len() as u64).to_le_bytes());
    input.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The driver's output for `kernel` on `input`, as float32 values.
fn run(exe: &Path, kernel: &str, input: &[u8]) -> Vec<f32> {
    let mut child = Command::new(exe).arg(kernel).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the driver failed on {kernel}: {:?}", out.status);
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Asserts that `got` holds `want`'s bits.
fn same_bits(what: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{what}");
    let differing = want.iter().zip(got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differing, 0, "{what}: {differing} of {} values differ", want.len());
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
    put(&mut input, &flat(x));
    put(&mut input, &flat(dy));
    run(exe, "pool", &input)
}

/// The CPU op's input gradient: the backward pass of `(max_pool3d(x) · dy).sum()`.
fn on_the_cpu(x: &Tensor, window: Window3d, dy: &Tensor) -> Vec<f32> {
    let x = Var::from_tensor(x).unwrap();
    let loss = (max_pool3d(x.as_tensor(), window).unwrap() * dy).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    flat(grads.get(x.as_tensor()).unwrap())
}

/// Values from `levels` distinct ones (ties), or in [-1, 1) with `levels` 0; a NaN every
/// `nan_every` values (0: none).
fn values(shape: &[usize], seed: u64, levels: u64, nan_every: usize) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            if nan_every > 0 && i % nan_every == nan_every - 1 {
                f32::NAN
            } else if levels > 0 {
                rng.random_range(0..levels) as f32
            } else {
                rng.random_range(-1.0f32..1.0)
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn max_pooling_backward_kernels_give_the_cpu_gradient_to_the_bit() {
    let dir = tempfile::tempdir().unwrap();
    let drivers = compile(dir.path());
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
        let cpu = on_the_cpu(&x, window, &dy);
        for (rounding, exe) in &drivers {
            same_bits(&format!("{name}, {rounding}"), &cpu, &on_the_kernels(exe, &x, window, &dy));
        }
        // Not vacuous: the gradient reached some inputs and not others.
        assert!(cpu.iter().any(|&v| v != 0.0) && cpu.contains(&0.0), "{name}");
    }
}

/// AdamW's two moment updates and its parameter step, on the kernels and on the CPU
/// (`adamw_in_place`, whose bits are the composed candle ops'), with the constants
/// `adamw_in_place` hands the kernels. More values than a launch has threads.
#[test]
fn adamw_kernels_give_the_cpu_update_to_the_bit() {
    let dir = tempfile::tempdir().unwrap();
    let drivers = compile(dir.path());
    let n = 300_007;
    let step = AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, lr: 3e-4, weight_decay: 0.05, step: 7 };
    let (p, g, m, v) = (values(&[n], 1, 0, 0), values(&[n], 2, 0, 0), values(&[n], 3, 0, 0), values(&[n], 4, 0, 0));
    let v = (v.sqr().unwrap() * 1e-3).unwrap();
    let m = (m * 1e-2).unwrap();
    let (bc1, bc2) = (1.0 - step.beta1.powi(step.step), 1.0 - step.beta2.powi(step.step));
    let constants = [
        step.beta1 as f32,
        (1.0 - step.beta1) as f32,
        step.beta2 as f32,
        (1.0 - step.beta2) as f32,
        (1.0 / bc2.sqrt()) as f32,
        step.eps as f32,
        (1.0 - step.lr * step.weight_decay) as f32,
        (step.lr / bc1) as f32,
    ];
    let mut input = Vec::new();
    put(&mut input, &constants);
    for t in [&p, &g, &m, &v] {
        put(&mut input, &flat(t));
    }
    let copy = |t: &Tensor| Tensor::from_vec(flat(t), t.shape(), &Device::Cpu).unwrap();
    let (cp, cm, cv) = (copy(&p), copy(&m), copy(&v));
    assert!(adamw_in_place(&cp, &g, &cm, &cv, &step).unwrap(), "the CPU updates in place");
    let cpu = [flat(&cp), flat(&cm), flat(&cv)].concat();
    for (rounding, exe) in &drivers {
        same_bits(&format!("AdamW, {rounding}"), &cpu, &run(exe, "adamw", &input));
    }
}

/// ReLU, its gradient from its output, and the residual sum with ReLU, NaNs included.
#[test]
fn relu_kernels_give_the_cpu_values_to_the_bit() {
    let dir = tempfile::tempdir().unwrap();
    let drivers = compile(dir.path());
    let n = 300_007;
    let (x, dy, b) = (values(&[n], 5, 0, 97), values(&[n], 6, 0, 0), values(&[n], 7, 0, 89));
    let xv = Var::from_tensor(&x).unwrap();
    let y = relu(xv.as_tensor()).unwrap();
    let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let cpu = [flat(&y), flat(grads.get(xv.as_tensor()).unwrap())].concat();
    let sum = flat(&add_relu(&x, &b).unwrap());
    let (mut input, mut pair) = (Vec::new(), Vec::new());
    put(&mut input, &flat(&x));
    put(&mut input, &flat(&dy));
    put(&mut pair, &flat(&x));
    put(&mut pair, &flat(&b));
    for (rounding, exe) in &drivers {
        same_bits(&format!("ReLU and its gradient, {rounding}"), &cpu, &run(exe, "relu", &input));
        same_bits(&format!("add-ReLU, {rounding}"), &sum, &run(exe, "add_relu", &pair));
    }
}
