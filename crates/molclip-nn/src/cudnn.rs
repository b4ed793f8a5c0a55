//! cuDNN's 3D convolution, 3D max pooling and batch norm, forward and backward, on CUDA tensors
//! (feature `cudnn`): the CUDA bodies of the custom ops whose CPU bodies live in
//! [`crate::conv3d`], and batch norm's training pass as ops of its own.
//!
//! One cuDNN handle per thread and device, bound to candle's stream, so that cuDNN's kernels
//! queue behind candle's own. Each convolution's algorithm is picked once per shape, from
//! cuDNN's heuristics (as PyTorch does unless `cudnn.benchmark` is set), or with
//! [`crate::set_cudnn_benchmark`] by running cuDNN's candidates and taking the fastest, and
//! kept with its workspace size. Float32 convolutions use plain FMA arithmetic unless TF32 is
//! on for the run (the same switch as cuBLAS's,
//! `candle_core::cuda::set_gemm_reduced_precision_f32`); bf16 and f16 ones use the tensor
//! cores and sum in float32.
//!
//! `MOLCLIP_CUDNN=0` in the environment turns this path off (for comparisons): the composed
//! candle ops then serve, as in a build without the feature.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda::cudarc::cudnn::{result, sys};
use candle_core::cuda::cudarc::driver::{DevicePtr, DevicePtrMut, SyncOnDrop};
use candle_core::cuda::{CudaStorageSlice, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

use crate::conv3d::{dims5, Window3d};

type Result<T> = candle_core::Result<T>;

/// Whether cuDNN serves tensors of `dtype` on a CUDA device in this process.
pub(crate) fn serves(dtype: DType) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("MOLCLIP_CUDNN").map_or(true, |v| v != "0"));
    on && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// A cuDNN call's result, its error naming `what` failed.
fn check<T>(status: std::result::Result<T, result::CudnnError>, what: &str) -> Result<T> {
    status.map_err(|e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}")))
}

/// The scaling factors cuDNN reads through pointers (float32 for every data type served).
static ONE: f32 = 1.0;
static ZERO: f32 = 0.0;

fn scale(v: &'static f32) -> *const c_void {
    v as *const f32 as *const c_void
}

// ------------------------------------------------------------------------------ handles

/// A cuDNN handle on one device's stream, with the algorithms picked so far.
struct Handle {
    raw: sys::cudnnHandle_t,
    algos: HashMap<ConvKey, Algo>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `create_handle` and is destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.raw) };
    }
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device.
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's handle for `dev`, made on first use.
fn with_handle<R>(dev: &CudaDevice, f: impl FnOnce(&mut Handle) -> Result<R>) -> Result<R> {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let handle = match handles.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = dev.cuda_stream();
                stream.context().bind_to_thread().map_err(candle_core::Error::wrap)?;
                let raw = check(result::create_handle(), "handle")?;
                let handle = e.insert(Handle { raw, algos: HashMap::new() });
                // SAFETY: a live handle and candle's live stream of the same context.
                let status = unsafe { result::set_stream(handle.raw, stream.cu_stream() as sys::cudaStream_t) };
                check(status, "set stream")?;
                handle
            }
        };
        f(handle)
    })
}

// -------------------------------------------------------------------------- descriptors

