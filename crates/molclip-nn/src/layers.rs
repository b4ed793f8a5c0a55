//! The small layers every model uses, with PyTorch's names, defaults and numerics.

use candle_core::{DType, Tensor, Var, D};

use super::fused::{self, on_cpu_f32, After};
use super::params::{Init, Vb};
use super::precision::{cast_product, compute_dtype};
use crate::error::Result;

/// `nn.Linear`: y = x Wᵀ + b, over the last dimension of any input.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `nn.Linear(in_dim, out_dim, bias)` with PyTorch's initialisation.
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = Init::pytorch_default(in_dim);
        let weight = vb.param("weight", &[out_dim, in_dim], init)?;
        let bias = if bias { Some(vb.param("bias", &[out_dim], init)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// A linear layer of these weights (`[out, in]`) and bias.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x · wᵀ + b` over the last dimension (fused on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::flops::add_multiply_adds(x.elem_count() * self.weight.dim(0)?);
        if on_cpu_f32(x) {
            return cast_product(x, &self.weight, |x, w| match &self.bias {
                Some(b) => fused::linear(x, w, b),
                None => fused::matmul_t(x, w),
            });
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dimension");
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = cast_product(&x2, &self.weight, |x, w| Ok(x.matmul(&w.t()?)?))?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `nn.LayerNorm(dim, eps)`.
    pub fn new(vb: &Vb, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.param("weight", &[dim], Init::Ones)?, bias: vb.param("bias", &[dim], Init::Zeros)?, eps })
    }

    /// Normalises the last dimension (fused on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if on_cpu_f32(x) {
            return fused::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        self.forward_composed(x)
    }

    pub(crate) fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// The unbiased variance (times n / (n - 1)) from the biased one of n values, as PyTorch's
/// running statistics take it.
fn unbiased(n: f64, var: &Tensor) -> Result<Tensor> {
    Ok(if n > 1.0 { (var * (n / (n - 1.0)))? } else { var.clone() })
}

