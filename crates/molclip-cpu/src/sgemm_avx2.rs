//! Single-precision GEMM for AVX2 + FMA, molclip's own: both operands packed, a 16 x 6
//! register tile.
//!
//! The `gemm` crate's AVX2 path runs the shapes of molclip's models (a reduction of 192 to
//! 768, thousands of rows) at 55 to 65 % of the cores' FMA peak: it leaves one operand
//! unpacked, and its kernel then walks that operand's columns with a chain of dependent
//! address additions, six per step of the reduction. Here the operands are packed into
//! micro-panels read at fixed offsets (the right one is read in place where its columns run
//! along the reduction: six of them side by side are a panel already), blocked for L1 (a
//! 6-column panel of the right operand) and L2 (128 rows of the left one), the way BLIS
//! blocks for Haswell. Measured inside a frame-vit training step (AVX2, 2 threads), the
//! products of its linear layers went from 104-125 to 124-172 GFLOP/s.
//!
//! Every element is the sum over `k` in order, in blocks of at most [`KC`] (the blocks
//! depend on `k` alone), each block's sum one FMA chain from zero, added to the destination
//! with one FMA: the bits of an element do not depend on the shape it is computed in, the
//! tile it falls in, or the thread count.

use std::arch::x86_64::*;
use std::cell::Cell;

use rayon::prelude::*;

use crate::{cache_aligned, Parallelism, Product, Shared};

/// Rows of the register tile (two vectors of eight).
const MR: usize = 16;
/// Columns of the register tile.
const NR: usize = 6;
/// The longest block of the reduction.
const KC: usize = 256;
/// Rows of the left operand one block holds (L2).
const MC: usize = 128;
/// Columns of the right operand one block holds (its 6-column panels stay in L1 in turn).
const NC: usize = 192;
/// Below this many multiply-adds a product runs on one thread.
const THREADED_MIN: usize = 1 << 18;