/// A packed `[N, C, D, H, W]` tensor descriptor.
struct TensorDesc(sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    fn new(dtype: sys::cudnnDataType_t, dims: [usize; 5]) -> Result<Self> {
        let dims = to_c(dims)?;
        let mut strides = [1 as c_int; 5];
        for i in (0..4).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        let desc = Self(check(result::create_tensor_descriptor(), "tensor descriptor")?);
        // SAFETY: a descriptor just created; dims and strides hold 5 values each.
        let status = unsafe { result::set_tensornd_descriptor(desc.0, dtype, 5, dims.as_ptr(), strides.as_ptr()) };
        check(status, "tensor")?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_tensor_descriptor`, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

/// A `[O, C, kt, kh, kw]` filter descriptor.
struct FilterDesc(sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    fn new(dtype: sys::cudnnDataType_t, dims: [usize; 5]) -> Result<Self> {
        let dims = to_c(dims)?;
        let desc = Self(check(result::create_filter_descriptor(), "filter descriptor")?);
        let format = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: a descriptor just created; dims holds 5 values.
        let status = unsafe { result::set_filternd_descriptor(desc.0, dtype, format, 5, dims.as_ptr()) };
        check(status, "filter")?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_filter_descriptor`, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

/// A 3D cross-correlation (PyTorch's convolution) descriptor with float32 accumulation.
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    fn new(window: Window3d, math: sys::cudnnMathType_t) -> Result<Self> {
        let (pads, strides, dilations) = (to_c(window.padding)?, to_c(window.stride)?, [1 as c_int; 3]);
        let desc = Self(check(result::create_convolution_descriptor(), "convolution descriptor")?);
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        // SAFETY: a descriptor just created; each array holds 3 values.
        let status = unsafe {
            result::set_convolutionnd_descriptor(
                desc.0,
                3,
                pads.as_ptr(),
                strides.as_ptr(),
                dilations.as_ptr(),
                mode,
                compute,
            )
        };
        check(status, "convolution")?;
        // SAFETY: as above.
        let status = unsafe { result::set_convolution_math_type(desc.0, math) };
        check(status, "math type")?;
        Ok(desc)
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_convolution_descriptor`, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// A 3D max-pooling descriptor; padding never wins (it counts as -inf, as PyTorch's).
struct PoolDesc(sys::cudnnPoolingDescriptor_t);

impl PoolDesc {
    fn new(window: Window3d) -> Result<Self> {
        let (kernel, pads, strides) = (to_c(window.kernel)?, to_c(window.padding)?, to_c(window.stride)?);
        let desc = Self(check(result::create_pooling_descriptor(), "pooling descriptor")?);
        let mode = sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC;
        let nan = sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN;
        // SAFETY: a descriptor just created; each array holds 3 values.
        let status = unsafe { result::set_pooling_descriptor(desc.0, mode, nan, 3, &kernel, &pads, &strides) };
        check(status, "pooling")?;
        Ok(desc)
    }
}

impl Drop for PoolDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_pooling_descriptor`, destroyed once.
        let _ = unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

fn to_c<const N: usize>(v: [usize; N]) -> Result<[c_int; N]> {
    let mut out = [0 as c_int; N];
    for (o, &x) in out.iter_mut().zip(&v) {
        *o = c_int::try_from(x).map_err(|_| candle_core::Error::Msg(format!("cuDNN: size {x} of {v:?} over 2^31")))?;
    }
    Ok(out)
}

// ----------------------------------------------------------------------------- operands

/// A contiguous operand's device address (at its layout's offset), its cuDNN data type and the
/// guard that orders the stream's later work after its use.
struct Operand<'a> {
    ptr: u64,
    dtype: sys::cudnnDataType_t,
    _sync: SyncOnDrop<'a>,
}

fn operand<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a candle_core::cuda::cudarc::driver::CudaStream,
) -> Result<Operand<'a>> {
    if !l.is_contiguous() {
        candle_core::bail!("cuDNN: a non-contiguous operand {:?}", l.shape());
    }
    let offset = l.start_offset();
    let (ptr, dtype, size, sync) = match &s.slice {
        CudaStorageSlice::F32(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, sys::cudnnDataType_t::CUDNN_DATA_FLOAT, 4, g)
        }
        CudaStorageSlice::BF16(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16, 2, g)
        }
        CudaStorageSlice::F16(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, sys::cudnnDataType_t::CUDNN_DATA_HALF, 2, g)
        }
        _ => candle_core::bail!("cuDNN: {:?} operands are not served", s.dtype()),
    };
    Ok(Operand { ptr: ptr + (offset * size) as u64, dtype, _sync: sync })
}

/// A fresh output of `dims` in `dtype`, every element of which the op writes.
fn output(dev: &CudaDevice, dims: &[usize], dtype: DType) -> Result<CudaStorage> {
    // SAFETY: cuDNN writes every element before anything reads it (beta = 0).
    unsafe { dev.alloc_uninit(&Shape::from(dims), dtype) }
}

fn output_ptr<'a>(
    s: &'a mut CudaStorage,
    stream: &'a candle_core::cuda::cudarc::driver::CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let dtype = s.dtype();
    Ok(match &mut s.slice {
        CudaStorageSlice::F32(v) => v.device_ptr_mut(stream),
        CudaStorageSlice::BF16(v) => v.device_ptr_mut(stream),
        CudaStorageSlice::F16(v) => v.device_ptr_mut(stream),
        _ => candle_core::bail!("cuDNN: {dtype:?} outputs are not served"),
    })
}

// ------------------------------------------------------------------------- convolutions

/// Which of a convolution's three products.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct ConvKey {
    pass: Pass,
    x: [usize; 5],
    w: [usize; 5],
    window: Window3d,
    dtype: DType,
    math: sys::cudnnMathType_t,
}

