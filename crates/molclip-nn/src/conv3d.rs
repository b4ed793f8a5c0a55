//! 3D convolution and 3D max pooling, which candle lacks.
//!
//! On the CPU both are custom ops with hand-written backward passes: the convolution is
//! vol2col + GEMM (forward), Wᵀ·dY + col2vol (input gradient) and dY·colᵀ (weight gradient),
//! all on `molclip_cpu`'s GEMM. The first layers (many positions, few weights) build the
//! window matrix, or its gradient, one tile of positions at a time, in cache, and multiply or
//! add back each tile at once; the deeper ones build it for a group of videos and run one
//! GEMM over the group. Width strides read a copy of the input split into phases, so that the
//! window matrix is made of contiguous copies. Most convolutions run on the grid of their
//! padded input instead, without a window matrix (module `shifted`), and windows of which much
//! reads the padding as one product per tap over the outputs where it reads inside (module
//! `per_tap`).
//! candle's own CPU conv2d and its transpose are direct loops, several times slower.
//!
//! On CUDA, with the `cudnn` feature, the same ops run cuDNN's convolution and pooling, forward
//! and backward (module `cudnn`). Elsewhere the same maths is composed from candle ops
//! (one conv2d per temporal tap, or strided slices, stack and matmul), so autograd comes for
//! free; the tests check that the paths agree with each other and with PyTorch.

mod per_tap;
mod shifted;

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};
use molclip_cpu::Shared;
use rayon::prelude::*;

use super::cpu::{f32_slice, gemm_f32, gemm_f32_strided, gemm_f32_uninit, gemm_raw, written_by, Scratch};
use crate::error::Result;

/// Kernel, stride and padding of a 3D window, as (time, height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window3d {
    /// Kernel size (time, height, width).
    pub kernel: [usize; 3],
    /// Stride.
    pub stride: [usize; 3],
    /// Zero padding on each side.
    pub padding: [usize; 3],
}

impl Window3d {
    /// A window of this size, stride and padding.
    pub fn new(kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3]) -> Self {
        Self { kernel, stride, padding }
    }

    /// Output size for an input of `input` (time, height, width); an error if the window does not fit.
    pub fn out_dims(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for i in 0..3 {
            let padded = input[i] + 2 * self.padding[i];
            if padded < self.kernel[i] {
                return Err(crate::error::NnError::Shape(format!(
                    "3D window {:?} larger than the padded input {:?} (dimension {i})",
                    self.kernel, input
                )));
            }
            out[i] = (padded - self.kernel[i]) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// The offsets (time, height, width) of tap `tap` within the window, taps numbered
    /// time-major as the weight's last three axes.
    fn tap_offsets(&self, tap: usize) -> [usize; 3] {
        let [_, kh, kw] = self.kernel;
        [tap / (kh * kw), (tap / kw) % kh, tap % kw]
    }

    /// The input index that output `o` reads at tap offset `k` along `axis` (of `size`
    /// values), or `None` where that falls in the padding.
    fn tap_input(&self, axis: usize, o: usize, k: usize, size: usize) -> Option<usize> {
        (o * self.stride[axis] + k).checked_sub(self.padding[axis]).filter(|&i| i < size)
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1] && self.stride == [1, 1, 1] && self.padding == [0, 0, 0]
    }
}

/// `F.conv3d(x, weight, stride, padding)` without bias: x `[B, C, T, H, W]`, weight
/// `[O, C, kt, kh, kw]`.
pub fn conv3d(x: &Tensor, weight: &Tensor, window: Window3d) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let (o, wc, kt, kh, kw) = weight.dims5()?;
    if wc != c || [kt, kh, kw] != window.kernel {
        return Err(crate::error::NnError::Shape(format!(
            "conv3d: input has {c} channels, weight {:?} with window {:?}",
            weight.dims(),
            window.kernel
        )));
    }
    let [to, ho, wo] = window.out_dims([t, h, w])?;
    crate::flops::add_multiply_adds(b * o * to * ho * wo * c * window.taps());
    crate::precision::cast_product(x, weight, |x, w| {
        if kernels_serve(x) {
            Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv3dOp { window })?)
        } else {
            conv3d_by_taps(x, w, window)
        }
    })
}

/// Whether cuDNN picks each convolution's algorithm by running its candidates on the shape's
/// first use and keeping the fastest (PyTorch's `torch.backends.cudnn.benchmark`), rather than
/// from its heuristics. On for the process when `on` is true or `MOLCLIP_CUDNN_BENCHMARK=1` is
/// in the environment; shapes already picked keep their algorithm. The fastest algorithm may
/// differ between runs, so GPU results may differ in the last bits between runs (the CPU's do
/// not). Without the `cudnn` feature this has no effect.
pub fn set_cudnn_benchmark(on: bool) {
    CUDNN_BENCHMARK.store(on, std::sync::atomic::Ordering::Relaxed);
}

static CUDNN_BENCHMARK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether cuDNN's algorithms are picked by measurement ([`set_cudnn_benchmark`]).
pub fn cudnn_benchmark() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    CUDNN_BENCHMARK.load(std::sync::atomic::Ordering::Relaxed)
        || *ENV.get_or_init(|| std::env::var("MOLCLIP_CUDNN_BENCHMARK").is_ok_and(|v| v == "1"))
}

/// Whether this module's own ops serve `x`: float32 on the CPU, and with the `cudnn` feature,
/// the floating-point dtypes on a CUDA device (through cuDNN). Elsewhere the composed ops do.
fn kernels_serve(x: &Tensor) -> bool {
    match x.device() {
        Device::Cpu => x.dtype() == candle_core::DType::F32,
        #[cfg(feature = "cudnn")]
        Device::Cuda(_) => crate::cudnn::serves(x.dtype()),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// One 2D convolution (candle's, with its GPU kernels) per temporal tap of the window, summed.
/// Windows whose height and width differ in stride or padding go through [`conv3d_composed`],
/// and so do strided windows over non-square frames (candle's conv2d backward derives the
/// width's output padding from the height's).
pub(crate) fn conv3d_by_taps(x: &Tensor, weight: &Tensor, window: Window3d) -> Result<Tensor> {
    let [st, sh, sw] = window.stride;
    let [pt, ph, pw] = window.padding;
    let (b, c, t, h, w) = x.dims5()?;
    if sh != sw || ph != pw || (sh > 1 && h != w) {
        return conv3d_composed(x, weight, window);
    }
    let o = weight.dim(0)?;
    let out = window.out_dims([t, h, w])?;
    let xp = x.pad_with_zeros(2, pt, pt)?;
    let mut y: Option<Tensor> = None;
    for a in 0..window.kernel[0] {
        let frames = strided(&xp, 2, a, out[0], st)?.transpose(1, 2)?.reshape((b * out[0], c, h, w))?;
        let kernel = weight.narrow(2, a, 1)?.squeeze(2)?.contiguous()?;
        let ya = frames.conv2d(&kernel, ph, sh, 1, 1)?;
        y = Some(match y {
            Some(acc) => (acc + ya)?,
            None => ya,
        });
    }
    let y = y.expect("a window has at least one tap");
    Ok(y.reshape((b, out[0], o, out[1], out[2]))?.transpose(1, 2)?.contiguous()?)
}

/// `F.max_pool3d(x, kernel, stride, padding)` (padding counts as -inf).
pub fn max_pool3d(x: &Tensor, window: Window3d) -> Result<Tensor> {
    let (_, _, t, h, w) = x.dims5()?;
    window.out_dims([t, h, w])?;
    if kernels_serve(x) {
        Ok(x.contiguous()?.apply_op1(MaxPool3dOp { window, argmax: std::sync::OnceLock::new() })?)
    } else {
        max_pool3d_composed(x, window)
    }
}

// ---------------------------------------------------------------------------------------
// Composed from candle ops (any device).

/// `len` elements of `dim` starting at `start`, every `step`.
fn strided(x: &Tensor, dim: usize, start: usize, len: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return Ok(x.narrow(dim, start, len)?);
    }
    let need = len * step;
    let avail = x.dim(dim)? - start;
    let mut y = x.narrow(dim, start, avail.min(need))?;
    if avail < need {
        y = y.pad_with_zeros(dim, 0, need - avail)?;
    }
    let mut dims = y.dims().to_vec();
    dims[dim] = len;
    dims.insert(dim + 1, step);
    Ok(y.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
}

/// The input seen by each tap of the window: `[B, C, taps, To, Ho, Wo]`.
fn windows(xp: &Tensor, window: Window3d, out: [usize; 3]) -> Result<Tensor> {
    let mut taps = Vec::with_capacity(window.taps());
    for a in 0..window.kernel[0] {
        for b in 0..window.kernel[1] {
            for c in 0..window.kernel[2] {
                let v = strided(xp, 2, a, out[0], window.stride[0])?;
                let v = strided(&v, 3, b, out[1], window.stride[1])?;
                taps.push(strided(&v, 4, c, out[2], window.stride[2])?);
            }
        }
    }
    Ok(Tensor::stack(&taps, 2)?)
}

pub(crate) fn conv3d_composed(x: &Tensor, weight: &Tensor, window: Window3d) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let o = weight.dim(0)?;
    let out = window.out_dims([t, h, w])?;
    let [pt, ph, pw] = window.padding;
    let xp = x.pad_with_zeros(2, pt, pt)?.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw)?;
    let n = out.iter().product::<usize>();
    let col = windows(&xp, window, out)?.reshape((b, c * window.taps(), n))?;
    let y = weight.reshape((1, o, c * window.taps()))?.broadcast_matmul(&col)?;
    Ok(y.reshape((b, o, out[0], out[1], out[2]))?)
}

