//! Fused CPU kernels, each with a hand-written backward pass, for the layers that dominate
//! training time: linear (with or without bias), layer norm, batch norm (alone, with ReLU,
//! or with a residual sum and ReLU), GELU, softmax, ReLU and add + ReLU.
//!
//! Composed from candle ops, each of these is several graph nodes, and every node costs
//! full passes over the activations in the backward pass (a zero tensor, an add, the
//! reduction of a broadcast). Fused, each is one forward and one backward pass. Other devices
//! use the composed versions; `tests` check that both agree, values and gradients.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{f32_slice, gemm_f32_uninit, linear_uninit, write_copy, written_by};
use crate::error::Result;

pub(crate) fn on_cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Rows per parallel task: about 16k elements each, from the shape alone, so that partial
/// sums per task (summed in task order) do not depend on the thread count.
fn rows_per_task(rows: usize, width: usize) -> usize {
    (16_384 / width.max(1)).clamp(1, rows.max(1))
}

fn dims2(l: &Layout) -> candle_core::Result<(usize, usize)> {
    l.shape().dims2()
}

/// A tensor seen as rows of its last dimension.
fn rows_and_width(l: &Layout) -> (usize, usize) {
    let width = *l.shape().dims().last().unwrap_or(&1);
    (l.shape().elem_count() / width.max(1), width)
}

// ------------------------------------------------------------------------------ linear

/// x `[..., K]` · wᵀ (`w`: `[O, K]`) + b, over the last dimension of any input.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearCpu)?)
}

/// x `[..., K]` · wᵀ (`w`: `[O, K]`): [`linear`] without a bias, both operands tracked.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, ProductCpu)?)
}

/// [`linear`]'s forward pass; `b: None` leaves out the bias.
fn linear_fwd(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    b: Option<&[f32]>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
    let (rows, k) = rows_and_width(l1);
    let (o, k_w) = dims2(l2)?;
    if k != k_w {
        candle_core::bail!("linear: inputs of width {k} against weights of width {k_w}");
    }
    // wᵀ: element (k, o) sits at o·K + k.
    let (lhs, rhs) = ((x, (1, k as isize)), (w, (k as isize, 1)));
    let y = match b {
        Some(b) => {
            if b.len() != o {
                candle_core::bail!("linear: {} biases for {o} outputs", b.len());
            }
            // SAFETY: the layer sets all rows x o values.
            unsafe { written_by(rows * o, |y| linear_uninit(rows, o, k, y, x, w, b)) }
        }
        // SAFETY: the product sets all rows x o values.
        None => unsafe { written_by(rows * o, |y| gemm_f32_uninit(rows, o, k, y, lhs, rhs)) },
    };
    let mut dims = l1.shape().dims().to_vec();
    *dims.last_mut().unwrap() = o;
    Ok((CpuStorage::F32(y), Shape::from(dims)))
}

/// The gradients of x · wᵀ: (dx = dy · w, shaped as x, or `None` when nothing before x needs
/// it, as for a first layer fed the data; dw = dyᵀ · x).
fn linear_bwd(x: &Tensor, w: &Tensor, dy: &Tensor) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
    // Untracked (no_bwd): a gradient built from tracked tensors would keep the whole
    // forward graph alive for as long as the optimiser keeps its moments.
    let (k, o) = (x.dims()[x.rank() - 1], w.dim(0)?);
    let dx_rows = if x.track_op() { x.elem_count() / k.max(1) } else { 0 };
    let dy = dy.contiguous()?.reshape(((), o))?;
    let packed = x.apply_op3_no_bwd(w, &dy, &LinearGrad { dx: dx_rows > 0 })?;
    let dx = (dx_rows > 0).then(|| packed.narrow(0, 0, dx_rows * k)?.reshape(x.dims())).transpose()?;
    // A copy, so that the small gradient does not keep the large buffer alive.
    let dw = packed.narrow(0, dx_rows * k, o * k)?.reshape((o, k))?.force_contiguous()?;
    Ok((dx, dw, dy))
}

struct LinearCpu;

impl CustomOp3 for LinearCpu {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        linear_fwd(s1, l1, s2, l2, Some(f32_slice(s3, l3)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, dy) = linear_bwd(x, w, dy)?;
        let db = dy.apply_op1_no_bwd(&ColumnSum)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

struct ProductCpu;

impl CustomOp2 for ProductCpu {
    fn name(&self) -> &'static str {
        "matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        linear_fwd(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_bwd(x, w, dy)?;
        Ok((dx, Some(dw)))
    }
}

/// (x `[N, K]`, w `[O, K]`, dy `[N, O]`) to [dx = dy · w (N·K), dw = dyᵀ · x (O·K)] packed,
/// both products through `molclip_cpu`'s GEMM (and so under `MOLCLIP_CPU`); without `dx`,
/// dw alone.
struct LinearGrad {
    dx: bool,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, k) = rows_and_width(l1);
        let (o, _) = dims2(l2)?;
        if dy.len() != n * o {
            candle_core::bail!("linear-grad: {} output gradients for {n} rows of {o}", dy.len());
        }
        let dx_len = if self.dx { n * k } else { 0 };
        let write = |out: &mut [MaybeUninit<f32>]| {
            let (dx, dw) = out.split_at_mut(dx_len);
            if self.dx {
                // dx[N × K] = dy[N × O] · w[O × K]
                gemm_f32_uninit(n, k, o, dx, (dy, (1, o as isize)), (w, (1, k as isize)));
            }
            // dw[O × K] = dyᵀ[O × N] · x[N × K]: dyᵀ's element (o, n) sits at n·O + o.
            gemm_f32_uninit(o, k, n, dw, (dy, (o as isize, 1)), (x, (1, k as isize)));
        };
        // SAFETY: the products set dx's n x k values (when asked for) and dw's o x k.
        let out = unsafe { written_by(dx_len + o * k, write) };
        Ok((CpuStorage::F32(out), Shape::from(dx_len + o * k)))
    }
}

/// `[N, D]` to the sum of its rows, `[D]`.
struct ColumnSum;

fn column_sums(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    let chunk = rows_per_task(n, d);
    let partial: Vec<Vec<f32>> = x
        .par_chunks(chunk * d)
        .map(|rows| {
            let mut acc = vec![0f32; d];
            for row in rows.chunks(d) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .collect();
    sum_in_order(partial, d)
}

/// Adds per-task partial sums in task order: a fixed order, so that results do not depend
/// on how the thread pool scheduled the tasks (same seed, same numbers).
fn sum_in_order(partial: Vec<Vec<f32>>, d: usize) -> Vec<f32> {
    partial.into_iter().fold(vec![0f32; d], |mut a, b| {
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    })
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = dims2(l)?;
        Ok((CpuStorage::F32(column_sums(f32_slice(s, l)?, n, d)), Shape::from(d)))
    }
}

// -------------------------------------------------------------------------- layer norm

/// Layer norm over the last dimension of any input.
pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormCpu { eps: eps as f32 })?)
}

struct LayerNormCpu {
    eps: f32,
}

/// A row's mean and 1 / √(variance + eps), summed in float64 in eight lanes ([`LaneSums`]):
/// the same on every instruction set, and vectorised.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f64;
    let mut sum = LaneSums::default();
    sum.add(row, row, |v, _| [v as f64]);
    let mean = sum.total()[0] / d;
    let mut sq = LaneSums::default();
    sq.add(row, row, |v, _| [(v as f64 - mean) * (v as f64 - mean)]);
    let var = sq.total()[0] / d;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Layer norm of rows of `x` into `y`, one task's rows.
struct LayerNormRows<'a> {
    y: &'a mut [MaybeUninit<f32>],
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    eps: f32,
}

impl molclip_cpu::Vectorized for LayerNormRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let d = self.w.len();
        let (w, b) = (self.w, &self.b[..d]);
        for (yr, xr) in self.y.chunks_exact_mut(d).zip(self.x.chunks_exact(d)) {
            let (mean, rstd) = row_stats(xr, self.eps);
            // Indexed, as in `map_par`.
            #[allow(clippy::needless_range_loop)]
            for i in 0..d {
                yr[i].write((xr[i] - mean) * rstd * w[i] + b[i]);
            }
        }
    }
}

/// Layer norm's backward pass over one task's rows: their input gradient, and the task's
/// partial sums of the weight and bias gradients.
struct LayerNormGradRows<'a> {
    dx: &'a mut [MaybeUninit<f32>],
    x: &'a [f32],
    dy: &'a [f32],
    w: &'a [f32],
    eps: f32,
}

impl molclip_cpu::Vectorized for LayerNormGradRows<'_> {
    type Output = (Vec<f32>, Vec<f32>);
    #[inline(always)]
    fn run(self) -> (Vec<f32>, Vec<f32>) {
        let (d, w) = (self.w.len(), self.w);
        // The weight and bias gradients' partial sums, and a row's dy · w.
        let (mut dw, mut db, mut g) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
        let rows = self.dx.chunks_exact_mut(d).zip(self.x.chunks_exact(d)).zip(self.dy.chunks_exact(d));
        // Indexed loops, as in `map_par`.
        #[allow(clippy::needless_range_loop)]
        for ((dxr, xr), dyr) in rows {
            let (mean, rstd) = row_stats(xr, self.eps);
            for i in 0..d {
                g[i] = dyr[i] * w[i];
            }
            let mut sums = LaneSums::default();
            sums.add(&g, xr, |g, x| [g as f64, (g * ((x - mean) * rstd)) as f64]);
            let [sum_g, sum_gx] = sums.total();
            let (mg, mgx) = ((sum_g / d as f64) as f32, (sum_gx / d as f64) as f32);
            for i in 0..d {
                let xh = (xr[i] - mean) * rstd;
                dw[i] += dyr[i] * xh;
                db[i] += dyr[i];
                dxr[i].write(rstd * (g[i] - mg - xh * mgx));
            }
        }
        (dw, db)
    }
}