/// A picked algorithm, of its pass.
#[derive(Clone, Copy)]
enum PassAlgo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    InputGrad(sys::cudnnConvolutionBwdDataAlgo_t),
    WeightGrad(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// A picked algorithm and its workspace in bytes.
#[derive(Clone, Copy)]
struct Algo {
    algo: PassAlgo,
    workspace: usize,
}

/// The math cuDNN may use for `dtype`: FMA for float32 unless TF32 is on, tensor cores
/// otherwise.
fn math_for(dtype: DType) -> sys::cudnnMathType_t {
    match dtype {
        DType::F32 if !candle_core::cuda::gemm_reduced_precision_f32() => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        DType::F32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    }
}

/// The first of cuDNN's ranked algorithms that passed its check and reports `math`, else the
/// first that passed. The descriptor's math type is what runs either way (FMA for float32
/// without TF32, as PyTorch sets it).
fn first_fitting<A: Copy>(
    perf: &[(A, sys::cudnnStatus_t, sys::cudnnMathType_t)],
    math: sys::cudnnMathType_t,
    what: &str,
) -> Result<A> {
    let ok = |p: &&(A, sys::cudnnStatus_t, sys::cudnnMathType_t)| p.1 == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    perf.iter()
        .filter(ok)
        .find(|p| p.2 == math)
        .or_else(|| perf.iter().find(ok))
        .map(|p| p.0)
        .ok_or_else(|| candle_core::Error::Msg(format!("cuDNN: no {what} algorithm for this convolution")))
}

/// The descriptors of one convolution `x [B, C, T, H, W] * w [O, C, kt, kh, kw] -> y`.
struct ConvDescs {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    /// y's dims.
    y_dims: [usize; 5],
    conv: ConvDesc,
    key: ConvKey,
}

impl ConvDescs {
    fn new(
        pass: Pass,
        x: [usize; 5],
        w: [usize; 5],
        window: Window3d,
        dtype: DType,
        cudnn: sys::cudnnDataType_t,
    ) -> Result<Self> {
        let out = window.out_dims([x[2], x[3], x[4]]).map_err(candle_core::Error::wrap)?;
        let y_dims = [x[0], w[0], out[0], out[1], out[2]];
        let math = math_for(dtype);
        Ok(Self {
            x: TensorDesc::new(cudnn, x)?,
            w: FilterDesc::new(cudnn, w)?,
            y: TensorDesc::new(cudnn, y_dims)?,
            y_dims,
            conv: ConvDesc::new(window, math)?,
            key: ConvKey { pass, x, w, window, dtype, math },
        })
    }

    /// This pass's algorithm, picked on the shape's first use: from cuDNN's heuristic ranking,
    /// or with [`crate::cudnn_benchmark`] on, by running the candidates on `bufs` (which the
    /// search overwrites the output of).
    fn algo(&self, handle: &mut Handle, dev: &CudaDevice, bufs: Buffers) -> Result<Algo> {
        if let Some(a) = handle.algos.get(&self.key) {
            return Ok(*a);
        }
        let measure = crate::conv3d::cudnn_benchmark().then_some(dev);
        let (h, math) = (handle.raw, self.key.math);
        let (x, w, y, conv) = (self.x.0, self.w.0, self.y.0, self.conv.0);
        let Buffers { a, b, out } = bufs;
        let picked = match self.key.pass {
            Pass::Forward => {
                let (algo, workspace) = pick::<sys::cudnnConvolutionFwdAlgoPerf_t, _>(
                    "forward",
                    math,
                    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize,
                    // SAFETY: live descriptors of this convolution; `perf` holds `n` results.
                    |n, count, perf| unsafe {
                        result::get_convolution_forward_algorithm(h, x, w, conv, y, n, count, perf)
                    },
                    measure.map(|dev| {
                        // SAFETY: live descriptors; `a`, `b` and `out` are live buffers of x, w
                        // and y; `perf` holds `n` results; the workspace holds `bytes`.
                        let find = move |n, count, perf, ws, bytes| unsafe {
                            sys::cudnnFindConvolutionForwardAlgorithmEx(
                                h, x, a, w, b, conv, y, out, n, count, perf, ws, bytes,
                            )
                        };
                        (dev, find)
                    }),
                    |p| (p.algo, p.status, p.mathType, p.memory),
                    // SAFETY: live descriptors and an algorithm of this pass.
                    |a| unsafe { result::get_convolution_forward_workspace_size(h, x, w, conv, y, a) },
                )?;
                Algo { algo: PassAlgo::Forward(algo), workspace }
            }
            Pass::InputGrad => {
                let (algo, workspace) = pick::<sys::cudnnConvolutionBwdDataAlgoPerf_t, _>(
                    "input-gradient",
                    math,
                    sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize,
                    // SAFETY: live descriptors of this convolution; `perf` holds `n` results.
                    |n, count, perf| unsafe {
                        result::get_convolution_backward_data_algorithm(h, w, y, conv, x, n, count, perf)
                    },
                    measure.map(|dev| {
                        // SAFETY: live descriptors; `a`, `b` and `out` are live buffers of dy,
                        // w and dx; `perf` holds `n` results; the workspace holds `bytes`.
                        let find = move |n, count, perf, ws, bytes| unsafe {
                            sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                                h, w, b, y, a, conv, x, out, n, count, perf, ws, bytes,
                            )
                        };
                        (dev, find)
                    }),
                    |p| (p.algo, p.status, p.mathType, p.memory),
                    // SAFETY: live descriptors and an algorithm of this pass.
                    |a| unsafe { result::get_convolution_backward_data_workspace_size(h, w, y, conv, x, a) },
                )?;
                Algo { algo: PassAlgo::InputGrad(algo), workspace }
            }
            Pass::WeightGrad => {
                let (algo, workspace) = pick::<sys::cudnnConvolutionBwdFilterAlgoPerf_t, _>(
                    "weight-gradient",
                    math,
                    sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize,
                    // SAFETY: live descriptors of this convolution; `perf` holds `n` results.
                    |n, count, perf| unsafe {
                        result::get_convolution_backward_filter_algorithm(h, x, y, conv, w, n, count, perf)
                    },
                    measure.map(|dev| {
                        // SAFETY: live descriptors; `a`, `b` and `out` are live buffers of x, dy
                        // and dw; `perf` holds `n` results; the workspace holds `bytes`.
                        let find = move |n, count, perf, ws, bytes| unsafe {
                            sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                                h, x, a, y, b, conv, w, out, n, count, perf, ws, bytes,
                            )
                        };
                        (dev, find)
                    }),
                    |p| (p.algo, p.status, p.mathType, p.memory),
                    // SAFETY: live descriptors and an algorithm of this pass.
                    |a| unsafe { result::get_convolution_backward_filter_workspace_size(h, x, y, conv, w, a) },
                )?;
                Algo { algo: PassAlgo::WeightGrad(algo), workspace }
            }
        };
        handle.algos.insert(self.key, picked);
        Ok(picked)
    }
}

