//! Single-precision products too small to pack, for AVX2 + FMA and for AVX-512: the
//! attention's, one (video, head) pair at a time (50 x 50 and 50 x 64, reductions of 50 or 64).
//!
//! The right operand's rows are read in place as vectors where they run along memory (the
//! values and keys of a fused projection do), and copied once into a row-major scratch
//! where not (kᵀ of q · kᵀ, eight columns at a time through a transpose in registers); the
//! left operand's values are broadcast from wherever they are. A register tile of 4 vectors
//! of columns (32 at AVX2, 64 at AVX-512) by 2 rows at AVX2 or 5 at AVX-512 keeps 8 or 20
//! sums; a last column block narrower than a vector is read and written through a mask. The
//! `gemm` crate ran these products at about a quarter of the cores' FMA peak: its packing and
//! blocking are sized for large ones. At AVX-512, the 16-lane tile took a frame-vit step's
//! attention from 3.3 to 2.5 ms forward and from 4.5 to 3.7 ms backward a block (scratch op
//! timers, medians), where the AVX2 tile had served; a 2-row one had gained nothing.
//!
//! Every element is one FMA chain over the reduction in order, from zero, then scaled: its
//! bits depend neither on the tile it falls in, nor on the shape around it, nor on the width
//! of the vectors.

use std::arch::x86_64::*;
use std::cell::Cell;

thread_local! {
    /// The right operand copied row-major, reused between calls on a thread.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `dst[m × n] = alpha · lhs[m × k] · rhs[k × n]`, every operand with its column stride
/// `_cs` and row stride `_rs` (as [`crate::gemm_f32`] takes them); `dst` is not read.
///
/// # Safety
///
/// The pointers valid for the strided views the sizes and strides describe, `dst` for
/// writes and overlapping neither operand; the CPU must have AVX2 and FMA, and AVX-512F
/// with `wide` (which runs the 16-lane tile).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_small(
    wide: bool,
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if rhs_cs == 1 {
        // SAFETY: the caller's views; rows of rhs run along memory.
        unsafe {
            let (dst, lhs, rhs) = ((dst, dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs), (rhs, rhs_rs));
            product(wide, Operands { m, n, k, dst, lhs, rhs, alpha })
        };
        return;
    }
    let mut scratch = SCRATCH.with(|s| s.take());
    scratch.clear();
    // Columns of rhs along memory (kᵀ and vᵀ of a fused projection): eight at a time through
    // a transpose in registers; the rest value by value.
    let whole = if rhs_rs == 1 && k > 0 { n / 8 * 8 } else { 0 };
    scratch.resize(k * n, 0.0);
    for j in (0..whole).step_by(8) {
        // SAFETY: columns j..j + 8 < n of rhs, each k values along memory inside its view.
        let columns =
            std::array::from_fn(|r| unsafe { std::slice::from_raw_parts(rhs.offset((j + r) as isize * rhs_cs), k) });
        // SAFETY: scratch holds k rows of n values, and (p, j + r) lies inside it; AVX2, as
        // the caller guarantees.
        unsafe { crate::transpose_rows_into(crate::Isa::Avx2, columns, scratch.as_mut_ptr().add(j), n) };
    }
    for p in 0..k {
        for j in whole..n {
            // SAFETY: (p, j) inside rhs's view for p < k, j < n.
            scratch[p * n + j] = unsafe { *rhs.offset(p as isize * rhs_rs + j as isize * rhs_cs) };
        }
    }
    // SAFETY: the caller's views for dst and lhs; scratch holds k rows of n values.
    unsafe {
        let (dst, lhs, rhs) = ((dst, dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs), (scratch.as_ptr(), n as isize));
        product(wide, Operands { m, n, k, dst, lhs, rhs, alpha })
    };
    SCRATCH.with(|s| s.set(scratch));
}