thread_local! {
    /// Packing buffers reused between calls on a thread: taken out while a product runs, so
    /// that a product started on the same thread meanwhile (rayon runs other jobs while it
    /// waits) gets buffers of its own.
    static BUFFERS: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// How a block's sums meet the destination.
#[derive(Clone, Copy)]
enum Merge {
    /// `dst = beta · sum` (the first block, the destination not read).
    Set,
    /// `dst = fma(sum, beta, bias[i])` for the destination's row `i` (the first block, the
    /// destination not read): the bits that [`Merge::Add`] with `alpha` 1 gives onto a
    /// destination holding the bias, without the passes that write it there and read it back.
    Bias(*const f32),
    /// `dst = fma(sum, beta, scale · dst)`: the first block, read (`scale` is alpha), or a
    /// later one (`scale` is 1, exact).
    Add(f32),
}

/// Whether a product of an `m x n` destination runs here: both sides at least 64, where
/// packing pays (the attention's 50 x 50 products run faster in the `gemm` crate). The parts a
/// threaded product is split into ([`crate::split_output`]: more than 64 long, the other side
/// whole) run here exactly when the whole would, so splitting changes no bit.
pub(crate) fn takes(m: usize, n: usize) -> bool {
    m >= 64 && n >= 64
}

/// `dst[m × n] = alpha · dst + beta · lhs[m × k] · rhs[k × n]` (`alpha` read only with
/// `read_dst`), strides as [`crate::gemm_f32`] takes them.
///
/// # Safety
///
/// As [`crate::gemm_f32`]; the CPU must have AVX2 and FMA.
pub(crate) unsafe fn sgemm(product: Product<f32>) {
    let swapped = transposed(product);
    // SAFETY: the caller's guarantees, for the product or its transpose, the same views.
    unsafe { sgemm_as_given(if overhead(&swapped) < overhead(&product) { swapped } else { product }, None) }
}

/// [`sgemm`] with the operands as given, never transposed; with `bias`, the first block's
/// sums are set onto `bias[i]` for row `i` (`read_dst` must be false).
///
/// # Safety
///
/// As [`sgemm`]; `bias` valid for `m` reads.
pub(crate) unsafe fn sgemm_as_given(product: Product<f32>, bias: Option<*const f32>) {
    let Product {
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        read_dst,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        alpha,
        beta,
        parallelism,
    } = product;
    if m == 0 || n == 0 {
        return;
    }
    let at = |i: usize, j: usize| dst.wrapping_offset(i as isize * dst_rs + j as isize * dst_cs);
    if k == 0 {
        for j in 0..n {
            for i in 0..m {
                // SAFETY: (i, j) is inside the view the caller vouches for.
                unsafe { *at(i, j) = if read_dst { alpha * *at(i, j) } else { 0.0 } };
            }
        }
        return;
    }
    let threaded = matches!(parallelism, Parallelism::Rayon(t) if t != 1)
        && rayon::current_num_threads() > 1
        && m * n * k >= THREADED_MIN;
    let (mut packed_lhs, mut packed_rhs) = BUFFERS.with(|b| b.take());
    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let blocks = k.div_ceil(KC);
    let kc_max = k.div_ceil(blocks);
    // A right operand whose columns are contiguous along the reduction (the transposed
    // activations of a linear layer's forward pass, say) is read in place: six columns side
    // by side are what a packed panel would hold, and packing them would cost a pass over it.
    let direct = rhs_rs == 1;
    let (lhs_len, rhs_len) = (m_panels * MR * kc_max, if direct { 0 } else { n_panels * NR * kc_max });
    let (a_first, b_first) = (cache_aligned(&mut packed_lhs, lhs_len), cache_aligned(&mut packed_rhs, rhs_len));
    let tiles: Vec<(usize, usize)> =
        (0..n.div_ceil(NC)).flat_map(|jc| (0..m.div_ceil(MC)).map(move |ic| (ic * MC, jc * NC))).collect();
    let ops = Shared((dst, rhs));
    for block in 0..blocks {
        let (pc, kc) = (block * kc_max, kc_max.min(k - block * kc_max));
        let (a, b) = (
            &mut packed_lhs[a_first..][..m_panels * MR * kc],
            &mut packed_rhs[b_first..][..if direct { 0 } else { n_panels * NR * kc }],
        );
        // SAFETY: the panels read rows < m of lhs and columns < n of rhs at reduction indices
        // pc..pc + kc < k, inside the caller's views.
        unsafe {
            let (lhs, rhs) = (lhs.wrapping_offset(pc as isize * lhs_cs), rhs.wrapping_offset(pc as isize * rhs_rs));
            pack_all::<MR>(a, Shared(lhs), (lhs_rs, lhs_cs), m, kc, threaded);
            if !direct {
                pack_all::<NR>(b, Shared(rhs), (rhs_cs, rhs_rs), n, kc, threaded);
            }
        }
        let merge = match (block, read_dst) {
            (0, false) => bias.map_or(Merge::Set, Merge::Bias),
            (0, true) => Merge::Add(alpha),
            _ => Merge::Add(1.0),
        };
        let (a, b) = (&*a, &*b);
        let merge = Shared(merge);
        let tile = |&(i0, j0): &(usize, usize)| {
            let ((dst, rhs), merge) = (ops.get(), merge.get());
            let shape = Tile { m, n, kc, i0, j0, dst_cs, dst_rs, beta, merge };
            // Read in place, the right operand's columns start at the block's reduction index
            // (its row stride is 1).
            let rhs = if direct { Right::Direct(rhs.wrapping_add(pc), rhs_cs) } else { Right::Packed(b) };
            // SAFETY: tiles write disjoint elements of dst inside the caller's view, and read
            // the right operand in place only inside it (columns < n, reduction indices
            // pc..pc + kc < k); the CPU has AVX2 and FMA, as the caller guarantees.
            unsafe { macro_tile(a, rhs, dst, shape) }
        };
        if threaded {
            tiles.par_iter().for_each(tile);
        } else {
            tiles.iter().for_each(tile);
        }
    }
    BUFFERS.with(|b| b.set((packed_lhs, packed_rhs)));
}

/// The same product as its transpose, `dstᵀ = rhsᵀ · lhsᵀ`: each element the same products
/// (a multiply-add's two factors commute, bit for bit) summed in the same order, so the bits
/// do not change; only which operand is packed into which panels, and how the tiles meet the
/// destination, do.
pub(crate) fn transposed(p: Product<f32>) -> Product<f32> {
    Product {
        m: p.n,
        n: p.m,
        dst_cs: p.dst_rs,
        dst_rs: p.dst_cs,
        lhs: p.rhs,
        lhs_cs: p.rhs_rs,
        lhs_rs: p.rhs_cs,
        rhs: p.lhs,
        rhs_cs: p.lhs_rs,
        rhs_rs: p.lhs_cs,
        ..p
    }
}

/// What a product costs besides its multiply-adds, in value moves weighted by their speed:
/// packing the left operand (a copy where a micro-panel's rows are contiguous, a transposing
/// gather four times as slow where not), packing the right one (nothing where it is read in
/// place) and, where a tile's columns are not contiguous in the destination, merging each
/// block's sums value by value. A linear layer's forward pass (`x · wᵀ`, both operands
/// contiguous along the reduction) gathers all of `x` and merges value by value; as its
/// transpose (`w · xᵀ`) it gathers the weights alone, reads `x` in place and stores whole
/// vectors.
fn overhead(p: &Product<f32>) -> usize {
    let pack = |len: usize, contiguous: bool| len * if contiguous { 1 } else { 4 };
    let lhs = pack(p.m * p.k, p.lhs_rs == 1);
    let rhs = if p.rhs_rs == 1 { 0 } else { pack(p.n * p.k, p.rhs_cs == 1) };
    let merge = if p.dst_rs == 1 { 0 } else { 4 * p.m * p.n * p.k.div_ceil(KC) };
    lhs + rhs + merge
}

/// Micro-panels per packing task.
const GROUP: usize = 16;

/// Packs an operand of `len` rows (or columns) into micro-panels of `W`, zeros past `len`,
/// for reduction indices `0..kc`: `buf[(q * kc + p) * W + r] = src[(q * W + r) * along + p *
/// down]` (`strides`: `(along, down)`). Groups of [`GROUP`] panels are packed by one task,
/// a panel after another.
///
/// # Safety
///
/// Every element read must be inside the operand's view.
unsafe fn pack_all<const W: usize>(
    buf: &mut [f32],
    src: Shared<*const f32>,
    (along, down): (isize, isize),
    len: usize,
    kc: usize,
    threaded: bool,
) {
    let group = |(g, chunk): (usize, &mut [f32])| {
        let src = src.get();
        let first = |q: usize| (g * GROUP + q) * W;
        for (q, panel) in chunk.chunks_mut(W * kc).enumerate() {
            if len - first(q) < W {
                panel.fill(0.0);
            }
        }
        if along == 1 {
            // A panel at a time, written in order: walking the source a reduction index at a
            // time instead writes GROUP panels side by side, each a stream of its own, whose
            // strides (W · kc values) put them in few sets of the level-1 cache (a quarter
            // less time measured packing a weight gradient's operands this way).
            for (q, panel) in chunk.chunks_mut(W * kc).enumerate() {
                let rows = W.min(len - first(q));
                for (p, to) in panel.chunks_exact_mut(W).enumerate() {
                    let from = src.wrapping_offset(p as isize * down).wrapping_add(first(q));
                    if rows == W {
                        // SAFETY: rows first(q)..first(q) + W <= len at reduction index p < kc,
                        // contiguous (along 1): inside the view. A copy of a constant length,
                        // which the compiler inlines.
                        to.copy_from_slice(unsafe { &*from.cast::<[f32; W]>() });
                    } else {
                        for (r, to) in to[..rows].iter_mut().enumerate() {
                            // SAFETY: as above, for the rows first(q) + r < len.
                            *to = unsafe { *from.add(r) };
                        }
                    }
                }
            }
        } else {
            // The panel's rows read side by side, its values written in order.
            for (q, panel) in chunk.chunks_mut(W * kc).enumerate() {
                let rows = W.min(len - first(q));
                let row: [*const f32; W] =
                    std::array::from_fn(|r| src.wrapping_offset((first(q) + r) as isize * along));
                for (p, to) in panel.chunks_exact_mut(W).enumerate() {
                    for (to, row) in to[..rows].iter_mut().zip(&row) {
                        // SAFETY: a row first(q) + r < len, reduction index p < kc: inside the view.
                        *to = unsafe { *row.wrapping_offset(p as isize * down) };
                    }
                }
            }
        }
    };
    if threaded {
        buf.par_chunks_mut(GROUP * W * kc).enumerate().for_each(group);
    } else {
        buf.chunks_mut(GROUP * W * kc).enumerate().for_each(group);
    }
}

/// One block of the destination: rows `i0..i0 + MC`, columns `j0..j0 + NC` (within m, n).
#[derive(Clone, Copy)]
struct Tile {
    m: usize,
    n: usize,
    kc: usize,
    i0: usize,
    j0: usize,
    dst_cs: isize,
    dst_rs: isize,
    beta: f32,
    merge: Merge,
}

/// The micro-panels of one block: each 6-column panel of the right operand (in L1) against
/// each 16-row panel of the left one (in L2).
///
/// # Safety
///
/// AVX2 and FMA; `dst` valid for the tile's elements.
#[target_feature(enable = "avx2,fma")]
unsafe fn macro_tile(a: &[f32], b: Right<'_>, dst: *mut f32, t: Tile) {
    let kc = t.kc;
    for j in (t.j0..t.n.min(t.j0 + NC)).step_by(NR) {
        // The six columns of this panel and the step between their values: packed, the
        // panel's own (step NR); read in place, the operand's, where columns past n (an edge
        // panel) read column n - 1 again, their sums never written (step 1).
        let (columns, step): ([*const f32; NR], usize) = match b {
            Right::Packed(b) => {
                let panel = b[(j / NR) * NR * kc..][..NR * kc].as_ptr();
                (std::array::from_fn(|c| panel.wrapping_add(c)), NR)
            }
            Right::Direct(first, cs) => {
                (std::array::from_fn(|c| first.wrapping_offset((j + c).min(t.n - 1) as isize * cs)), 1)
            }
        };
        for i in (t.i0..t.m.min(t.i0 + MC)).step_by(MR) {
            let ap = &a[(i / MR) * MR * kc..][..MR * kc];
            // SAFETY: this function's own features; each column holds kc values `step` apart
            // (the packed panel's length was checked by slicing it).
            let acc = unsafe { micro(ap, columns, step, kc) };
            let (rows, cols) = (MR.min(t.m - i), NR.min(t.n - j));
            let corner = dst.wrapping_offset(i as isize * t.dst_rs + j as isize * t.dst_cs);
            let beta = _mm256_set1_ps(t.beta);
            if rows == MR && cols == NR && t.dst_rs == 1 {
                for (c, pair) in acc.chunks_exact(2).enumerate() {
                    let col = corner.wrapping_offset(c as isize * t.dst_cs);
                    for (half, &sum) in pair.iter().enumerate() {
                        let p = col.wrapping_add(8 * half);
                        // SAFETY: the 16 rows of column c of this full tile are inside the view,
                        // contiguous (row stride 1).
                        unsafe {
                            let v = match t.merge {
                                Merge::Set => _mm256_mul_ps(sum, beta),
                                // SAFETY: rows i + 8 · half.. + 8 <= m of the bias.
                                Merge::Bias(b) => _mm256_fmadd_ps(sum, beta, _mm256_loadu_ps(b.add(i + 8 * half))),
                                Merge::Add(s) => {
                                    _mm256_fmadd_ps(sum, beta, _mm256_mul_ps(_mm256_set1_ps(s), _mm256_loadu_ps(p)))
                                }
                            };
                            _mm256_storeu_ps(p, v);
                        }
                    }
                }
            } else {
                let mut sums = [0.0f32; MR * NR];
                for (c, &v) in acc.iter().enumerate() {
                    // SAFETY: 8 values into the 96 of `sums`, at c * 8 < 96.
                    unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(c * 8), v) };
                }
                for c in 0..cols {
                    for r in 0..rows {
                        let p = corner.wrapping_offset(r as isize * t.dst_rs + c as isize * t.dst_cs);
                        let sum = sums[c * MR + r];
                        // SAFETY: (i + r, j + c) is inside the view.
                        unsafe {
                            *p = match t.merge {
                                Merge::Set => sum * t.beta,
                                // SAFETY: row i + r < m of the bias.
                                Merge::Bias(b) => sum.mul_add(t.beta, *b.add(i + r)),
                                Merge::Add(s) => sum.mul_add(t.beta, s * *p),
                            }
                        };
                    }
                }
            }
        }
    }
}