/// The device addresses of one pass's operands `a`, `b` and its output `out` (see
/// [`conv_pass`]).
#[derive(Clone, Copy)]
struct Buffers {
    a: *const c_void,
    b: *const c_void,
    out: *mut c_void,
}

/// The most workspace a measured pick lends the candidates: 2 GiB, and never more than half
/// the device's free memory. Candidates that need more are left out of the search.
const SEARCH_WORKSPACE: usize = 2 << 30;

/// One pass's algorithm and its workspace in bytes, as [`first_fitting`] takes it from cuDNN's
/// ranking: the heuristic one (`rank` fills up to `n` results of type `P`), or where
/// `measure` is given, the measured one (its search runs every candidate whose workspace fits
/// [`SEARCH_WORKSPACE`] and ranks them by time). Where the search fails (said once on stderr)
/// or no candidate ran, the heuristic ranking serves.
///
/// `P` must be one of cuDNN's algorithm-performance structs: plain C structs of numbers and
/// enums whose all-zero bytes are a valid value.
fn pick<P, A: Copy>(
    what: &str,
    math: sys::cudnnMathType_t,
    n: usize,
    rank: impl FnOnce(c_int, *mut c_int, *mut P) -> std::result::Result<(), result::CudnnError>,
    measure: Option<(&CudaDevice, impl FnOnce(c_int, *mut c_int, *mut P, *mut c_void, usize) -> sys::cudnnStatus_t)>,
    fields: impl Fn(&P) -> (A, sys::cudnnStatus_t, sys::cudnnMathType_t, usize),
    workspace: impl FnOnce(A) -> std::result::Result<usize, result::CudnnError>,
) -> Result<(A, usize)> {
    // SAFETY: `P` is such a struct (above), for which zeroed bytes are a value.
    let zeroed = || (0..n).map(|_| unsafe { std::mem::zeroed() }).collect::<Vec<P>>();
    let mut perf = zeroed();
    let mut count: c_int = 0;
    check(rank(n as c_int, &mut count, perf.as_mut_ptr()), what)?;
    let mut ranked: Vec<_> = perf[..(count.max(0) as usize).min(n)].iter().map(&fields).collect();
    if let Some((dev, find)) = measure {
        let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
        let needed = ranked.iter().filter(|r| r.1 == ok).map(|r| r.3).max().unwrap_or(0);
        let free = candle_core::cuda::cudarc::driver::result::mem_get_info().map_or(SEARCH_WORKSPACE, |(f, _)| f / 2);
        let bytes = needed.min(SEARCH_WORKSPACE).min(free);
        let searched = (|| -> Result<Vec<P>> {
            let stream = dev.cuda_stream();
            // SAFETY: the candidates write the workspace before they read it.
            let mut ws = unsafe { dev.alloc::<u8>(bytes.max(1))? };
            let (wsp, _ws_sync) = ws.device_ptr_mut(&stream);
            let mut found = zeroed();
            let mut count: c_int = 0;
            let status = find(n as c_int, &mut count, found.as_mut_ptr(), wsp as *mut c_void, bytes);
            check(status.result(), &format!("{what} algorithm search"))?;
            found.truncate((count.max(0) as usize).min(n));
            Ok(found)
        })();
        match searched.map(|found| found.iter().map(&fields).collect::<Vec<_>>()) {
            Ok(found) if found.iter().any(|r| r.1 == ok) => ranked = found,
            Ok(_) => {}
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("molclip: {e}; cuDNN's heuristic algorithms serve instead"));
            }
        }
    }
    let ranked: Vec<_> = ranked.into_iter().map(|(a, s, m, _)| (a, s, m)).collect();
    let algo = first_fitting(&ranked, math, what)?;
    Ok((algo, check(workspace(algo), &format!("{what} workspace"))?))
}