fn pad_neg_inf(x: &Tensor, dim: usize, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = pad;
    let fill = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Ok(Tensor::cat(&[&fill, x, &fill], dim)?)
}

pub(crate) fn max_pool3d_composed(x: &Tensor, window: Window3d) -> Result<Tensor> {
    let (_, _, t, h, w) = x.dims5()?;
    let out = window.out_dims([t, h, w])?;
    let [pt, ph, pw] = window.padding;
    let xp = pad_neg_inf(&pad_neg_inf(&pad_neg_inf(x, 2, pt)?, 3, ph)?, 4, pw)?;
    Ok(windows(&xp, window, out)?.max(2)?)
}

// ---------------------------------------------------------------------------------------
// CPU kernels.

pub(crate) fn dims5(l: &Layout) -> candle_core::Result<[usize; 5]> {
    let (a, b, c, d, e) = l.shape().dims5()?;
    Ok([a, b, c, d, e])
}

/// The outputs `lo..hi` along one axis whose input `o·stride + offset − pad` lies in `0..size`.
fn valid_range(out: usize, offset: usize, stride: usize, pad: usize, size: usize) -> (usize, usize) {
    let lo = if pad > offset { (pad - offset).div_ceil(stride) } else { 0 };
    let hi = if size + pad > offset { ((size + pad - offset - 1) / stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// The videos `[G, C, T, H, W]` with each line of width W split into its phases modulo the
/// window's width stride `sw`, `[G, C, T, H, sw, ⌈W / sw⌉]` (value `w` in phase `w mod sw`, at
/// `w div sw`, the phases' tails zero): the window matrix then copies contiguous runs out of it
/// instead of gathering every `sw`-th value. The videos themselves when `sw` is 1.
fn phase_split(x: &[f32], w: usize, sw: usize) -> Cow<'_, [f32]> {
    if sw == 1 {
        return Cow::Borrowed(x);
    }
    let wp = w.div_ceil(sw);
    let mut xs = vec![0f32; x.len() / w * sw * wp];
    xs.par_chunks_mut(sw * wp).zip(x.par_chunks(w)).for_each(|(dst, line)| {
        for (i, &v) in line.iter().enumerate() {
            dst[(i % sw) * wp + i / sw] = v;
        }
    });
    Cow::Owned(xs)
}

/// The runs of `len` consecutive positions from `p0` (numbered video-major, `video · N +
/// (ot · Ho + oh) · Wo + ow`, N = To·Ho·Wo) that lie on one line of outputs: `(offset from
/// p0, length, video, ot, oh, first ow)`.
fn line_runs(
    out: [usize; 3],
    p0: usize,
    len: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize)> {
    let n = out.iter().product::<usize>();
    // The line (video gi, ot, oh) that position p0 is on, and its ow; then running indices,
    // with no division per line.
    let (mut gi, r) = (p0 / n, p0 % n);
    let (mut ot, mut oh, mut ow0) = (r / (out[1] * out[2]), (r / out[2]) % out[1], r % out[2]);
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= len {
            return None;
        }
        let run = (i, (out[2] - ow0).min(len - i), gi, ot, oh, ow0);
        (i, ow0, oh) = (i + run.1, 0, oh + 1);
        if oh == out[1] {
            (oh, ot) = (0, ot + 1);
            if ot == out[0] {
                (ot, gi) = (0, gi + 1);
            }
        }
        Some(run)
    })
}

/// Where row `row` (one channel and tap) of the window matrix reads its line `(ot, oh)`:
/// the channel, the input's `(it, ih)` (None where the tap falls in the padding), the
/// outputs `lo..hi` whose tap lies inside the line, and the tap's offset `cc - pw` along it.
struct TapLines {
    ci: usize,
    a: usize,
    b: usize,
    lo: usize,
    hi: usize,
    shift: isize,
}

impl TapLines {
    fn new(window: Window3d, dims: [usize; 3], out: [usize; 3], row: usize) -> Self {
        let (ci, tap) = (row / window.taps(), row % window.taps());
        let [a, b, cc] = window.tap_offsets(tap);
        let (lo, hi) = valid_range(out[2], cc, window.stride[2], window.padding[2], dims[2]);
        Self { ci, a, b, lo, hi, shift: cc as isize - window.padding[2] as isize }
    }

    /// The input line `(it, ih)` that outputs `(ot, oh)` read, if it is not padding.
    fn input_line(&self, window: Window3d, [t, h, _]: [usize; 3], ot: usize, oh: usize) -> Option<(usize, usize)> {
        Some((window.tap_input(0, ot, self.a, t)?, window.tap_input(1, oh, self.b, h)?))
    }
}

/// Row `row` (one channel and tap of the window) of the window matrix of the videos `xs`
/// (`c` channels of `dims`, phase-split by [`phase_split`]), for the positions
/// `p0..p0 + dst.len()` (numbered as in [`line_runs`]).
#[allow(clippy::too_many_arguments)]
fn window_row(
    xs: &[f32],
    c: usize,
    dims: [usize; 3],
    window: Window3d,
    out: [usize; 3],
    row: usize,
    p0: usize,
    dst: &mut [f32],
) {
    let [t, h, w] = dims;
    let sw = window.stride[2];
    let tap = TapLines::new(window, dims, out, row);
    let (q, phase) = phase_of(tap.shift, sw);
    let wp = w.div_ceil(sw);
    for (i, len, gi, ot, oh, ow0) in line_runs(out, p0, dst.len()) {
        let seg = &mut dst[i..i + len];
        let Some((it, ih)) = tap.input_line(window, dims, ot, oh) else {
            seg.fill(0.0);
            continue;
        };
        let line = &xs[(((gi * c + tap.ci) * t + it) * h + ih) * sw * wp + phase * wp..][..wp];
        // The outputs ow0..ow0 + len, of which lo..hi read inside the line.
        let (lo, hi) = (tap.lo.clamp(ow0, ow0 + len), tap.hi.clamp(ow0, ow0 + len));
        let (l, hh) = (lo - ow0, hi - ow0);
        // lo..hi read inside the line, so lo + q >= 0.
        let from = (lo as isize + q) as usize;
        let (head, rest) = seg.split_at_mut(l);
        let (body, tail) = rest.split_at_mut(hh - l);
        head.fill(0.0);
        body.copy_from_slice(&line[from..from + (hh - l)]);
        tail.fill(0.0);
    }
}

/// Where output `ow` of a tap at offset `shift` along a line reads, under a width stride `sw`:
/// input `ow·sw + shift = (ow + q)·sw + phase`, so in that phase of the line ([`phase_split`]),
/// at `ow + q`. Returns `(q, phase)`.
fn phase_of(shift: isize, sw: usize) -> (isize, usize) {
    (shift.div_euclid(sw as isize), shift.rem_euclid(sw as isize) as usize)
}

/// Adds `seg` into `line` at `first`, `first + sw`, ...: the gradient of outputs that read
/// one line at a width stride `sw`.
fn add_strided(line: &mut [f32], first: usize, sw: usize, seg: &[f32]) {
    if sw == 1 {
        line[first..][..seg.len()].iter_mut().zip(seg).for_each(|(d, g)| *d += g);
    } else {
        for (k, g) in seg.iter().enumerate() {
            line[first + k * sw] += g;
        }
    }
}

/// Adds row `row` of a window-matrix gradient, for the positions `p0..p0 + src.len()` of one
/// video, back into that video's gradient `gx` (`[C, T, H, W]`): [`window_row`] transposed.
fn unwindow_row(
    gx: &mut [f32],
    dims: [usize; 3],
    window: Window3d,
    out: [usize; 3],
    row: usize,
    p0: usize,
    src: &[f32],
) {
    let [t, h, w] = dims;
    let sw = window.stride[2];
    let tap = TapLines::new(window, dims, out, row);
    for (i, len, _, ot, oh, ow0) in line_runs(out, p0, src.len()) {
        let Some((it, ih)) = tap.input_line(window, dims, ot, oh) else { continue };
        let line = &mut gx[((tap.ci * t + it) * h + ih) * w..][..w];
        let (lo, hi) = (tap.lo.clamp(ow0, ow0 + len), tap.hi.clamp(ow0, ow0 + len));
        let seg = &src[i + lo - ow0..i + hi - ow0];
        // Output ow read input ow·sw + shift, inside the line for lo <= ow < hi.
        add_strided(line, ((lo * sw) as isize + tap.shift) as usize, sw, seg);
    }
}

/// The runs of one video's output positions (numbered `(ot · Ho + oh) · Wo + ow`) at which
/// tap `tap` of the window reads inside the input, one per line of outputs, in order: `[first
/// position, input index of its first read, length]`, the index given by `index(it, ih, first
/// ow, the tap's offset along the line)`. The same for every channel and video: a whole
/// window matrix or its gradient is then copies and sums of runs, with no per-line
/// arithmetic (the deep layers' lines are 4 to 14 outputs long).
fn tap_runs(
    window: Window3d,
    dims: [usize; 3],
    out: [usize; 3],
    tap: usize,
    index: impl Fn(usize, usize, usize, isize) -> usize,
) -> Vec<[usize; 3]> {
    let lines = TapLines::new(window, dims, out, tap);
    if lines.lo >= lines.hi {
        return Vec::new();
    }
    let mut runs = Vec::with_capacity(out[0] * out[1]);
    for ot in 0..out[0] {
        for oh in 0..out[1] {
            if let Some((it, ih)) = lines.input_line(window, dims, ot, oh) {
                let first = (ot * out[1] + oh) * out[2] + lines.lo;
                runs.push([first, index(it, ih, lines.lo, lines.shift), lines.hi - lines.lo]);
            }
        }
    }
    runs
}