/// The right operand of a block: packed, or read in place (its first element at the
/// block's reduction index, and its column stride; the reduction runs along its rows, stride 1).
#[derive(Clone, Copy)]
enum Right<'a> {
    Packed(&'a [f32]),
    Direct(*const f32, isize),
}

/// The 16 x 6 sums of a packed left micro-panel and six columns of the right operand (column
/// `c`'s value at reduction index `p` is at `b[c] + p * step`), column `c`'s rows 0..8 in
/// `[2c]` and 8..16 in `[2c + 1]`: one FMA chain per element over `p` in order, from zero.
///
/// # Safety
///
/// AVX2 and FMA; each column valid for `kc` reads `step` apart.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn micro(a: &[f32], b: [*const f32; NR], step: usize, kc: usize) -> [__m256; 2 * NR] {
    let mut acc = [_mm256_setzero_ps(); 2 * NR];
    let a = a[..MR * kc].as_ptr();
    for p in 0..kc {
        // SAFETY: the panel holds MR values at p * MR (its length checked by the slicing
        // above), and each column a value at p * step, p < kc.
        unsafe {
            let (a0, a1) = (_mm256_loadu_ps(a.add(p * MR)), _mm256_loadu_ps(a.add(p * MR + 8)));
            for c in 0..NR {
                let bc = _mm256_broadcast_ss(&*b[c].add(p * step));
                acc[2 * c] = _mm256_fmadd_ps(a0, bc, acc[2 * c]);
                acc[2 * c + 1] = _mm256_fmadd_ps(a1, bc, acc[2 * c + 1]);
            }
        }
    }
    acc
}
