//! molclip's own CUDA kernels (`src/kernels.cu`) run on the CPU, without a GPU: compiled as
//! C++ (a few lines stand in for CUDA's thread indices), each launch's threads run in turn in
//! the configuration `kernels::launch` gives the GPU, grid-stride loops included, and each
//! kernel compiled twice: every multiply and add rounded apart, and fused into FMAs where the
//! compiler sees fit, as NVRTC does. Each must give the CPU op's values to the bit, which
//! the kernels claim: max pooling's backward pass (`pool_argmax`, then `pool_grad`), AdamW's
//! update, ReLU, its gradient and the residual sum with ReLU. The gradient norm's sums of
//! squares (`square_lanes`, then `square_totals`) run in float64, in an order of their own:
//! they must give that order's bits. (`bn_running` takes cuDNN's
//! saved statistics, which the CPU does not make; `bench device-check` compares it on a GPU.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::{Device, Tensor, Var};
use molclip_nn::norm::square_lanes;
use molclip_nn::update::AdamWConstants;
use molclip_nn::{adamw_in_place_all, add_relu, max_pool3d, relu, square_sums, AdamWSlot, AdamWStep, Window3d};

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
        /* The constants, the number of tensors, then each one's p, g, m and v; ADAMW_LIST
           tensors per launch, as kernels.rs groups them. Writes each one's p, m and v. */
        std::vector<float> c = floats();
        uint64_t count = 0;
        if (fread(&count, 8, 1, stdin) != 1) return 2;
        std::vector<std::vector<float>> p(count), g(count), m(count), v(count);
        for (uint64_t k = 0; k < count; k++) p[k] = floats(), g[k] = floats(), m[k] = floats(), v[k] = floats();
        AdamWConstants constants = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]};
        for (uint64_t first = 0; first < count; first += ADAMW_LIST) {
            AdamWList list = {};
            list.count = (unsigned)std::min<uint64_t>(count - first, ADAMW_LIST);
            for (unsigned t = 0; t < list.count; t++) {
                uint64_t k = first + t;
                list.p[t] = p[k].data(), list.g[t] = g[k].data(), list.m[t] = m[k].data(), list.v[t] = v[k].data();
                list.start[t + 1] = list.start[t] + p[k].size();
            }
            if (list.start[list.count] > 0) launch(list.start[list.count], [&] { adamw(list, constants); });
        }
        for (uint64_t k = 0; k < count; k++) write(p[k]), write(m[k]), write(v[k]);
    } else if (kernel == "squares") {
        /* The number of tensors, then each one's lanes and values; ADAMW_LIST tensors per
           launch, as kernels.rs groups them. Writes each one's sum of squares (float64). */
        uint64_t count = 0;
        if (fread(&count, 8, 1, stdin) != 1) return 2;
        std::vector<uint64_t> lanes(count);
        std::vector<std::vector<float>> x(count);
        for (uint64_t k = 0; k < count; k++) {
            if (fread(&lanes[k], 8, 1, stdin) != 1) return 2;
            x[k] = floats();
        }
        std::vector<double> totals(count, NAN);
        for (uint64_t first = 0; first < count; first += ADAMW_LIST) {
            SquareList list = {};
            list.count = (unsigned)std::min<uint64_t>(count - first, ADAMW_LIST);
            for (unsigned t = 0; t < list.count; t++) {
                list.x[t] = x[first + t].data(), list.len[t] = x[first + t].size();
                list.start[t + 1] = list.start[t] + lanes[first + t];
            }
            std::vector<double> lane(list.start[list.count], NAN);
            launch(lane.size(), [&] { square_lanes(list, lane.data()); });
            launch(list.count, [&] { square_totals(list, lane.data(), totals.data() + first); });
        }
        fwrite(totals.data(), 8, totals.size(), stdout);
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

/// The driver's output for `kernel` on `input`, as bytes.
fn run_bytes(exe: &Path, kernel: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(exe).arg(kernel).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the driver failed on {kernel}: {:?}", out.status);
    out.stdout
}

/// The driver's output for `kernel` on `input`, as float32 values.
fn run(exe: &Path, kernel: &str, input: &[u8]) -> Vec<f32> {
    run_bytes(exe, kernel, input).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
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

/// AdamW's two moment updates and its parameter step, on the kernel and on the CPU
/// (`adamw_in_place_all`, whose bits are the composed candle ops'), with the constants
/// `adamw_in_place_all` hands the kernel: 73 tensors of many lengths, an empty one among
/// them, in two launches of the kernel's list (64 tensors), one of more values than a launch
/// has threads.
#[test]
fn adamw_kernel_gives_the_cpu_update_to_the_bit() {
    let dir = tempfile::tempdir().unwrap();
    let drivers = compile(dir.path());
    let step =
        AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, lr: 3e-4, weight_decay: 0.05, step: 7, grad_scale: 0.37 };
    let lengths: Vec<usize> =
        (0..70).map(|k| [1, 7, 255, 256, 257, 1000, 4096][k % 7] + k).chain([0, 300_007, 3]).collect();
    let c = AdamWConstants::of(&step);
    let constants = [c.keep1, c.take1, c.keep2, c.take2, c.unbias, c.eps, c.decay, c.rate, c.scale];
    let mut input = Vec::new();
    put(&mut input, &constants);
    input.extend((lengths.len() as u64).to_le_bytes());
    let mut tensors = Vec::new();
    for (k, &n) in lengths.iter().enumerate() {
        let seed = 4 * k as u64;
        let (p, g) = (values(&[n], seed, 0, 0), values(&[n], seed + 1, 0, 0));
        let m = (values(&[n], seed + 2, 0, 0) * 1e-2).unwrap();
        let v = (values(&[n], seed + 3, 0, 0).sqr().unwrap() * 1e-3).unwrap();
        for t in [&p, &g, &m, &v] {
            put(&mut input, &flat(t));
        }
        tensors.push([p, g, m, v]);
    }
    let slots: Vec<AdamWSlot> = tensors.iter().map(|[p, g, m, v]| AdamWSlot { param: p, grad: g, m, v }).collect();
    let done = adamw_in_place_all(&slots, &step).unwrap();
    assert!(done.iter().all(|&d| d), "the CPU updates in place");
    let cpu: Vec<f32> = tensors.iter().flat_map(|[p, _, m, v]| [flat(p), flat(m), flat(v)].concat()).collect();
    for (rounding, exe) in &drivers {
        same_bits(&format!("AdamW, {rounding}"), &cpu, &run(exe, "adamw", &input));
    }
}

/// The gradient norm's sums of squares: on the kernels, each tensor's sum has the bits of
/// float64 sums in the order `square_lanes` sets (computed here by hand, lane by lane), and
/// agrees with the CPU's float32 sums (`square_sums`) to float32's rounding: 73 tensors in two
/// launches, an empty one and one with more values than its most lanes cover at 256 each.
#[test]
fn square_sum_kernels_give_float64_sums_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let drivers = compile(dir.path());
    let lengths: Vec<usize> =
        (0..70).map(|k| [1, 7, 255, 256, 257, 1000, 4096][k % 7] + k).chain([0, 1_100_003, 3]).collect();
    let mut input = Vec::new();
    input.extend((lengths.len() as u64).to_le_bytes());
    let (mut by_hand, mut tensors) = (Vec::new(), Vec::new());
    for (k, &n) in lengths.iter().enumerate() {
        let x = values(&[n], 100 + k as u64, 0, 0);
        let lanes = square_lanes(n);
        input.extend((lanes as u64).to_le_bytes());
        put(&mut input, &flat(&x));
        let v = flat(&x);
        let lane = |l: usize| v.iter().skip(l).step_by(lanes).fold(0f64, |s, &x| s + x as f64 * x as f64);
        by_hand.push((0..lanes).map(lane).fold(0f64, |s, l| s + l));
        tensors.push(x);
    }
    assert_eq!(square_lanes(1_100_003), 4096, "the largest tensor's lanes are capped");
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let cpu = square_sums(&refs).unwrap();
    for (k, (a, b)) in by_hand.iter().zip(&cpu).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a.max(1e-30), "tensor {k}: {a} by hand, {b} on the CPU");
    }
    for (rounding, exe) in &drivers {
        let got: Vec<f64> = run_bytes(exe, "squares", &input)
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), by_hand.len(), "{rounding}");
        let differing = got.iter().zip(&by_hand).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "sums of squares, {rounding}: {differing} of {} differ", got.len());
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