/// Tap `tap`'s runs ([`tap_runs`]) with each run's input index in the videos phase-split by
/// [`phase_split`] (`split`: a contiguous run of the tap's phase), or in the videos themselves
/// (the run's first input; the others follow at the width stride).
fn tap_runs_in(window: Window3d, dims: [usize; 3], out: [usize; 3], tap: usize, split: bool) -> Vec<[usize; 3]> {
    let [_, h, w] = dims;
    let sw = window.stride[2];
    if split {
        let wp = w.div_ceil(sw);
        tap_runs(window, dims, out, tap, |it, ih, lo, shift| {
            let (q, phase) = phase_of(shift, sw);
            (it * h + ih) * sw * wp + phase * wp + (lo as isize + q) as usize
        })
    } else {
        // Output ow read input ow·sw + shift, inside the line for the run's outputs.
        tap_runs(window, dims, out, tap, |it, ih, lo, shift| (it * h + ih) * w + ((lo * sw) as isize + shift) as usize)
    }
}

/// Fills `col` (`[C·taps, G·N]`, N = To·Ho·Wo) with the window contents of `g` consecutive videos
/// of `c` channels (phase-split by [`phase_split`]); video `i` fills columns `i·N..(i+1)·N`:
/// [`window_row`]'s values, from each tap's [`tap_runs`], zeros between them.
#[allow(clippy::too_many_arguments)]
fn vol2col(xs: &[f32], g: usize, c: usize, dims: [usize; 3], window: Window3d, out: [usize; 3], col: &mut [f32]) {
    let n = out.iter().product::<usize>();
    let [t, h, w] = dims;
    let sw = window.stride[2];
    let channel = t * h * sw * w.div_ceil(sw);
    let taps = window.taps();
    let runs: Vec<_> = (0..taps).map(|tap| tap_runs_in(window, dims, out, tap, true)).collect();
    col.par_chunks_mut(g * n).enumerate().for_each(|(row, dst)| {
        let (ci, runs) = (row / taps, &runs[row % taps]);
        for (gi, dst) in dst.chunks_exact_mut(n).enumerate() {
            let src = &xs[(gi * c + ci) * channel..][..channel];
            let mut next = 0;
            for &[first, from, len] in runs {
                dst[next..first].fill(0.0);
                dst[first..first + len].copy_from_slice(&src[from..from + len]);
                next = first + len;
            }
            dst[next..].fill(0.0);
        }
    });
}

/// Adds the window contents `col` (`[C·taps, G·N]`) back into the gradient of `g` videos
/// `[G, C, T, H, W]`: [`unwindow_row`]'s sums, in its order, from each tap's [`tap_runs`].
fn col2vol(col: &[f32], g: usize, dims: [usize; 3], window: Window3d, out: [usize; 3], gx: &mut [f32]) {
    let n = out.iter().product::<usize>();
    let sw = window.stride[2];
    let taps = window.taps();
    let plane = dims.iter().product::<usize>();
    let c = gx.len() / (g * plane);
    let runs: Vec<_> = (0..taps).map(|tap| tap_runs_in(window, dims, out, tap, false)).collect();
    gx.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
        let (gi, ci) = (p / c, p % c);
        // The plane is the gradient of one channel: its rows are the taps alone.
        for (tap, runs) in runs.iter().enumerate() {
            let src = &col[(ci * taps + tap) * g * n + gi * n..][..n];
            for &[first, from, len] in runs {
                add_strided(dst, from, sw, &src[first..first + len]);
            }
        }
    });
}

/// The padded grid on which a convolution runs without a window matrix ([`shifted`]), for
/// `b` videos of `c` channels of `input` dims, where that grid is dense in outputs; None for
/// the others, and for 1×1×1 windows (whose window matrix is the input itself, or a strided
/// view of it).
fn shifted_grid(window: Window3d, b: usize, c: usize, input: [usize; 3]) -> Option<shifted::PaddedGrid> {
    if window.kernel == [1, 1, 1] || !shifted_enabled() {
        return None;
    }
    shifted::PaddedGrid::new(b, c, input, window).filter(|g| g.dense())
}

/// `MOLCLIP_SHIFTED=0` builds the window matrix for every convolution, as before the grid
/// kernels, for comparisons (read once per process).
fn shifted_enabled() -> bool {
    #[cfg(test)]
    if tests::WINDOW_MATRIX_ONLY.get() {
        return false;
    }
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MOLCLIP_SHIFTED").map_or(true, |v| v.trim() != "0"))
}

/// Videos per GEMM: deep layers have few output positions per video, and one GEMM over
/// several videos keeps the matrices large enough to run near peak.
fn group_size(batch: usize, positions: usize) -> usize {
    (4096 / positions.max(1)).clamp(1, batch.max(1))
}

/// `[O, G·N]` (video-major columns) to `[G, O, N]`, or back.
fn regroup(src: &[f32], dst: &mut [f32], o: usize, g: usize, n: usize, to_videos: bool) {
    dst.par_chunks_mut(n).enumerate().for_each(|(k, d)| {
        // k indexes the destination's rows of length n.
        let (oi, gi) = if to_videos { (k % o, k / o) } else { (k / g, k % g) };
        d.copy_from_slice(&src[if to_videos { (oi * g + gi) * n } else { (gi * o + oi) * n }..][..n]);
    });
}

/// The element-wise sum of `parts` (of one length) in order, `((parts[0] + parts[1]) +
/// parts[2]) + ...`, in parallel over runs of the values: bits that depend on the parts alone.
fn sum_in_order(parts: &[&[f32]]) -> Vec<f32> {
    /// Values per task.
    const RUN: usize = 1 << 14;
    let Some((first, rest)) = parts.split_first() else { return Vec::new() };
    let mut sum = first.to_vec();
    sum.par_chunks_mut(RUN).enumerate().for_each(|(r, acc)| {
        for part in rest {
            acc.iter_mut().zip(&part[r * RUN..]).for_each(|(a, p)| *a += p);
        }
    });
    sum
}

/// `[O, CK]` from partial sums `[parts, CK, O]`, summed in order (each element the first
/// part's value, then every later one added: what `Iterator::sum` gives). The tiled weight
/// gradient's GEMMs write the transpose: with both of their operands position-major, they ran
/// about twice as fast into a column-major result. The parts are summed in their own order, a
/// run of values at a time, and the sum transposed by square tiles that stay in the L1 cache:
/// an element-by-element transposed walk touched a new cache line at every read.
fn sum_transposed(partial: &[f32], o: usize, ck: usize) -> Vec<f32> {
    /// Output rows and columns per tile of the transpose.
    const TILE: usize = 32;
    let size = o * ck;
    let sum: Cow<'_, [f32]> = if partial.len() == size {
        Cow::Borrowed(partial)
    } else {
        Cow::Owned(sum_in_order(&partial.chunks(size).collect::<Vec<_>>()))
    };
    let transpose = |gw: &mut [std::mem::MaybeUninit<f32>]| {
        gw.par_chunks_mut(TILE * ck).enumerate().for_each(|(tile, rows)| {
            let (o0, height) = (tile * TILE, rows.len() / ck);
            for j0 in (0..ck).step_by(TILE) {
                for j in j0..(j0 + TILE).min(ck) {
                    for (r, &v) in sum[j * o + o0..][..height].iter().enumerate() {
                        rows[r * ck + j].write(v);
                    }
                }
            }
        });
    };
    // SAFETY: the tiles of rows cover the `[O, CK]` result, and each sets every column of its
    // rows: all O·CK values.
    unsafe { super::cpu::written_by(size, transpose) }
}

/// Sizes shared by the forward and both backward kernels of one convolution.
struct ConvSizes {
    /// Videos, input channels, output channels.
    b: usize,
    c: usize,
    o: usize,
    input: [usize; 3],
    out: [usize; 3],
    /// Output positions per video, rows of the window matrix, input values per video.
    n: usize,
    ck: usize,
    vol: usize,
    /// Values per video once phase-split for the window's width stride ([`phase_split`]).
    pvol: usize,
    /// Videos per GEMM.
    g: usize,
    /// The window matrix of a 1×1×1 convolution of single videos is the input itself.
    direct: bool,
}

/// Window-matrix values per tile: a tile's window matrix stays in a core's cache.
const TILE_VALUES: usize = 1 << 19;
/// Most weights of a convolution that runs tile by tile (each tile's GEMM packs them again).
const TILED_MAX_WEIGHTS: usize = 1 << 20;
/// Fewest output positions per video of a convolution that runs tile by tile.
const TILED_MIN_POSITIONS: usize = 2048;
/// Most values of the weight gradient's partial sums, and most partial sums.
const PARTIAL_VALUES: usize = 1 << 21;
const MAX_PARTS: usize = 16;

impl ConvSizes {
    fn new(window: Window3d, [b, c, t, h, w]: [usize; 5], o: usize, out: [usize; 3]) -> Self {
        let n = out.iter().product::<usize>();
        let g = group_size(b, n);
        Self {
            b,
            c,
            o,
            input: [t, h, w],
            out,
            n,
            ck: c * window.taps(),
            vol: c * t * h * w,
            pvol: c * t * h * window.stride[2] * w.div_ceil(window.stride[2]),
            g,
            direct: window.is_pointwise() && g == 1,
        }
    }