impl CustomOp3 for LayerNormCpu {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, d) = rows_and_width(l1);
        let (rows, isa) = (rows_per_task(n, d) * d, molclip_cpu::isa());
        let write = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(rows).zip(x.par_chunks(rows)).for_each(|(y, x)| {
                molclip_cpu::vectorize(isa, LayerNormRows { y, x, w: &w[..d], b, eps: self.eps });
            })
        };
        // SAFETY: the tasks' rows tile the n rows of d values, and each task writes every
        // value of its rows.
        let y = unsafe { written_by(n * d, write) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d) = rows_and_width(x.layout());
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n * d)?.reshape(x.dims())?;
        // Copies, so that the small gradients do not keep the large buffer alive.
        Ok((
            Some(dx),
            Some(packed.narrow(0, n * d, d)?.force_contiguous()?),
            Some(packed.narrow(0, n * d + d, d)?.force_contiguous()?),
        ))
    }
}

/// (x, w, dy) to [dx (N·D), dw (D), db (D)] packed.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, d) = rows_and_width(l1);
        let (rows, isa) = (rows_per_task(n, d) * d, molclip_cpu::isa());
        let write = |out: &mut [MaybeUninit<f32>]| {
            let (dx, sums) = out.split_at_mut(n * d);
            let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(rows)
                .zip(x.par_chunks(rows).zip(dy.par_chunks(rows)))
                .map(|(dx, (x, dy))| {
                    molclip_cpu::vectorize(isa, LayerNormGradRows { dx, x, dy, w: &w[..d], eps: self.eps })
                })
                .collect();
            let (dws, dbs): (Vec<_>, Vec<_>) = partial.into_iter().unzip();
            write_copy(&mut sums[..d], &sum_in_order(dws, d));
            write_copy(&mut sums[d..], &sum_in_order(dbs, d));
        };
        // SAFETY: the tasks' rows tile dx (n rows of d values), each task writes every value of
        // its rows, and the 2·d values after dx take dw and db.
        let out = unsafe { written_by(n * d + 2 * d, write) };
        Ok((CpuStorage::F32(out), Shape::from(n * d + 2 * d)))
    }
}

// -------------------------------------------------------------------------- batch norm

/// What follows batch norm in one fused op.
#[derive(Clone, Copy)]
pub(crate) enum After<'a> {
    /// Nothing.
    Nothing,
    /// ReLU.
    Relu,
    /// relu(· + shortcut), the end of a residual block: batch norm's own output is never
    /// stored, which is a tensor of the block's widest size less to keep for the backward pass.
    AddRelu(&'a Tensor),
}

/// Batch norm with batch statistics (training) over `[B, C, M]`, followed by `after`.
/// Returns the output and the batch mean and biased variance per channel (for the running
/// statistics).
pub(crate) fn batch_norm_train(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    after: After,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let stats = Arc::new(Mutex::new(Vec::new()));
    let (x, eps) = (x.contiguous()?, eps as f32);
    let y = match after {
        After::Nothing | After::Relu => {
            let op = BatchNormCpu { eps, relu: matches!(after, After::Relu), stats: stats.clone() };
            x.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?
        }
        After::AddRelu(shortcut) => {
            let op = BatchNormAddReluCpu { eps, stats: stats.clone() };
            x.apply_op3(&Tensor::cat(&[w, b], 0)?, &shortcut.contiguous()?, op)?
        }
    };
    let (mean, var) = batch_stats(&stats);
    Ok((y, mean, var))
}

/// The mean and biased variance per channel that a forward pass stored in `stats`.
fn batch_stats(stats: &Mutex<Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    let (mean, var) = s.split_at(s.len() / 2);
    (mean.to_vec(), var.to_vec())
}

/// max_pool3d(relu(batch_norm(x)), window) with batch statistics (training), over
/// `[B, C, T, H, W]`, as one op: the pool scans each plane of batch norm's output as soon as
/// it is written, in cache, and the output is not kept; the pool's argmax is. Returns the
/// pooled output and the batch mean and biased variance per channel.
pub(crate) fn batch_norm_relu_max_pool_train(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    window: crate::Window3d,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let stats = Arc::new(Mutex::new(Vec::new()));
    let op = BatchNormReluMaxPoolCpu { eps: eps as f32, window, stats: stats.clone(), argmax: OnceLock::new() };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op)?;
    let (mean, var) = batch_stats(&stats);
    Ok((y, mean, var))
}

struct BatchNormCpu {
    eps: f32,
    relu: bool,
    /// Mean then biased variance per channel, written by the forward pass.
    stats: Arc<Mutex<Vec<f32>>>,
}

/// relu(batch_norm(x) + shortcut): (x, [w, b], shortcut).
struct BatchNormAddReluCpu {
    eps: f32,
    /// As [`BatchNormCpu::stats`].
    stats: Arc<Mutex<Vec<f32>>>,
}

/// What batch norm's forward kernel does after its affine map.
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    /// Nothing.
    Nothing,
    /// ReLU.
    Relu,
    /// relu(· + shortcut), the shortcut laid out as the input.
    AddRelu(&'a [f32]),
}

/// Batch norm's forward pass over `[B, C, M]`, then `epilogue`; stores the mean and biased
/// variance per channel in `stats`.
fn batch_norm_fwd(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (b, c, m): (usize, usize, usize),
    eps: f32,
    epilogue: Epilogue,
    stats: &Mutex<Vec<f32>>,
) -> Vec<f32> {
    let (scale, shift) = batch_norm_affine(x, w, bias, (b, c, m), eps, stats);
    let isa = molclip_cpu::isa();
    let write = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(m).zip(x.par_chunks(m)).enumerate().for_each(|(bc, (y, x))| {
            // The row's own part of the shortcut.
            let epilogue = match epilogue {
                Epilogue::AddRelu(sc) => Epilogue::AddRelu(&sc[bc * m..][..m]),
                other => other,
            };
            molclip_cpu::vectorize(isa, AffineRow { y, x, scale: scale[bc % c], shift: shift[bc % c], epilogue })
        })
    };
    // SAFETY: the B·C rows of M values tile y, and each row's loop writes all of its values.
    unsafe { written_by(b * c * m, write) }
}

/// Batch norm's affine map per channel over `[B, C, M]` from the batch statistics, `(scale,
/// shift)`; stores the mean and biased variance per channel in `stats`.
fn batch_norm_affine(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (b, c, m): (usize, usize, usize),
    eps: f32,
    stats: &Mutex<Vec<f32>>,
) -> (Vec<f32>, Vec<f32>) {
    let moments = channel_moments(x, b, c, m);
    let scale: Vec<f32> = moments.iter().zip(w).map(|((_, var), w)| w / (var + eps).sqrt()).collect();
    let shift: Vec<f32> = moments.iter().zip(&scale).zip(bias).map(|(((mean, _), s), bb)| bb - mean * s).collect();
    *stats.lock().unwrap_or_else(|e| e.into_inner()) =
        moments.iter().map(|m| m.0).chain(moments.iter().map(|m| m.1)).collect();
    (scale, shift)
}

/// Batch norm's gradients from the gradient `dy` at its affine output, with the statistics of
/// the forward pass: (dx, [dw, db] packed).
fn batch_norm_bwd(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stats: &Mutex<Vec<f32>>,
    dy: &Tensor,
    grad: BatchNormGrad,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, c, m) = x.dims3()?;
    let stats = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let params = Tensor::cat(&[w, bias, &Tensor::from_vec(stats, 2 * c, x.device())?], 0)?;
    let packed = x.apply_op3_no_bwd(&params, &dy.contiguous()?, &grad)?;
    let n = b * c * m;
    // A copy, so that the small gradients do not keep the large buffer alive.
    Ok((packed.narrow(0, 0, n)?.reshape((b, c, m))?, packed.narrow(0, n, 2 * c)?.force_contiguous()?))
}

/// The gradients of (x, w, b) from [`batch_norm_bwd`]'s `dx` and packed `[dw, db]`.
type InputWeightBias = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
fn input_weight_bias(dx: Tensor, dwb: &Tensor) -> candle_core::Result<InputWeightBias> {
    let c = dwb.dim(0)? / 2;
    Ok((Some(dx), Some(dwb.narrow(0, 0, c)?), Some(dwb.narrow(0, c, c)?)))
}

/// Mean and biased variance of each channel of `[B, C, M]`, each a sum in [`LaneSums`]'s order
/// (two passes: the mean, then the squared deviations from it).
fn channel_moments(x: &[f32], b: usize, c: usize, m: usize) -> Vec<(f32, f32)> {
    let isa = molclip_cpu::isa();
    (0..c).into_par_iter().map(|ci| molclip_cpu::vectorize(isa, Moments { x, bcm: (b, c, m), ci })).collect()
}

/// One row of batch norm's output: `x · scale + shift`, then the epilogue (its shortcut that
/// row's part).
struct AffineRow<'a> {
    y: &'a mut [MaybeUninit<f32>],
    x: &'a [f32],
    scale: f32,
    shift: f32,
    epilogue: Epilogue<'a>,
}

impl molclip_cpu::Vectorized for AffineRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (y, (s, t)) = (self.y, (self.scale, self.shift));
        let x = &self.x[..y.len()];
        // Indexed loops, as in `map_par`.
        #[allow(clippy::needless_range_loop)]
        match self.epilogue {
            Epilogue::AddRelu(sc) => {
                let sc = &sc[..y.len()];
                for i in 0..y.len() {
                    y[i].write((x[i] * s + t + sc[i]).max(0.0));
                }
            }
            Epilogue::Relu => {
                for i in 0..y.len() {
                    y[i].write((x[i] * s + t).max(0.0));
                }
            }
            Epilogue::Nothing => {
                for i in 0..y.len() {
                    y[i].write(x[i] * s + t);
                }
            }
        }
    }
}

