//! Single-precision products too small to pack, for AVX2 + FMA: the attention's, one (video,
//! head) pair at a time (50 x 50 and 50 x 64, reductions of 50 or 64).
//!
//! The right operand's rows are read in place as vectors where they run along memory (the
//! values and keys of a fused projection do), and copied once into a row-major scratch
//! where not (kᵀ of q · kᵀ); the left operand's values are broadcast from wherever they are.
//! A register tile of 2 rows x 32 columns keeps 8 sums; a last column block narrower than a
//! vector is read and written through a mask. The `gemm` crate ran these products at about a
//! quarter of the cores' FMA peak: its packing and blocking are sized for large ones.
//!
//! Every element is one FMA chain over the reduction in order, from zero, then scaled: its
//! bits depend neither on the tile it falls in nor on the shape around it.

use std::arch::x86_64::*;
use std::cell::Cell;

/// Rows of the register tile.
const ROWS: usize = 2;
/// Vectors of eight columns of the register tile.
const VECTORS: usize = 4;

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
/// writes and overlapping neither operand; the CPU must have AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_small(
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
        unsafe { product(m, n, k, (dst, dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs), (rhs, rhs_rs), alpha) };
        return;
    }
    let mut scratch = SCRATCH.with(|s| s.take());
    scratch.clear();
    scratch.reserve(k * n);
    for p in 0..k {
        // SAFETY: (p, j) inside rhs's view for p < k, j < n.
        scratch.extend((0..n).map(|j| unsafe { *rhs.offset(p as isize * rhs_rs + j as isize * rhs_cs) }));
    }
    // SAFETY: the caller's views for dst and lhs; scratch holds k rows of n values.
    unsafe { product(m, n, k, (dst, dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs), (scratch.as_ptr(), n as isize), alpha) };
    SCRATCH.with(|s| s.set(scratch));
}

/// [`sgemm_small`] with rows of `rhs` along memory (row stride `rhs_rs`).
///
/// # Safety
///
/// As [`sgemm_small`].
#[target_feature(enable = "avx2,fma")]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_rs): (*const f32, isize),
    alpha: f32,
) {
    for j in (0..n).step_by(8 * VECTORS) {
        let width = (n - j).min(8 * VECTORS);
        let (vectors, tail) = (width.div_ceil(8), width % 8);
        // Lanes below `tail` of the last vector (all of them without a tail).
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(if tail == 0 { 8 } else { tail as i32 }),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        for i in (0..m).step_by(ROWS) {
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
                ($(($r:literal, $v:literal, $masked:literal)),*) => {
                    match ((m - i).min(ROWS), vectors, tail > 0) {
                        // SAFETY: the tile's rows, columns and vectors lie inside the views
                        // the caller vouches for (the masked lanes of a tail among them).
                        $(($r, $v, $masked) => unsafe { tile::<$r, $v, $masked>(t) },)*
                        _ => unreachable!("a tile of at most {ROWS} rows and {VECTORS} vectors"),
                    }
                };
            }
            dispatch!(
                (1, 1, false),
                (1, 2, false),
                (1, 3, false),
                (1, 4, false),
                (2, 1, false),
                (2, 2, false),
                (2, 3, false),
                (2, 4, false),
                (3, 1, false),
                (3, 2, false),
                (3, 3, false),
                (3, 4, false),
                (1, 1, true),
                (1, 2, true),
                (1, 3, true),
                (1, 4, true),
                (2, 1, true),
                (2, 2, true),
                (2, 3, true),
                (2, 4, true),
                (3, 1, true),
                (3, 2, true),
                (3, 3, true),
                (3, 4, true)
            );
        }
    }
}

/// One register tile: its first row of the left operand, column of the right one and
/// element of the destination, with their strides.
#[derive(Clone, Copy)]
struct Tile {
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
    mask: __m256i,
    tail: usize,
}

/// `R` rows x `V` vectors of sums, the last vector through `t.mask` where `MASKED`.
///
/// # Safety
///
/// AVX2 and FMA; `R` rows of the left operand and `V` vectors of columns (the last one's
/// masked lanes where `MASKED`) inside the views, for reduction indices below `t.k`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, const V: usize, const MASKED: bool>(t: Tile) {
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for p in 0..t.k {
        // The rows' values first, then a vector of columns at a time: R·V sums, R values and
        // one vector live, within the 16 registers.
        let a: [__m256; R] = std::array::from_fn(|r| {
            // SAFETY: row r < R, reduction index p < k: inside the left operand's view.
            _mm256_set1_ps(unsafe { *t.lhs.offset(r as isize * t.lhs_rs + p as isize * t.lhs_cs) })
        });
        let row = t.rhs.wrapping_offset(p as isize * t.rhs_rs);
        // Indexed: the sums of vector v across the rows.
        #[allow(clippy::needless_range_loop)]
        for v in 0..V {
            // SAFETY: vector v of row p < k inside the view (masked where it is the tail).
            let b = unsafe {
                if MASKED && v == V - 1 {
                    _mm256_maskload_ps(row.add(8 * v), t.mask)
                } else {
                    _mm256_loadu_ps(row.add(8 * v))
                }
            };
            for r in 0..R {
                acc[r][v] = _mm256_fmadd_ps(a[r], b, acc[r][v]);
            }
        }
    }
    let scale = _mm256_set1_ps(t.alpha);
    for (r, acc) in acc.iter().enumerate() {
        let out = t.dst.wrapping_offset(r as isize * t.dst_rs);
        for (v, acc) in acc.iter().enumerate() {
            let value = _mm256_mul_ps(*acc, scale);
            let masked = MASKED && v == V - 1;
            if t.dst_cs == 1 {
                // SAFETY: vector v of row r inside the destination (masked where the tail).
                unsafe {
                    if masked {
                        _mm256_maskstore_ps(out.add(8 * v), t.mask, value)
                    } else {
                        _mm256_storeu_ps(out.add(8 * v), value)
                    }
                }
            } else {
                let mut values = [0f32; 8];
                // SAFETY: 8 values into an array of 8.
                unsafe { _mm256_storeu_ps(values.as_mut_ptr(), value) };
                let lanes = if masked { t.tail } else { 8 };
                for (lane, value) in values.iter().enumerate().take(lanes) {
                    // SAFETY: column 8v + lane of row r inside the destination.
                    unsafe { *out.offset((8 * v + lane) as isize * t.dst_cs) = *value };
                }
            }
        }
    }
}