/// `nn.BatchNorm1d/2d/3d`: normalises dimension 1 of `[B, C, ...]` with batch statistics while
/// training (updating the running ones, momentum 0.1, unbiased variance) and with the running
/// statistics in evaluation.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// `nn.BatchNorm{1,2,3}d(channels)`: weight 1, bias 0, running statistics.
    pub fn new(vb: &Vb, channels: usize) -> Result<Self> {
        Self::build(vb, channels, true)
    }

    /// BNNeck: the bias stays at zero (not trained), as in the re-identification baselines.
    pub fn without_bias_training(vb: &Vb, channels: usize) -> Result<Self> {
        Self::build(vb, channels, false)
    }

    fn build(vb: &Vb, channels: usize, train_bias: bool) -> Result<Self> {
        let weight = vb.param("weight", &[channels], Init::Ones)?;
        let bias = if train_bias {
            vb.param("bias", &[channels], Init::Zeros)?
        } else {
            vb.fixed("bias", &[channels], Init::Zeros)?
        };
        Ok(Self {
            weight,
            bias,
            running_mean: vb.buffer("running_mean", &[channels], DType::F32, Init::Zeros)?,
            running_var: vb.buffer("running_var", &[channels], DType::F32, Init::Ones)?,
            num_batches_tracked: vb.buffer("num_batches_tracked", &[], DType::I64, Init::Zeros)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Batch statistics in training (updating the running ones), running statistics otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, train, After::Nothing)
    }

    /// relu(batch_norm(x)), fused on the CPU.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, train, After::Relu)
    }

    /// relu(batch_norm(x) + shortcut), the end of a residual block (`shortcut`: x's shape).
    /// Fused on the CPU in training, where batch norm's own output is never kept for the
    /// backward pass, as PyTorch's in-place `out += identity; relu_(out)` keeps none.
    pub fn forward_add_relu_t(&self, x: &Tensor, shortcut: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, train, After::AddRelu(shortcut))
    }

    /// max_pool3d(relu(batch_norm(x)), window), `x` `[B, C, T, H, W]` (a stem's output). Fused
    /// on the CPU in training: the pool scans each plane of batch norm's output while it is in
    /// cache, the output itself is never kept, and the backward pass goes from the pool's
    /// gradient to batch norm's input in two passes over `x`. The same bits as the ops apart.
    pub fn forward_relu_max_pool_t(&self, x: &Tensor, train: bool, window: crate::Window3d) -> Result<Tensor> {
        if train && on_cpu_f32(x) && x.rank() == 5 {
            let (y, mean, var) = fused::batch_norm_relu_max_pool_train(x, &self.weight, &self.bias, self.eps, window)?;
            let m: usize = x.dims()[2..].iter().product();
            self.record_batch(mean, var, x.dim(0)? * m, x.device())?;
            return Ok(y);
        }
        crate::max_pool3d(&self.forward_relu_t(x, train)?, window)
    }

    /// The running statistics updated from a batch's mean and biased variance over `count`
    /// values per channel.
    fn record_batch(&self, mean: Vec<f32>, var: Vec<f32>, count: usize, device: &candle_core::Device) -> Result<()> {
        let (c, n) = (mean.len(), count as f32);
        let unbiased: Vec<f32> = var.iter().map(|v| if n > 1.0 { v * n / (n - 1.0) } else { *v }).collect();
        self.update_running(&Tensor::from_vec(mean, c, device)?, &Tensor::from_vec(unbiased, c, device)?)
    }

    fn apply(&self, x: &Tensor, train: bool, after: After) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let m: usize = dims[2..].iter().product();
        let x3 = x.reshape((b, c, m))?;
        if train && on_cpu_f32(x) {
            let shortcut;
            let after = match after {
                After::AddRelu(s) => {
                    shortcut = s.reshape((b, c, m))?;
                    After::AddRelu(&shortcut)
                }
                other => other,
            };
            let (y, mean, var) = fused::batch_norm_train(&x3, &self.weight, &self.bias, self.eps, after)?;
            self.record_batch(mean, var, b * m, x.device())?;
            return Ok(y.reshape(dims)?);
        }
        #[cfg(feature = "cudnn")]
        if train && x.device().is_cuda() && x.dtype() == DType::F32 && crate::cudnn::serves(DType::F32) {
            let running = [self.running_mean.as_tensor(), self.running_var.as_tensor()];
            let y = crate::cudnn::batch_norm_train(&x3, &self.weight, &self.bias, self.eps, running, self.momentum)?;
            self.count_batch()?;
            return Self::then(y.reshape(dims)?, after);
        }
        Self::then(self.apply_composed(&x3, train)?.reshape(dims)?, after)
    }

    /// `y` followed by `after`, composed.
    fn then(y: Tensor, after: After) -> Result<Tensor> {
        match after {
            After::Nothing => Ok(y),
            After::Relu => relu(&y),
            After::AddRelu(shortcut) => add_relu(&y, shortcut),
        }
    }

    fn update_running(&self, mean: &Tensor, unbiased_var: &Tensor) -> Result<()> {
        let mom = self.momentum;
        let rm = ((self.running_mean.as_tensor() * (1.0 - mom))? + (mean * mom)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - mom))? + (unbiased_var * mom)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        self.count_batch()
    }

    /// `num_batches_tracked += 1`.
    fn count_batch(&self) -> Result<()> {
        let tracked = self.num_batches_tracked.as_tensor().to_dtype(DType::F64)?;
        self.num_batches_tracked.set(&(tracked + 1.0)?.to_dtype(DType::I64)?)?;
        Ok(())
    }

    /// `x3`: `[B, C, M]`.
    pub(crate) fn apply_composed(&self, x3: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, m) = x3.dims3()?;
        let (mean, var) = if train {
            // Per channel over batch and space-time; the transpose makes the reductions run
            // over the contiguous last dimension.
            let per_channel = x3.transpose(0, 1)?.reshape((c, b * m))?;
            let mean = per_channel.mean_keepdim(1)?;
            let var = per_channel.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let unbiased = unbiased((b * m) as f64, &var.detach())?;
            self.update_running(&mean.detach().flatten_all()?, &unbiased.flatten_all()?)?;
            (mean.reshape((1, c, 1))?, var.reshape((1, c, 1))?)
        } else {
            (self.running_mean.as_tensor().reshape((1, c, 1))?, self.running_var.as_tensor().reshape((1, c, 1))?)
        };
        // Fold the affine into one scale and shift: two passes over the activations.
        let scale = self.weight.reshape((1, c, 1))?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let shift = self.bias.reshape((1, c, 1))?.broadcast_sub(&mean.broadcast_mul(&scale)?)?;
        Ok(x3.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

/// `nn.Embedding`, default init N(0, 1).
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// `nn.Embedding(count, dim)`.
    pub fn new(vb: &Vb, count: usize, dim: usize) -> Result<Self> {
        Ok(Self { weight: vb.param("weight", &[count, dim], Init::Normal(1.0))? })
    }

    /// `ids`: a U32 vector.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.weight.index_select(ids, 0)?)
    }
}