    /// Positions per tile when the convolution runs tile by tile, None when it runs by
    /// groups of videos. Tiled: the layers with many positions and few weights (the first
    /// ones), whose whole window matrix is tens of MB: each task builds the window matrix of
    /// one tile of positions of one video in its cache and multiplies it at once, so that the
    /// matrix never goes through memory.
    fn tile(&self) -> Option<usize> {
        if self.direct || self.o * self.ck > TILED_MAX_WEIGHTS || self.n < TILED_MIN_POSITIONS {
            return None;
        }
        Some((TILE_VALUES / self.ck).clamp(96, 1024) / 16 * 16)
    }

    /// The tiles (video, first position, positions) of every video, in order.
    fn tiles(&self, tile: usize) -> Vec<(usize, usize, usize)> {
        (0..self.b).flat_map(|bi| (0..self.n).step_by(tile).map(move |r0| (bi, r0, tile.min(self.n - r0)))).collect()
    }

    /// The window matrix `[C·taps, len]` of positions `r0..r0 + len` of one video `xv`.
    fn tile_matrix(&self, window: Window3d, xv: &[f32], r0: usize, len: usize, col: &mut [f32]) {
        for (row, dst) in col[..self.ck * len].chunks_mut(len).enumerate() {
            window_row(xv, self.c, self.input, window, self.out, row, r0, dst);
        }
    }

    /// y `[B, O, N]` = W · window matrix of the phase-split videos `xs`, tile by tile.
    fn forward_tiled(&self, window: Window3d, xs: &[f32], wt: &[f32], tile: usize) -> Vec<f32> {
        let (o, n, ck, pvol) = (self.o, self.n, self.ck, self.pvol);
        let mut y = vec![0f32; self.b * o * n];
        let dst = Shared(y.as_mut_ptr());
        self.tiles(tile).into_par_iter().for_each_init(
            || vec![0f32; ck * tile],
            |col, (bi, r0, len)| {
                self.tile_matrix(window, &xs[bi * pvol..(bi + 1) * pvol], r0, len, col);
                // SAFETY: y holds B·O·N values, and this task writes y[bi, :, r0..r0 + len]
                // (row stride N) alone: the tiles of a video are disjoint ranges of positions.
                // W and the tile's window matrix are the slices' own `[O, CK]` and `[CK, len]`.
                unsafe {
                    gemm_raw(
                        o,
                        len,
                        ck,
                        dst.get().add(bi * o * n + r0),
                        (1, n as isize),
                        false,
                        wt.as_ptr(),
                        (1, ck as isize),
                        col.as_ptr(),
                        (1, len as isize),
                        1.0,
                        1,
                    );
                }
            },
        );
        y
    }

    /// dX `[B, C, T, H, W]` = the window-matrix gradient Wᵀ · dY added back into the videos,
    /// tile by tile: each task takes one video and, a tile at a time, computes that tile's
    /// window-matrix gradient in its cache and adds it into the video's gradient, which no
    /// other task writes (the whole matrix would go through memory twice).
    fn input_grad_tiled(&self, window: Window3d, gy: &[f32], wt: &[f32], tile: usize) -> Vec<f32> {
        let (o, n, ck, vol) = (self.o, self.n, self.ck, self.vol);
        let threads = rayon::current_num_threads().div_ceil(self.b);
        let mut gx = vec![0f32; self.b * vol];
        gx.par_chunks_mut(vol).enumerate().for_each_init(
            || vec![0f32; ck * tile],
            |gcol, (bi, gxv)| {
                for r0 in (0..n).step_by(tile) {
                    let len = tile.min(n - r0);
                    // Wᵀ (element (ck, o) at o·CK + ck) · dY[bi, :, r0..r0 + len].
                    gemm_f32_strided(
                        ck,
                        len,
                        o,
                        (&mut gcol[..ck * len], (1, len as isize)),
                        false,
                        (wt, (ck as isize, 1)),
                        (&gy[bi * o * n + r0..], (1, n as isize)),
                        threads,
                    );
                    for (row, src) in gcol[..ck * len].chunks(len).enumerate() {
                        unwindow_row(gxv, self.input, window, self.out, row, r0, src);
                    }
                }
            },
        );
        gx
    }

    /// dX `[B, C, T, H, W]` = the window-matrix gradient Wᵀ · dY added back into the videos,
    /// by groups of videos (for a direct convolution, Wᵀ · dY is the gradient itself).
    fn input_grad_grouped(&self, window: Window3d, gy: &[f32], wt: &[f32]) -> Vec<f32> {
        let (o, n, ck, vol) = (self.o, self.n, self.ck, self.vol);
        let mut gx = vec![0f32; self.b * vol];
        let (mut gcol, mut tmp) = self.buffers();
        for (b0, gs) in self.groups() {
            let m = gs * n;
            let lhs = self.output_matrix(&gy[b0 * o * n..(b0 + gs) * o * n], gs, &mut tmp);
            let gxs = &mut gx[b0 * vol..(b0 + gs) * vol];
            // Wᵀ: element (ck, o) of the transpose sits at o·CK + ck.
            if self.direct {
                gemm_f32(ck, n, o, gxs, false, wt, (ck as isize, 1), lhs, (1, n as isize));
            } else {
                gemm_f32(ck, m, o, &mut gcol[..ck * m], false, wt, (ck as isize, 1), lhs, (1, m as isize));
                col2vol(&gcol[..ck * m], gs, self.input, window, self.out, gxs);
            }
        }
        gx
    }

    /// y `[B, O, N]` = W · window matrix of the phase-split videos `xs`, by groups of videos.
    fn forward_grouped(&self, window: Window3d, xs: &[f32], wt: &[f32]) -> Vec<f32> {
        let (o, n, ck, pvol) = (self.o, self.n, self.ck, self.pvol);
        let mut y = vec![0f32; self.b * o * n];
        let (mut col, mut tmp) = self.buffers();
        for (b0, gs) in self.groups() {
            let m = gs * n;
            let col_ref = self.window_matrix(window, &xs[b0 * pvol..(b0 + gs) * pvol], gs, &mut col);
            let ys = &mut y[b0 * o * n..(b0 + gs) * o * n];
            if self.g == 1 {
                gemm_f32(o, n, ck, ys, false, wt, (1, ck as isize), col_ref, (1, n as isize));
            } else {
                gemm_f32(o, m, ck, &mut tmp[..o * m], false, wt, (1, ck as isize), col_ref, (1, m as isize));
                regroup(&tmp[..o * m], ys, o, gs, n, true);
            }
        }
        y
    }

    /// The weight gradient `[O, CK]` = Σ over positions of dY · window matrixᵀ (phase-split
    /// videos `xs`), tile by tile: the tiles are split into a number of parts that depends on
    /// the shapes alone (so that the numbers do not depend on the thread count), each summed in
    /// order by one task.
    fn weight_grad_tiled(&self, window: Window3d, xs: &[f32], gy: &[f32], tile: usize) -> Vec<f32> {
        let (o, n, ck, pvol) = (self.o, self.n, self.ck, self.pvol);
        let tiles = self.tiles(tile);
        let parts = (PARTIAL_VALUES / (o * ck)).clamp(1, MAX_PARTS).min(tiles.len());
        let threads = rayon::current_num_threads().div_ceil(parts);
        let mut partial = vec![0f32; parts * o * ck];
        partial.par_chunks_mut(o * ck).enumerate().for_each(|(p, acc)| {
            let mut col = vec![0f32; ck * tile];
            let mine = &tiles[p * tiles.len() / parts..(p + 1) * tiles.len() / parts];
            for (i, &(bi, r0, len)) in mine.iter().enumerate() {
                self.tile_matrix(window, &xs[bi * pvol..(bi + 1) * pvol], r0, len, &mut col);
                // gwᵀ `[CK, O]` (column-major dst) += dY[bi, :, r0..r0 + len] · colᵀ.
                gemm_f32_strided(
                    o,
                    ck,
                    len,
                    (acc, (o as isize, 1)),
                    i > 0,
                    (&gy[bi * o * n + r0..], (1, n as isize)),
                    (&col[..ck * len], (len as isize, 1)),
                    threads,
                );
            }
        });
        sum_transposed(&partial, o, ck)
    }

    /// The weight gradient `[O, CK]` (phase-split videos `xs`), by groups of videos: the first
    /// group's product sets it, the others add to it. Written `[O, CK]` directly: through
    /// molclip's GEMM this is no slower than the transpose, and it saves [`sum_transposed`]'s
    /// pass (on `layer4`'s 3 x 3 x 3 convolution, backward 127 to 117 ms at AVX2 and 89 to 77 ms
    /// at AVX-512, on a Xeon).
    fn weight_grad_grouped(&self, window: Window3d, xs: &[f32], gy: &[f32]) -> Vec<f32> {
        let (o, n, ck, pvol) = (self.o, self.n, self.ck, self.pvol);
        let threads = rayon::current_num_threads();
        let mut gw: Option<Vec<f32>> = None;
        let (mut col, mut tmp) = self.buffers();
        for (b0, gs) in self.groups() {
            let m = gs * n;
            let col_ref = self.window_matrix(window, &xs[b0 * pvol..(b0 + gs) * pvol], gs, &mut col);
            let lhs = self.output_matrix(&gy[b0 * o * n..(b0 + gs) * o * n], gs, &mut tmp);
            // gw `[O, CK]` (+)= dY · colᵀ, colᵀ's element (m, ck) at ck·M + m.
            let (lhs, rhs) = ((lhs, (1, m as isize)), (col_ref, (m as isize, 1)));
            match gw.as_mut() {
                // SAFETY: a product that does not accumulate sets every value of its destination.
                None => gw = Some(unsafe { written_by(o * ck, |dst| gemm_f32_uninit(o, ck, m, dst, lhs, rhs)) }),
                Some(gw) => gemm_f32_strided(o, ck, m, (gw, (1, ck as isize)), true, lhs, rhs, threads),
            }
        }
        gw.unwrap_or_else(|| vec![0f32; o * ck])
    }