/// Channel `ci`'s mean and biased variance over `[B, C, M]`.
struct Moments<'a> {
    x: &'a [f32],
    bcm: (usize, usize, usize),
    ci: usize,
}

impl molclip_cpu::Vectorized for Moments<'_> {
    type Output = (f32, f32);
    #[inline(always)]
    fn run(self) -> (f32, f32) {
        let ((b, _, m), level) = (self.bcm, molclip_cpu::isa());
        let n = (b * m) as f64;
        let rows = |bi: usize| channel_row(self.x, self.bcm, bi, self.ci);
        let mut sum = LaneSums::default();
        for bi in 0..b {
            sum.add_values(level, rows(bi));
        }
        let mean = sum.total()[0] / n;
        let mut sq = LaneSums::default();
        for bi in 0..b {
            sq.add_squared_deviations(level, rows(bi), mean);
        }
        (mean as f32, (sq.total()[0] / n) as f32)
    }
}

/// Channel `ci`'s values in video `bi` of `[B, C, M]`.
#[inline(always)]
fn channel_row(values: &[f32], (_, c, m): (usize, usize, usize), bi: usize, ci: usize) -> &[f32] {
    &values[(bi * c + ci) * m..][..m]
}

/// `K` float64 sums of a long run of values kept in eight running sums each, value `i` of a
/// run going to sum `i % 8`, and the eight added in a fixed tree at the end: unlike one
/// running sum, the loop vectorises (each sum is a lane), and the result is the same on every
/// instruction set and thread count.
struct LaneSums<const K: usize>([[f64; 8]; K]);

impl<const K: usize> Default for LaneSums<K> {
    fn default() -> Self {
        Self([[0.0; 8]; K])
    }
}

impl<const K: usize> LaneSums<K> {
    /// Adds `f(a[i], b[i])` for every `i` of `a` (`b` at least as long).
    #[inline(always)]
    fn add(&mut self, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f64; K]) {
        let b = &b[..a.len()];
        let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
        for (ca, cb) in (&mut ca).zip(&mut cb) {
            for l in 0..8 {
                self.add_at(l, f(ca[l], cb[l]));
            }
        }
        for (l, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
            self.add_at(l, f(x, y));
        }
    }

    /// Adds `v` to lane `l` of the sums.
    #[inline(always)]
    fn add_at(&mut self, l: usize, v: [f64; K]) {
        for (sum, v) in self.0.iter_mut().zip(v) {
            sum[l] += v;
        }
    }

    /// The `K` sums.
    fn total(&self) -> [f64; K] {
        self.0.map(|s| ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])))
    }
}

impl LaneSums<1> {
    /// `add(a, a, |v, _| [v as f64])`: the same sums, widened by hand at AVX2 and above (the
    /// compiler's vectorisation of the closure widens two values at a time).
    #[inline(always)]
    fn add_values(&mut self, level: molclip_cpu::Isa, a: &[f32]) {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if level >= molclip_cpu::Isa::Avx2 {
            // SAFETY: the level runs on this CPU (isa() caps it at what was detected).
            done = unsafe { lanes_x86::values(&mut self.0[0], a) };
        }
        let _ = level;
        self.add(&a[done..], &a[done..], |v, _| [v as f64]);
    }

    /// `add(a, a, |v, _| [(v as f64 - mean) * (v as f64 - mean)])`, widened by hand at AVX2
    /// and above (a multiply, then an add: no FMA).
    #[inline(always)]
    fn add_squared_deviations(&mut self, level: molclip_cpu::Isa, a: &[f32], mean: f64) {
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if level >= molclip_cpu::Isa::Avx2 {
            // SAFETY: as in add_values.
            done = unsafe { lanes_x86::squared_deviations(&mut self.0[0], a, mean) };
        }
        let _ = level;
        self.add(&a[done..], &a[done..], |v, _| [(v as f64 - mean) * (v as f64 - mean)]);
    }
}

impl LaneSums<2> {
    /// `add(a, b, |x, y| [x as f64, x as f64 * y as f64])`, widened by hand at AVX2 and
    /// above.
    #[inline(always)]
    fn add_with_products(&mut self, level: molclip_cpu::Isa, a: &[f32], b: &[f32]) {
        let b = &b[..a.len()];
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if level >= molclip_cpu::Isa::Avx2 {
            // SAFETY: as in add_values.
            done = unsafe { lanes_x86::with_products(&mut self.0, a, b) };
        }
        let _ = level;
        self.add(&a[done..], &b[done..], |x, y| [x as f64, x as f64 * y as f64]);
    }
}

/// [`LaneSums`]' sums over whole runs of eight values, value `i` of a run in lane `i % 8` as
/// there: each returns how many values it added (the rest, under eight, are the caller's).
#[cfg(target_arch = "x86_64")]
mod lanes_x86 {
    use std::arch::x86_64::*;

    /// Eight values widened to float64, as two vectors of four lanes.
    ///
    /// # Safety
    ///
    /// AVX2; `p` valid for eight reads.
    #[inline(always)]
    unsafe fn widened(p: *const f32) -> (__m256d, __m256d) {
        // SAFETY: the caller's bounds.
        unsafe { (_mm256_cvtps_pd(_mm_loadu_ps(p)), _mm256_cvtps_pd(_mm_loadu_ps(p.add(4)))) }
    }

    /// The eight lanes as two vectors, and back.
    #[inline(always)]
    unsafe fn load(s: &[f64; 8]) -> (__m256d, __m256d) {
        // SAFETY: eight values.
        unsafe { (_mm256_loadu_pd(s.as_ptr()), _mm256_loadu_pd(s.as_ptr().add(4))) }
    }

    #[inline(always)]
    unsafe fn store(s: &mut [f64; 8], (lo, hi): (__m256d, __m256d)) {
        // SAFETY: eight values.
        unsafe {
            _mm256_storeu_pd(s.as_mut_ptr(), lo);
            _mm256_storeu_pd(s.as_mut_ptr().add(4), hi);
        }
    }

    /// # Safety
    ///
    /// AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn values(s: &mut [f64; 8], a: &[f32]) -> usize {
        let whole = a.len() / 8 * 8;
        // SAFETY: eight lanes; eight values at each i < whole.
        unsafe {
            let (mut lo, mut hi) = load(s);
            for i in (0..whole).step_by(8) {
                let (x0, x1) = widened(a.as_ptr().add(i));
                (lo, hi) = (_mm256_add_pd(lo, x0), _mm256_add_pd(hi, x1));
            }
            store(s, (lo, hi));
        }
        whole
    }

    /// # Safety
    ///
    /// AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn squared_deviations(s: &mut [f64; 8], a: &[f32], mean: f64) -> usize {
        let whole = a.len() / 8 * 8;
        let m = _mm256_set1_pd(mean);
        // SAFETY: as in `values`.
        unsafe {
            let (mut lo, mut hi) = load(s);
            for i in (0..whole).step_by(8) {
                let (x0, x1) = widened(a.as_ptr().add(i));
                let (d0, d1) = (_mm256_sub_pd(x0, m), _mm256_sub_pd(x1, m));
                lo = _mm256_add_pd(lo, _mm256_mul_pd(d0, d0));
                hi = _mm256_add_pd(hi, _mm256_mul_pd(d1, d1));
            }
            store(s, (lo, hi));
        }
        whole
    }

    /// # Safety
    ///
    /// AVX2; `b` at least as long as `a`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn with_products(s: &mut [[f64; 8]; 2], a: &[f32], b: &[f32]) -> usize {
        assert!(b.len() >= a.len(), "with_products: {} values against {}", b.len(), a.len());
        let whole = a.len() / 8 * 8;
        // SAFETY: as in `values`, for both runs.
        unsafe {
            let ((mut lo, mut hi), (mut plo, mut phi)) = (load(&s[0]), load(&s[1]));
            for i in (0..whole).step_by(8) {
                let (x0, x1) = widened(a.as_ptr().add(i));
                let (y0, y1) = widened(b.as_ptr().add(i));
                (lo, hi) = (_mm256_add_pd(lo, x0), _mm256_add_pd(hi, x1));
                plo = _mm256_add_pd(plo, _mm256_mul_pd(x0, y0));
                phi = _mm256_add_pd(phi, _mm256_mul_pd(x1, y1));
            }
            store(&mut s[0], (lo, hi));
            store(&mut s[1], (plo, phi));
        }
        whole
    }
}

fn dims3(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    l.shape().dims3()
}