/// a · bᵀ for `a`: `[..., K]` and `b`: `[M, K]`, differentiable in both, in float32 whatever
/// [`crate::autocast`] says (the losses' products). On the CPU through `molclip_cpu`'s GEMM, and
/// so under `MOLCLIP_CPU`, as every product of training is.
pub fn matmul_t(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::flops::add_multiply_adds(a.elem_count() * b.dim(0)?);
    if on_cpu_f32(a) {
        return fused::matmul_t(a, b);
    }
    let (k, mut dims) = (a.dim(D::Minus1)?, a.dims().to_vec());
    *dims.last_mut().expect("a has a last dimension: dim(Minus1) said so") = b.dim(0)?;
    Ok(a.reshape(((), k))?.matmul(&b.t()?)?.reshape(dims)?)
}

/// Softmax over the last dimension, differentiable (candle's fused softmax has no backward).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(x) {
        return fused::softmax_last_dim(x);
    }
    softmax_composed(x)
}

pub(crate) fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Rows scaled to unit L2 norm (as `F.normalize`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// GELU, exact (erf) form as PyTorch's default.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(x) {
        fused::gelu(x)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// max(x, 0) (one kernel on the CPU and on CUDA devices).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if fused::elementwise_serves(x) {
        fused::relu(x)
    } else {
        Ok(x.relu()?)
    }
}

/// relu(a + b), the end of a residual block (one kernel on the CPU and on CUDA devices).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused::elementwise_serves(a) && b.dtype() == a.dtype() {
        fused::add_relu(a, b)
    } else {
        Ok((a + b)?.relu()?)
    }
}

/// Multi-head self-attention over packed projections: `qkv` is `[B, N, 3·D]` (queries, keys
/// and values, each `D = heads × head size`), the result `[B, N, D]`. Fused on the CPU.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    attention_of_first(qkv, heads, qkv.dim(1)?)
}

/// [`attention`]'s output for the first `queries` tokens only, `[B, queries, D]`: their
/// queries against the keys and values of all `N` tokens (a class-token readout needs one).
/// The same values as [`attention`]'s first rows, for `queries / N` of its work.
pub fn attention_of_first(qkv: &Tensor, heads: usize, queries: usize) -> Result<Tensor> {
    // Scores and weighted sum: each query against every token, over all heads' dimensions.
    let (b, n, d3) = qkv.dims3()?;
    crate::flops::add_multiply_adds(2 * b * queries * n * (d3 / 3));
    if on_cpu_f32(qkv) && compute_dtype().is_none() {
        return fused::attention(qkv, heads, queries);
    }
    attention_composed(qkv, heads, queries)
}

/// [`attention_of_first`] from candle ops: what other devices run.
pub(crate) fn attention_composed(qkv: &Tensor, heads: usize, queries: usize) -> Result<Tensor> {
    let (b, n, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let dh = d / heads;
    let qkv = qkv.reshape((b, n, 3, heads, dh))?.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.get(0)?.narrow(2, 0, queries)?.contiguous()? * (dh as f64).powf(-0.5))?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let att = softmax_last_dim(&cast_product(&q, &k, |q, k| Ok(q.matmul(&k.t()?)?))?)?;
    Ok(cast_product(&att, &v, |a, v| Ok(a.matmul(v)?))?.transpose(1, 2)?.reshape((b, queries, d))?)
}