    /// Scratch buffers: the window matrix of a group, and the regrouped output of a group
    /// (each written whole before it is read: by [`vol2col`] or a GEMM, and by [`regroup`] or
    /// a GEMM).
    fn buffers(&self) -> (Scratch, Scratch) {
        let col = if self.direct { 0 } else { self.ck * self.g * self.n };
        let tmp = if self.g > 1 { self.o * self.g * self.n } else { 0 };
        (Scratch::take(col), Scratch::take(tmp))
    }

    /// First video and size of each group.
    fn groups(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.b).step_by(self.g).map(|b0| (b0, self.g.min(self.b - b0)))
    }

    /// The window matrix `[C·taps, gs·N]` of the `gs` videos `xs`: the input itself for a
    /// direct (1×1×1) convolution, else built in `col`.
    fn window_matrix<'a>(&self, window: Window3d, xs: &'a [f32], gs: usize, col: &'a mut [f32]) -> &'a [f32] {
        if self.direct {
            return xs;
        }
        let len = self.ck * gs * self.n;
        vol2col(xs, gs, self.c, self.input, window, self.out, &mut col[..len]);
        &col[..len]
    }

    /// The output gradients of `gs` videos as one `[O, gs·N]` matrix (regrouped into `tmp`
    /// when the group holds several videos).
    fn output_matrix<'a>(&self, gys: &'a [f32], gs: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        if self.g == 1 {
            return gys;
        }
        let len = self.o * gs * self.n;
        regroup(gys, &mut tmp[..len], self.o, gs, self.n, false);
        &tmp[..len]
    }
}

/// A 1×1×1 window with a stride and no padding reads one input value per output: it is the
/// 1×1×1 window of stride 1 on the input subsampled by the stride ([`subsample`]), which reads
/// an eighth of the input (stride 2) instead of phase-splitting all of it for a window matrix.
/// Its products are the same, on the same values, so its bits are too.
fn subsampled(window: Window3d) -> Option<Window3d> {
    let strided = window.kernel == [1, 1, 1] && window.padding == [0, 0, 0] && window.stride != [1, 1, 1];
    strided.then(|| Window3d::new([1, 1, 1], [1, 1, 1], [0, 0, 0]))
}

/// The window, videos and dims an op runs on: a [`subsampled`] window's 1×1×1 window of stride
/// 1 on the videos `x` (`dims`) subsampled to the outputs' dims `out`; any other window on `x`.
fn on_subsampled(
    window: Window3d,
    x: &[f32],
    dims: [usize; 5],
    out: [usize; 3],
) -> (Window3d, Cow<'_, [f32]>, [usize; 5]) {
    match subsampled(window) {
        Some(unit) => {
            let [b, c, ..] = dims;
            (unit, Cow::Owned(subsample(x, dims, window.stride, out)), [b, c, out[0], out[1], out[2]])
        }
        None => (window, Cow::Borrowed(x), dims),
    }
}

/// The videos `[B, C, T, H, W]` at every `stride`-th value of each axis from the first:
/// `[B, C, out]`.
fn subsample(x: &[f32], [b, c, t, h, w]: [usize; 5], stride: [usize; 3], out: [usize; 3]) -> Vec<f32> {
    let [ot, oh, ow] = out;
    let mut xs = vec![0f32; b * c * ot * oh * ow];
    xs.par_chunks_mut((ot * oh * ow).max(1)).zip(x.par_chunks((t * h * w).max(1))).for_each(|(dst, src)| {
        for (l, line) in dst.chunks_exact_mut(ow.max(1)).enumerate() {
            let from = &src[((l / oh) * stride[0] * h + (l % oh) * stride[1]) * w..][..w];
            for (i, v) in line.iter_mut().enumerate() {
                *v = from[i * stride[2]];
            }
        }
    });
    xs
}

/// [`subsample`] transposed: the gradient of the subsampled videos `[B, C, out]` in place in
/// zeros of the videos' dims `[B, C, T, H, W]`.
fn unsubsample(gs: &[f32], [b, c, t, h, w]: [usize; 5], stride: [usize; 3], out: [usize; 3]) -> Vec<f32> {
    let [ot, oh, ow] = out;
    let mut gx = vec![0f32; b * c * t * h * w];
    gx.par_chunks_mut((t * h * w).max(1)).zip(gs.par_chunks((ot * oh * ow).max(1))).for_each(|(dst, src)| {
        for (l, line) in src.chunks_exact(ow.max(1)).enumerate() {
            let to = &mut dst[((l / oh) * stride[0] * h + (l % oh) * stride[1]) * w..][..w];
            for (i, &v) in line.iter().enumerate() {
                to[i * stride[2]] = v;
            }
        }
    });
    gx
}

/// `conv3d` as one op: vol2col and GEMM on the CPU, cuDNN on CUDA.
struct Conv3dOp {
    window: Window3d,
}

impl CustomOp2 for Conv3dOp {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, wt) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let dims = dims5(l1)?;
        let out = self.window.out_dims([dims[2], dims[3], dims[4]]).map_err(candle_core::Error::wrap)?;
        let (window, x, dims) = on_subsampled(self.window, x, dims, out);
        let z = ConvSizes::new(window, dims, l2.shape().dims()[0], out);
        let o = z.o;
        let shape = Shape::from(vec![z.b, o, out[0], out[1], out[2]]);
        if let Some(grid) = shifted_grid(window, z.b, z.c, z.input) {
            return Ok((CpuStorage::F32(grid.convolve(&x, (wt, o))), shape));
        }
        let taps = per_tap::TapProducts::new(window, dims, o, out);
        if taps.serves() {
            return Ok((CpuStorage::F32(taps.forward(&x, wt)), shape));
        }
        let xs = phase_split(&x, dims[4], window.stride[2]);
        let y = match z.tile() {
            Some(tile) => z.forward_tiled(window, &xs, wt, tile),
            None => z.forward_grouped(window, &xs, wt),
        };
        Ok((CpuStorage::F32(y), shape))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cudnn::conv3d_forward(self.window, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, t, h, w) = x.dims5()?;
        // The first convolution sees the videos themselves: no gradient to compute there.
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &Conv3dGradInput { window: self.window, input: [t, h, w] })?)
        } else {
            None
        };
        let gw = x.apply_op2_no_bwd(&grad, &Conv3dGradWeight { window: self.window })?;
        Ok((gx, Some(gw)))
    }
}

struct Conv3dGradInput {
    window: Window3d,
    input: [usize; 3],
}

impl CustomOp2 for Conv3dGradInput {
    fn name(&self) -> &'static str {
        "conv3d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gy, wt) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let [b, o, ot, oh, ow] = dims5(l1)?;
        let [t, h, w] = self.input;
        let c = l2.shape().dims()[1];
        let out = [ot, oh, ow];
        // A subsampled window's gradient is that of its subsample, put back in place.
        let (window, [t, h, w]) = match subsampled(self.window) {
            Some(unit) => (unit, out),
            None => (self.window, [t, h, w]),
        };
        let z = ConvSizes::new(window, [b, c, t, h, w], o, out);
        let gx = match shifted_grid(window, b, z.c, [t, h, w])
            .and_then(|_| shifted::PaddedGrid::for_input_grad(b, o, out, window))
            .filter(|g| g.dense())
        {
            Some(grid) => {
                let taps = window.taps();
                debug_assert_eq!(grid.out(), [t, h, w]);
                grid.convolve(gy, (&shifted::flipped(wt, o, c, taps), c))
            }
            None => {
                let taps = per_tap::TapProducts::new(window, [b, c, t, h, w], o, out);
                match z.tile() {
                    _ if taps.serves() => taps.input_grad(gy, wt),
                    Some(tile) => z.input_grad_tiled(window, gy, wt, tile),
                    None => z.input_grad_grouped(window, gy, wt),
                }
            }
        };
        let [t, h, w] = self.input;
        let gx = match subsampled(self.window) {
            Some(_) => unsubsample(&gx, [b, c, t, h, w], self.window.stride, out),
            None => gx,
        };
        Ok((CpuStorage::F32(gx), Shape::from(vec![b, c, t, h, w])))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cudnn::conv3d_input_grad(self.window, self.input, (s1, l1), (s2, l2))
    }
}

struct Conv3dGradWeight {
    window: Window3d,
}

impl CustomOp2 for Conv3dGradWeight {
    fn name(&self) -> &'static str {
        "conv3d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let [_, o, ot, oh, ow] = dims5(l2)?;
        let (window, x, dims) = on_subsampled(self.window, x, dims5(l1)?, [ot, oh, ow]);
        let z = ConvSizes::new(window, dims, o, [ot, oh, ow]);
        let c = z.c;
        let [kt, kh, kw] = window.kernel;
        if let Some(grid) = shifted_grid(window, z.b, c, z.input) {
            return Ok((CpuStorage::F32(grid.weight_grad(&x, gy, o)), Shape::from(vec![o, c, kt, kh, kw])));
        }
        let taps = per_tap::TapProducts::new(window, dims, o, [ot, oh, ow]);
        if taps.serves() {
            return Ok((CpuStorage::F32(taps.weight_grad(&x, gy)), Shape::from(vec![o, c, kt, kh, kw])));
        }
        let xs = phase_split(&x, dims[4], window.stride[2]);
        let gw = match z.tile() {
            Some(tile) => z.weight_grad_tiled(window, &xs, gy, tile),
            None => z.weight_grad_grouped(window, &xs, gy),
        };
        Ok((CpuStorage::F32(gw), Shape::from(vec![o, c, kt, kh, kw])))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cudnn::conv3d_weight_grad(self.window, (s1, l1), (s2, l2))
    }
}