impl CustomOp3 for BatchNormCpu {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let bcm = dims3(l1)?;
        let epilogue = if self.relu { Epilogue::Relu } else { Epilogue::Nothing };
        let y = batch_norm_fwd(x, w, bias, bcm, self.eps, epilogue, &self.stats);
        Ok((CpuStorage::F32(y), Shape::from(bcm)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = BatchNormGrad { eps: self.eps, relu: self.relu, pooled: None };
        let (dx, dwb) = batch_norm_bwd(x, w, bias, &self.stats, dy, grad)?;
        input_weight_bias(dx, &dwb)
    }
}

impl CustomOp3 for BatchNormAddReluCpu {
    fn name(&self) -> &'static str {
        "batch-norm-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, wb, shortcut) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let bcm = dims3(l1)?;
        if l3.shape() != l1.shape() || wb.len() != 2 * bcm.1 {
            candle_core::bail!(
                "batch-norm-add-relu: input {:?}, shortcut {:?}, {} affine values",
                l1.shape(),
                l3.shape(),
                wb.len()
            );
        }
        let (w, bias) = wb.split_at(bcm.1);
        let y = batch_norm_fwd(x, w, bias, bcm, self.eps, Epilogue::AddRelu(shortcut), &self.stats);
        Ok((CpuStorage::F32(y), Shape::from(bcm)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _shortcut: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient past the ReLU goes to the shortcut as it is, and to batch norm's output.
        let g = res.apply_op2_no_bwd(&dy.contiguous()?, &ElementwiseGrad::Relu)?;
        let c = x.dim(1)?;
        let (w, bias) = (wb.narrow(0, 0, c)?, wb.narrow(0, c, c)?);
        let (dx, dwb) =
            batch_norm_bwd(x, &w, &bias, &self.stats, &g, BatchNormGrad { eps: self.eps, relu: false, pooled: None })?;
        Ok((Some(dx), Some(dwb), Some(g)))
    }
}

/// max_pool3d(relu(batch_norm(x))): (x `[B, C, T, H, W]`, w, b).
struct BatchNormReluMaxPoolCpu {
    eps: f32,
    window: crate::Window3d,
    /// As [`BatchNormCpu::stats`].
    stats: Arc<Mutex<Vec<f32>>>,
    /// The pool's argmax within each plane, kept for the backward pass.
    argmax: OnceLock<Arc<Vec<u32>>>,
}

impl CustomOp3 for BatchNormReluMaxPoolCpu {
    fn name(&self) -> &'static str {
        "batch-norm-relu-max-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let [b, c, t, h, wd] = crate::conv3d::dims5(l1)?;
        let out = self.window.out_dims([t, h, wd]).map_err(candle_core::Error::wrap)?;
        let (scale, shift) = batch_norm_affine(x, w, bias, (b, c, t * h * wd), self.eps, &self.stats);
        let isa = molclip_cpu::isa();
        // Plane p's batch norm and ReLU, as BatchNormCpu writes them.
        let map = |p: usize, x: &[f32], to: &mut [f32]| {
            // SAFETY: AffineRow writes only initialised values (each of them once).
            let y = unsafe { crate::cpu::as_uninit(to) };
            molclip_cpu::vectorize(
                isa,
                AffineRow { y, x, scale: scale[p % c], shift: shift[p % c], epilogue: Epilogue::Relu },
            )
        };
        let (y, arg) = crate::conv3d::pool_argmax_mapped(x, b * c, [t, h, wd], self.window, out, Some(map))?;
        let _ = self.argmax.set(Arc::new(arg));
        Ok((CpuStorage::F32(y), Shape::from(vec![b, c, out[0], out[1], out[2]])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pooled = self
            .argmax
            .get()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("batch-norm-relu-max-pool: backward before forward".into()))?;
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let grad = BatchNormGrad { eps: self.eps, relu: true, pooled: Some(pooled) };
        let (dx, dwb) = batch_norm_bwd(&x.reshape((b, c, ()))?, w, bias, &self.stats, &dy.reshape((b, c, ()))?, grad)?;
        input_weight_bias(dx.reshape(x.dims())?, &dwb)
    }
}

/// (x, [w, b, mean, var], dy) to [dx, dw, db] packed.
struct BatchNormGrad {
    eps: f32,
    relu: bool,
    /// Where the gradient `dy` is a max pool's (`[B, C, N]`, N pooled values per plane), each
    /// pooled value's argmax within its plane: `dy` at batch norm's output is then that
    /// gradient added at those places (the pool's backward scatter, a plane at a time, in
    /// cache).
    pooled: Option<Arc<Vec<u32>>>,
}

impl BatchNormGrad {
    /// Row `bc` (of `m` values) of the gradient at batch norm's output, `dy` holding `n` values
    /// per row: `dy`'s own row, or the pool's gradient scattered into `scratch` at its argmax,
    /// as the pool's backward pass adds it (in order, onto zeros).
    fn row<'a>(&self, dy: &'a [f32], bc: usize, (m, n): (usize, usize), scratch: &'a mut Vec<f32>) -> &'a [f32] {
        let Some(argmax) = &self.pooled else {
            return &dy[bc * m..][..m];
        };
        scratch.clear();
        scratch.resize(m, 0.0);
        crate::conv3d::add_at_maxima(scratch, &argmax[bc * n..][..n], &dy[bc * n..][..n]);
        scratch
    }
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, p, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (b, c, m) = dims3(l1)?;
        let (w, bias, mean, var) = (&p[..c], &p[c..2 * c], &p[2 * c..3 * c], &p[3 * c..]);
        let rstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let isa = molclip_cpu::isa();
        let channel = |ci: usize| Channel { mean: mean[ci], rstd: rstd[ci], w: w[ci], bias: bias[ci], relu: self.relu };
        // Values of dy per row: m, or the pool's outputs per plane.
        let per_row = dy.len() / (b * c).max(1);
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let sums = GradSums { x, dy: (self, dy, per_row), bcm: (b, c, m), ci, ch: channel(ci) };
                molclip_cpu::vectorize(isa, sums)
            })
            .collect();
        let n = b * c * m;
        let count = (b * m) as f32;
        let write = |out: &mut [MaybeUninit<f32>]| {
            let (dx, params) = out.split_at_mut(n);
            dx.par_chunks_mut(m.max(1)).enumerate().for_each_init(Vec::new, |scratch, (bc, dx)| {
                let (x, dy) = (&x[bc * m..][..m], self.row(dy, bc, (m, per_row), scratch));
                molclip_cpu::vectorize(isa, GradRow { dx, x, dy, ch: channel(bc % c), sums: sums[bc % c], count })
            });
            let (dw, db) = params.split_at_mut(c);
            for (ci, &(sum_g, sum_gx)) in sums.iter().enumerate() {
                dw[ci].write(sum_gx);
                db[ci].write(sum_g);
            }
        };
        // SAFETY: the B·C rows of M values tile dx, each row's loop writes all of its values,
        // and the 2·C values after dx take dw and db.
        let out = unsafe { written_by(n + 2 * c, write) };
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
    }
}

/// One channel's statistics and affine parameters, for batch norm's backward loops.
#[derive(Clone, Copy)]
struct Channel {
    mean: f32,
    rstd: f32,
    w: f32,
    bias: f32,
    /// Whether a ReLU followed the affine map.
    relu: bool,
}

impl Channel {
    /// The normalised input.
    #[inline(always)]
    fn normalised(&self, x: f32) -> f32 {
        (x - self.mean) * self.rstd
    }

    /// The gradient reaching the affine output, zero where ReLU cut it.
    #[inline(always)]
    fn grad(&self, x: f32, d: f32) -> f32 {
        if self.relu && self.normalised(x) * self.w + self.bias <= 0.0 {
            0.0
        } else {
            d
        }
    }
}

/// Channel `ci`'s sums of the gradient at the affine output and of its product with the
/// normalised input (the bias's and the weight's gradients), over `[B, C, M]`.
struct GradSums<'a> {
    x: &'a [f32],
    /// The op, its `dy` and the values of `dy` per row ([`BatchNormGrad::row`]).
    dy: (&'a BatchNormGrad, &'a [f32], usize),
    bcm: (usize, usize, usize),
    ci: usize,
    ch: Channel,
}

impl molclip_cpu::Vectorized for GradSums<'_> {
    type Output = (f32, f32);
    #[inline(always)]
    fn run(self) -> (f32, f32) {
        let ((b, c, m), ch, level) = (self.bcm, self.ch, molclip_cpu::isa());
        let (op, dy, per_row) = self.dy;
        let mut scratch = Vec::new();
        let mut sums = LaneSums::default();
        // A row's gradients and normalised inputs a piece at a time (whole runs of eight, so
        // that each value keeps its lane), then their sums and products' sums.
        const PIECE: usize = 512;
        let (mut g, mut xh) = ([0f32; PIECE], [0f32; PIECE]);
        for bi in 0..b {
            let dy = op.row(dy, bi * c + self.ci, (m, per_row), &mut scratch);
            for (x, d) in channel_row(self.x, self.bcm, bi, self.ci).chunks(PIECE).zip(dy.chunks(PIECE)) {
                let len = x.len();
                // Indexed, as in `map_par`.
                #[allow(clippy::needless_range_loop)]
                for i in 0..len {
                    g[i] = ch.grad(x[i], d[i]);
                    xh[i] = ch.normalised(x[i]);
                }
                sums.add_with_products(level, &g[..len], &xh[..len]);
            }
        }
        let [sg, sgx] = sums.total();
        (sg as f32, sgx as f32)
    }
}

/// One row of batch norm's input gradient.
struct GradRow<'a> {
    dx: &'a mut [MaybeUninit<f32>],
    x: &'a [f32],
    dy: &'a [f32],
    ch: Channel,
    /// The channel's [`GradSums`].
    sums: (f32, f32),
    /// Values per channel in the batch.
    count: f32,
}

impl molclip_cpu::Vectorized for GradRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (dx, ch, (sg, sgx), count) = (self.dx, self.ch, self.sums, self.count);
        let (x, dy) = (&self.x[..dx.len()], &self.dy[..dx.len()]);
        let k = ch.w * ch.rstd;
        // Indexed, as in `map_par`.
        #[allow(clippy::needless_range_loop)]
        for i in 0..dx.len() {
            dx[i].write(k * (ch.grad(x[i], dy[i]) - sg / count - ch.normalised(x[i]) * sgx / count));
        }
    }
}

// ------------------------------------------------------------------ elementwise and softmax

/// Applies `f` to a contiguous f32 tensor in parallel, each chunk's loop compiled for the
/// instruction set `molclip_cpu::isa` allows. Give a function marked `#[inline(always)]`
/// (or a small closure) for the loop to vectorise.
fn map_par<F: Fn(f32) -> f32 + Sync>(x: &[f32], f: F) -> Vec<f32> {
    struct Map<'a, F>(&'a mut [MaybeUninit<f32>], &'a [f32], &'a F);
    impl<F: Fn(f32) -> f32> molclip_cpu::Vectorized for Map<'_, F> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let (y, f) = (self.0, self.2);
            let x = &self.1[..y.len()];
            // An indexed loop: an iterator's `for_each` is a function of its own, which the
            // compiler may leave outside this one and so compile for the baseline ISA.
            #[allow(clippy::needless_range_loop)]
            for i in 0..y.len() {
                y[i].write(f(x[i]));
            }
        }
    }
    let isa = molclip_cpu::isa();
    let write = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(x.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(yc, xc)| molclip_cpu::vectorize(isa, Map(yc, xc, &f)))
    };
    // SAFETY: the chunks of y and x pair up one to one, and each chunk's loop writes all of
    // its values.
    unsafe { written_by(x.len(), write) }
}

