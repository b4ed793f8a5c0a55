//! A product whose left operand's rows are shifted views of one array:
//!
//! `dst[j, q] = Σ_k src[offsets[k] + q] · w[j, k]`, for positions `q` in `0..len` and outputs
//! `j` in `0..n`.
//!
//! A convolution of stride 1 is one of these when it is computed on the grid of its
//! zero-padded input: output position `q` of the grid reads the padded input at `q` plus a
//! fixed offset per input channel and tap, so every row of the window matrix is the padded
//! input itself, shifted. The product reads those rows in place, a register tile of positions
//! at a time, and the window matrix is never built (the grid's positions that are not outputs,
//! those that fall past a line or a plane, are computed and dropped by the caller).
//!
//! The weights are packed once ([`ShiftedWeights`]) into panels of the register tile's width
//! and reused by every block of positions. Every element is the sum over `k` in order, in
//! blocks of at most [`KC`] (the blocks depend on `k` alone), each block's sum one chain of
//! multiply-adds from zero, added to the destination: the bits of an element depend neither on
//! which block of positions it falls in nor on how the caller splits the work among threads.

use crate::Isa;

/// The longest block of the reduction.
pub const KC: usize = 256;
/// The most positions one register tile covers at any level: callers leave this many values
/// of slack past the last position they ask for (see [`shifted_gemm`]).
pub const MAX_TILE: usize = 48;

/// The weights `[n, k]` (row-major) of a [`shifted_gemm`], packed for one instruction set:
/// for each block of the reduction, each panel of `nr` outputs as `[kc][nr]` (zero past `n`).
#[derive(Clone, Debug)]
pub struct ShiftedWeights {
    level: Isa,
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

/// Positions and outputs of the register tile at `level`.
fn tile_of(level: Isa) -> (usize, usize) {
    match level {
        Isa::Avx512 if cfg!(target_arch = "x86_64") => (48, 8),
        Isa::Avx2 if cfg!(target_arch = "x86_64") => (16, 6),
        _ => (8, 4),
    }
}

impl ShiftedWeights {
    /// Packs `w` (`[n, k]`, row-major) for the kernels of `level` (capped at what the CPU
    /// runs).
    pub fn new(level: Isa, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weights: expected {n} x {k} values, got {}", w.len());
        let level = level.min(Isa::detected());
        let (_, nr) = tile_of(level);
        let panels_n = n.div_ceil(nr);
        let mut panels = vec![0f32; panels_n * nr * k];
        let mut at = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..panels_n {
                for kk in 0..kc {
                    for r in 0..nr {
                        let j = p * nr + r;
                        if j < n {
                            panels[at] = w[j * k + k0 + kk];
                        }
                        at += 1;
                    }
                }
            }
        }
        Self { level, n, k, panels }
    }

    /// Outputs (rows of the destination).
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Length of the reduction.
    pub fn reduction(&self) -> usize {
        self.k
    }
}

/// `dst[j · ldd + q] = Σ_k src[offsets[k] + q] · w[j, k]` for `q < len`, `j < w.outputs()`,
/// on the calling thread. `src` must hold [`MAX_TILE`] values of slack past the last position
/// read (`max(offsets) + len - 1`): a register tile reads whole, and what it computes past
/// `len` is not written.
pub fn shifted_gemm(w: &ShiftedWeights, src: &[f32], offsets: &[usize], len: usize, dst: &mut [f32], ldd: usize) {
    let (n, k) = (w.n, w.k);
    assert_eq!(offsets.len(), k, "one offset per row of the reduction");
    if n == 0 || len == 0 {
        return;
    }
    assert!(ldd >= len && dst.len() >= (n - 1) * ldd + len, "destination smaller than {n} x {len} (row stride {ldd})");
    if k == 0 {
        for j in 0..n {
            dst[j * ldd..j * ldd + len].fill(0.0);
        }
        return;
    }
    let reach = offsets.iter().max().copied().unwrap_or(0) + len.next_multiple_of(MAX_TILE);
    assert!(src.len() >= reach, "source of {} values, the positions read reach {reach}", src.len());
    let (mr, nr) = tile_of(w.level);
    let mut packed = &w.panels[..];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let offs = &offsets[k0..k0 + kc];
        for p in 0..n.div_ceil(nr) {
            let (panel, rest) = packed.split_at(kc * nr);
            packed = rest;
            let cols = nr.min(n - p * nr);
            for q0 in (0..len).step_by(mr) {
                let tile = Tile { rows: mr.min(len - q0), cols, add: k0 > 0, ldd };
                let out = &mut dst[p * nr * ldd + q0..];
                // SAFETY: every position read, offs[i] + q0 + r for r < mr, is below `reach`
                // <= src.len() (q0 + mr <= len rounded up to MAX_TILE); the panel holds kc x nr
                // values; the tile writes rows < cols and positions < rows of `out`, inside
                // dst by the assertion above; the level is one this CPU runs.
                unsafe { run_tile(w.level, &src[q0..], offs, panel, out, tile) };
            }
        }
    }
}