/// `max_pool3d` as one op: a separable scan on the CPU, cuDNN on CUDA.
struct MaxPool3dOp {
    window: Window3d,
    /// The forward pass's argmax, kept for the backward pass (which scanned every window
    /// again before).
    argmax: std::sync::OnceLock<std::sync::Arc<Vec<u32>>>,
}

/// An output element whose window holds only padding.
const NO_TAP: u32 = u32::MAX;

/// A plane's max-pool backward pass: each pooled gradient `grad[o]` added to `plane` at its
/// window's maximum `argmax[o]` (none where the window held only padding), in order.
pub(crate) fn add_at_maxima(plane: &mut [f32], argmax: &[u32], grad: &[f32]) {
    for (&a, &g) in argmax.iter().zip(grad) {
        if a != NO_TAP {
            plane[a as usize] += g;
        }
    }
}

/// One step of the maximum's scan, over a row of candidates at once: candidate `o` (value
/// `v[o]`, input index `at(o)`) replaces the best so far where it ranks above it. The ranking
/// is PyTorch's scan (time, then height, then width: the first maximum wins, and a NaN wins,
/// the last one seen) stated so that it does not depend on the order candidates come in, the
/// input index being the scan's order: a NaN ranks above every number, and of two NaNs the
/// later; of two numbers the larger, and of equal ones the earlier. An empty best (-inf,
/// [`NO_TAP`]) ranks below every candidate. Branch-free, so that it vectorises: which
/// candidate wins is data.
#[inline(always)]
fn pool_step(best: &mut [f32], best_at: &mut [u32], v: &[f32], at: impl Fn(usize) -> u32) {
    for (o, ((b, ba), &v)) in best.iter_mut().zip(best_at.iter_mut()).zip(v).enumerate() {
        let a = at(o);
        let (v_nan, b_nan) = (v.is_nan(), b.is_nan());
        let take = (v_nan & !(b_nan & (*ba > a))) | (!v_nan & ((v > *b) | ((v == *b) & (a < *ba))));
        *b = if take { v } else { *b };
        *ba = if take { a } else { *ba };
    }
}

/// For each output element, its window's maximum as [`pool_step`] ranks them (PyTorch's
/// answer: the first maximum in scan order, or the last NaN) and that maximum's flat index
/// (within its channel); -inf and [`NO_TAP`] if the window holds only padding. Returns the
/// values and the indices.
///
/// The window is reduced one axis at a time, which the ranking allows in any order: time
/// first, over whole planes, then height, over whole lines, so that both run over contiguous
/// rows and leave a quarter of the input (for a stride of 2 in each) to the width's gather.
/// Each step is a loop over a row of outputs that the compiler vectorises for the instruction
/// set it runs on.
fn pool_argmax(
    x: &[f32],
    planes: usize,
    dims: [usize; 3],
    window: Window3d,
    out: [usize; 3],
) -> candle_core::Result<(Vec<f32>, Vec<u32>)> {
    pool_argmax_mapped(x, planes, dims, window, out, None::<fn(usize, &[f32], &mut [f32])>)
}

/// [`pool_argmax`] of `map(x)`, where `map` is given: `map(p, plane, to)` writes plane `p` of
/// `x` (all `dims` of its values) mapped into `to`, which the plane's scan then reads, while
/// it is in cache. A map applied to the whole input first gives the same values and indices
/// (the scan's own input is the only change), without the mapped input in memory.
pub(crate) fn pool_argmax_mapped(
    x: &[f32],
    planes: usize,
    dims: [usize; 3],
    window: Window3d,
    out: [usize; 3],
    map: Option<impl Fn(usize, &[f32], &mut [f32]) + Sync>,
) -> candle_core::Result<(Vec<f32>, Vec<u32>)> {
    let [_, h, w] = dims;
    let [ot, oh, ow] = out;
    let vol = dims.iter().product::<usize>();
    if vol >= NO_TAP as usize {
        candle_core::bail!("max-pool3d: {vol} values per channel, more than the 2^32 - 1 it indexes");
    }
    let n = out.iter().product::<usize>();
    let mut arg = vec![NO_TAP; planes * n];
    let mut best = vec![f32::NEG_INFINITY; planes * n];
    if n == 0 || vol == 0 {
        return Ok((best, arg));
    }
    let scratch = || {
        let pool = PoolScratch {
            time: (vec![0f32; ot * h * w], vec![0u32; ot * h * w]),
            height: (vec![0f32; ot * oh * w], vec![0u32; ot * oh * w]),
            taps: (vec![0f32; ow], vec![0u32; ow]),
        };
        (pool, vec![0f32; if map.is_some() { vol } else { 0 }])
    };
    let isa = molclip_cpu::isa();
    best.par_chunks_mut(n).zip(arg.par_chunks_mut(n)).enumerate().for_each_init(
        scratch,
        |(scratch, mapped), (p, dst)| {
            let mut src = &x[p * vol..(p + 1) * vol];
            if let Some(map) = &map {
                map(p, src, mapped);
                src = mapped;
            }
            molclip_cpu::vectorize(isa, PoolPlane { src, dst, scratch, dims, window, out });
        },
    );
    Ok((best, arg))
}

/// One task's rows of a plane's time and height reductions, and of one width tap's gather
/// ([`pool_argmax`]).
struct PoolScratch {
    time: (Vec<f32>, Vec<u32>),
    height: (Vec<f32>, Vec<u32>),
    taps: (Vec<f32>, Vec<u32>),
}

/// The scan of one plane `src` into its outputs' maxima and their indices `dst`.
struct PoolPlane<'a> {
    src: &'a [f32],
    dst: (&'a mut [f32], &'a mut [u32]),
    scratch: &'a mut PoolScratch,
    dims: [usize; 3],
    window: Window3d,
    out: [usize; 3],
}

impl molclip_cpu::Vectorized for PoolPlane<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let Self { src, dst: (vd, ad), scratch, dims: [t, h, w], window, out: [ot, oh, ow] } = self;
        let PoolScratch { time: (vt, at), height: (vh, ah), taps: (tv, ta) } = scratch;
        let [kt, kh, kw] = window.kernel;
        let (sw, pw) = (window.stride[2], window.padding[2]);
        // Time: whole planes of H x W, to [To, H, W].
        let plane = h * w;
        vt.fill(f32::NEG_INFINITY);
        at.fill(NO_TAP);
        for o in 0..ot {
            let (best, best_at) = (&mut vt[o * plane..(o + 1) * plane], &mut at[o * plane..(o + 1) * plane]);
            for it in (0..kt).filter_map(|k| window.tap_input(0, o, k, t)) {
                let from = it * plane;
                pool_step(best, best_at, &src[from..from + plane], |j| (from + j) as u32);
            }
        }
        // Height: whole lines of W, to [To, Ho, W].
        vh.fill(f32::NEG_INFINITY);
        ah.fill(NO_TAP);
        for o in 0..ot {
            for oi in 0..oh {
                let row = (o * oh + oi) * w;
                let (best, best_at) = (&mut vh[row..row + w], &mut ah[row..row + w]);
                for ih in (0..kh).filter_map(|k| window.tap_input(1, oi, k, h)) {
                    let from = (o * h + ih) * w;
                    let idx = &at[from..from + w];
                    pool_step(best, best_at, &vt[from..from + w], |j| idx[j]);
                }
            }
        }
        // Width: each line's taps gathered into a contiguous row, to [To, Ho, Wo], the output
        // (which pool_argmax made empty: -inf, NO_TAP).
        for (r, (line, idx)) in vh.chunks_exact(w).zip(ah.chunks_exact(w)).enumerate() {
            let (best, best_at) = (&mut vd[r * ow..(r + 1) * ow], &mut ad[r * ow..(r + 1) * ow]);
            for k in 0..kw {
                let (lo, hi) = valid_range(ow, k, sw, pw, w);
                // Outputs lo..hi read inside the line at this tap, so o·sw + k >= pw.
                for o in lo..hi {
                    let i = o * sw + k - pw;
                    (tv[o], ta[o]) = (line[i], idx[i]);
                }
                let taps = &ta[lo..hi];
                pool_step(&mut best[lo..hi], &mut best_at[lo..hi], &tv[lo..hi], |j| taps[j]);
            }
        }
    }
}