/// One pass of a convolution `x * w -> y` (x and w of these dims): `pass` reads `a` and `b`
/// and writes a fresh output. Forward: (x, w) to y. Input gradient: (dy, w) to dx. Weight
/// gradient: (x, dy) to dw.
fn conv_pass(
    pass: Pass,
    window: Window3d,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    x: [usize; 5],
    w: [usize; 5],
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device.clone();
    let stream = dev.cuda_stream();
    if s1.dtype() != s2.dtype() {
        candle_core::bail!("cuDNN conv3d: operands of {:?} and {:?}", s1.dtype(), s2.dtype());
    }
    let dtype = s1.dtype();
    let (a, b) = (operand(s1, l1, &stream)?, operand(s2, l2, &stream)?);
    let descs = ConvDescs::new(pass, x, w, window, dtype, a.dtype)?;
    let out = match pass {
        Pass::Forward => descs.y_dims,
        Pass::InputGrad => x,
        Pass::WeightGrad => w,
    };
    let mut y = output(&dev, &out, dtype)?;
    with_handle(&dev, |handle| {
        let (yp, _y_sync) = output_ptr(&mut y, &stream)?;
        let (ap, bp, yp) = (a.ptr as *const c_void, b.ptr as *const c_void, yp as *mut c_void);
        let algo = descs.algo(handle, &dev, Buffers { a: ap, b: bp, out: yp })?;
        // SAFETY: the workspace is written by cuDNN before it is read.
        let mut ws = unsafe { dev.alloc::<u8>(algo.workspace.max(1))? };
        let (wsp, _ws_sync) = ws.device_ptr_mut(&stream);
        let (alpha, beta) = (scale(&ONE), scale(&ZERO));
        let wsp = wsp as *mut c_void;
        let h = handle.raw;
        // SAFETY: the descriptors describe the operands (packed, of their dtype and shapes, as
        // checked by the callers); the pointers are live device buffers of those sizes on the
        // handle's stream; the workspace holds the algorithm's bytes.
        let status = unsafe {
            match algo.algo {
                PassAlgo::Forward(a) => result::convolution_forward(
                    h,
                    alpha,
                    descs.x.0,
                    ap,
                    descs.w.0,
                    bp,
                    descs.conv.0,
                    a,
                    wsp,
                    algo.workspace,
                    beta,
                    descs.y.0,
                    yp,
                ),
                PassAlgo::InputGrad(a) => result::convolution_backward_data(
                    h,
                    alpha,
                    descs.w.0,
                    bp,
                    descs.y.0,
                    ap,
                    descs.conv.0,
                    a,
                    wsp,
                    algo.workspace,
                    beta,
                    descs.x.0,
                    yp,
                ),
                PassAlgo::WeightGrad(a) => result::convolution_backward_filter(
                    h,
                    alpha,
                    descs.x.0,
                    ap,
                    descs.y.0,
                    bp,
                    descs.conv.0,
                    a,
                    wsp,
                    algo.workspace,
                    beta,
                    descs.w.0,
                    yp,
                ),
            }
        };
        check(status, "convolution")
    })?;
    drop((a, b));
    Ok((y, Shape::from(out.to_vec())))
}

/// `conv3d(x, w)`: x `[B, C, T, H, W]`, w `[O, C, kt, kh, kw]`.
pub(crate) fn conv3d_forward(
    window: Window3d,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    conv_pass(Pass::Forward, window, x, w, dims5(x.1)?, dims5(w.1)?)
}

