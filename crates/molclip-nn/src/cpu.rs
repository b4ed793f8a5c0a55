//! Helpers for the hand-written CPU kernels: typed views of candle's storage and GEMM (with
//! the kernels of the instruction set `molclip_cpu::isa` allows).

use candle_core::{CpuStorage, Layout};

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("only f32 on the CPU"),
    };
    Ok(&data[contiguous_range(l)?])
}

/// [`f32_slice`], writable: the destination of an in-place op.
pub(crate) fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("only f32 on the CPU"),
    };
    Ok(&mut data[contiguous_range(l)?])
}

fn contiguous_range(l: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => candle_core::bail!("input must be contiguous"),
    }
}

/// dst[m×n] (row-major) = (accumulate ? dst : 0) + lhs · rhs, with explicit strides
/// (column stride, row stride) for both operands, on every thread.
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
    let dst_strides = (1, n as isize);
    gemm_f32_strided(m, n, k, (dst, dst_strides), accumulate, (lhs, lhs_strides), (rhs, rhs_strides), threads);
}

/// [`gemm_f32`] into values not yet initialised (`dst`, row-major `[m × n]`), not
/// accumulating: the product sets every value of `dst` and reads none, so that a new output
/// need not be zeroed first (a `vec![0.0; len]` is a pass over memory as long as the output).
/// That the kernels of every level leave an unread destination unseen is tested in
/// `molclip_cpu` (destinations of NaN).
pub(crate) fn gemm_f32_uninit(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [std::mem::MaybeUninit<f32>],
    lhs: Strided<&[f32]>,
    rhs: Strided<&[f32]>,
) {
    assert_eq!(dst.len(), m * n, "GEMM {m}x{n}x{k}: a destination of {} values", dst.len());
    // SAFETY: `dst` is borrowed mutably, so it overlaps neither operand and is valid for its
    // m·n values (MaybeUninit<f32> has f32's layout); a product that does not accumulate only
    // writes it.
    unsafe {
        gemm_checked(
            m,
            n,
            k,
            (dst.as_mut_ptr().cast(), dst.len(), (1, n as isize)),
            false,
            lhs,
            rhs,
            rayon::current_num_threads(),
        );
    }
}

/// A linear layer's forward pass into values not yet initialised: `y[rows × o] = x[rows × k]
/// · wᵀ + b` (row-major; `molclip_cpu::linear_f32`, the bias added as each sum leaves the
/// kernel where it can be), on every thread.
pub(crate) fn linear_uninit(
    rows: usize,
    o: usize,
    k: usize,
    y: &mut [std::mem::MaybeUninit<f32>],
    x: &[f32],
    w: &[f32],
    b: &[f32],
) {
    assert!(
        y.len() == rows * o && x.len() == rows * k && w.len() == o * k && b.len() == o,
        "linear {rows}x{o}x{k}: {} outputs, {} inputs, {} weights, {} biases",
        y.len(),
        x.len(),
        w.len(),
        b.len()
    );
    // SAFETY: every operand holds what the assertion checks; `y` is borrowed mutably, so it
    // overlaps none, and the layer only writes it; isa() never names more than the CPU has.
    unsafe {
        molclip_cpu::linear_f32(
            molclip_cpu::isa(),
            rows,
            o,
            k,
            y.as_mut_ptr().cast(),
            x.as_ptr(),
            w.as_ptr(),
            b.as_ptr(),
            parallelism(rayon::current_num_threads(), rows * o * k),
        )
    }
}

/// How a product of `multiply_adds` runs on up to `threads` threads: on one below 2^16.
fn parallelism(threads: usize, multiply_adds: usize) -> molclip_cpu::Parallelism {
    if threads > 1 && multiply_adds > 1 << 16 {
        molclip_cpu::Parallelism::Rayon(threads)
    } else {
        molclip_cpu::Parallelism::None
    }
}

/// A vector of `len` values that `write` sets, every one (its spare capacity, handed to
/// `write`, is then taken as initialised).
///
/// # Safety
///
/// `write` must initialise all `len` values it is given.
pub(crate) unsafe fn written_by(len: usize, write: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's promise: `write` initialised the `len` values.
    unsafe { v.set_len(len) };
    v
}