/// [`map_par`] over two tensors of one shape.
fn zip_par<F: Fn(f32, f32) -> f32 + Sync>(a: &[f32], b: &[f32], f: F) -> Vec<f32> {
    struct Zip<'a, F>(&'a mut [MaybeUninit<f32>], &'a [f32], &'a [f32], &'a F);
    impl<F: Fn(f32, f32) -> f32> molclip_cpu::Vectorized for Zip<'_, F> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let (y, f) = (self.0, self.3);
            let (a, b) = (&self.1[..y.len()], &self.2[..y.len()]);
            // Indexed, as in `map_par`.
            #[allow(clippy::needless_range_loop)]
            for i in 0..y.len() {
                y[i].write(f(a[i], b[i]));
            }
        }
    }
    assert_eq!(a.len(), b.len(), "zip_par: operands of {} and {} values", a.len(), b.len());
    let isa = molclip_cpu::isa();
    let write = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(a.par_chunks(ELEMENTWISE_CHUNK).zip(b.par_chunks(ELEMENTWISE_CHUNK)))
            .for_each(|(yc, (ac, bc))| molclip_cpu::vectorize(isa, Zip(yc, ac, bc, &f)))
    };
    // SAFETY: the chunks of y, a and b (of one length) pair up one to one, and each chunk's
    // loop writes all of its values.
    unsafe { written_by(a.len(), write) }
}

/// The values per task of [`map_par`] and [`zip_par`].
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// GELU, exact (erf) form, as `F.gelu`.
#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's input gradient at x, for the output gradient d: Φ(x) + x φ(x), where φ(x) =
/// e^(-x²/2) / √(2π) takes the exponential that erf(x / √2) computed (e^(-a²), a = |x| / √2):
/// one exponential a value, not two.
#[inline(always)]
fn gelu_grad(x: f32, d: f32) -> f32 {
    let (erf, e) = erf_and_exp(x * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = 0.5 * (1.0 + erf);
    let pdf = e * 0.398_942_3;
    d * (cdf + x * pdf)
}

/// erf, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough for f32. Branch-free, and
/// its exp is [`exp`], so that loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    erf_and_exp(x).0
}

/// [`erf`] of x, and the e^(-x²) it is computed from.
#[inline(always)]
fn erf_and_exp(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = exp(-a * a);
    ((1.0 - poly * e).copysign(x), e)
}

/// e^x for f32 within 2 ulp (the tests measure it), in plain arithmetic that vectorises:
/// x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7 (truncation below
/// 6e-9 relatively), 2^n by the exponent bits. Inputs below -87.3 give about 1e-38 instead
/// of 0; above 88.3 the 2^127 · e^r they give is clamped there too (its users, GELU and
/// softmax, never exponentiate a positive argument).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // ln 2 in two parts, the first exact in few bits, so that n · LN2_HI is exact.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // t's low mantissa bits hold n (two's complement, |n| <= 127): 2^n has exponent n + 127.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// Whether the element-wise kernels serve `t`: float32 on the CPU, or float32 on a CUDA
/// device where molclip's kernels load.
pub(crate) fn elementwise_serves(t: &Tensor) -> bool {
    match t.device() {
        Device::Cpu => t.dtype() == DType::F32,
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => t.dtype() == DType::F32 && crate::kernels::ready(dev),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A fresh float32 CUDA output of `shape` from the kernel `name` over its float32 inputs (each
/// of `shape`, contiguous from its layout's offset): `name(inputs..., out, n)`.
#[cfg(feature = "cuda")]
fn cuda_map(
    name: &str,
    inputs: &[(&candle_core::CudaStorage, &Layout)],
    shape: &Shape,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendDevice;
    use candle_core::cuda::cudarc::driver::PushKernelArg;
    let n = shape.elem_count();
    let dev = inputs[0].0.device.clone();
    for (_, l) in inputs {
        if l.shape() != shape || !l.is_contiguous() {
            candle_core::bail!("{name}: an input of {:?}, not a contiguous {shape:?}", l.shape());
        }
    }
    let views = inputs
        .iter()
        .map(|(s, l)| Ok(s.as_cuda_slice::<f32>()?.slice(l.start_offset()..)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    // SAFETY: the kernel writes every one of the n elements before anything reads them.
    let mut out = unsafe { dev.alloc_uninit(shape, DType::F32)? };
    let f = crate::kernels::function(&dev, name)?;
    let stream = dev.cuda_stream();
    {
        let y = out.as_cuda_slice_mut::<f32>()?;
        let mut b = stream.launch_builder(&f);
        for v in &views {
            b.arg(v);
        }
        let len = n as u64;
        b.arg(y).arg(&len);
        // SAFETY: every input holds n float32 values from its offset, the output n; the kernel
        // reads inputs and writes the output at indices below n only.
        unsafe { b.launch(crate::kernels::launch(n)) }.map_err(candle_core::Error::wrap)?;
    }
    Ok((out, shape.clone()))
}

/// GELU with the exact (erf) form, as `F.gelu`.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Elementwise::Gelu)?)
}

pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Elementwise::Relu)?)
}

#[derive(Clone, Copy)]
enum Elementwise {
    Gelu,
    Relu,
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::Relu => "relu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let y = match self {
            Self::Gelu => map_par(x, gelu_value),
            Self::Relu => map_par(x, |v| v.max(0.0)),
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self {
            Self::Relu => cuda_map("relu", &[(s, l)], l.shape()),
            Self::Gelu => candle_core::bail!("gelu: no CUDA kernel (composed off the CPU)"),
        }
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        Ok(Some(match self {
            Self::Gelu => x.apply_op2_no_bwd(&dy, &ElementwiseGrad::Gelu)?,
            Self::Relu => res.apply_op2_no_bwd(&dy, &ElementwiseGrad::Relu)?,
        }))
    }
}

/// relu(a + b), the end of a residual block.
pub(crate) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-relu: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let y = zip_par(f32_slice(s1, l1)?, f32_slice(s2, l2)?, |a, b| (a + b).max(0.0));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda_map("add_relu", &[(s1, l1), (s2, l2)], l1.shape())
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&dy.contiguous()?, &ElementwiseGrad::Relu)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// (input or output, output gradient) to the input gradient.
enum ElementwiseGrad {
    /// From the input x.
    Gelu,
    /// From the output y: the gradient passes where y > 0.
    Relu,
}

impl CustomOp2 for ElementwiseGrad {
    fn name(&self) -> &'static str {
        "elementwise-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let g = match self {
            Self::Gelu => zip_par(a, dy, gelu_grad),
            Self::Relu => zip_par(a, dy, |y, d| if y > 0.0 { d } else { 0.0 }),
        };
        Ok((CpuStorage::F32(g), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self {
            Self::Relu => cuda_map("relu_grad", &[(s1, l1), (s2, l2)], l1.shape()),
            Self::Gelu => candle_core::bail!("gelu's gradient: no CUDA kernel (composed off the CPU)"),
        }
    }
}

/// Softmax of each row of `n` values of `x`, in place: e^(v - row max) by [`exp`], divided by
/// the row's sum, summed in order. Compiled for [`molclip_cpu::isa`], so that the max, the
/// exponentials and the divisions vectorise; every instruction set gives the same bits.
fn softmax_rows(x: &mut [f32], n: usize) {
    struct Rows<'a>(&'a mut [f32], usize);
    impl molclip_cpu::Vectorized for Rows<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            // Indexed loops, as in `map_par`.
            #[allow(clippy::needless_range_loop)]
            for r in self.0.chunks_mut(self.1) {
                let max = lane_max(r);
                for i in 0..r.len() {
                    r[i] = exp(r[i] - max);
                }
                let sum = lane_sum(r);
                for i in 0..r.len() {
                    r[i] /= sum;
                }
            }
        }
    }
    if n > 0 {
        molclip_cpu::vectorize(molclip_cpu::isa(), Rows(x, n));
    }
}

/// Lanes of the running sums and maxima of [`lane_sum`], [`lane_dot`] and [`lane_max`].
const LANES: usize = 8;

/// Σ f(a[i], b[i]) in [`LANES`] running sums, value i going to sum `i % LANES`, added in a
/// fixed tree at the end (as [`LaneSums`], in f32): unlike one running sum, whose every add
/// waits for the last, the loop vectorises, and the result is the same on every instruction
/// set.
#[inline(always)]
fn lane_fold(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let b = &b[..a.len()];
    let mut s = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (ca, cb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            s[l] += f(ca[l], cb[l]);
        }
    }
    for (l, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        s[l] += f(x, y);
    }
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// Σ a[i], as [`lane_fold`] adds.
#[inline(always)]
fn lane_sum(a: &[f32]) -> f32 {
    lane_fold(a, a, |x, _| x)
}

/// Σ a[i] · b[i], as [`lane_fold`] adds.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    lane_fold(a, b, |x, y| x * y)
}

/// The largest of `a` (NaNs skipped, as `f32::max` does; -inf when empty): in lanes, and
/// exactly the running maximum's value, as a maximum does not depend on the order.
#[inline(always)]
fn lane_max(a: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = a.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        m[l] = m[l].max(x);
    }
    m.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// Softmax over the last dimension.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let mut y = x.to_vec();
        // Whole rows per task, about 4,096 values each.
        let rows = (4096 / d.max(1)).max(1) * d.max(1);
        y.par_chunks_mut(rows).for_each(|block| softmax_rows(block, d));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?))
    }
}