/// The input's gradient from the output's `dy [B, O, ...]` and w, for an input of `input`
/// (time, height, width).
pub(crate) fn conv3d_input_grad(
    window: Window3d,
    input: [usize; 3],
    dy: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (yd, wd) = (dims5(dy.1)?, dims5(w.1)?);
    let xd = [yd[0], wd[1], input[0], input[1], input[2]];
    conv_pass(Pass::InputGrad, window, dy, w, xd, wd)
}

/// The weight's gradient from the input x and the output's gradient dy.
pub(crate) fn conv3d_weight_grad(
    window: Window3d,
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (xd, yd) = (dims5(x.1)?, dims5(dy.1)?);
    let [kt, kh, kw] = window.kernel;
    let wd = [yd[1], xd[1], kt, kh, kw];
    conv_pass(Pass::WeightGrad, window, x, dy, xd, wd)
}

// ------------------------------------------------------------------------------ pooling

/// `max_pool3d(x)`.
pub(crate) fn max_pool3d_forward(window: Window3d, (s, l): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let dev = s.device.clone();
    let stream = dev.cuda_stream();
    let xd = dims5(l)?;
    let o = window.out_dims([xd[2], xd[3], xd[4]]).map_err(candle_core::Error::wrap)?;
    let yd = [xd[0], xd[1], o[0], o[1], o[2]];
    let x = operand(s, l, &stream)?;
    let (xdesc, ydesc, pool) = (TensorDesc::new(x.dtype, xd)?, TensorDesc::new(x.dtype, yd)?, PoolDesc::new(window)?);
    let mut y = output(&dev, &yd, s.dtype())?;
    with_handle(&dev, |handle| {
        let (yp, _y_sync) = output_ptr(&mut y, &stream)?;
        // SAFETY: packed descriptors of the operands' dtype and shapes, live device buffers of
        // those sizes on the handle's stream.
        let status = unsafe {
            result::pooling_forward(
                handle.raw,
                pool.0,
                scale(&ONE),
                xdesc.0,
                x.ptr as *const c_void,
                scale(&ZERO),
                ydesc.0,
                yp as *mut c_void,
            )
        };
        check(status, "max pooling")
    })?;
    drop(x);
    Ok((y, Shape::from(yd.to_vec())))
}

/// The input's gradient of `max_pool3d` from x, the forward pass's output y and its gradient dy.
pub(crate) fn max_pool3d_grad(
    window: Window3d,
    (sx, lx): (&CudaStorage, &Layout),
    (sy, ly): (&CudaStorage, &Layout),
    (sd, ld): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = sx.device.clone();
    let stream = dev.cuda_stream();
    let (xd, yd) = (dims5(lx)?, dims5(ly)?);
    if dims5(ld)? != yd || sx.dtype() != sy.dtype() || sx.dtype() != sd.dtype() {
        candle_core::bail!("cuDNN max-pool3d grad: output {:?} and gradient {:?} differ", ly.shape(), ld.shape());
    }
    let (x, y, dy) = (operand(sx, lx, &stream)?, operand(sy, ly, &stream)?, operand(sd, ld, &stream)?);
    let (xdesc, ydesc, pool) = (TensorDesc::new(x.dtype, xd)?, TensorDesc::new(x.dtype, yd)?, PoolDesc::new(window)?);
    let mut dx = output(&dev, &xd, sx.dtype())?;
    with_handle(&dev, |handle| {
        let (dxp, _dx_sync) = output_ptr(&mut dx, &stream)?;
        // SAFETY: as in the forward pass; dy is laid out as y and dx as x.
        let status = unsafe {
            sys::cudnnPoolingBackward(
                handle.raw,
                pool.0,
                scale(&ONE),
                ydesc.0,
                y.ptr as *const c_void,
                ydesc.0,
                dy.ptr as *const c_void,
                xdesc.0,
                x.ptr as *const c_void,
                scale(&ZERO),
                xdesc.0,
                dxp as *mut c_void,
            )
        };
        check(status.result(), "max pooling backward")
    })?;
    drop((x, y, dy));
    Ok((dx, Shape::from(xd.to_vec())))
}

/// The input's gradient of `max_pool3d` from x, the forward pass's output y and its gradient dy
/// (cuDNN finds each window's maximum again from x and y).
pub(crate) fn max_pool3d_backward(
    window: Window3d,
    x: &candle_core::Tensor,
    y: &candle_core::Tensor,
    dy: &candle_core::Tensor,
) -> Result<candle_core::Tensor> {
    x.apply_op3_no_bwd(y, dy, &MaxPoolGradOp { window })
}

/// (x, y, dy) to dx.
struct MaxPoolGradOp {
    window: Window3d,
}

