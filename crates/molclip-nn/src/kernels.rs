//! molclip's own CUDA kernels (feature `cuda`), compiled once per process by NVRTC and loaded
//! per device: the element-wise passes that candle would compose from several launches each.
//! Each computes what its CPU body does, in float32, in the same order.

use std::sync::OnceLock;

use candle_core::backend::BackendDevice;
use candle_core::cuda::cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

use crate::conv3d::{dims5, Window3d};

/// The kernels' CUDA C source (also run on the CPU, compiled as C++, by
/// `tests/cuda_kernels_on_the_cpu.rs`).
const SOURCE: &str = include_str!("kernels.cu");

/// 3D max pooling's geometry, as the kernels' `struct Pool` reads it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pool {
    input: [i32; 3],
    output: [i32; 3],
    kernel: [i32; 3],
    stride: [i32; 3],
    padding: [i32; 3],
}

// SAFETY: a `repr(C)` struct of fifteen `i32`s, laid out as the kernels' `struct Pool`.
unsafe impl DeviceRepr for Pool {}

/// The input gradient of `max_pool3d(x, window)` from its output's gradient `dy`, both float32
/// `[B, C, ...]`: the first maximum of each window (as the CPU picks it) takes the window's
/// gradient, each input summing its windows' in their order, as the CPU does.
pub(crate) fn max_pool3d_grad(
    window: Window3d,
    (sx, lx): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let ([b, c, t, h, w], [gb, gc, ot, oh, ow]) = (dims5(lx)?, dims5(lg)?);
    let out = window.out_dims([t, h, w]).map_err(candle_core::Error::wrap)?;
    if [gb, gc, ot, oh, ow] != [b, c, out[0], out[1], out[2]] || !lx.is_contiguous() || !lg.is_contiguous() {
        candle_core::bail!("max-pool3d grad: input {:?} and output gradient {:?} disagree", lx.shape(), lg.shape());
    }
    let int =
        |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("max-pool3d grad: {v} over 2^31")));
    let ints = |v: [usize; 3]| -> candle_core::Result<[i32; 3]> { Ok([int(v[0])?, int(v[1])?, int(v[2])?]) };
    let vol = t * h * w;
    int(vol)?;
    let pool = Pool {
        input: ints([t, h, w])?,
        output: ints(out)?,
        kernel: ints(window.kernel)?,
        stride: ints(window.stride)?,
        padding: ints(window.padding)?,
    };
    let dev = sx.device.clone();
    let stream = dev.cuda_stream();
    let (planes, n) = (b * c, ot * oh * ow);
    let x = sx.as_cuda_slice::<f32>()?.slice(lx.start_offset()..);
    let dy = sg.as_cuda_slice::<f32>()?.slice(lg.start_offset()..);
    // SAFETY: pool_argmax writes every one of the planes x n elements before pool_grad reads.
    let mut arg = unsafe { stream.alloc::<u32>((planes * n).max(1)) }.map_err(candle_core::Error::wrap)?;
    // SAFETY: pool_grad writes every one of the planes x vol elements.
    let mut dx = unsafe { dev.alloc_uninit(&Shape::from(vec![b, c, t, h, w]), DType::F32)? };
    let planes_arg = planes as u64;
    {
        let f = function(&dev, "pool_argmax")?;
        let mut l = stream.launch_builder(&f);
        l.arg(&x).arg(&mut arg).arg(&planes_arg).arg(&pool);
        // SAFETY: x holds planes x vol values from its offset and arg planes x n; the kernel
        // reads x inside each plane's window and writes arg below planes x n only.
        unsafe { l.launch(launch(planes * n)) }.map_err(candle_core::Error::wrap)?;
    }
    {
        let f = function(&dev, "pool_grad")?;
        let mut l = stream.launch_builder(&f);
        l.arg(&arg).arg(&dy).arg(dx.as_cuda_slice_mut::<f32>()?).arg(&planes_arg).arg(&pool);
        // SAFETY: arg and dy hold planes x n values, dx planes x vol; the kernel reads arg and
        // dy below planes x n and writes dx below planes x vol only.
        unsafe { l.launch(launch(planes * vol)) }.map_err(candle_core::Error::wrap)?;
    }
    Ok((dx, Shape::from(vec![b, c, t, h, w])))
}

/// Tensors per launch of the `adamw` kernel (`ADAMW_LIST` in kernels.cu): the list travels
/// as the kernel's parameter, 2.6 KB of CUDA's 4 KB.
const ADAMW_LIST: usize = 64;

