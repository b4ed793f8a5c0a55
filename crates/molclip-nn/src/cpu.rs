//! Helpers for the hand-written CPU kernels: typed views of candle's storage and GEMM (with
//! the kernels of the instruction set `molclip_cpu::isa` allows).

use candle_core::{CpuStorage, Layout};

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("only f32 on the CPU"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("input must be contiguous"),
    }
}

/// dst[m×n] (row-major) = (accumulate ? dst : 0) + lhs · rhs, with explicit strides
/// (column stride, row stride) for both operands.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k > 1 << 16 {
        molclip_cpu::Parallelism::Rayon(threads)
    } else {
        molclip_cpu::Parallelism::None
    };
    // SAFETY: the slices are at least as large as the strided views the sizes describe.
    unsafe {
        molclip_cpu::gemm_f32(
            molclip_cpu::isa(),
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.0,
            lhs_strides.1,
            rhs.as_ptr(),
            rhs_strides.0,
            rhs_strides.1,
            1.0,
            1.0,
            par,
        );
    }
}

/// A raw pointer that parallel tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
impl SharedMut {
    /// The pointer. Closures call this rather than reading the field, so that they capture
    /// the whole `SharedMut` (which is `Send` and `Sync`), not the raw pointer inside it.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: a `SharedMut` is only made from a buffer that outlives the parallel loop that uses
// it (the loop borrows nothing else of it), and every task writes a region of the buffer no
// other task reads or writes (one (video, head) pair's columns in the attention kernels), so
// sending the pointer to another thread cannot create a data race.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`: shared references only hand the pointer to tasks whose writes are
// disjoint, and nothing reads through it while the loop runs.
unsafe impl Sync for SharedMut {}

/// Single-threaded GEMM on raw pointers with arbitrary strides (column stride, row stride):
/// dst = (accumulate ? dst : 0) + alpha · lhs · rhs.
///
/// # Safety
/// The pointers must be valid for the strided views described, and `dst` not aliased.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (isize, isize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (isize, isize),
    rhs: *const f32,
    rhs_strides: (isize, isize),
    alpha: f32,
) {
    // SAFETY: the caller guarantees the strided views are valid and `dst` is not aliased,
    // which is what the GEMM requires.
    unsafe {
        molclip_cpu::gemm_f32(
            molclip_cpu::isa(),
            m,
            n,
            k,
            dst,
            dst_strides.0,
            dst_strides.1,
            accumulate,
            lhs,
            lhs_strides.0,
            lhs_strides.1,
            rhs,
            rhs_strides.0,
            rhs_strides.1,
            1.0,
            alpha,
            molclip_cpu::Parallelism::None,
        );
    }
}