impl CustomOp1 for MaxPool3dOp {
    fn name(&self) -> &'static str {
        "max-pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let [b, c, t, h, w] = dims5(l)?;
        let out = self.window.out_dims([t, h, w]).map_err(candle_core::Error::wrap)?;
        let (y, arg) = pool_argmax(x, b * c, [t, h, w], self.window, out)?;
        // A second forward pass of this op (none is made) would keep the first argmax, and
        // the backward pass recomputes it when the input's shape says it is not this one.
        let _ = self.argmax.set(std::sync::Arc::new(arg));
        Ok((CpuStorage::F32(y), Shape::from(vec![b, c, out[0], out[1], out[2]])))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cudnn::max_pool3d_forward(self.window, (s, l))
    }

    #[cfg_attr(not(feature = "cudnn"), allow(unused_variables))]
    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        // Float32 on CUDA takes molclip's kernels (MaxPool3dGrad's CUDA body: cuDNN's
        // deterministic backward pass was 2 ms of a 35 ms ResNet-18 step on an H200); other
        // dtypes, or where the kernels do not load, cuDNN's.
        #[cfg(feature = "cudnn")]
        if x.device().is_cuda() && !crate::fused::elementwise_serves(x) {
            return Ok(Some(crate::cudnn::max_pool3d_backward(self.window, x, res, &grad)?));
        }
        let argmax = self.argmax.get().filter(|a| a.len() == grad.elem_count()).cloned();
        Ok(Some(x.apply_op2_no_bwd(&grad, &MaxPool3dGrad { window: self.window, argmax })?))
    }
}

struct MaxPool3dGrad {
    window: Window3d,
    /// The forward pass's argmax, when it kept it.
    argmax: Option<std::sync::Arc<Vec<u32>>>,
}