/// Positions per block of [`shifted_dot`]'s reduction (at least one run): a block's rows of
/// `g` and of the source stay in cache while every tile of outputs runs over them.
pub const DOT_BLOCK: usize = 1024;

/// Values of slack [`shifted_dot`] needs past the last position of the source it reads.
pub const DOT_SLACK: usize = 16;

/// A run of positions of [`shifted_dot`]: where it starts in each output's row of `g`, and
/// past each row's offset in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Start in each row of `g`.
    pub at_g: usize,
    /// Start past each offset of the source.
    pub at_src: usize,
}

/// `dst[j · ldd + r - rows.start] (+)= Σ_runs Σ_{i < run_len} g[j · ldg + run.at_g + i] ·
/// src[offsets[r] + run.at_src + i]`, for `j < n` and the rows `r` in `rows` (of `offsets`),
/// on the calling thread: the transpose of [`shifted_gemm`], whose reduction runs along the
/// positions. A convolution's weight gradient is one, summed over its outputs a line at a
/// time: a line of outputs is a run of its output gradient and, at each tap, of the padded
/// input. `accumulate` adds to `dst` instead of setting it.
///
/// The runs are summed in blocks of whole runs, about [`DOT_BLOCK`] positions each, each
/// block one vector of partial sums per element, reduced across its lanes and added to the
/// element: the bits depend on the runs alone, not on how the caller splits the rows among
/// threads. `src` must hold [`DOT_SLACK`] values of slack past the last position read (a
/// run's last vector reads whole; the positions past the run meet zeros of `g`).
#[allow(clippy::too_many_arguments)]
pub fn shifted_dot(
    level: Isa,
    (g, ldg): (&[f32], usize),
    n: usize,
    src: &[f32],
    offsets: &[usize],
    (runs, run_len): (&[Run], usize),
    rows: std::ops::Range<usize>,
    (dst, ldd): (&mut [f32], usize),
    accumulate: bool,
) {
    assert!(rows.end <= offsets.len(), "rows {rows:?} past the {} offsets", offsets.len());
    if n == 0 || rows.is_empty() {
        return;
    }
    let width = rows.len();
    assert!(
        ldd >= width && dst.len() >= (n - 1) * ldd + width,
        "destination smaller than {n} x {width} (row stride {ldd})"
    );
    let g_end = runs.iter().map(|r| r.at_g + run_len).max().unwrap_or(0);
    assert!(g_end <= ldg && g.len() >= (n - 1) * ldg + g_end, "gradient rows of {ldg} values, runs reach {g_end}");
    let reach = rows.clone().map(|r| offsets[r]).max().unwrap_or(0)
        + runs.iter().map(|r| r.at_src + run_len).max().unwrap_or(0)
        + DOT_SLACK;
    assert!(src.len() >= reach, "source of {} values, the positions read reach {reach}", src.len());
    let level = level.min(Isa::detected());
    let (nj, nk) = dot_tile_of(level);
    let per_block = (DOT_BLOCK / run_len.max(1)).max(1);
    for (b, block) in runs.chunks(per_block).enumerate() {
        let add = accumulate || b > 0;
        for r0 in rows.clone().step_by(nk) {
            let rn = nk.min(rows.end - r0);
            // Rows past the range read the last one again; their sums are not written.
            let offs: [usize; 8] = std::array::from_fn(|i| offsets[r0 + i.min(rn - 1)]);
            for j0 in (0..n).step_by(nj) {
                let jn = nj.min(n - j0);
                let gs: [usize; 8] = std::array::from_fn(|i| (j0 + i.min(jn - 1)) * ldg);
                let mut sums = [0f32; 64];
                // SAFETY: every source value read, offs[i] + run.at_src + q for q < run_len, is
                // below `reach` <= src.len(), and every g value, gs[i] + run.at_g + q, below
                // (n - 1) · ldg + g_end <= g.len(); the level runs on this CPU.
                unsafe { run_dot(level, g, &gs[..nj], src, &offs[..nk], (block, run_len), &mut sums) };
                for jj in 0..jn {
                    for rr in 0..rn {
                        let d = &mut dst[(j0 + jj) * ldd + r0 - rows.start + rr];
                        let v = sums[jj * nk + rr];
                        *d = if add { *d + v } else { v };
                    }
                }
            }
        }
    }
    if runs.is_empty() && !accumulate {
        for j in 0..n {
            dst[j * ldd..j * ldd + width].fill(0.0);
        }
    }
}