/// Up to [`ADAMW_LIST`] tensors of one AdamW update, as the kernels' `struct AdamWList` reads
/// it: device addresses, and where each tensor starts in the launch's flat index.
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamWList {
    p: [u64; ADAMW_LIST],
    g: [u64; ADAMW_LIST],
    m: [u64; ADAMW_LIST],
    v: [u64; ADAMW_LIST],
    start: [u64; ADAMW_LIST + 1],
    count: u32,
}

// SAFETY: a `repr(C)` struct of `u64` arrays (device addresses, 64-bit as CUDA's pointers,
// and offsets) and a `u32`, laid out as the kernels' `struct AdamWList` (the PTX's parameter
// size is checked against it in a test).
unsafe impl DeviceRepr for AdamWList {}

// SAFETY: a `repr(C)` struct of eight `f32`s, laid out as the kernels' `struct AdamWConstants`.
unsafe impl DeviceRepr for crate::update::AdamWConstants {}

/// The CUDA device of `t`, for the kernel `what`'s launches.
fn cuda_device(t: &candle_core::Tensor, what: &str) -> candle_core::Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(dev) => Ok(dev.clone()),
        _ => candle_core::bail!("{what}: a tensor off the GPU"),
    }
}

/// The device address of a float32 tensor's first value (its storage's start plus the
/// layout's offset) for a launch on `stream`, and the guard that keeps it valid until the
/// launch is queued; an error naming the kernel `what` for a tensor off the GPU or on another
/// device than `stream`'s.
fn f32_address<'a>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
    stream: &'a std::sync::Arc<candle_core::cuda::cudarc::driver::CudaStream>,
    what: &str,
) -> candle_core::Result<(u64, candle_core::cuda::cudarc::driver::SyncOnDrop<'a>)> {
    use candle_core::cuda::cudarc::driver::DevicePtr;
    let candle_core::Storage::Cuda(cuda) = storage else {
        candle_core::bail!("{what}: a tensor off the GPU");
    };
    if !std::sync::Arc::ptr_eq(cuda.device.cuda_stream().context(), stream.context()) {
        candle_core::bail!("{what}: tensors on two devices");
    }
    let (address, sync) = cuda.as_cuda_slice::<f32>()?.device_ptr(stream);
    Ok((address + (layout.start_offset() * std::mem::size_of::<f32>()) as u64, sync))
}

/// AdamW's update of `slots` in place, on their CUDA device: every tensor float32, contiguous
/// and of its parameter's shape (`AdamWSlot::in_place`), one launch per [`ADAMW_LIST`] slots.
pub(crate) fn adamw(
    slots: &[crate::update::AdamWSlot<'_>],
    c: &crate::update::AdamWConstants,
) -> candle_core::Result<()> {
    const WHAT: &str = "AdamW's kernel";
    for group in slots.chunks(ADAMW_LIST) {
        let dev = cuda_device(group[0].param, WHAT)?;
        let stream = dev.cuda_stream();
        // Read locks: the kernel writes the parameters and moments on the stream, in stream
        // order, as candle's in-place ops do after their write lock is released.
        let held: Vec<_> = group.iter().map(|s| [s.param, s.grad, s.m, s.v].map(|t| t.storage_and_layout())).collect();
        let mut list = AdamWList {
            p: [0; ADAMW_LIST],
            g: [0; ADAMW_LIST],
            m: [0; ADAMW_LIST],
            v: [0; ADAMW_LIST],
            start: [0; ADAMW_LIST + 1],
            count: group.len() as u32,
        };
        let mut syncs = Vec::with_capacity(4 * group.len());
        for (k, tensors) in held.iter().enumerate() {
            for (column, (storage, layout)) in
                [&mut list.p, &mut list.g, &mut list.m, &mut list.v].into_iter().zip(tensors)
            {
                let (address, sync) = f32_address(storage, layout, &stream, WHAT)?;
                column[k] = address;
                syncs.push(sync);
            }
            list.start[k + 1] = list.start[k] + tensors[0].1.shape().elem_count() as u64;
        }
        let total = list.start[group.len()] as usize;
        if total == 0 {
            continue;
        }
        let f = function(&dev, "adamw")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&list).arg(c);
        // SAFETY: each of the list's addresses holds its tensor's values from the tensor's
        // offset, start[k + 1] - start[k] float32 values for tensor k (contiguous, of the
        // parameter's shape, as `AdamWSlot::in_place` checked), in memory that the read locks
        // and `syncs` keep alive until the launch is queued (a free is queued behind it); the
        // kernel touches tensor k's values below that count only.
        unsafe { b.launch(launch(total)) }.map_err(candle_core::Error::wrap)?;
        drop(syncs);
    }
    Ok(())
}