impl candle_core::CustomOp3 for MaxPoolGradOp {
    fn name(&self) -> &'static str {
        "max-pool3d-cudnn-grad"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        max_pool3d_grad(self.window, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The CPU body of an op that only CUDA tensors reach.
fn cuda_only<T>(op: &str) -> Result<T> {
    candle_core::bail!("{op}: an op of cuDNN's, for CUDA tensors only")
}

// --------------------------------------------------------------------------- batch norm

/// Batch norm's per-channel statistics from cuDNN's forward pass (mean, then the inverse
/// standard deviation, `C` each), kept for its backward pass and read once for the running
/// statistics.
pub(crate) type SavedStats = std::sync::Arc<std::sync::Mutex<Option<CudaStorage>>>;

fn lock(saved: &SavedStats) -> std::sync::MutexGuard<'_, Option<CudaStorage>> {
    saved.lock().unwrap_or_else(|e| e.into_inner())
}

/// `[B, C, M]` as cuDNN's 5D `[B, C, M, 1, 1]`, and its per-channel `[1, C, 1, 1, 1]`.
fn bn_descs(l: &Layout) -> Result<(TensorDesc, TensorDesc, [usize; 3])> {
    let (b, c, m) = l.shape().dims3()?;
    let float = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    Ok((TensorDesc::new(float, [b, c, m, 1, 1])?, TensorDesc::new(float, [1, c, 1, 1, 1])?, [b, c, m]))
}

/// Batch norm's training forward pass over float32 `[B, C, M]` with weight and bias `[C]`;
/// stores the batch mean and inverse standard deviation in `saved`.
pub(crate) fn batch_norm_forward(
    eps: f64,
    saved: &SavedStats,
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = sx.device.clone();
    let stream = dev.cuda_stream();
    let (xdesc, pdesc, [b, c, m]) = bn_descs(lx)?;
    if lw.shape().elem_count() != c || lb.shape().elem_count() != c {
        candle_core::bail!("cuDNN batch norm: {c} channels, weight {:?}, bias {:?}", lw.shape(), lb.shape());
    }
    let (x, w, bias) = (operand(sx, lx, &stream)?, operand(sw, lw, &stream)?, operand(sb, lb, &stream)?);
    if x.dtype != sys::cudnnDataType_t::CUDNN_DATA_FLOAT {
        candle_core::bail!("cuDNN batch norm: float32 only, not {:?}", sx.dtype());
    }
    let mut y = output(&dev, &[b, c, m], DType::F32)?;
    let mut stats = output(&dev, &[2 * c], DType::F32)?;
    with_handle(&dev, |handle| {
        let (yp, _y_sync) = output_ptr(&mut y, &stream)?;
        let (sp, _s_sync) = output_ptr(&mut stats, &stream)?;
        // SAFETY: packed float32 descriptors of the operands' shapes; live device buffers of
        // those sizes on the handle's stream; no running statistics (both null, as allowed);
        // the saved mean and inverse deviation go to the two halves of `stats` (C each).
        let status = unsafe {
            sys::cudnnBatchNormalizationForwardTraining(
                handle.raw,
                sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                scale(&ONE),
                scale(&ZERO),
                xdesc.0,
                x.ptr as *const c_void,
                xdesc.0,
                yp as *mut c_void,
                pdesc.0,
                w.ptr as *const c_void,
                bias.ptr as *const c_void,
                0.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                eps,
                sp as *mut c_void,
                (sp + 4 * c as u64) as *mut c_void,
            )
        };
        check(status.result(), "batch norm")
    })?;
    drop((x, w, bias));
    *lock(saved) = Some(stats);
    Ok((y, Shape::from(vec![b, c, m])))
}

/// Batch norm's backward pass: (x, weight, dy) to `[dx, dweight, dbias]` packed, from the
/// forward pass's saved statistics.
pub(crate) fn batch_norm_backward(
    eps: f64,
    saved: &SavedStats,
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sd, ld): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = sx.device.clone();
    let stream = dev.cuda_stream();
    let (xdesc, pdesc, [b, c, m]) = bn_descs(lx)?;
    if ld.shape() != lx.shape() || lw.shape().elem_count() != c {
        candle_core::bail!(
            "cuDNN batch norm grad: input {:?}, gradient {:?}, weight {:?}",
            lx.shape(),
            ld.shape(),
            lw.shape()
        );
    }
    let guard = lock(saved);
    let Some(stats) = guard.as_ref() else {
        candle_core::bail!("cuDNN batch norm grad: no forward pass");
    };
    let stats_layout = Layout::contiguous(2 * c);
    let (x, w, dy, st) = (
        operand(sx, lx, &stream)?,
        operand(sw, lw, &stream)?,
        operand(sd, ld, &stream)?,
        operand(stats, &stats_layout, &stream)?,
    );
    let n = b * c * m;
    let mut out = output(&dev, &[n + 2 * c], DType::F32)?;
    with_handle(&dev, |handle| {
        let (op, _o_sync) = output_ptr(&mut out, &stream)?;
        let (one, zero) = (scale(&ONE), scale(&ZERO));
        // SAFETY: as in the forward pass; dx, dweight and dbias are the three consecutive parts
        // (n, C and C floats) of `out`.
        let status = unsafe {
            sys::cudnnBatchNormalizationBackward(
                handle.raw,
                sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                one,
                zero,
                one,
                zero,
                xdesc.0,
                x.ptr as *const c_void,
                xdesc.0,
                dy.ptr as *const c_void,
                xdesc.0,
                op as *mut c_void,
                pdesc.0,
                w.ptr as *const c_void,
                (op + 4 * n as u64) as *mut c_void,
                (op + 4 * (n + c) as u64) as *mut c_void,
                eps,
                st.ptr as *const c_void,
                (st.ptr + 4 * c as u64) as *const c_void,
            )
        };
        check(status.result(), "batch norm backward")
    })?;
    drop((x, w, dy, st));
    Ok((out, Shape::from(n + 2 * c)))
}