/// Outputs and rows of [`shifted_dot`]'s register tile at `level`.
fn dot_tile_of(level: Isa) -> (usize, usize) {
    match level {
        Isa::Avx512 if cfg!(target_arch = "x86_64") => (4, 6),
        Isa::Avx2 if cfg!(target_arch = "x86_64") => (3, 4),
        _ => (2, 2),
    }
}

/// # Safety
///
/// `g[gs[i] + run.at_g + q]` and `src[offs[i] + run.at_src + q]` in bounds for `q < run_len`;
/// `level` runs on this CPU.
unsafe fn run_dot(
    level: Isa,
    g: &[f32],
    gs: &[usize],
    src: &[f32],
    offs: &[usize],
    runs: (&[Run], usize),
    sums: &mut [f32; 64],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if level == Isa::Avx512 {
            // SAFETY: the caller's bounds; AVX-512F is present.
            return unsafe { x86::dot_avx512(g.as_ptr(), gs, src.as_ptr(), offs, runs, sums) };
        }
        if level == Isa::Avx2 {
            // SAFETY: as above, with AVX2 and FMA.
            return unsafe { x86::dot_avx2(g.as_ptr(), gs, src.as_ptr(), offs, runs, sums) };
        }
    }
    let _ = level;
    portable_dot(g, gs, src, offs, runs, sums);
}

/// The dot tile on any CPU: 2 outputs by 2 rows, 8 lanes of partial sums each (a run's last
/// positions in lanes of their own).
fn portable_dot(
    g: &[f32],
    gs: &[usize],
    src: &[f32],
    offs: &[usize],
    (runs, len): (&[Run], usize),
    sums: &mut [f32; 64],
) {
    const L: usize = 8;
    let (nj, nk) = (gs.len(), offs.len());
    let mut acc = [[[0f32; L]; 2]; 2];
    for run in runs {
        for q in (0..len).step_by(L) {
            let m = L.min(len - q);
            for (j, acc) in acc.iter_mut().enumerate().take(nj) {
                let gv = &g[gs[j] + run.at_g + q..][..m];
                for (r, acc) in acc.iter_mut().enumerate().take(nk) {
                    let sv = &src[offs[r] + run.at_src + q..][..m];
                    for ((a, &x), &y) in acc.iter_mut().zip(gv).zip(sv) {
                        *a += x * y;
                    }
                }
            }
        }
    }
    for j in 0..nj {
        for r in 0..nk {
            sums[j * nk + r] = acc[j][r].iter().sum::<f32>();
        }
    }
}

/// What one register tile writes: the first `rows` positions of its first `cols` outputs
/// (row stride `ldd`), set (the reduction's first block) or added to.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    add: bool,
    ldd: usize,
}

/// # Safety
///
/// As [`shifted_gemm`] checks: `src` valid for `offs[i] + tile width` reads, `panel` for
/// `offs.len() · nr`, `dst` for the tile's writes; `level` runs on this CPU.
unsafe fn run_tile(level: Isa, src: &[f32], offs: &[usize], panel: &[f32], dst: &mut [f32], t: Tile) {
    #[cfg(target_arch = "x86_64")]
    {
        if level == Isa::Avx512 {
            // SAFETY: the caller's guarantees; AVX-512F is present (the level runs).
            return unsafe { x86::tile_avx512(src.as_ptr(), offs, panel.as_ptr(), dst.as_mut_ptr(), t) };
        }
        if level == Isa::Avx2 {
            // SAFETY: as above, with AVX2 and FMA.
            return unsafe { x86::tile_avx2(src.as_ptr(), offs, panel.as_ptr(), dst.as_mut_ptr(), t) };
        }
    }
    let _ = level;
    portable_tile(src, offs, panel, dst, t);
}