/// (y, dy) to y·(dy − Σ dy·y), per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = *l1.shape().dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d).zip(y.par_chunks(d).zip(dy.par_chunks(d))).for_each(|(g, (yr, dr))| {
            let dot: f32 = yr.iter().zip(dr).map(|(a, b)| a * b).sum();
            g.iter_mut().zip(yr.iter().zip(dr)).for_each(|(g, (y, d))| *g = y * (d - dot));
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------- attention

/// Multi-head self-attention from a fused projection `qkv` `[B, N, 3D]` (per token: q, k, v,
/// each `heads × dh`) to `[B, Q, D]`: softmax(q·kᵀ/√dh)·v per head, for the queries of the
/// first `Q = queries` tokens against the keys and values of all `N` (`Q = N`: every token's
/// output). The attention matrices (`Q x N` per video and head: at 50 tokens, a quarter of
/// `qkv`'s size) are kept for the backward pass, which would otherwise compute them again (a
/// product and a softmax per video and head).
pub(crate) fn attention(qkv: &Tensor, heads: usize, queries: usize) -> Result<Tensor> {
    Ok(qkv.contiguous()?.apply_op1(AttentionCpu { heads, queries, probabilities: OnceLock::new() })?)
}

struct AttentionCpu {
    heads: usize,
    queries: usize,
    /// The forward pass's attention matrices, `[B · heads, Q, N]`.
    probabilities: OnceLock<Arc<Vec<f32>>>,
}

/// Geometry of one (video, head) pair inside `qkv` and the output.
struct Heads {
    b: usize,
    /// Tokens: keys and values.
    n: usize,
    /// Queries: the first `nq` tokens.
    nq: usize,
    d: usize,
    heads: usize,
    dh: usize,
    scale: f32,
}

impl Heads {
    fn new(shape: &Shape, heads: usize, queries: usize) -> candle_core::Result<Self> {
        let (b, n, d3) = shape.dims3()?;
        if d3 % 3 != 0 || (d3 / 3) % heads != 0 {
            candle_core::bail!("attention: last dimension {d3} is not 3 × heads × head size");
        }
        if queries == 0 || queries > n {
            candle_core::bail!("attention: {queries} queries asked of {n} tokens");
        }
        let d = d3 / 3;
        let dh = d / heads;
        Ok(Self { b, n, nq: queries, d, heads, dh, scale: (dh as f32).powf(-0.5) })
    }

    /// Offsets of q, k, v of pair `bh` in `qkv`, and of its block in the output.
    fn offsets(&self, bh: usize) -> (usize, usize, usize, usize) {
        let (bi, h) = (bh / self.heads, bh % self.heads);
        let base = bi * self.n * 3 * self.d + h * self.dh;
        (base, base + self.d, base + 2 * self.d, bi * self.nq * self.d + h * self.dh)
    }

    /// softmax(scale · q kᵀ) into `p` (`[Q, N]`, every value set), returned initialised.
    ///
    /// # Safety
    /// `qkv` must point at a `[b, n, 3·d]` array of this geometry.
    unsafe fn probabilities<'a>(&self, qkv: *const f32, bh: usize, p: &'a mut [MaybeUninit<f32>]) -> &'a [f32] {
        let (q, k, _, _) = self.offsets(bh);
        let (n, nq, row) = (self.n, self.nq, 3 * self.d as isize);
        assert_eq!(p.len(), nq * n, "attention: a matrix of {} values for {nq} x {n}", p.len());
        // SAFETY: `offsets` places q and k of pair `bh` inside the `[b, n, 3·d]` array the
        // caller vouches for; each view is nq or n rows of dh values at row stride 3·d, and `p`
        // (nq × n, written at row stride n) is this task's own buffer.
        unsafe {
            super::cpu::gemm_small(
                nq,
                n,
                self.dh,
                p.as_mut_ptr().cast(),
                (1, n as isize),
                qkv.add(q),
                (1, row),
                qkv.add(k),
                (row, 1),
                self.scale,
            );
        }
        // SAFETY: the product set all nq × n values (it reads no destination); MaybeUninit<f32>
        // has f32's layout.
        let p = unsafe { &mut *(p as *mut [MaybeUninit<f32>] as *mut [f32]) };
        softmax_rows(p, n);
        p
    }
}

impl CustomOp1 for AttentionCpu {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l)?;
        let g = Heads::new(l.shape(), self.heads, self.queries)?;
        let size = g.nq * g.n;
        let mut probabilities = Vec::with_capacity(g.b * g.heads * size);
        let kept = &mut probabilities.spare_capacity_mut()[..g.b * g.heads * size];
        let write = |out: &mut [MaybeUninit<f32>]| {
            let dst = molclip_cpu::Shared(out.as_mut_ptr().cast::<f32>());
            kept.par_chunks_mut(size.max(1)).enumerate().for_each(|(bh, p)| {
                let (_, _, v, o) = g.offsets(bh);
                // SAFETY: each (video, head) pair writes its own attention matrix and its own
                // columns of the output.
                unsafe {
                    let p = g.probabilities(qkv.as_ptr(), bh, p);
                    super::cpu::gemm_small(
                        g.nq,
                        g.dh,
                        g.n,
                        dst.get().add(o),
                        (1, g.d as isize),
                        p.as_ptr(),
                        (1, g.n as isize),
                        qkv.as_ptr().add(v),
                        (1, 3 * g.d as isize),
                        1.0,
                    );
                }
            });
        };
        // SAFETY: the (video, head) pairs' products, which read no destination, write the
        // output's columns of their heads, all of it together.
        let out = unsafe { written_by(g.b * g.nq * g.d, write) };
        // SAFETY: every pair's matrix was set whole, by its product and softmax.
        unsafe { probabilities.set_len(g.b * g.heads * size) };
        // A second forward pass of this op (none is made) would keep the first's.
        let _ = self.probabilities.set(Arc::new(probabilities));
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.nq, g.d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(probabilities) = self.probabilities.get().cloned() else {
            candle_core::bail!("attention: no attention matrices kept from a forward pass on the CPU");
        };
        let grad = AttentionGrad { heads: self.heads, queries: self.queries, probabilities };
        Ok(Some(qkv.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
    }
}

/// Softmax's input gradient, in place of the output gradient `dp`, row by row (`n` values
/// per row): dS = P ∘ (dP − rowsum(dP ∘ P)).
struct SoftmaxGradRows<'a> {
    p: &'a [f32],
    dp: &'a mut [f32],
    n: usize,
}

impl molclip_cpu::Vectorized for SoftmaxGradRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (pr, dr) in self.p.chunks_exact(self.n).zip(self.dp.chunks_exact_mut(self.n)) {
            let dot = lane_dot(pr, dr);
            // Indexed, as in `map_par`.
            #[allow(clippy::needless_range_loop)]
            for i in 0..dr.len() {
                dr[i] = pr[i] * (dr[i] - dot);
            }
        }
    }
}