impl CustomOp2 for MaxPool3dGrad {
    fn name(&self) -> &'static str {
        "max-pool3d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let gy = f32_slice(s2, l2)?;
        let [b, c, t, h, w] = dims5(l1)?;
        let [_, _, ot, oh, ow] = dims5(l2)?;
        let (n, vol) = (ot * oh * ow, t * h * w);
        let arg = match &self.argmax {
            Some(a) => a.clone(),
            None => std::sync::Arc::new(pool_argmax(x, b * c, [t, h, w], self.window, [ot, oh, ow])?.1),
        };
        let scatter = |gx: &mut [std::mem::MaybeUninit<f32>]| {
            gx.par_chunks_mut(vol.max(1)).enumerate().for_each(|(p, dst)| {
                // Each plane zeroed by its own task (in parallel, and in its cache), then the
                // gradients added at their windows' maxima.
                let dst = crate::cpu::zeroed(dst);
                add_at_maxima(dst, &arg[p * n..(p + 1) * n], &gy[p * n..(p + 1) * n]);
            })
        };
        // SAFETY: the B·C planes of vol values tile gx, and each is zeroed whole.
        let gx = unsafe { crate::cpu::written_by(b * c * vol, scatter) };
        Ok((CpuStorage::F32(gx), Shape::from(vec![b, c, t, h, w])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::max_pool3d_grad(self.window, (s1, l1), (s2, l2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};
    use molclip_cpu::shifted::MAX_TILE;

    thread_local! {
        /// Set by a test that checks the window-matrix kernels on shapes the grid kernels
        /// would take (the ops run on the test's own thread).
        pub(super) static WINDOW_MATRIX_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, &Device::Cpu)
            .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The CPU kernels and the op composition must agree, forward and backward, for every
    /// kind of window the encoders use.
    #[test]
    fn cpu_kernels_match_composed_ops() {
        let windows = [
            Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]),
            Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]),
            Window3d::new([1, 3, 3], [1, 2, 2], [0, 1, 1]),
            Window3d::new([5, 7, 7], [1, 2, 2], [2, 3, 3]),
            Window3d::new([3, 1, 1], [1, 1, 1], [1, 0, 0]),
            Window3d::new([1, 1, 1], [1, 1, 1], [0, 0, 0]),
            Window3d::new([1, 1, 1], [2, 2, 2], [0, 0, 0]),
        ];
        for (i, (win, width)) in windows.iter().flat_map(|w| [(w, 8), (w, 9)]).enumerate() {
            let x = Var::from_tensor(&rand(&[2, 3, 5, 9, width], i as u64)).unwrap();
            let wt =
                Var::from_tensor(&rand(&[4, 3, win.kernel[0], win.kernel[1], win.kernel[2]], 100 + i as u64)).unwrap();
            let probe = rand(&[2, 4, 5, 9, 9], 7);
            let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
                let y = f(x.as_tensor(), wt.as_tensor()).unwrap();
                let p = probe
                    .narrow(2, 0, y.dim(2).unwrap())
                    .unwrap()
                    .narrow(3, 0, y.dim(3).unwrap())
                    .unwrap()
                    .narrow(4, 0, y.dim(4).unwrap())
                    .unwrap();
                let g = (&y * &p).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(&x).unwrap().clone(), g.get(&wt).unwrap().clone())
            };
            let (y1, gx1, gw1) = run(&|x, w| conv3d(x, w, *win));
            for route in [conv3d_composed, conv3d_by_taps] {
                let (y2, gx2, gw2) = run(&|x, w| route(x, w, *win));
                assert_eq!(y1.dims(), y2.dims(), "{win:?}");
                assert!(max_abs_diff(&y1, &y2) < 1e-4, "forward {win:?}");
                assert!(max_abs_diff(&gx1, &gx2) < 1e-4, "grad input {win:?}");
                assert!(max_abs_diff(&gw1, &gw2) < 1e-4, "grad weight {win:?}");
            }
        }
    }

    /// The first layers' shapes (many positions, few weights) run tile by tile: tiles that
    /// end inside a line and a video, an odd width under a width stride of 2, several partial
    /// sums of the weight gradient.
    #[test]
    fn tiled_kernels_match_composed_ops() {
        WINDOW_MATRIX_ONLY.set(true);
        for (i, (win, input)) in [
            (Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), [3, 30, 27]),
            (Window3d::new([5, 7, 7], [1, 2, 2], [2, 3, 3]), [3, 64, 95]),
            (Window3d::new([1, 3, 3], [1, 2, 1], [0, 1, 1]), [4, 33, 50]),
        ]
        .into_iter()
        .enumerate()
        {
            let [t, h, w] = input;
            let z = ConvSizes::new(win, [2, 2, t, h, w], 3, win.out_dims(input).unwrap());
            let tile = z.tile().expect("a tiled shape");
            assert!(!z.n.is_multiple_of(tile) && z.tiles(tile).len() > 2, "{win:?}: tiles end inside a video");
            let (x, wt, probe) = case(win, [2, 2, 3], input, 40 + i as u64);
            matches_composed(&x, &wt, &probe, win);
        }
    }

    /// The deeper layers' shapes run by groups of videos: several groups (the weight
    /// gradient set by the first and added to by the others), scratch buffers reused from one
    /// call to the next with other values in them, and each tap's runs over lines that start
    /// and end in the padding, under width strides of 1 and 2.
    #[test]
    fn grouped_kernels_match_composed_ops() {
        for (i, (win, input)) in [
            (Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), [24, 20, 3]),
            (Window3d::new([3, 3, 3], [1, 2, 1], [1, 1, 1]), [24, 40, 3]),
            (Window3d::new([1, 3, 3], [1, 1, 2], [0, 1, 1]), [16, 30, 6]),
        ]
        .into_iter()
        .enumerate()
        {
            let [t, h, w] = input;
            let z = ConvSizes::new(win, [3, 2, t, h, w], 3, win.out_dims(input).unwrap());
            let by_taps = per_tap::TapProducts::new(win, [3, 2, t, h, w], 3, z.out).serves();
            let grouped = z.tile().is_none() && shifted_grid(win, 3, 2, input).is_none() && !by_taps;
            assert!(grouped && z.groups().count() > 1, "{win:?}: several groups of the window matrix");
            let (x, wt, probe) = case(win, [3, 2, 3], input, 70 + i as u64);
            // Twice: the second run's buffers hold the first's values.
            for _ in 0..2 {
                matches_composed(&x, &wt, &probe, win);
            }
        }
    }

    /// Windows of which more than a third reads the padding run tap by tap ([`per_tap`]):
    /// `layer4`'s 3 x 3 x 3 window on its 4 x 4 x 4 frames, and others on small frames,
    /// strided (an odd width included) and not, against the composed ops.
    #[test]
    fn per_tap_kernels_match_composed_ops() {
        for (i, (win, input, c, o)) in [
            (Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), [4, 4, 4], 6, 5),
            (Window3d::new([1, 3, 3], [1, 1, 1], [0, 1, 1]), [4, 3, 3], 7, 9),
            (Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]), [3, 5, 5], 6, 5),
            (Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]), [5, 8, 7], 3, 4),
        ]
        .into_iter()
        .enumerate()
        {
            let out = win.out_dims(input).unwrap();
            let [t, h, w] = input;
            let by_taps = per_tap::TapProducts::new(win, [3, c, t, h, w], o, out).serves();
            assert!(by_taps && shifted_grid(win, 3, c, input).is_none(), "{win:?}: tap by tap");
            let (x, wt, probe) = case(win, [3, c, o], input, 90 + i as u64);
            matches_composed(&x, &wt, &probe, win);
        }
    }

    /// A convolution's random operands for [`matches_composed`]: `b` videos of `c` channels
    /// of `input` dims (seed `seed`), `o` output channels' weights (`seed + 10`), and the probe
    /// of the outputs' gradient (`seed + 20`).
    fn case(win: Window3d, [b, c, o]: [usize; 3], [t, h, w]: [usize; 3], seed: u64) -> (Var, Var, Tensor) {
        let [kt, kh, kw] = win.kernel;
        let out = win.out_dims([t, h, w]).unwrap();
        let x = Var::from_tensor(&rand(&[b, c, t, h, w], seed)).unwrap();
        let wt = Var::from_tensor(&rand(&[o, c, kt, kh, kw], seed + 10)).unwrap();
        (x, wt, rand(&[b, o, out[0], out[1], out[2]], seed + 20))
    }

    /// `conv3d` against `conv3d_composed` on `x` and `wt`: the forward pass and both gradients
    /// of `Σ y · probe`. The weight gradient, a sum over thousands of positions, is compared
    /// relative to its size: returned with that size (the composed one's largest magnitude).
    fn matches_composed(x: &Var, wt: &Var, probe: &Tensor, win: Window3d) -> (Tensor, f32) {
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let y = f(x.as_tensor(), wt.as_tensor()).unwrap();
            let g = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(x).unwrap().clone(), g.get(wt).unwrap().clone())
        };
        let (y1, gx1, gw1) = run(&|x, w| conv3d(x, w, win));
        let (y2, gx2, gw2) = run(&|x, w| conv3d_composed(x, w, win));
        assert!(max_abs_diff(&y1, &y2) < 1e-4, "forward {win:?}");
        assert!(max_abs_diff(&gx1, &gx2) < 1e-4, "grad input {win:?}");
        let scale = gw2.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert!(max_abs_diff(&gw1, &gw2) < 1e-5 * scale, "grad weight {win:?}");
        (gw2, scale)
    }

    /// Windows on grids dense enough in outputs run without a window matrix ([`shifted`]):
    /// the forward pass and the weight gradient, and for stride 1 the input gradient too.
    /// Against the composed ops, with blocks of positions that end inside lines and videos,
    /// and output channels past a register tile's width.
    #[test]
    fn shifted_kernels_match_composed_ops() {
        for (i, (win, input, c, o)) in [
            (Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), [4, 20, 21], 3, 13),
            (Window3d::new([1, 3, 3], [1, 1, 1], [0, 1, 1]), [3, 30, 30], 2, 70),
            (Window3d::new([3, 1, 1], [1, 1, 1], [1, 0, 0]), [5, 12, 11], 4, 5),
            (Window3d::new([3, 5, 3], [1, 1, 1], [1, 2, 1]), [3, 40, 17], 2, 3),
            // Strided: the stem's window, and a stage's first convolution (odd width).
            (Window3d::new([5, 7, 7], [1, 2, 2], [2, 3, 3]), [4, 60, 59], 1, 14),
            (Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]), [6, 28, 27], 3, 5),
            // 7 x 7 frames: 77 % of their grid is outputs.
            (Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), [4, 7, 7], 6, 5),
            (Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]), [4, 14, 13], 6, 40),
        ]
        .into_iter()
        .enumerate()
        {
            let grid = shifted_grid(win, 2, c, input).expect("a dense grid");
            let n = grid.out().iter().product::<usize>();
            assert_eq!(grid.out(), win.out_dims(input).unwrap());
            assert!(n > 2 * MAX_TILE, "{win:?}: several register tiles of positions per video");
            let (x, wt, probe) = case(win, [2, c, o], input, 70 + i as u64);
            let (gw, scale) = matches_composed(&x, &wt, &probe, win);
            // The grid's weight gradient itself, which the op takes at AVX-512 only.
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Summed by parts of the videos (these small gradients' way) and by rows.
            for grid in [grid, grid.summing_by_rows()] {
                let direct = grid.weight_grad(&flat(x.as_tensor()), &flat(&probe), o);
                let direct = Tensor::from_vec(direct, gw.shape(), &Device::Cpu).unwrap();
                assert!(max_abs_diff(&direct, &gw) < 1e-5 * scale, "grid weight gradient {win:?}");
            }
            // Lines that share their padding give every output the same sum, to the bit, as
            // lines padded on both sides: a tap past a line's end reads zeros either way.
            let both = grid.padded_on_both_sides();
            let (xf, wf) = (flat(x.as_tensor()), flat(wt.as_tensor()));
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let y = bits(grid.convolve(&xf, (&wf, o)));
            assert_eq!(y, bits(both.convolve(&xf, (&wf, o))), "forward {win:?}");
            // The first and last output times skip the taps of time that read padding: the
            // same bits as every tap read.
            assert_eq!(y, bits(grid.reading_every_tap().convolve(&xf, (&wf, o))), "forward {win:?}, every tap");
            let shared = grid.weight_grad(&xf, &flat(&probe), o);
            assert_eq!(bits(shared), bits(both.weight_grad(&xf, &flat(&probe), o)), "weight gradient {win:?}");
        }
        // The deepest layers' sparse grids (4 x 4 frames on 5 x 5: 64 % outputs) keep the window matrix.
        assert!(shifted_grid(Window3d::new([3, 3, 3], [1, 1, 1], [1, 1, 1]), 8, 512, [4, 4, 4]).is_none());
    }

    /// A grid's weight gradient summed by parts of the videos, with parts of one and of two
    /// videos (11 videos in 8 parts), against the same summed by rows (the videos in order).
    #[test]
    fn weight_gradient_by_parts_of_videos_matches_by_rows() {
        let win = Window3d::new([3, 3, 3], [1, 2, 2], [1, 1, 1]);
        let (b, c, o, input) = (11, 3, 20, [4, 14, 13]);
        let grid = shifted_grid(win, b, c, input).expect("a dense grid");
        let out = grid.out();
        let flat = |shape: &[usize], seed| rand(shape, seed).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let x = flat(&[b, c, input[0], input[1], input[2]], 5);
        let gy = flat(&[b, o, out[0], out[1], out[2]], 6);
        let parts = grid.weight_grad(&x, &gy, o);
        let rows = grid.summing_by_rows().weight_grad(&x, &gy, o);
        let scale = rows.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = parts.iter().zip(&rows).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5 * scale, "by parts of the videos: {worst} of {scale}");
    }

    /// The partial sums of a weight gradient, summed and transposed: each element the sum of
    /// its parts in order, to the bit, for sizes around the tiles and runs.
    #[test]
    fn partial_sums_are_summed_in_order_and_transposed() {
        for (parts, o, ck) in [(1, 3, 5), (1, 64, 1728), (3, 33, 70), (16, 40, 1100)] {
            let partial: Vec<f32> = rand(&[parts * o * ck], 9).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = sum_transposed(&partial, o, ck);
            for oi in 0..o {
                for j in 0..ck {
                    let want: f32 = partial.chunks(o * ck).map(|part| part[j * o + oi]).sum();
                    assert_eq!(got[oi * ck + j].to_bits(), want.to_bits(), "{parts} x {o} x {ck} at ({oi}, {j})");
                }
            }
        }
    }

    #[test]
    fn max_pool_matches_composed_ops() {
        let win = Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]);
        let x = Var::from_tensor(&rand(&[2, 3, 6, 9, 8], 1)).unwrap();
        let y1 = max_pool3d(x.as_tensor(), win).unwrap();
        let y2 = max_pool3d_composed(x.as_tensor(), win).unwrap();
        assert_eq!(y1.dims(), &[2, 3, 3, 5, 4]);
        assert!(max_abs_diff(&y1, &y2) == 0.0);
        let probe = rand(y1.dims(), 2);
        let g1 = (&y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        // Random inputs have no ties, so both routes pick the same maxima.
        assert!(max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-6);
        assert_eq!(y1.dtype(), DType::F32);
    }

    /// PyTorch's rule, tap by tap: a tap inside the input replaces the best so far when it is
    /// the first, larger, or NaN.
    fn naive_argmax(x: &[f32], dims: [usize; 3], win: Window3d, out: [usize; 3]) -> Vec<u32> {
        let [t, h, w] = dims;
        let mut arg = Vec::new();
        for ot in 0..out[0] {
            for oh in 0..out[1] {
                for ow in 0..out[2] {
                    let (mut best, mut at) = (f32::NEG_INFINITY, NO_TAP);
                    for a in 0..win.kernel[0] {
                        for b in 0..win.kernel[1] {
                            for c in 0..win.kernel[2] {
                                let i = [ot * win.stride[0] + a, oh * win.stride[1] + b, ow * win.stride[2] + c];
                                let inside = (0..3).all(|k| i[k] >= win.padding[k] && i[k] - win.padding[k] < dims[k]);
                                if !inside {
                                    continue;
                                }
                                let idx =
                                    ((i[0] - win.padding[0]) * h + i[1] - win.padding[1]) * w + i[2] - win.padding[2];
                                let v = x[idx];
                                if v > best || v.is_nan() || at == NO_TAP {
                                    (best, at) = (v, idx as u32);
                                }
                            }
                        }
                    }
                    arg.push(at);
                }
            }
        }
        let _ = t;
        arg
    }

    #[test]
    fn max_pool_picks_the_first_maximum_and_the_last_nan_as_pytorch() {
        let dims = [3, 5, 6];
        // Few distinct values make ties everywhere; a few NaNs and -inf values too.
        let mut x: Vec<f32> = (0..90).map(|k| ((k * 7) % 4) as f32).collect();
        (x[13], x[14], x[40], x[41], x[77]) = (f32::NAN, f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY);
        for win in [
            Window3d::new([3, 3, 3], [2, 2, 2], [1, 1, 1]),
            Window3d::new([1, 3, 3], [1, 2, 2], [0, 1, 1]),
            Window3d::new([2, 2, 4], [1, 3, 1], [1, 1, 2]),
            Window3d::new([1, 1, 1], [1, 1, 1], [0, 0, 0]),
        ] {
            let out = win.out_dims(dims).unwrap();
            let got = pool_argmax(&x, 1, dims, win, out).unwrap().1;
            assert_eq!(got, naive_argmax(&x, dims, win, out), "{win:?}");
        }
        // A window of padding only.
        let win = Window3d::new([1, 1, 1], [1, 2, 2], [0, 1, 1]);
        let got = pool_argmax(&x, 1, dims, win, win.out_dims(dims).unwrap()).unwrap().1;
        assert_eq!(got[0], NO_TAP);
    }
}