/// Batch norm with batch statistics (training) over float32 `[B, C, M]` on a CUDA device,
/// through cuDNN; the running statistics `running` (mean, variance) move towards the batch's
/// by `momentum`, the variance unbiased, in place (one kernel each).
pub(crate) fn batch_norm_train(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
    eps: f64,
    [running_mean, running_var]: [&candle_core::Tensor; 2],
    momentum: f64,
) -> Result<candle_core::Tensor> {
    let saved = SavedStats::default();
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, BatchNormOp { eps, saved: saved.clone() })?;
    let (bs, _, m) = x.dims3()?;
    let n = (bs * m) as f64;
    for (running, variance) in [(running_mean, false), (running_var, true)] {
        running.inplace_op1(&RunningStats {
            saved: saved.clone(),
            variance,
            momentum: momentum as f32,
            eps: eps as f32,
            unbias: if n > 1.0 { (n / (n - 1.0)) as f32 } else { 1.0 },
        })?;
    }
    Ok(y)
}

/// A running statistic (mean, or variance) moved towards the batch's, in place.
struct RunningStats {
    saved: SavedStats,
    variance: bool,
    momentum: f32,
    eps: f32,
    /// n / (n - 1), the variance's Bessel correction.
    unbias: f32,
}

impl candle_core::InplaceOp1 for RunningStats {
    fn name(&self) -> &'static str {
        "batch-norm-running-stats"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        let c = l.shape().elem_count();
        let guard = lock(&self.saved);
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("cuDNN batch norm: no forward pass to take the running statistics from");
        };
        let dev = s.device.clone();
        let f = crate::kernels::function(&dev, "bn_running")?;
        let stream = dev.cuda_stream();
        let stats = saved.as_cuda_slice::<f32>()?;
        let mut running = s.as_cuda_slice_mut::<f32>()?.slice_mut(l.start_offset()..);
        let (len, variance, keep) = (c as u64, self.variance as i32, 1.0 - self.momentum);
        let mut b = stream.launch_builder(&f);
        b.arg(&mut running).arg(stats).arg(&len).arg(&variance).arg(&keep).arg(&self.momentum).arg(&self.eps);
        b.arg(&self.unbias);
        // SAFETY: `running` holds C float32 values from its offset and `stats` 2C (the saved
        // mean and inverse deviation of the same C channels); the kernel touches indices below
        // C of the first and below 2C of the second.
        unsafe { b.launch(crate::kernels::launch(c)) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}

struct BatchNormOp {
    eps: f64,
    saved: SavedStats,
}

impl candle_core::CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        batch_norm_forward(self.eps, &self.saved, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _b: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        dy: &candle_core::Tensor,
    ) -> Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
        let grad = BatchNormGradOp { eps: self.eps, saved: self.saved.clone() };
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?;
        let (n, c) = (x.elem_count(), w.dim(0)?);
        // Copies of the small gradients, so that they do not keep the large buffer alive.
        let dw = packed.narrow(0, n, c)?.force_contiguous()?;
        let db = packed.narrow(0, n + c, c)?.force_contiguous()?;
        Ok((Some(packed.narrow(0, 0, n)?.reshape(x.shape())?), Some(dw), Some(db)))
    }
}

struct BatchNormGradOp {
    eps: f64,
    saved: SavedStats,
}

impl candle_core::CustomOp3 for BatchNormGradOp {
    fn name(&self) -> &'static str {
        "batch-norm-cudnn-grad"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        batch_norm_backward(self.eps, &self.saved, (s1, l1), (s2, l2), (s3, l3))
    }
}