/// (qkv, dO) to dqkv (zero for the queries of tokens past the first `queries`), from the
/// forward pass's attention matrices.
struct AttentionGrad {
    heads: usize,
    queries: usize,
    probabilities: Arc<Vec<f32>>,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qkv, dout) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let g = Heads::new(l1.shape(), self.heads, self.queries)?;
        let (n, nq, dh, isa) = (g.n, g.nq, g.dh, molclip_cpu::isa());
        let (row3, row) = (3 * g.d as isize, g.d as isize);
        if self.probabilities.len() != g.b * g.heads * nq * n {
            candle_core::bail!(
                "attention-grad: {} kept attention weights for {} x {nq} x {n}",
                self.probabilities.len(),
                g.b * g.heads
            );
        }
        let write = |dqkv: *mut f32| {
            let dst = molclip_cpu::Shared(dqkv);
            (0..g.b * g.heads).into_par_iter().for_each_init(
                || vec![0f32; nq * n],
                |dp, bh| {
                    let (q, k, v, o) = g.offsets(bh);
                    let (x, d) = (qkv.as_ptr(), dout.as_ptr());
                    let p = &self.probabilities[bh * nq * n..(bh + 1) * nq * n];
                    // SAFETY: each (video, head) pair writes its own q, k and v columns of dqkv.
                    unsafe {
                        // dV = Pᵀ dO
                        super::cpu::gemm_small(
                            n,
                            dh,
                            nq,
                            dst.get().add(v),
                            (1, row3),
                            p.as_ptr(),
                            (n as isize, 1),
                            d.add(o),
                            (1, row),
                            1.0,
                        );
                        // dP = dO Vᵀ
                        super::cpu::gemm_small(
                            nq,
                            n,
                            dh,
                            dp.as_mut_ptr(),
                            (1, n as isize),
                            d.add(o),
                            (1, row),
                            x.add(v),
                            (row3, 1),
                            1.0,
                        );
                        // dS = P ∘ (dP − rowsum(dP ∘ P))
                        molclip_cpu::vectorize(isa, SoftmaxGradRows { p, dp: &mut dp[..], n });
                        // dQ = scale · dS K ; dK = scale · dSᵀ Q
                        super::cpu::gemm_small(
                            nq,
                            dh,
                            n,
                            dst.get().add(q),
                            (1, row3),
                            dp.as_ptr(),
                            (1, n as isize),
                            x.add(k),
                            (1, row3),
                            g.scale,
                        );
                        super::cpu::gemm_small(
                            n,
                            dh,
                            nq,
                            dst.get().add(k),
                            (1, row3),
                            dp.as_ptr(),
                            (n as isize, 1),
                            x.add(q),
                            (1, row3),
                            g.scale,
                        );
                    }
                },
            );
        };
        let d = g.d;
        // SAFETY: the (video, head) pairs' products, which read no destination, write the k and
        // v columns of their heads for every token and the q columns for the first nq; the
        // queries of the tokens past those have no gradient, and are zeroed here: all of dqkv
        // together.
        let dqkv = unsafe {
            written_by(qkv.len(), |dqkv| {
                if nq < n {
                    dqkv.par_chunks_mut(3 * d).enumerate().filter(|(t, _)| t % n >= nq).for_each(|(_, row)| {
                        row[..d].fill(MaybeUninit::new(0.0));
                    });
                }
                write(dqkv.as_mut_ptr().cast())
            })
        };
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The lane folds: the maximum is exactly the running one (NaNs skipped), the sums are
    /// within rounding of float64 sums, at every length around the lanes' multiples.
    #[test]
    fn lane_folds_match_running_and_float64_results() {
        for n in [0, 1, 7, 8, 9, 16, 50, 63] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
            let mut b: Vec<f32> = (0..n).map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.21).collect();
            assert_eq!(lane_max(&a), a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), "max of {n}");
            if n > 3 {
                b[2] = f32::NAN;
                assert_eq!(lane_max(&b), b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), "max of {n}, a NaN");
                b[2] = 0.5;
            }
            let sum: f64 = a.iter().map(|&v| v as f64).sum();
            let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((lane_sum(&a) as f64 - sum).abs() <= 1e-5 * (1.0 + sum.abs()), "sum of {n}");
            assert!((lane_dot(&a, &b) as f64 - dot).abs() <= 1e-5 * (1.0 + dot.abs()), "dot of {n}");
        }
    }

    fn rand(shape: &[usize], seed: u64) -> Var {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Var::from_tensor(
            &Tensor::from_vec((0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect::<Vec<_>>(), shape, &Device::Cpu)
                .unwrap(),
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Runs `f` on the inputs, and checks value and gradients of every input against `g`.
    fn agree(inputs: &[Var], f: impl Fn(&[Tensor]) -> Tensor, g: impl Fn(&[Tensor]) -> Tensor, what: &str) {
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (f(&xs), g(&xs));
        assert_eq!(a.dims(), b.dims(), "{what}");
        assert!(max_diff(&a, &b) < 1e-5, "{what}: forward differs by {}", max_diff(&a, &b));
        let probe = rand(a.dims(), 77);
        let ga = (&a * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let d = max_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "{what}: gradient of input {i} differs by {d}");
        }
    }

    #[test]
    fn a_linear_layer_fed_data_gets_its_weight_gradients_and_gives_none_to_its_input() {
        let (x, w, b) = (rand(&[3, 5, 7], 1), rand(&[4, 7], 2), rand(&[4], 3));
        // The same values, untracked: data, as a first layer's input.
        let data = x.as_tensor().detach();
        let probe = rand(&[3, 5, 4], 77);
        let loss = |input: &Tensor| (linear(input, w.as_tensor(), b.as_tensor()).unwrap() * probe.as_tensor()).unwrap();
        let tracked = loss(x.as_tensor()).sum_all().unwrap().backward().unwrap();
        let fed = loss(&data).sum_all().unwrap().backward().unwrap();
        assert!(fed.get(&data).is_none() && tracked.get(x.as_tensor()).is_some());
        for v in [&w, &b] {
            let (a, e) = (fed.get(v.as_tensor()).unwrap(), tracked.get(v.as_tensor()).unwrap());
            assert_eq!(max_diff(a, e), 0.0, "the weight gradients do not depend on whether x is tracked");
        }
        let expected =
            probe.as_tensor().reshape((15, 4)).unwrap().t().unwrap().matmul(&data.reshape((15, 7)).unwrap()).unwrap();
        assert!(max_diff(fed.get(w.as_tensor()).unwrap(), &expected) < 1e-5);
    }

    #[test]
    fn fused_kernels_match_the_composed_ops() {
        let (x, w, b) = (rand(&[3, 5, 7], 1), rand(&[4, 7], 2), rand(&[4], 3));
        agree(
            &[x.clone(), w, b],
            |t| linear(&t[0], &t[1], &t[2]).unwrap(),
            |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap(),
            "linear",
        );
        let w = rand(&[4, 7], 12);
        agree(
            &[x.clone(), w],
            |t| matmul_t(&t[0], &t[1]).unwrap(),
            |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap(),
            "a · bᵀ",
        );
        // One operand twice, as the triplet loss's Gram matrix: both gradients add up.
        let g = rand(&[6, 7], 13);
        agree(&[g], |t| matmul_t(&t[0], &t[0]).unwrap(), |t| t[0].matmul(&t[0].t().unwrap()).unwrap(), "a · aᵀ");

        let (w, b) = (rand(&[7], 4), rand(&[7], 5));
        agree(
            &[x.clone(), w, b],
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            |t| {
                let m = t[0].mean_keepdim(2).unwrap();
                let c = t[0].broadcast_sub(&m).unwrap();
                let v = c.sqr().unwrap().mean_keepdim(2).unwrap();
                c.broadcast_div(&(v + 1e-5).unwrap().sqrt().unwrap())
                    .unwrap()
                    .broadcast_mul(&t[1])
                    .unwrap()
                    .broadcast_add(&t[2])
                    .unwrap()
            },
            "layer norm",
        );

        let (xb, w, b) = (rand(&[4, 3, 10], 6), rand(&[3], 7), rand(&[3], 8));
        let composed_bn = |t: &[Tensor]| {
            let xt = t[0].transpose(0, 1).unwrap().reshape((3, 40)).unwrap();
            let m = xt.mean_keepdim(1).unwrap().reshape((1, 3, 1)).unwrap();
            let c = t[0].broadcast_sub(&m).unwrap();
            let v = c.transpose(0, 1).unwrap().reshape((3, 40)).unwrap().sqr().unwrap().mean_keepdim(1).unwrap();
            let y = c.broadcast_div(&(v.reshape((1, 3, 1)).unwrap() + 1e-5).unwrap().sqrt().unwrap()).unwrap();
            y.broadcast_mul(&t[1].reshape((1, 3, 1)).unwrap())
                .unwrap()
                .broadcast_add(&t[2].reshape((1, 3, 1)).unwrap())
                .unwrap()
        };
        let shortcut = rand(&[4, 3, 10], 14);
        let bn_inputs = [xb.clone(), w.clone(), b.clone()];
        agree(
            &bn_inputs,
            |t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5, After::Nothing).unwrap().0,
            composed_bn,
            "batch norm",
        );
        agree(
            &bn_inputs,
            |t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5, After::Relu).unwrap().0,
            |t| composed_bn(t).relu().unwrap(),
            "batch norm + relu",
        );
        agree(
            &[xb.clone(), w.clone(), b.clone(), shortcut],
            |t| batch_norm_train(&t[0], &t[1], &t[2], 1e-5, After::AddRelu(&t[3])).unwrap().0,
            |t| (composed_bn(t) + &t[3]).unwrap().relu().unwrap(),
            "batch norm + shortcut + relu",
        );

        agree(std::slice::from_ref(&x), |t| gelu(&t[0]).unwrap(), |t| t[0].gelu_erf().unwrap(), "gelu");
        agree(std::slice::from_ref(&x), |t| relu(&t[0]).unwrap(), |t| t[0].relu().unwrap(), "relu");
        agree(
            std::slice::from_ref(&x),
            |t| softmax_last_dim(&t[0]).unwrap(),
            |t| crate::layers::softmax_composed(&t[0]).unwrap(),
            "softmax",
        );
        let y = rand(&[3, 5, 7], 9);
        agree(&[x, y], |t| add_relu(&t[0], &t[1]).unwrap(), |t| (&t[0] + &t[1]).unwrap().relu().unwrap(), "add relu");

        // Attention: 2 videos, 5 tokens, 2 heads of 3; every token's output, and the first
        // two tokens' only (the gradients of the other queries zero).
        let qkv = rand(&[2, 5, 18], 10);
        let by_hand = |t: &[Tensor], queries: usize| {
            let q = t[0].reshape((2, 5, 3, 2, 3)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
            let (qh, kh, vh) =
                (q.get(0).unwrap().contiguous().unwrap(), q.get(1).unwrap().contiguous().unwrap(), q.get(2).unwrap());
            let att =
                crate::layers::softmax_composed(&(qh.matmul(&kh.t().unwrap()).unwrap() * 3f64.powf(-0.5)).unwrap())
                    .unwrap();
            let all =
                att.matmul(&vh.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((2, 5, 6)).unwrap();
            all.narrow(1, 0, queries).unwrap()
        };
        for queries in [5, 2] {
            agree(
                std::slice::from_ref(&qkv),
                |t| attention(&t[0], 2, queries).unwrap(),
                |t| by_hand(t, queries),
                &format!("attention of the first {queries}"),
            );
            agree(
                std::slice::from_ref(&qkv),
                |t| crate::layers::attention_composed(&t[0], 2, queries).unwrap(),
                |t| by_hand(t, queries),
                &format!("composed attention of the first {queries}"),
            );
        }
    }

    /// Layer norm's forward and backward kernels give the same bits on every instruction set
    /// (lane sums) and thread count (partial sums over a split fixed by the shape).
    #[test]
    fn layer_norm_bits_depend_on_neither_the_isa_nor_the_thread_count() {
        let (n, d) = (3000, 70);
        let flat = |t: &Var| t.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (x, dy, w, b) =
            (flat(&rand(&[n, d], 1)), flat(&rand(&[n, d], 2)), flat(&rand(&[d], 3)), flat(&rand(&[d], 4)));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let levels = molclip_cpu::Isa::ALL.into_iter().filter(|l| l.runs());
        let by_level: Vec<_> = levels
            .map(|level| {
                let forward = |y: &mut [MaybeUninit<f32>]| {
                    molclip_cpu::vectorize(level, LayerNormRows { y, x: &x, w: &w, b: &b, eps: 1e-6 })
                };
                // SAFETY: one task's rows are all n rows, and it writes every value.
                let y = unsafe { written_by(n * d, forward) };
                let mut sums = None;
                let backward = |dx: &mut [MaybeUninit<f32>]| {
                    sums =
                        Some(molclip_cpu::vectorize(level, LayerNormGradRows { dx, x: &x, dy: &dy, w: &w, eps: 1e-6 }));
                };
                // SAFETY: as for y.
                let dx = unsafe { written_by(n * d, backward) };
                let (dw, db) = sums.unwrap();
                [y, dx, dw, db].map(|v| bits(&v))
            })
            .collect();
        assert!(by_level.windows(2).all(|p| p[0] == p[1]), "the bits differ between instruction sets");
        let tensor = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap();
        let (xt, dyt, wt, bt) = (tensor(&x, &[n, d]), tensor(&dy, &[n, d]), tensor(&w, &[d]), tensor(&b, &[d]));
        let by_threads: Vec<_> = [1, 3]
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let y = layer_norm(&xt, &wt, &bt, 1e-6).unwrap();
                    let grads = xt.apply_op3_no_bwd(&wt, &dyt, &LayerNormGrad { eps: 1e-6 }).unwrap();
                    [y, grads].map(|t| bits(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                })
            })
            .into();
        assert_eq!(by_threads[0], by_threads[1], "the bits differ between thread counts");
    }

    /// The stem's fused batch norm, ReLU and max pool gives the bits of the ops apart (batch
    /// norm + ReLU, then the pool): output, batch statistics and every input's gradient, for
    /// the stem's pool (overlapping windows, padded) and a window that pools width alone.
    /// The first channel's bias puts most of its outputs below zero, so that ReLU cuts whole
    /// windows (their maximum 0, and the gradient at it cut too); overlapping windows share
    /// maxima, whose gradients add up.
    #[test]
    fn batch_norm_relu_max_pool_gives_the_bits_of_the_ops_apart() {
        use crate::Window3d;
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let windows = [Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]), Window3d::new([1, 1, 3], [1, 1, 2], [0, 0, 0])];
        for (i, window) in windows.into_iter().enumerate() {
            let (x, w) = (rand(&[2, 3, 5, 9, 10], 20 + i as u64), rand(&[3], 21));
            // The first channel's outputs mostly below zero.
            let b = Var::new(&[-3f32, 0.3, -0.2], &Device::Cpu).unwrap();
            let (fused, mean, var) =
                batch_norm_relu_max_pool_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, window).unwrap();
            let x3 = x.as_tensor().reshape((2, 3, 450)).unwrap();
            let (y, mean_apart, var_apart) =
                batch_norm_train(&x3, w.as_tensor(), b.as_tensor(), 1e-5, After::Relu).unwrap();
            let apart = crate::max_pool3d(&y.reshape((2, 3, 5, 9, 10)).unwrap(), window).unwrap();
            assert_eq!(bits(&fused), bits(&apart), "{window:?}: output");
            assert_eq!((mean, var), (mean_apart, var_apart), "{window:?}: batch statistics");
            let cut = apart.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|&&v| v == 0.0).count();
            assert!(cut > 0 && cut < apart.elem_count() / 2, "{window:?}: {cut} windows cut by ReLU");
            let probe = rand(fused.dims(), 23);
            let grads = |out: &Tensor| (out * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, ga) = (grads(&fused), grads(&apart));
            for v in [&x, &w, &b] {
                let (f, a) = (gf.get(v.as_tensor()).unwrap(), ga.get(v.as_tensor()).unwrap());
                assert_eq!(bits(f), bits(a), "{window:?}: gradient of an input of shape {:?}", v.dims());
            }
        }
    }

    #[test]
    fn batch_norm_reports_batch_statistics() {
        let x = Tensor::new(&[[[1f32, 3.0]], [[5.0, 7.0]]], &Device::Cpu).unwrap();
        let (w, b) =
            (Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        let (_, mean, var) = batch_norm_train(&x, &w, &b, 1e-5, After::Nothing).unwrap();
        assert_eq!(mean, vec![4.0]);
        assert_eq!(var, vec![5.0]);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0f64;
        for k in 0..=400_000 {
            let x = -87.0 + 175.0 * k as f32 / 400_000.0;
            let (got, exact) = (exp(x) as f64, (x as f64).exp());
            // In units of the last place of the exact value, as f32 holds it.
            let ulp = (exact as f32).to_bits();
            let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
            worst = worst.max((got - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// GELU and its gradient over a grid, as the kernels run them.
    struct Gelu<'a>(&'a [f32]);

    impl molclip_cpu::Vectorized for Gelu<'_> {
        type Output = Vec<u32>;
        #[inline(always)]
        fn run(self) -> Vec<u32> {
            self.0.iter().flat_map(|&x| [gelu_value(x).to_bits(), gelu_grad(x, 0.75).to_bits()]).collect()
        }
    }

    #[test]
    fn gelu_agrees_with_libm_and_gives_the_same_bits_on_every_instruction_set() {
        let xs: Vec<f32> = (0..20_001).map(|k| -10.0 + k as f32 / 1000.0).collect();
        for &x in &xs {
            // Abramowitz & Stegun with libm's exp, in f64.
            let (x64, a) = (x as f64, (x as f64 / std::f64::consts::SQRT_2).abs());
            let t = 1.0 / (1.0 + 0.327_591_1 * a);
            let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
            let erf = (1.0 - poly * (-a * a).exp()).copysign(x64);
            let reference = 0.5 * x64 * (1.0 + erf);
            assert!((gelu_value(x) as f64 - reference).abs() < 2e-6 * (1.0 + x64.abs()), "gelu({x})");
        }
        let scalar = molclip_cpu::vectorize(molclip_cpu::Isa::Scalar, Gelu(&xs));
        for level in molclip_cpu::Isa::ALL.into_iter().filter(|l| l.runs()) {
            assert!(molclip_cpu::vectorize(level, Gelu(&xs)) == scalar, "{level}");
        }
    }

    /// Batch norm's backward sums of two runs, as the kernel adds them.
    struct Sums<'a>(&'a [f32], &'a [f32]);

    impl molclip_cpu::Vectorized for Sums<'_> {
        type Output = [u64; 2];
        #[inline(always)]
        fn run(self) -> [u64; 2] {
            let mut sums = LaneSums::default();
            // Two runs, the second starting again at lane 0, as a channel's rows do.
            let third = self.0.len() / 3;
            for (a, b) in [(&self.0[..third], &self.1[..third]), (&self.0[third..], &self.1[third..])] {
                sums.add(a, b, |x, y| [x as f64, x as f64 * y as f64]);
            }
            sums.total().map(f64::to_bits)
        }
    }

    /// The same sums by the methods widened by hand ([`LaneSums::add_with_products`]), and
    /// the values' sum and squared deviations from `mean` ([`LaneSums::add_values`],
    /// [`LaneSums::add_squared_deviations`]), at `level`.
    struct WidenedSums<'a>(&'a [f32], &'a [f32], f64, molclip_cpu::Isa);

    impl molclip_cpu::Vectorized for WidenedSums<'_> {
        type Output = [[u64; 8]; 4];
        #[inline(always)]
        fn run(self) -> [[u64; 8]; 4] {
            let (level, third) = (self.3, self.0.len() / 3);
            let (mut sums, mut values, mut squares) = (LaneSums::default(), LaneSums::default(), LaneSums::default());
            for (a, b) in [(&self.0[..third], &self.1[..third]), (&self.0[third..], &self.1[third..])] {
                sums.add_with_products(level, a, b);
                values.add_values(level, a);
                squares.add_squared_deviations(level, a, self.2);
            }
            // The lanes themselves: a difference in one can vanish in their total.
            [sums.0[0], sums.0[1], values.0[0], squares.0[0]].map(|lanes| lanes.map(f64::to_bits))
        }
    }

    #[test]
    fn lane_sums_add_in_the_documented_order_on_every_instruction_set() {
        // Values of very different sizes, so that another order of the additions gives other
        // bits; and values of one size, whose squared deviations a fused multiply-add would
        // round otherwise.
        let spread: fn(usize) -> f32 = |i| ((i * 7919 % 613) as f32 - 300.0) * 10f32.powi((i % 9) as i32 - 4);
        let alike: fn(usize) -> f32 = |i| 1.0 + (i * 7919 % 1000) as f32 * 1e-3;
        for (n, value) in [1usize, 7, 8, 9, 23, 64, 1001].map(|n| (n, spread)).into_iter().chain([(1001, alike)]) {
            let a: Vec<f32> = (0..n).map(value).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 331) as f32 - 160.0) / 17.0).collect();
            // The order by hand: value i of a run into lane i % 8, each run from lane 0, then
            // ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)).
            let mut lanes = [[0f64; 8]; 3];
            let (third, mean) = (n / 3, 0.37);
            for (run, run_b) in [(&a[..third], &b[..third]), (&a[third..], &b[third..])] {
                for (i, (&x, &y)) in run.iter().zip(run_b).enumerate() {
                    lanes[0][i % 8] += x as f64;
                    lanes[1][i % 8] += x as f64 * y as f64;
                    lanes[2][i % 8] += (x as f64 - mean) * (x as f64 - mean);
                }
            }
            let tree = |l: [f64; 8]| (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))).to_bits();
            let expected = [tree(lanes[0]), tree(lanes[1])];
            for level in molclip_cpu::Isa::ALL.into_iter().filter(|l| l.runs()) {
                assert_eq!(molclip_cpu::vectorize(level, Sums(&a, &b)), expected, "{level}, n = {n}");
                let widened = [lanes[0], lanes[1], lanes[0], lanes[2]].map(|l| l.map(f64::to_bits));
                assert_eq!(
                    molclip_cpu::vectorize(level, WidenedSums(&a, &b, mean, level)),
                    widened,
                    "{level}, n = {n}"
                );
            }
        }
    }
}