/// Writes `sums` (output `c`'s `MR` positions at `c · MR`) into the tile's destination.
#[inline(always)]
fn merge<const MR: usize>(sums: &[f32], dst: &mut [f32], t: Tile) {
    for c in 0..t.cols {
        let to = &mut dst[c * t.ldd..c * t.ldd + t.rows];
        let from = &sums[c * MR..c * MR + t.rows];
        if t.add {
            to.iter_mut().zip(from).for_each(|(d, s)| *d += s);
        } else {
            to.copy_from_slice(from);
        }
    }
}

/// The tile on any CPU: 8 positions by 4 outputs, a multiply and an add per step.
fn portable_tile(src: &[f32], offs: &[usize], panel: &[f32], dst: &mut [f32], t: Tile) {
    const MR: usize = 8;
    const NR: usize = 4;
    let mut acc = [[0f32; MR]; NR];
    for (&o, b) in offs.iter().zip(panel.chunks_exact(NR)) {
        let a: &[f32; MR] = src[o..o + MR].try_into().expect("eight values");
        for (acc, &b) in acc.iter_mut().zip(b) {
            for (s, &a) in acc.iter_mut().zip(a) {
                *s += a * b;
            }
        }
    }
    merge::<MR>(acc.as_flattened(), dst, t);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{merge, Run, Tile};

    /// 48 positions by 8 outputs: 24 accumulators of 16 (8 outputs divide the channel counts
    /// of convolutions, 64 and its multiples, with no panel part-empty).
    ///
    /// # Safety
    ///
    /// AVX-512F; `src + offs[i]` valid for 48 reads, `panel` for `offs.len() · 8`, `dst` for
    /// the tile's writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(src: *const f32, offs: &[usize], panel: *const f32, dst: *mut f32, t: Tile) {
        const MR: usize = 48;
        const NR: usize = 8;
        let mut acc = [_mm512_setzero_ps(); 3 * NR];
        for (i, &o) in offs.iter().enumerate() {
            // SAFETY: the caller's bounds: 48 values at src + o, 8 at panel + 8 i.
            unsafe {
                let a = src.add(o);
                let (a0, a1, a2) = (_mm512_loadu_ps(a), _mm512_loadu_ps(a.add(16)), _mm512_loadu_ps(a.add(32)));
                let b = panel.add(i * NR);
                for c in 0..NR {
                    let bc = _mm512_set1_ps(*b.add(c));
                    acc[3 * c] = _mm512_fmadd_ps(a0, bc, acc[3 * c]);
                    acc[3 * c + 1] = _mm512_fmadd_ps(a1, bc, acc[3 * c + 1]);
                    acc[3 * c + 2] = _mm512_fmadd_ps(a2, bc, acc[3 * c + 2]);
                }
            }
        }
        let mut sums = [0f32; MR * NR];
        for (c, &v) in acc.iter().enumerate() {
            // SAFETY: 16 values at c · 16 < 384.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(c * 16), v) };
        }
        // SAFETY: the caller's bounds for the tile's writes.
        merge::<MR>(&sums, unsafe { std::slice::from_raw_parts_mut(dst, (t.cols - 1) * t.ldd + t.rows) }, t);
    }

    /// [`super::shifted_dot`]'s tile: 4 outputs by 6 rows, 16 lanes each; a run's last
    /// positions through masked loads (zeros past its end).
    ///
    /// # Safety
    ///
    /// AVX-512F; `g + gs[i] + run.at_g` and `src + offs[i] + run.at_src` valid for `len` reads.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(
        g: *const f32,
        gs: &[usize],
        src: *const f32,
        offs: &[usize],
        (runs, len): (&[Run], usize),
        sums: &mut [f32; 64],
    ) {
        const NJ: usize = 4;
        const NK: usize = 6;
        let mut acc = [_mm512_setzero_ps(); NJ * NK];
        for run in runs {
            let (ga, sa) = (g.wrapping_add(run.at_g), src.wrapping_add(run.at_src));
            for q in (0..len).step_by(16) {
                let mask = if q + 16 <= len { 0xffff } else { ((1u32 << (len - q)) - 1) as __mmask16 };
                // SAFETY: the lanes the mask keeps, q..min(q + 16, len), are inside every row.
                unsafe {
                    let gv: [__m512; NJ] = std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, ga.add(gs[j] + q)));
                    for r in 0..NK {
                        let sv = _mm512_maskz_loadu_ps(mask, sa.add(offs[r] + q));
                        for j in 0..NJ {
                            acc[j * NK + r] = _mm512_fmadd_ps(gv[j], sv, acc[j * NK + r]);
                        }
                    }
                }
            }
        }
        for (s, &v) in sums.iter_mut().zip(&acc) {
            *s = _mm512_reduce_add_ps(v);
        }
    }

    /// [`super::shifted_dot`]'s tile: 3 outputs by 4 rows, 8 lanes each; a run's last
    /// positions through masked loads (zeros past its end).
    ///
    /// # Safety
    ///
    /// AVX2 and FMA; `g + gs[i] + run.at_g` valid for `len` reads, `src + offs[i] + run.at_src`
    /// for `len` rounded up to 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(
        g: *const f32,
        gs: &[usize],
        src: *const f32,
        offs: &[usize],
        (runs, len): (&[Run], usize),
        sums: &mut [f32; 64],
    ) {
        const NJ: usize = 3;
        const NK: usize = 4;
        let mut acc = [_mm256_setzero_ps(); NJ * NK];
        let full = len / 8 * 8;
        let lanes: [i32; 8] = std::array::from_fn(|i| if full + i < len { -1 } else { 0 });
        // SAFETY: eight values.
        let tail = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
        // One step of 8 positions at q, each row of g read by `$load`: a plain load, or for a
        // run's last positions a masked one (zeros past the run), whose products are then zero
        // whatever the source holds there (its slack). vmaskmovps is slower than a load on AMD's
        // cores, so only g's tail takes it.
        macro_rules! step {
            ($ga:expr, $sa:expr, $q:expr, $load:expr) => {{
                let gv: [__m256; NJ] = std::array::from_fn(|j| $load($ga.add(gs[j] + $q)));
                for r in 0..NK {
                    let sv = _mm256_loadu_ps($sa.add(offs[r] + $q));
                    for j in 0..NJ {
                        acc[j * NK + r] = _mm256_fmadd_ps(gv[j], sv, acc[j * NK + r]);
                    }
                }
            }};
        }
        for run in runs {
            let (ga, sa) = (g.wrapping_add(run.at_g), src.wrapping_add(run.at_src));
            for q in (0..full).step_by(8) {
                // SAFETY: q + 8 <= len: inside every row.
                unsafe { step!(ga, sa, q, |p| _mm256_loadu_ps(p)) };
            }
            if full < len {
                // SAFETY: the mask keeps g's lanes full..len, inside its rows; the source's rows
                // are read 8 values from `full`, inside their slack (the caller's bound).
                unsafe { step!(ga, sa, full, |p| _mm256_maskload_ps(p, tail)) };
            }
        }
        for (s, &v) in sums.iter_mut().zip(&acc) {
            let mut lanes = [0f32; 8];
            // SAFETY: 8 values into `lanes`.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
            *s = lanes.iter().sum::<f32>();
        }
    }

    /// 16 positions by 6 outputs: 12 accumulators of 8.
    ///
    /// # Safety
    ///
    /// AVX2 and FMA; `src + offs[i]` valid for 16 reads, `panel` for `offs.len() · 6`, `dst`
    /// for the tile's writes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(src: *const f32, offs: &[usize], panel: *const f32, dst: *mut f32, t: Tile) {
        const MR: usize = 16;
        const NR: usize = 6;
        let mut acc = [_mm256_setzero_ps(); 2 * NR];
        for (i, &o) in offs.iter().enumerate() {
            // SAFETY: the caller's bounds: 16 values at src + o, 6 at panel + 6 i.
            unsafe {
                let a = src.add(o);
                let (a0, a1) = (_mm256_loadu_ps(a), _mm256_loadu_ps(a.add(8)));
                let b = panel.add(i * NR);
                for c in 0..NR {
                    let bc = _mm256_broadcast_ss(&*b.add(c));
                    acc[2 * c] = _mm256_fmadd_ps(a0, bc, acc[2 * c]);
                    acc[2 * c + 1] = _mm256_fmadd_ps(a1, bc, acc[2 * c + 1]);
                }
            }
        }
        let mut sums = [0f32; MR * NR];
        for (c, &v) in acc.iter().enumerate() {
            // SAFETY: 8 values at c · 8 < 96.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(c * 8), v) };
        }
        // SAFETY: the caller's bounds for the tile's writes.
        merge::<MR>(&sums, unsafe { std::slice::from_raw_parts_mut(dst, (t.cols - 1) * t.ldd + t.rows) }, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product against a plain triple loop in float64, at every level this CPU runs, with
    /// edges on both sides (positions and outputs not multiples of the tile) and a reduction
    /// longer than one block; and the same bits whichever blocks of positions it is split into.
    #[test]
    fn matches_the_definition_at_every_level() {
        let (n, k, len) = (27, 600, 77);
        let mut state = 1u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let src: Vec<f32> = (0..4000).map(|_| next()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let offsets: Vec<usize> = (0..k).map(|i| (i * 37) % 3800 + (i % 3)).collect();
        let ldd = 80;
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            let packed = ShiftedWeights::new(level, &w, n, k);
            let mut dst = vec![f32::NAN; n * ldd];
            shifted_gemm(&packed, &src, &offsets, len, &mut dst, ldd);
            for j in 0..n {
                for q in 0..len {
                    let want: f64 = (0..k).map(|i| src[offsets[i] + q] as f64 * w[j * k + i] as f64).sum();
                    let got = dst[j * ldd + q] as f64;
                    assert!((got - want).abs() < 1e-4, "{level}: ({j}, {q}) {got} against {want}");
                }
                assert!(dst[j * ldd + len..(j + 1) * ldd].iter().all(|v| v.is_nan()), "{level}: wrote past len");
            }
            // Split into blocks of positions, each from its own place in src: the same bits.
            let mut split = vec![f32::NAN; n * ldd];
            for (q0, q1) in [(0, 5), (5, 40), (40, len)] {
                shifted_gemm(&packed, &src[q0..], &offsets, q1 - q0, &mut split[q0..], ldd);
            }
            for j in 0..n {
                assert_eq!(&dst[j * ldd..j * ldd + len], &split[j * ldd..j * ldd + len], "{level}: split changed bits");
            }
        }
    }

    /// The dot product against float64 sums at every level, with row and output edges, runs
    /// that end inside a vector, several blocks of runs, and the same bits whatever rows a
    /// call takes.
    #[test]
    fn dot_matches_the_definition_at_every_level() {
        let (n, k, run_len, ldg) = (7, 29, 45, 3000);
        let mut state = 5u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let src: Vec<f32> = (0..4000).map(|_| next()).collect();
        let g: Vec<f32> = (0..n * ldg).map(|_| next()).collect();
        let offsets: Vec<usize> = (0..k).map(|i| (i * 53) % 500).collect();
        let runs: Vec<Run> = (0..60).map(|i| Run { at_g: i * 49, at_src: i * 52 + i % 3 }).collect();
        assert!(runs.len() * run_len > 2 * DOT_BLOCK);
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            let mut dst = vec![1f32; n * k];
            shifted_dot(level, (&g, ldg), n, &src, &offsets, (&runs, run_len), 0..k, (&mut dst, k), true);
            for j in 0..n {
                for r in 0..k {
                    let want: f64 = 1.0
                        + runs
                            .iter()
                            .flat_map(|run| (0..run_len).map(move |q| (run, q)))
                            .map(|(run, q)| g[j * ldg + run.at_g + q] as f64 * src[offsets[r] + run.at_src + q] as f64)
                            .sum::<f64>();
                    let got = dst[j * k + r] as f64;
                    assert!((got - want).abs() < 1e-3, "{level}: ({j}, {r}) {got} against {want}");
                }
            }
            let mut split = vec![1f32; n * k];
            for rows in [0..5, 5..6, 6..k] {
                let at = rows.start;
                shifted_dot(level, (&g, ldg), n, &src, &offsets, (&runs, run_len), rows, (&mut split[at..], k), true);
            }
            assert_eq!(dst, split, "{level}: splitting the rows changed bits");
        }
    }

    #[test]
    #[should_panic(expected = "positions read reach")]
    fn refuses_a_source_without_slack() {
        let packed = ShiftedWeights::new(Isa::Scalar, &[1.0; 4], 2, 2);
        let mut dst = vec![0f32; 20];
        shifted_gemm(&packed, &[0.0; 12], &[0, 2], 10, &mut dst, 10);
    }
}
