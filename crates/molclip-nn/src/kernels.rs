//! molclip's own CUDA kernels (feature `cuda`), compiled once per process by NVRTC and loaded
//! per device: the element-wise passes that candle would compose from several launches each.
//! Each computes what its CPU body does, in float32, in the same order.

use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{CudaFunction, LaunchConfig};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::CudaDevice;

const SOURCE: &str = r#"
#define EACH(i, n) for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < (n); \
                        i += (unsigned long long)blockDim.x * gridDim.x)

extern "C" __global__ void adamw_moment(float* x, const float* g, unsigned long long n, float keep, float take, int square) {
    EACH(i, n) {
        float gi = square ? g[i] * g[i] : g[i];
        x[i] = (x[i] * keep + 0.0f) + (gi * take + 0.0f);
    }
}

extern "C" __global__ void adamw_step(float* p, const float* m, const float* v, unsigned long long n,
                                      float unbias, float eps, float decay, float rate) {
    EACH(i, n) {
        float denom = (sqrtf(v[i]) * unbias + 0.0f) * 1.0f + eps;
        p[i] = (p[i] * decay + 0.0f) - ((m[i] / denom) * rate + 0.0f);
    }
}

extern "C" __global__ void relu(const float* x, float* y, unsigned long long n) {
    EACH(i, n) { y[i] = fmaxf(x[i], 0.0f); }
}

extern "C" __global__ void add_relu(const float* a, const float* b, float* y, unsigned long long n) {
    EACH(i, n) { y[i] = fmaxf(a[i] + b[i], 0.0f); }
}

/* The gradient through a ReLU, from its output: it passes where y > 0. */
extern "C" __global__ void relu_grad(const float* y, const float* dy, float* dx, unsigned long long n) {
    EACH(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

/* Batch norm's running statistics from cuDNN's saved ones (mean[c], then 1 / sqrt(var + eps)[c]):
   running = running * (1 - momentum) + batch * momentum, the variance unbiased (times n / (n - 1)). */
extern "C" __global__ void bn_running(float* running, const float* saved, unsigned long long c, int variance,
                                      float keep, float momentum, float eps, float unbias) {
    EACH(i, c) {
        float batch = variance ? (1.0f / (saved[c + i] * saved[c + i]) - eps) * unbias : saved[i];
        running[i] = running[i] * keep + batch * momentum;
    }
}
"#;

/// The kernel `name`, compiled on the first use in the process and loaded on `dev`.
pub(crate) fn function(dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let ptx = PTX.get_or_init(|| nvrtc::compile_ptx(SOURCE).map(|p| p.to_src()).map_err(|e| format!("{e:?}")));
    let ptx = ptx.as_ref().map_err(|e| candle_core::Error::Msg(format!("compiling molclip's CUDA kernels: {e}")))?;
    Ok(dev.get_or_load_custom_func(name, "molclip_kernels", ptx)?.into_cuda_function())
}

/// Whether the kernels compiled and load on `dev` (if not, the reason is printed once, and the
/// callers compose candle ops instead).
pub(crate) fn ready(dev: &CudaDevice) -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| match function(dev, "relu") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("warning: molclip's CUDA kernels are not available ({e}); composing candle ops instead");
            false
        }
    })
}

/// A grid-stride launch over `n` elements, a few blocks per multiprocessor at most.
pub(crate) fn launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1024) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