/// A vector register of `LANES` floats and the instructions a tile needs of it, the last
/// vector of a row read and written through a mask of its first lanes.
trait Lanes: Copy {
    /// Floats in a vector.
    const LANES: usize;
    /// Rows of the register tile.
    const ROWS: usize;
    /// The lanes below a count.
    type Mask: Copy;
    fn mask(lanes: usize) -> Self::Mask;
    fn zero() -> Self;
    fn splat(value: f32) -> Self;
    /// # Safety
    /// `LANES` values readable at `at`, or the masked ones with `Some`.
    unsafe fn load(at: *const f32, mask: Option<Self::Mask>) -> Self;
    /// # Safety
    /// `LANES` values writable at `at`, or the masked ones with `Some`.
    unsafe fn store(self, at: *mut f32, mask: Option<Self::Mask>);
    fn fmadd(a: Self, b: Self, c: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
}

/// The methods of [`Lanes`] for one vector type, from its instructions: `$load(at)` and
/// `$store(at, v)` unmasked, `$masked_load(at, mask)` and `$masked_store(at, mask, v)`.
macro_rules! lanes_of {
    (
        $t:ty, lanes: $lanes:expr, rows: $rows:expr, mask: $mask:ty = $make_mask:expr,
        $zero:ident, $splat:ident, $fmadd:ident, $mul:ident, $load:ident, $store:ident,
        $masked_load:expr, $masked_store:ident
    ) => {
        impl Lanes for $t {
            const LANES: usize = $lanes;
            const ROWS: usize = $rows;
            type Mask = $mask;
            #[inline(always)]
            fn mask(lanes: usize) -> $mask {
                // SAFETY: these kernels run only where the CPU has the vector type's
                // instructions (the entry points of `product` require them).
                unsafe { $make_mask(lanes) }
            }
            #[inline(always)]
            fn zero() -> Self {
                // SAFETY: as for `mask`.
                unsafe { $zero() }
            }
            #[inline(always)]
            fn splat(value: f32) -> Self {
                // SAFETY: as for `mask`.
                unsafe { $splat(value) }
            }
            #[inline(always)]
            unsafe fn load(at: *const f32, mask: Option<$mask>) -> Self {
                // SAFETY: the caller's bounds (a masked load reads no lane outside the mask);
                // the instructions, as for `mask`.
                unsafe {
                    match mask {
                        Some(mask) => $masked_load(at, mask),
                        None => $load(at),
                    }
                }
            }
            #[inline(always)]
            unsafe fn store(self, at: *mut f32, mask: Option<$mask>) {
                // SAFETY: the caller's bounds (a masked store writes no lane outside the
                // mask); the instructions, as for `mask`.
                unsafe {
                    match mask {
                        Some(mask) => $masked_store(at, mask, self),
                        None => $store(at, self),
                    }
                }
            }
            #[inline(always)]
            fn fmadd(a: Self, b: Self, c: Self) -> Self {
                // SAFETY: as for `mask`.
                unsafe { $fmadd(a, b, c) }
            }
            #[inline(always)]
            fn mul(a: Self, b: Self) -> Self {
                // SAFETY: as for `mask`.
                unsafe { $mul(a, b) }
            }
        }
    };
}

// AVX2: 2 rows of 4 vectors (8 sums, 2 values and 1 vector of the 16 registers; 3 rows ran a
// frame-vit step's attention no faster).
lanes_of!(
    __m256, lanes: 8, rows: 2,
    mask: __m256i = |lanes: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
    _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_loadu_ps, _mm256_storeu_ps,
    |at, mask| _mm256_maskload_ps(at, mask), _mm256_maskstore_ps
);

// AVX-512: 5 rows of 4 vectors (20 sums, 5 values and 1 vector of the 32 registers; a
// 50-token matrix is 10 tiles of rows).
lanes_of!(
    __m512, lanes: 16, rows: 5,
    mask: __mmask16 = |lanes: usize| _cvtu32_mask16((1u32 << lanes.min(16)) - 1),
    _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_loadu_ps, _mm512_storeu_ps,
    |at, mask| _mm512_maskz_loadu_ps(mask, at), _mm512_mask_storeu_ps
);

/// One product of [`sgemm_small`] with rows of `rhs` along memory (row stride `rhs.1`).
#[derive(Clone, Copy)]
struct Operands {
    m: usize,
    n: usize,
    k: usize,
    dst: View<*mut f32>,
    lhs: View<*const f32>,
    rhs: (*const f32, isize),
    alpha: f32,
}

/// Runs `p` on the vectors of the widest level allowed.
///
/// # Safety
///
/// As [`sgemm_small`], and AVX-512F with `wide`.
unsafe fn product(wide: bool, p: Operands) {
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn avx512(p: Operands) {
        // SAFETY: the caller's views, and AVX-512F.
        unsafe { blocks::<__m512>(p) }
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(p: Operands) {
        // SAFETY: the caller's views, and AVX2 and FMA.
        unsafe { blocks::<__m256>(p) }
    }
    // SAFETY: the caller's views and instruction sets.
    unsafe {
        if wide {
            avx512(p)
        } else {
            avx2(p)
        }
    }
}

/// A strided view: its first element, column stride and row stride.
type View<P> = (P, isize, isize);

/// Vectors of columns of the right operand in a register tile.
const VECTORS: usize = 4;

/// [`product`] on vectors `S`: blocks of `VECTORS` vectors of columns, each a column of
/// tiles of `S::ROWS` rows.
///
/// # Safety
///
/// As [`product`]; the instructions of `S` available (inlined into a function that enables
/// them).
#[inline(always)]
unsafe fn blocks<S: Lanes>(p: Operands) {
    let Operands { m, n, k, dst: (dst, dst_cs, dst_rs), lhs: (lhs, lhs_cs, lhs_rs), rhs: (rhs, rhs_rs), alpha } = p;
    for j in (0..n).step_by(S::LANES * VECTORS) {
        let width = (n - j).min(S::LANES * VECTORS);
        let (vectors, tail) = (width.div_ceil(S::LANES), width % S::LANES);
        let mask = S::mask(tail);
        for i in (0..m).step_by(S::ROWS) {
            let t = Tile {
                k,
                lhs: lhs.wrapping_offset(i as isize * lhs_rs),
                lhs_cs,
                lhs_rs,
                rhs: rhs.wrapping_add(j),
                rhs_rs,
                dst: dst.wrapping_offset(i as isize * dst_rs + j as isize * dst_cs),
                dst_cs,
                dst_rs,
                alpha,
                mask,
                tail,
            };
            macro_rules! dispatch {
                ($($r:literal),*) => {
                    match ((m - i).min(S::ROWS), vectors, tail > 0) {
                        $(
                            ($r, 1, false) => tile::<S, $r, 1, false>(t),
                            ($r, 2, false) => tile::<S, $r, 2, false>(t),
                            ($r, 3, false) => tile::<S, $r, 3, false>(t),
                            ($r, 4, false) => tile::<S, $r, 4, false>(t),
                            ($r, 1, true) => tile::<S, $r, 1, true>(t),
                            ($r, 2, true) => tile::<S, $r, 2, true>(t),
                            ($r, 3, true) => tile::<S, $r, 3, true>(t),
                            ($r, 4, true) => tile::<S, $r, 4, true>(t),
                        )*
                        _ => unreachable!("a tile of at most {} rows and {VECTORS} vectors", S::ROWS),
                    }
                };
            }
            // SAFETY: the tile's rows, columns and vectors lie inside the views the caller
            // vouches for (the masked lanes of a tail among them), and its instructions are
            // the caller's.
            unsafe {
                if S::ROWS == 2 {
                    dispatch!(1, 2)
                } else {
                    dispatch!(1, 2, 3, 4, 5)
                }
            }
        }
    }
}

/// One register tile: its first row of the left operand, column of the right one and
/// element of the destination, with their strides.
#[derive(Clone, Copy)]
struct Tile<M> {
    k: usize,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    alpha: f32,
    /// The lanes of the last vector read and written (with `MASKED`): the first `tail`.
    mask: M,
    tail: usize,
}

/// `R` rows x `V` vectors of sums, the last vector through `t.mask` where `MASKED`.
///
/// # Safety
///
/// The instructions of `S`; `R` rows of the left operand and `V` vectors of columns (the
/// last one's masked lanes where `MASKED`) inside the views, for reduction indices below
/// `t.k`.
#[inline(always)]
unsafe fn tile<S: Lanes, const R: usize, const V: usize, const MASKED: bool>(t: Tile<S::Mask>) {
    let mut acc = [[S::zero(); V]; R];
    let last = |v: usize| if MASKED && v == V - 1 { Some(t.mask) } else { None };
    for p in 0..t.k {
        // The rows' values first, then a vector of columns at a time: R·V sums, R values and
        // one vector live.
        let a: [S; R] = std::array::from_fn(|r| {
            // SAFETY: row r < R, reduction index p < k: inside the left operand's view.
            S::splat(unsafe { *t.lhs.offset(r as isize * t.lhs_rs + p as isize * t.lhs_cs) })
        });
        let row = t.rhs.wrapping_offset(p as isize * t.rhs_rs);
        // Indexed: the sums of vector v across the rows.
        #[allow(clippy::needless_range_loop)]
        for v in 0..V {
            // SAFETY: vector v of row p < k inside the view (masked where it is the tail).
            let b = unsafe { S::load(row.add(S::LANES * v), last(v)) };
            for r in 0..R {
                acc[r][v] = S::fmadd(a[r], b, acc[r][v]);
            }
        }
    }
    let scale = S::splat(t.alpha);
    for (r, acc) in acc.iter().enumerate() {
        let out = t.dst.wrapping_offset(r as isize * t.dst_rs);
        for (v, acc) in acc.iter().enumerate() {
            let value = S::mul(*acc, scale);
            if t.dst_cs == 1 {
                // SAFETY: vector v of row r inside the destination (masked where the tail).
                unsafe { value.store(out.add(S::LANES * v), last(v)) };
            } else {
                let mut values = [0f32; 16];
                // SAFETY: at most 16 values into an array of 16.
                unsafe { value.store(values.as_mut_ptr(), None) };
                let lanes = if last(v).is_some() { t.tail } else { S::LANES };
                for (lane, value) in values.iter().enumerate().take(lanes) {
                    // SAFETY: column LANES·v + lane of row r inside the destination.
                    unsafe { *out.offset((S::LANES * v + lane) as isize * t.dst_cs) = *value };
                }
            }
        }
    }
}