/// Up to [`ADAMW_LIST`] tensors of [`square_sums`], as the kernels' `struct SquareList` reads
/// it: device addresses, lengths, and where each tensor's lanes start in the launch's flat
/// index.
#[repr(C)]
#[derive(Clone, Copy)]
struct SquareList {
    x: [u64; ADAMW_LIST],
    len: [u64; ADAMW_LIST],
    start: [u64; ADAMW_LIST + 1],
    count: u32,
}

// SAFETY: a `repr(C)` struct of `u64` arrays (device addresses and counts) and a `u32`, laid
// out as the kernels' `struct SquareList` (its size is checked against the PTX in a test).
unsafe impl DeviceRepr for SquareList {}

/// Each tensor's sum of squares in float64 (`crate::norm::square_sums`'s kernel path): every
/// tensor float32, contiguous and on one CUDA device with the kernels. Per [`ADAMW_LIST`]
/// tensors, `square_lanes` then `square_totals`; one read of all the totals at the end.
pub(crate) fn square_sums(tensors: &[&candle_core::Tensor]) -> candle_core::Result<Vec<f64>> {
    const WHAT: &str = "sums of squares' kernel";
    let Some(first) = tensors.first() else { return Ok(Vec::new()) };
    let dev = cuda_device(first, WHAT)?;
    let stream = dev.cuda_stream();
    // SAFETY: square_totals writes every one of the totals before they are read.
    let mut totals = unsafe { stream.alloc::<f64>(tensors.len()) }.map_err(candle_core::Error::wrap)?;
    for (g, group) in tensors.chunks(ADAMW_LIST).enumerate() {
        let held: Vec<_> = group.iter().map(|t| t.storage_and_layout()).collect();
        let mut list = SquareList {
            x: [0; ADAMW_LIST],
            len: [0; ADAMW_LIST],
            start: [0; ADAMW_LIST + 1],
            count: group.len() as u32,
        };
        let mut syncs = Vec::with_capacity(group.len());
        for (k, (storage, layout)) in held.iter().enumerate() {
            let (address, sync) = f32_address(storage, layout, &stream, WHAT)?;
            list.x[k] = address;
            list.len[k] = layout.shape().elem_count() as u64;
            list.start[k + 1] = list.start[k] + crate::norm::square_lanes(layout.shape().elem_count()) as u64;
            syncs.push(sync);
        }
        let lanes = list.start[group.len()] as usize;
        // SAFETY: square_lanes writes every one of the lanes before square_totals reads them.
        let mut lane = unsafe { stream.alloc::<f64>(lanes) }.map_err(candle_core::Error::wrap)?;
        {
            let f = function(&dev, "square_lanes")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&list).arg(&mut lane);
            // SAFETY: each of the list's addresses holds len[k] float32 values from the
            // tensor's offset (contiguous), kept alive by the read locks and `syncs` until the
            // launch is queued; the kernel reads below len[k] and writes `lane` below its
            // start[count] values.
            unsafe { b.launch(launch(lanes)) }.map_err(candle_core::Error::wrap)?;
        }
        {
            let f = function(&dev, "square_totals")?;
            let mut out = totals.slice_mut(g * ADAMW_LIST..g * ADAMW_LIST + group.len());
            let mut b = stream.launch_builder(&f);
            b.arg(&list).arg(&lane).arg(&mut out);
            // SAFETY: `lane` holds start[count] values and `out` count; the kernel reads lane
            // below start[count] and writes out below count only.
            unsafe { b.launch(launch(group.len())) }.map_err(candle_core::Error::wrap)?;
        }
        drop(syncs);
    }
    stream.clone_dtoh(&totals).map_err(candle_core::Error::wrap)
}

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

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels without a GPU: a build with the `cuda` feature checks them
    /// where no device is lent.
    #[test]
    fn the_kernels_compile() {
        let ptx = super::nvrtc::compile_ptx(super::SOURCE).unwrap_or_else(|e| panic!("{e:?}"));
        let src = ptx.to_src();
        let names = [
            "adamw",
            "square_lanes",
            "square_totals",
            "relu",
            "add_relu",
            "relu_grad",
            "bn_running",
            "pool_argmax",
            "pool_grad",
        ];
        for name in names {
            assert!(src.contains(&format!(".entry {name}(")), "{name} missing from the PTX");
        }
        // The structs the kernels take by value are laid out as their Rust twins.
        for (param, size) in [
            ("adamw_param_0", std::mem::size_of::<super::AdamWList>()),
            ("adamw_param_1", std::mem::size_of::<crate::update::AdamWConstants>()),
            ("square_lanes_param_0", std::mem::size_of::<super::SquareList>()),
            ("pool_argmax_param_3", std::mem::size_of::<super::Pool>()),
        ] {
            assert!(src.contains(&format!("{param}[{size}]")), "{param}: {size} bytes expected in the PTX");
        }
    }
}