/// Copies `src` into the values `dst` (of the same length), initialising them
/// (`MaybeUninit::write_copy_of_slice`, stable after this crate's minimum Rust).
pub(crate) fn write_copy(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "write_copy: {} values into {}", src.len(), dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Initialised values seen as possibly uninitialised, for a writer that takes those.
///
/// # Safety
///
/// Only initialised values may be written through the view (`MaybeUninit::write`), so that
/// `values` stay initialised.
pub(crate) unsafe fn as_uninit(values: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller writes only initialised values.
    unsafe { &mut *(std::ptr::from_mut(values) as *mut [std::mem::MaybeUninit<f32>]) }
}

/// `values` set to zero, and then seen as initialised.
pub(crate) fn zeroed(values: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(std::mem::MaybeUninit::new(0.0));
    // SAFETY: every value was just written; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(values as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// Scratch buffers kept per thread for the next [`Scratch::take`]: at most this many.
const SCRATCH_KEPT: usize = 4;

thread_local! {
    /// Buffers given back by [`Scratch`]es dropped on this thread.
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch buffer whose values the caller writes before it reads them (a convolution's
/// window matrix, say), reused from one call to the next on a thread: a fresh `vec![0.0;
/// len]` would zero it first, on one thread, a pass over tens of MB at every step. Its values
/// start as whatever the last user left (zeros in a new one): never read one not written.
/// Given back to the thread's pool when dropped.
pub(crate) struct Scratch {
    values: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// `len` values: the shortest buffer the thread has kept that holds them, else its
    /// longest, grown.
    pub(crate) fn take(len: usize) -> Self {
        let mut values = SCRATCH.with(|pool| {
            let mut pool = pool.borrow_mut();
            let fits = (0..pool.len()).filter(|&i| pool[i].len() >= len).min_by_key(|&i| pool[i].len());
            let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        });
        if values.len() < len {
            values.resize(len, 0.0);
        }
        Self { values, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        SCRATCH.with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.push(values);
            if pool.len() > SCRATCH_KEPT {
                // The shortest goes: a longer one serves every request it would.
                let smallest = (0..pool.len()).min_by_key(|&i| pool[i].len()).expect("a buffer was just pushed");
                pool.swap_remove(smallest);
            }
        });
    }
}

/// An operand of [`gemm_f32_strided`]: its elements and (column stride, row stride).
pub(crate) type Strided<T> = (T, (isize, isize));

/// One past the largest offset a `rows × cols` view with these (positive) strides reads.
fn extent(rows: usize, cols: usize, (cs, rs): (isize, isize)) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    assert!(cs > 0 && rs > 0, "strides must be positive, got ({cs}, {rs})");
    (rows - 1) * rs as usize + (cols - 1) * cs as usize + 1
}

/// dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n], every operand with its own
/// strides (a column-major `dst` is (m, 1)), on up to `threads` threads: [`gemm_raw`] on
/// slices checked to cover their strided views.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32_strided(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_strides): Strided<&mut [f32]>,
    accumulate: bool,
    lhs: Strided<&[f32]>,
    rhs: Strided<&[f32]>,
    threads: usize,
) {
    // SAFETY: `dst` is borrowed mutably, so it overlaps neither operand, and holds its values.
    unsafe { gemm_checked(m, n, k, (dst.as_mut_ptr(), dst.len(), dst_strides), accumulate, lhs, rhs, threads) }
}

/// [`gemm_raw`] once every operand is checked to cover its strided view (`dst` given by its
/// first value and its length).
///
/// # Safety
///
/// `dst` must be valid for `dst_len` values (written, and read when accumulating) and
/// overlap neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_checked(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_len, dst_strides): (*mut f32, usize, (isize, isize)),
    accumulate: bool,
    (lhs, lhs_strides): Strided<&[f32]>,
    (rhs, rhs_strides): Strided<&[f32]>,
    threads: usize,
) {
    assert!(
        dst_len >= extent(m, n, dst_strides)
            && lhs.len() >= extent(m, k, lhs_strides)
            && rhs.len() >= extent(k, n, rhs_strides),
        "GEMM {m}x{n}x{k}: an operand is smaller than its strided view"
    );
    // SAFETY: the assertion checks that every operand covers its strided view; the caller
    // vouches for `dst` and for its not overlapping either operand.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst,
            dst_strides,
            accumulate,
            lhs.as_ptr(),
            lhs_strides,
            rhs.as_ptr(),
            rhs_strides,
            1.0,
            threads,
        );
    }
}

/// A product small enough for one thread (the attention's, one head at a time) on raw
/// pointers with arbitrary strides (column stride, row stride), not accumulating: dst =
/// alpha · lhs · rhs (`molclip_cpu::gemm_f32_small`, with the kernels of `molclip_cpu::isa`).
///
/// # Safety
/// As [`gemm_raw`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_small(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (isize, isize),
    lhs: *const f32,
    lhs_strides: (isize, isize),
    rhs: *const f32,
    rhs_strides: (isize, isize),
    alpha: f32,
) {
    // SAFETY: the caller's views; isa() never names more than the CPU has.
    unsafe {
        molclip_cpu::gemm_f32_small(
            molclip_cpu::isa(),
            m,
            n,
            k,
            (dst, dst_strides.0, dst_strides.1),
            (lhs, lhs_strides.0, lhs_strides.1),
            (rhs, rhs_strides.0, rhs_strides.1),
            alpha,
        )
    }
}

/// GEMM on raw pointers with arbitrary strides (column stride, row stride), on up to
/// `threads` threads (the split is over `dst`'s blocks, never over `k`, so the numbers do not
/// depend on it): dst = (accumulate ? dst : 0) + alpha · lhs · rhs.
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
    threads: usize,
) {
    let par = parallelism(threads, m * n * k);
    // SAFETY: the caller guarantees the strided views are valid and `dst` is not aliased,
    // which is what the GEMM requires; isa() never names more than the CPU has.
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
            par,
        );
    }
}
