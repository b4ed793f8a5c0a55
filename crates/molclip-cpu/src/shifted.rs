//! A product whose left operand's rows are shifted views of one array:
//!
//! `dst[q, j] = Σ_k src[bases[q] + offsets[k]] · w[j, k]`, for the positions `q` (each named by
//! where it starts in `src`) and the outputs `j` in `0..n`.
//!
//! A convolution of stride 1 is one of these when it is computed on the grid of its
//! zero-padded input: output position `q` of the grid reads the padded input at its own place
//! plus a fixed offset per input channel and tap, so every row of the window matrix is the
//! padded input itself, shifted. The product reads those values in place, a register tile of
//! positions at a time, and the window matrix is never built. The positions are any the caller
//! names, the outputs alone (none past a line or a plane is computed): the tile broadcasts
//! each position's value and multiplies it by a vector of outputs' weights.
//!
//! The weights are packed once ([`ShiftedWeights`]) into panels of the register tile's outputs
//! and reused by every block of positions. Every element is the sum over `k` in order, in
//! blocks of at most [`KC`] (the blocks depend on `k` alone), each block's sum one chain of
//! multiply-adds from zero, added to the destination: the bits of an element depend neither on
//! which block of positions it falls in nor on how the caller splits the work among threads.
//! Weights packed without some rows of the reduction ([`ShiftedWeights::keeping`]: the taps
//! that read a convolution's padding) keep the full reduction's blocks, less those rows.

use crate::{CacheAligned, Isa};

/// The longest block of the reduction.
pub const KC: usize = 256;
/// The most positions one register tile covers at any level, a multiple of every level's: a
/// block of a multiple of it splits into whole tiles.
pub const MAX_TILE: usize = 20;

/// The weights `[n, k]` (row-major) of a [`shifted_gemm`], packed for one instruction set:
/// for each block of the reduction, each panel of `nr` outputs as `[kc][nr]` (zero past `n`).
#[derive(Clone, Debug)]
pub struct ShiftedWeights {
    level: Isa,
    n: usize,
    k: usize,
    /// The rows of the reduction kept in each block of [`KC`] of the full one, in order (all
    /// of them, or those [`ShiftedWeights::keeping`] kept; a block may keep none).
    blocks: Vec<usize>,
    panels: CacheAligned,
}

/// Positions and outputs of the register tile at `level`.
fn tile_of(level: Isa) -> (usize, usize) {
    match level {
        Isa::Avx512 if cfg!(target_arch = "x86_64") => (10, 32),
        Isa::Avx2 if cfg!(target_arch = "x86_64") => (5, 16),
        _ => (4, 8),
    }
}

impl ShiftedWeights {
    /// Packs `w` (`[n, k]`, row-major) for the kernels of `level` (capped at what the CPU
    /// runs). The panels of each block of the reduction are packed in parallel, eight rows
    /// of `w` at a time as columns ([`transpose_rows_into`]): the deep layers' weights are
    /// megabytes (512 x 13,824 values), and packed value by value on one thread they took
    /// 19 ms, as long as half the product they serve.
    pub fn new(level: Isa, w: &[f32], n: usize, k: usize) -> Self {
        Self::keeping(level, w, n, k, |_| true)
    }

    /// Packs the rows `i` of the reduction for which `keep(i)` holds, in order, each block of
    /// [`KC`] of the full reduction a block of its own (of the rows it keeps): a product whose
    /// left operand is zero at the other rows (a convolution's taps that read its padding)
    /// skips them, and each output's block sums are those of the full product, less terms
    /// that are exactly zero: the same bits, except where a weight is infinite or NaN (a
    /// zero times it is NaN) and for the sign of an output that is exactly zero.
    /// [`ShiftedWeights::reduction`] is then the rows kept, and a [`shifted_gemm`] takes their
    /// offsets alone.
    pub fn keeping(level: Isa, w: &[f32], n: usize, k: usize, keep: impl Fn(usize) -> bool) -> Self {
        use rayon::prelude::*;
        assert_eq!(w.len(), n * k, "weights: expected {n} x {k} values, got {}", w.len());
        let level = level.min(Isa::detected());
        let (_, nr) = tile_of(level);
        let panels_n = n.div_ceil(nr);
        let kept: Vec<Vec<usize>> =
            (0..k).step_by(KC).map(|k0| (k0..k.min(k0 + KC)).filter(|&i| keep(i)).collect()).collect();
        let blocks: Vec<usize> = kept.iter().map(Vec::len).collect();
        let total: usize = blocks.iter().sum();
        let mut panels = CacheAligned::zeros(panels_n * nr * total);
        // Each block of the reduction, then each of its panels: `[kc][nr]` values, the panel's
        // outputs in order at each kept row (zero past `n`, as allocated).
        let mut chunks = Vec::with_capacity(kept.len() * panels_n);
        let mut rest = &mut panels[..];
        for rows in &kept {
            for p in 0..panels_n {
                let (panel, tail) = rest.split_at_mut(rows.len() * nr);
                chunks.push((&rows[..], p, panel));
                rest = tail;
            }
        }
        chunks.into_par_iter().filter(|(rows, ..)| !rows.is_empty()).for_each(|(rows, p, panel)| {
            let kc = rows.len();
            let outputs = nr.min(n - p * nr);
            // Output r's kept weights, in order: a run of w's row where the rows kept are (the
            // whole block, as `new` keeps), gathered otherwise.
            let whole = rows[kc - 1] - rows[0] + 1 == kc;
            let mut gathered = vec![0f32; if whole { 0 } else { kc * 8 }];
            for r0 in (0..outputs / 8 * 8).step_by(8) {
                let eight: [&[f32]; 8] = if whole {
                    std::array::from_fn(|i| &w[(p * nr + r0 + i) * k + rows[0]..][..kc])
                } else {
                    for (i, to) in gathered.chunks_exact_mut(kc).enumerate() {
                        let row = &w[(p * nr + r0 + i) * k..][..k];
                        to.iter_mut().zip(rows).for_each(|(t, &j)| *t = row[j]);
                    }
                    std::array::from_fn(|i| &gathered[i * kc..][..kc])
                };
                assert!(panel.len() >= (kc - 1) * nr + r0 + 8, "a panel of {} values", panel.len());
                // SAFETY: the 8 values at kk · nr + r0 past the panel's start for kk < kc lie
                // inside it (checked above), borrowed mutably here; the level runs on this CPU
                // (capped at detection).
                unsafe { transpose_rows_into(level, eight, panel[r0..].as_mut_ptr(), nr) };
            }
            for r in outputs / 8 * 8..outputs {
                let row = &w[(p * nr + r) * k..][..k];
                for (to, &j) in panel[r..].iter_mut().step_by(nr).zip(rows) {
                    *to = row[j];
                }
            }
        });
        Self { level, n, k: total, blocks, panels }
    }

    /// These weights less the rows `i` of the reduction for which `keep(i)` fails: the
    /// packing [`ShiftedWeights::keeping`] gives (the same values in the same places), copied
    /// out of this one a panel's row of outputs at a time rather than gathered and transposed
    /// again from the weights. A convolution packs its weights once and drops the taps that
    /// read the padding for each class of outputs from that: `layer3`'s 256 x 6,912 weights
    /// took 1.5 ms to pack, and its 3 x 3 x 3 convolution packed them three times a pass.
    /// Panics unless these weights keep every row.
    pub fn dropping(&self, keep: impl Fn(usize) -> bool) -> Self {
        use rayon::prelude::*;
        let (_, nr) = tile_of(self.level);
        let panels_n = self.n.div_ceil(nr);
        assert!(
            self.blocks.iter().enumerate().all(|(b, &kc)| kc == KC.min(self.k - b * KC)),
            "dropping rows from weights that already dropped some"
        );
        let kept: Vec<Vec<usize>> =
            (0..self.k).step_by(KC).map(|k0| (0..KC.min(self.k - k0)).filter(|&i| keep(k0 + i)).collect()).collect();
        let blocks: Vec<usize> = kept.iter().map(Vec::len).collect();
        let total: usize = blocks.iter().sum();
        let mut panels = CacheAligned::zeros(panels_n * nr * total);
        // Each block's panels, `[kc][nr]` here and `[kept][nr]` there, paired in order.
        let mut chunks = Vec::with_capacity(kept.len() * panels_n);
        let (mut from, mut rest) = (&self.panels[..], &mut panels[..]);
        for (rows, &kc) in kept.iter().zip(&self.blocks) {
            for _ in 0..panels_n {
                let (panel, tail) = rest.split_at_mut(rows.len() * nr);
                chunks.push((&rows[..], &from[..kc * nr], panel));
                (from, rest) = (&from[kc * nr..], tail);
            }
        }
        chunks.into_par_iter().for_each(|(rows, from, panel)| {
            for (to, &i) in panel.chunks_exact_mut(nr).zip(rows) {
                to.copy_from_slice(&from[i * nr..(i + 1) * nr]);
            }
        });
        Self { level: self.level, n: self.n, k: total, blocks, panels }
    }

    /// Outputs (rows of the destination).
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Length of the reduction.
    pub fn reduction(&self) -> usize {
        self.k
    }

    /// Outputs per panel: a [`shifted_gemm`] takes a range of outputs that starts at a
    /// multiple of it.
    pub fn panel_width(&self) -> usize {
        tile_of(self.level).1
    }
}

/// `dst[q · ldd + j - j0] = Σ_k src[bases[q] + offsets[k]] · w[j, k]` for the positions `q <
/// bases.len()` and the outputs `j` in `j0..j1` (`j0` a multiple of
/// [`ShiftedWeights::panel_width`]), on the calling thread: a row of outputs per position (the
/// transpose of a convolution's `[O, positions]`). `src` is read at those sums' values only.
pub fn shifted_gemm(
    w: &ShiftedWeights,
    src: &[f32],
    (offsets, bases): (&[usize], &[usize]),
    outputs: std::ops::Range<usize>,
    (dst, ldd): (&mut [f32], usize),
) {
    let (k, len) = (w.k, bases.len());
    let (mr, nr) = tile_of(w.level);
    assert!(
        outputs.start.is_multiple_of(nr) && outputs.start <= outputs.end && outputs.end <= w.n,
        "outputs {outputs:?} of {}: a range from a multiple of {nr}",
        w.n
    );
    let n = outputs.len();
    assert_eq!(offsets.len(), k, "one offset per row of the reduction");
    if n == 0 || len == 0 {
        return;
    }
    assert!(ldd >= n && dst.len() >= (len - 1) * ldd + n, "destination smaller than {len} x {n} (row stride {ldd})");
    if k == 0 {
        for q in 0..len {
            dst[q * ldd..q * ldd + n].fill(0.0);
        }
        return;
    }
    let reach = offsets.iter().max().copied().unwrap_or(0) + bases.iter().max().copied().unwrap_or(0) + 1;
    assert!(src.len() >= reach, "source of {} values, the positions read reach {reach}", src.len());
    let panels = w.n.div_ceil(nr);
    let mut packed = &w.panels[..];
    let mut k0 = 0;
    for &kc in w.blocks.iter().filter(|&&kc| kc > 0) {
        let offs = &offsets[k0..k0 + kc];
        let (block, rest) = packed.split_at(panels * kc * nr);
        packed = rest;
        // The first block kept sets the destination, the others add to it.
        let add = k0 > 0;
        k0 += kc;
        for p in 0..n.div_ceil(nr) {
            let panel = &block[(outputs.start / nr + p) * kc * nr..][..kc * nr];
            let cols = nr.min(n - p * nr);
            for q0 in (0..len).step_by(mr) {
                let rows = mr.min(len - q0);
                // Positions past the last read the last one again; their sums are not written.
                let at: [usize; MAX_TILE] = std::array::from_fn(|i| bases[q0 + i.min(rows - 1)]);
                let tile = Tile { rows, cols, add, ldd };
                let out = &mut dst[q0 * ldd + p * nr..];
                // SAFETY: every value read, src[at[i] + offs[j]], is below `reach` <= src.len();
                // the panel holds kc x nr values; the tile writes positions < rows and outputs <
                // cols of `out`, inside dst by the assertion above; the level is one this CPU
                // runs.
                unsafe { run_tile(w.level, src, offs, &at[..mr], panel, out, tile) };
            }
        }
    }
}

/// Positions per block of [`shifted_dot`]'s reduction (at least one run): a block's rows of
/// `g` and of the source stay in cache while every tile of outputs runs over them.
pub const DOT_BLOCK: usize = 1024;

/// A run of positions of [`shifted_dot`]: where it starts in each output's row of `g`, and
/// past each row's offset in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Start in each row of `g`.
    pub at_g: usize,
    /// Start past each offset of the source.
    pub at_src: usize,
}

/// The output gradient `g` of [`shifted_dot`] (`n` rows, read at the `runs` of `run_len`
/// positions), packed for its kernels once, whatever rows the calls then take: the runs in
/// blocks of about [`DOT_BLOCK`] positions, and each block's `g` transposed into panels of the
/// register tile's outputs (for each position, the panel's outputs, zeros past `n`). One
/// buffer serves gradient after gradient of the same shape ([`DotPanels::pack`]).
#[derive(Clone, Debug)]
pub struct DotPanels {
    level: Isa,
    n: usize,
    runs: Vec<Run>,
    run_len: usize,
    packed: CacheAligned,
}

impl DotPanels {
    /// The buffer for `n` outputs over `runs`, for the kernels of `level` (capped at what the
    /// CPU runs); [`DotPanels::pack`] fills it.
    pub fn new(level: Isa, n: usize, (runs, run_len): (&[Run], usize)) -> Self {
        let level = level.min(Isa::detected());
        let (nj, _) = dot_tile_of(level);
        let packed = CacheAligned::zeros(n.div_ceil(nj) * runs.len() * run_len * nj);
        Self { level, n, runs: runs.to_vec(), run_len, packed }
    }

    /// Packs `g` (rows of `ldg` values), its blocks in parallel.
    pub fn pack(&mut self, (g, ldg): (&[f32], usize)) -> &Self {
        use rayon::prelude::*;
        let (n, run_len) = (self.n, self.run_len);
        let g_end = self.runs.iter().map(|r| r.at_g + run_len).max().unwrap_or(0);
        assert!(
            n == 0 || (g_end <= ldg && g.len() >= (n - 1) * ldg + g_end),
            "gradient rows of {ldg} values, runs reach {g_end}"
        );
        let (nj, _) = dot_tile_of(self.level);
        let per_block = Self::runs_per_block(run_len);
        let block_values = (n.div_ceil(nj) * per_block * run_len * nj).max(1);
        let level = self.level;
        self.packed.par_chunks_mut(block_values).zip(self.runs.par_chunks(per_block)).for_each(|(to, block)| {
            let positions = block.len() * run_len;
            // A run at a time, so that the values it writes (run_len x nj) stay in cache; the
            // n rows of g it reads are n streams, so the next run's are fetched ahead.
            for (i, run) in block.iter().enumerate() {
                if let Some(next) = block.get(i + 2) {
                    for j in 0..n {
                        crate::prefetch(&g[j * ldg + next.at_g..][..run_len]);
                    }
                }
                // Rows j0..j0 + 8 (of one panel: nj is a multiple of 8) by 8 positions at a
                // time, transposed in registers where the CPU has AVX2; the rest one value at a
                // time. Each value lands where the loop below would put it.
                let mut j0 = 0;
                #[cfg(target_arch = "x86_64")]
                if level >= Isa::Avx2 {
                    while j0 + 8 <= n {
                        let (panel, jj) = (j0 / nj, j0 % nj);
                        let to = &mut to[(panel * positions + i * run_len) * nj..][..run_len * nj];
                        let rows: [&[f32]; 8] = std::array::from_fn(|r| &g[(j0 + r) * ldg + run.at_g..][..run_len]);
                        let to = &mut to[jj..];
                        assert!(run_len == 0 || to.len() >= (run_len - 1) * nj + 8, "a panel of {} values", to.len());
                        // SAFETY: the level runs on this CPU (capped at detection); the 8 values
                        // at q · nj past `to` for q < run_len lie inside it (checked above),
                        // borrowed mutably here.
                        unsafe { transpose_rows_into(level, rows, to.as_mut_ptr(), nj) };
                        j0 += 8;
                    }
                }
                for j in j0..n {
                    let (panel, jj) = (j / nj, j % nj);
                    let to = &mut to[(panel * positions + i * run_len) * nj..][..run_len * nj];
                    for (at, &v) in to.chunks_exact_mut(nj).zip(&g[j * ldg + run.at_g..][..run_len]) {
                        at[jj] = v;
                    }
                }
            }
        });
        self
    }

    /// Rows of the source per register tile of [`shifted_dot`]: a split of the rows among
    /// callers in multiples of it leaves no tile part-empty but the last.
    pub fn rows_per_tile(&self) -> usize {
        dot_tile_of(self.level).1
    }

    /// Whole runs per block: about [`DOT_BLOCK`] positions, at least one run.
    fn runs_per_block(run_len: usize) -> usize {
        (DOT_BLOCK / run_len.max(1)).max(1)
    }
}

/// `dst[j · ldd + r - rows.start] (+)= Σ_runs Σ_{i < run_len} g[j · ldg + run.at_g + i] ·
/// src[offsets[r] + run.at_src + i]`, for `j < n` and the rows `r` in `rows` (of `offsets`),
/// `g` and its runs packed in `panels`, on the calling thread: the transpose of
/// [`shifted_gemm`], whose reduction runs along the positions. A convolution's weight
/// gradient is one, summed over its outputs a line at a time: a line of outputs is a run of
/// its output gradient and, at each tap, of the padded input. `accumulate` adds to `dst`
/// instead of setting it.
///
/// Each block of runs (about [`DOT_BLOCK`] positions) is multiplied as outer products: a
/// position's panel of outputs by the source's values at each row, broadcast one at a time,
/// in a register tile of 32 outputs by 12 rows at AVX-512, 16 by 6 at AVX2, 8 by 4 elsewhere;
/// no masked loads at a run's end, no reduction across lanes. Each element's block sum is one
/// chain of multiply-adds over the block's positions in order, from zero, added to the
/// element: the bits depend on the runs alone, not on how the caller splits the rows among
/// threads. The source is read at the runs' positions only (no slack past them).
pub fn shifted_dot(
    panels: &DotPanels,
    src: &[f32],
    offsets: &[usize],
    rows: std::ops::Range<usize>,
    (dst, ldd): (&mut [f32], usize),
    accumulate: bool,
) {
    let (n, runs, run_len, level) = (panels.n, &panels.runs[..], panels.run_len, panels.level);
    assert!(rows.end <= offsets.len(), "rows {rows:?} past the {} offsets", offsets.len());
    if n == 0 || rows.is_empty() {
        return;
    }
    let width = rows.len();
    assert!(
        ldd >= width && dst.len() >= (n - 1) * ldd + width,
        "destination smaller than {n} x {width} (row stride {ldd})"
    );
    let reach = rows.clone().map(|r| offsets[r]).max().unwrap_or(0)
        + runs.iter().map(|r| r.at_src + run_len).max().unwrap_or(0);
    assert!(src.len() >= reach, "source of {} values, the positions read reach {reach}", src.len());
    let (nj, nk) = dot_tile_of(level);
    let panel_count = n.div_ceil(nj);
    let mut packed = &panels.packed[..];
    for (b, block) in runs.chunks(DotPanels::runs_per_block(run_len)).enumerate() {
        let add = accumulate || b > 0;
        let positions = block.len() * run_len;
        let (this, rest) = packed.split_at(panel_count * positions * nj);
        packed = rest;
        for (p, panel) in this.chunks_exact(positions * nj).enumerate() {
            let jn = nj.min(n - p * nj);
            for r0 in rows.clone().step_by(nk) {
                let rn = nk.min(rows.end - r0);
                // Rows past the range read the last one again; their sums are not written.
                let offs: [usize; MAX_DOT_ROWS] = std::array::from_fn(|i| offsets[r0 + i.min(rn - 1)]);
                let mut sums = [0f32; DOT_TILE];
                // SAFETY: every source value read, offs[i] + run.at_src + q for q < run_len, is
                // below `reach` <= src.len(); the panel holds positions x nj values; the level
                // runs on this CPU (DotPanels::new capped it).
                unsafe { run_dot(level, panel, src, &offs[..nk], (block, run_len), &mut sums) };
                for jj in 0..jn {
                    for rr in 0..rn {
                        let d = &mut dst[(p * nj + jj) * ldd + r0 - rows.start + rr];
                        let v = sums[rr * nj + jj];
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

/// `to[q · stride + r] = rows[r][q]` for the 8 `rows` (of one length) and every position `q`
/// along them: a block of 8 rows written as columns, the way a convolution's outputs computed
/// position-major (a row of outputs per position) go to their channels' planes. At AVX2 and
/// above, 8 positions at a time through an 8 x 8 transpose in registers (8 vector stores where
/// the values one at a time are 64 scalar ones), the rest value by value.
///
/// # Safety
///
/// `to` valid for writes at `q · stride + r` for `q` below the rows' length and `r < 8`, which
/// no one else reads or writes meanwhile; `level` runs on this CPU.
pub unsafe fn transpose_rows_into(level: Isa, rows: [&[f32]; 8], to: *mut f32, stride: usize) {
    let len = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == len), "rows of one length");
    // The positions written through the level's 8 x 8 transposes, where it has them.
    #[cfg(target_arch = "x86_64")]
    let done = if level >= Isa::Avx2 {
        // SAFETY: the caller's writes; AVX2 runs on this CPU.
        unsafe { x86::transpose_blocks(rows, to, stride) };
        len / 8 * 8
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = level;
        0
    };
    for q in done..len {
        for (r, row) in rows.iter().enumerate() {
            // SAFETY: the caller's writes, at q · stride + r.
            unsafe { *to.add(q * stride + r) = row[q] };
        }
    }
}

/// Outputs and rows of [`shifted_dot`]'s register tile at `level`.
fn dot_tile_of(level: Isa) -> (usize, usize) {
    match level {
        Isa::Avx512 if cfg!(target_arch = "x86_64") => (32, 12),
        Isa::Avx2 if cfg!(target_arch = "x86_64") => (16, 6),
        _ => (8, 4),
    }
}

/// The most rows of [`shifted_dot`]'s register tile at any level.
const MAX_DOT_ROWS: usize = 12;
/// The most sums of [`shifted_dot`]'s register tile at any level (outputs x rows).
const DOT_TILE: usize = 384;

/// # Safety
///
/// `src[offs[i] + run.at_src + q]` in bounds for `q < run_len`; `panel` holds the block's
/// positions times the tile's outputs; `level` runs on this CPU.
unsafe fn run_dot(
    level: Isa,
    panel: &[f32],
    src: &[f32],
    offs: &[usize],
    runs: (&[Run], usize),
    sums: &mut [f32; DOT_TILE],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if level == Isa::Avx512 {
            // SAFETY: the caller's bounds; AVX-512F is present.
            return unsafe { x86::dot_avx512(panel.as_ptr(), src.as_ptr(), offs, runs, sums) };
        }
        if level == Isa::Avx2 {
            // SAFETY: as above, with AVX2 and FMA.
            return unsafe { x86::dot_avx2(panel.as_ptr(), src.as_ptr(), offs, runs, sums) };
        }
    }
    let _ = level;
    // The portable tile: 8 outputs by 4 rows, in local accumulators the compiler keeps in
    // registers.
    let mut acc = [[0f32; 8]; 4];
    let mut at = 0;
    for run in runs.0 {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| &src[offs[r] + run.at_src..][..runs.1]);
        for q in 0..runs.1 {
            let gv: &[f32; 8] = panel[at * 8..at * 8 + 8].try_into().expect("a panel of 8 outputs");
            for (a, row) in acc.iter_mut().zip(&rows) {
                let x = row[q];
                for (s, &gj) in a.iter_mut().zip(gv) {
                    *s += gj * x;
                }
            }
            at += 1;
        }
    }
    for (r, a) in acc.iter().enumerate() {
        sums[r * 8..r * 8 + 8].copy_from_slice(a);
    }
}

/// What one register tile writes: the first `cols` outputs of its first `rows` positions (row
/// stride `ldd`), set (the reduction's first block) or added to.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    add: bool,
    ldd: usize,
}

/// # Safety
///
/// As [`shifted_gemm`] checks: `src` valid at `at[q] + offs[i]`, `panel` for `offs.len()`
/// times the tile's outputs, `dst` for the tile's writes; `level` runs on this CPU.
unsafe fn run_tile(level: Isa, src: &[f32], offs: &[usize], at: &[usize], panel: &[f32], dst: &mut [f32], t: Tile) {
    #[cfg(target_arch = "x86_64")]
    {
        if level == Isa::Avx512 {
            // SAFETY: the caller's guarantees; AVX-512F is present (the level runs).
            return unsafe { x86::tile_avx512(src.as_ptr(), offs, at, panel.as_ptr(), dst.as_mut_ptr(), t) };
        }
        if level == Isa::Avx2 {
            // SAFETY: as above, with AVX2 and FMA.
            return unsafe { x86::tile_avx2(src.as_ptr(), offs, at, panel.as_ptr(), dst.as_mut_ptr(), t) };
        }
    }
    let _ = level;
    portable_tile(src, offs, at, panel, dst, t);
}

/// Writes `sums` (position `q`'s outputs in row `q`) into the tile's destination.
#[inline(always)]
fn merge<const NR: usize>(sums: &[[f32; NR]], dst: &mut [f32], t: Tile) {
    for (q, from) in sums.iter().enumerate().take(t.rows) {
        let to = &mut dst[q * t.ldd..q * t.ldd + t.cols];
        if t.add {
            to.iter_mut().zip(from).for_each(|(d, s)| *d += s);
        } else {
            to.copy_from_slice(&from[..t.cols]);
        }
    }
}

/// The tile on any CPU: 4 positions by 8 outputs, a multiply and an add per step.
fn portable_tile(src: &[f32], offs: &[usize], at: &[usize], panel: &[f32], dst: &mut [f32], t: Tile) {
    const MR: usize = 4;
    const NR: usize = 8;
    let mut acc = [[0f32; NR]; MR];
    for (&o, w) in offs.iter().zip(panel.chunks_exact(NR)) {
        for (acc, &base) in acc.iter_mut().zip(at) {
            let x = src[base + o];
            for (s, &w) in acc.iter_mut().zip(w) {
                *s += x * w;
            }
        }
    }
    merge::<NR>(&acc, dst, t);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{merge, Run, Tile, DOT_TILE};

    /// 10 positions by 32 outputs: 20 accumulators of 16 (32 outputs divide the channel counts
    /// of convolutions, 64 and its multiples, with no panel part-empty); per step of the
    /// reduction, two vectors of weights and ten broadcast values of the source, each loaded
    /// into the one register it is used from (at 11 positions or more, the compiler keeps
    /// accumulators on the stack: 110 to 128 GFLOP/s on one core of a Xeon that runs this
    /// tile at 180 to 186).
    ///
    /// # Safety
    ///
    /// AVX-512F; `src + at[q] + offs[i]` valid for reads, `panel` for `offs.len() · 32`, `dst`
    /// for the tile's writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(
        src: *const f32,
        offs: &[usize],
        at: &[usize],
        panel: *const f32,
        dst: *mut f32,
        t: Tile,
    ) {
        const MR: usize = 10;
        const NR: usize = 32;
        // SAFETY: the caller's bounds: every pointer is read at offs[i] past it.
        let x: [*const f32; MR] = std::array::from_fn(|q| unsafe { src.add(at[q]) });
        let mut acc = [_mm512_setzero_ps(); 2 * MR];
        for (i, &o) in offs.iter().enumerate() {
            // SAFETY: the caller's bounds: 32 values at panel + 32 i, one at x[q] + o.
            unsafe {
                let w = panel.add(i * NR);
                let (w0, w1) = (_mm512_loadu_ps(w), _mm512_loadu_ps(w.add(16)));
                for q in 0..MR {
                    let v = _mm512_set1_ps(*x[q].add(o));
                    acc[2 * q] = _mm512_fmadd_ps(v, w0, acc[2 * q]);
                    acc[2 * q + 1] = _mm512_fmadd_ps(v, w1, acc[2 * q + 1]);
                }
            }
        }
        let masks: [__mmask16; 2] = [lanes(t.cols), lanes(t.cols.saturating_sub(16))];
        for q in 0..t.rows {
            for (h, &m) in masks.iter().enumerate() {
                // SAFETY: the caller's bounds for the tile's writes: outputs h·16 + lane <
                // cols of position q; masked-off lanes are neither read nor written.
                unsafe {
                    let d = dst.add(q * t.ldd + 16 * h);
                    let v = acc[2 * q + h];
                    let v = if t.add { _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), v) } else { v };
                    _mm512_mask_storeu_ps(d, m, v);
                }
            }
        }
    }

    /// The first `n` of 16 lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// [`super::transpose_rows_into`] for the positions of the whole blocks of 8 (the first
    /// `len / 8 · 8` of the rows' length `len`, taken from the first row), each through an 8 x 8
    /// transpose in registers.
    ///
    /// # Safety
    ///
    /// AVX2; every row at least as long as the first; `to` valid for writes of the 8 values at
    /// `q · stride` for every such `q`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_blocks(rows: [&[f32]; 8], to: *mut f32, stride: usize) {
        let whole = rows[0].len() / 8 * 8;
        for q0 in (0..whole).step_by(8) {
            // SAFETY: q0 + 8 <= len values in each row; the 8 stores of 8 values at (q0 + i) ·
            // stride are the caller's to write.
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(rows[k].as_ptr().add(q0)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let columns = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (i, c) in columns.into_iter().enumerate() {
                    _mm256_storeu_ps(to.add((q0 + i) * stride), c);
                }
            }
        }
    }

    /// [`super::shifted_dot`]'s tile: 32 outputs (2 vectors) by 12 rows, each source value
    /// broadcast against a position's panel of outputs. The block's packed output gradient
    /// (4 bytes per output and position, 256 KiB for 64 outputs over 1,024 positions: read
    /// from L2) is streamed once per 12 rows rather than once per 6 (the tile was 64 by 6),
    /// half the traffic: on a Xeon with two AVX-512 FMA units, one core, `layer1`'s
    /// 3 x 3 x 3 weight gradient went from 140-154 to 148-165 GFLOP/s (medians 144 and 155
    /// of five alternated runs).
    ///
    /// # Safety
    ///
    /// AVX-512F; `panel` valid for 32 reads per position of the runs, `src + offs[i] +
    /// run.at_src` for `len` reads; `offs` holds 12 offsets.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(
        panel: *const f32,
        src: *const f32,
        offs: &[usize],
        (runs, len): (&[Run], usize),
        sums: &mut [f32; DOT_TILE],
    ) {
        const NJ: usize = 2;
        const NK: usize = 12;
        let mut acc = [_mm512_setzero_ps(); NJ * NK];
        let mut p = panel;
        for run in runs {
            let s: [*const f32; NK] = std::array::from_fn(|r| src.wrapping_add(offs[r] + run.at_src));
            for q in 0..len {
                // SAFETY: the caller's bounds: 32 panel values per position, q < len in every
                // source row.
                unsafe {
                    let gv: [__m512; NJ] = std::array::from_fn(|j| _mm512_loadu_ps(p.add(16 * j)));
                    for r in 0..NK {
                        let x = _mm512_set1_ps(*s[r].add(q));
                        for j in 0..NJ {
                            acc[r * NJ + j] = _mm512_fmadd_ps(gv[j], x, acc[r * NJ + j]);
                        }
                    }
                    p = p.add(16 * NJ);
                }
            }
        }
        for (c, &v) in acc.iter().enumerate() {
            // SAFETY: 16 values at c · 16 < 384.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(c * 16), v) };
        }
    }

    /// [`super::shifted_dot`]'s tile: 16 outputs (2 vectors) by 6 rows.
    ///
    /// # Safety
    ///
    /// AVX2 and FMA; `panel` valid for 16 reads per position of the runs, `src + offs[i] +
    /// run.at_src` for `len` reads; `offs` holds 6 offsets.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(
        panel: *const f32,
        src: *const f32,
        offs: &[usize],
        (runs, len): (&[Run], usize),
        sums: &mut [f32; DOT_TILE],
    ) {
        const NJ: usize = 2;
        const NK: usize = 6;
        let mut acc = [_mm256_setzero_ps(); NJ * NK];
        let mut p = panel;
        for run in runs {
            let s: [*const f32; NK] = std::array::from_fn(|r| src.wrapping_add(offs[r] + run.at_src));
            for q in 0..len {
                // SAFETY: the caller's bounds: 16 panel values per position, q < len in every
                // source row.
                unsafe {
                    let (g0, g1) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                    for r in 0..NK {
                        let x = _mm256_broadcast_ss(&*s[r].add(q));
                        acc[2 * r] = _mm256_fmadd_ps(g0, x, acc[2 * r]);
                        acc[2 * r + 1] = _mm256_fmadd_ps(g1, x, acc[2 * r + 1]);
                    }
                    p = p.add(16);
                }
            }
        }
        for (c, &v) in acc.iter().enumerate() {
            // SAFETY: 8 values at c · 8 < 96.
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(c * 8), v) };
        }
    }

    /// 5 positions by 16 outputs: 10 accumulators of 8; per step of the reduction, two
    /// vectors of weights and five broadcast values of the source (at 6 positions, the
    /// compiler keeps accumulators on the stack).
    ///
    /// # Safety
    ///
    /// AVX2 and FMA; `src + at[q] + offs[i]` valid for reads, `panel` for `offs.len() · 16`,
    /// `dst` for the tile's writes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(
        src: *const f32,
        offs: &[usize],
        at: &[usize],
        panel: *const f32,
        dst: *mut f32,
        t: Tile,
    ) {
        const MR: usize = 5;
        const NR: usize = 16;
        // SAFETY: the caller's bounds: every pointer is read at offs[i] past it.
        let x: [*const f32; MR] = std::array::from_fn(|q| unsafe { src.add(at[q]) });
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        for (i, &o) in offs.iter().enumerate() {
            // SAFETY: the caller's bounds: 16 values at panel + 16 i, one at x[q] + o.
            unsafe {
                let w = panel.add(i * NR);
                let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
                for q in 0..MR {
                    let v = _mm256_broadcast_ss(&*x[q].add(o));
                    acc[2 * q] = _mm256_fmadd_ps(v, w0, acc[2 * q]);
                    acc[2 * q + 1] = _mm256_fmadd_ps(v, w1, acc[2 * q + 1]);
                }
            }
        }
        if t.cols == NR {
            for q in 0..t.rows {
                for h in 0..2 {
                    // SAFETY: the caller's bounds for the tile's writes: all 16 outputs of
                    // position q.
                    unsafe {
                        let d = dst.add(q * t.ldd + 8 * h);
                        let v = acc[2 * q + h];
                        _mm256_storeu_ps(d, if t.add { _mm256_add_ps(_mm256_loadu_ps(d), v) } else { v });
                    }
                }
            }
            return;
        }
        let mut sums = [[0f32; NR]; MR];
        for (q, row) in sums.iter_mut().enumerate() {
            // SAFETY: 8 values at 0 and at 8 of a row of 16.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc[2 * q]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[2 * q + 1]);
            }
        }
        // SAFETY: the caller's bounds for the tile's writes.
        merge::<NR>(&sums, unsafe { std::slice::from_raw_parts_mut(dst, (t.rows - 1) * t.ldd + t.cols) }, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight rows written as columns, at every level: each value where the definition puts
    /// it, whatever the rows' length against the 8 x 8 transposes (none, some, some and a
    /// rest), and nothing written between the columns.
    #[test]
    fn rows_transposed_into_columns_land_where_the_definition_says() {
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            for (len, stride) in [(0, 9), (5, 8), (8, 11), (13, 9), (21, 16)] {
                let rows: Vec<Vec<f32>> = (0..8).map(|r| (0..len).map(|q| (100 * r + q) as f32).collect()).collect();
                let mut to = vec![f32::NAN; len.max(1) * stride + 8];
                let refs: [&[f32]; 8] = std::array::from_fn(|r| &rows[r][..]);
                // SAFETY: `to` holds (len - 1) · stride + 8 values and more; the level runs.
                unsafe { transpose_rows_into(level, refs, to.as_mut_ptr(), stride) };
                for (i, v) in to.iter().enumerate() {
                    let (q, r) = (i / stride, i % stride);
                    if q < len && r < 8 {
                        assert_eq!(*v, rows[r][q], "{level:?} len {len} stride {stride}: to[{i}]");
                    } else {
                        assert!(v.is_nan(), "{level:?} len {len} stride {stride}: to[{i}] written");
                    }
                }
            }
        }
    }

    /// Both kinds of packed panels start on a cache line, also where the allocator hands out
    /// a buffer that does not (a large one starts 16 bytes past a page), and hold what the
    /// packing put there: the weights' first panel is their first `nr` rows at each
    /// reduction index; every output gradient value lands once.
    #[test]
    fn packed_panels_start_on_a_cache_line() {
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            for (n, k) in [(3, 5), (64, 1728), (512, 4608)] {
                let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
                let packed = ShiftedWeights::new(level, &w, n, k);
                assert_eq!(packed.panels.as_ptr().align_offset(64), 0, "{level:?} weights {n} x {k}");
                let nr = packed.panel_width();
                assert_eq!(packed.panels.len(), n.div_ceil(nr) * nr * k);
                for kk in 0..KC.min(k) {
                    for r in 0..nr {
                        let want = if r < n { w[r * k + kk] } else { 0.0 };
                        assert_eq!(packed.panels[kk * nr + r], want, "{level:?} weights {n} x {k}");
                    }
                }
            }
            let (n, run_len) = (64, 56);
            let runs: Vec<Run> = (0..896).map(|l| Run { at_g: l * run_len, at_src: 0 }).collect();
            let g: Vec<f32> = (0..n * runs.len() * run_len).map(|i| i as f32 + 1.0).collect();
            let mut panels = DotPanels::new(level, n, (&runs, run_len));
            let packed = &panels.pack((&g, runs.len() * run_len)).packed;
            assert_eq!(packed.as_ptr().align_offset(64), 0, "{level:?} output gradient");
            let mut seen: Vec<f32> = packed.iter().copied().filter(|&v| v != 0.0).collect();
            seen.sort_by(f32::total_cmp);
            assert_eq!(seen, g, "{level:?} output gradient");
        }
    }

    /// The product against a plain triple loop in float64, at every level this CPU runs, with
    /// edges on both sides (positions and outputs not multiples of the tile), positions that
    /// are not consecutive and a reduction longer than one block; and the same bits whichever
    /// blocks of positions it is split into.
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
        // Runs of consecutive positions with gaps between them, and one position read twice.
        let bases: Vec<usize> = (0..len).map(|q| q + q / 10 * 3).chain([5]).collect();
        let len = bases.len();
        let ldd = 30;
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            let packed = ShiftedWeights::new(level, &w, n, k);
            let mut dst = vec![f32::NAN; len * ldd];
            shifted_gemm(&packed, &src, (&offsets, &bases), 0..n, (&mut dst, ldd));
            for (q, &base) in bases.iter().enumerate() {
                for j in 0..n {
                    let want: f64 = (0..k).map(|i| src[base + offsets[i]] as f64 * w[j * k + i] as f64).sum();
                    let got = dst[q * ldd + j] as f64;
                    assert!((got - want).abs() < 1e-4, "{level}: ({q}, {j}) {got} against {want}");
                }
                assert!(dst[q * ldd + n..(q + 1) * ldd].iter().all(|v| v.is_nan()), "{level}: wrote past n");
            }
            // Split into blocks of positions: the same bits.
            let mut split = vec![f32::NAN; len * ldd];
            for (q0, q1) in [(0, 5), (5, 40), (40, len)] {
                shifted_gemm(&packed, &src, (&offsets, &bases[q0..q1]), 0..n, (&mut split[q0 * ldd..], ldd));
            }
            // And into ranges of outputs, each panel's own.
            let width = packed.panel_width();
            let mut parts = vec![f32::NAN; len * ldd];
            for j0 in (0..n).step_by(width) {
                let j1 = (j0 + width).min(n);
                shifted_gemm(&packed, &src, (&offsets, &bases), j0..j1, (&mut parts[j0..], ldd));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dst), bits(&split), "{level}: split changed bits");
            assert_eq!(bits(&dst), bits(&parts), "{level}: ranges of outputs changed bits");
            // The source is read at the sums' values only: cut right after the last one.
            let reach = offsets.iter().max().unwrap() + bases.iter().max().unwrap() + 1;
            let mut exact = vec![f32::NAN; len * ldd];
            shifted_gemm(&packed, &src[..reach], (&offsets, &bases), 0..n, (&mut exact, ldd));
            assert_eq!(bits(&dst), bits(&exact), "{level}: a source without slack changed bits");
        }
    }

    /// A product that keeps some rows of the reduction gives the full product's bits where
    /// the rows it drops read zeros: whole blocks dropped (the first one, so that the next
    /// sets the destination), and rows dropped here and there in the others.
    #[test]
    fn dropping_rows_that_read_zeros_keeps_the_bits() {
        let (n, k, len) = (37, 600, 23);
        let mut state = 3u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        // Values past 2000 are zeros: the rows dropped read there.
        let src: Vec<f32> = (0..4000).map(|i| if i < 2000 { next() } else { 0.0 }).collect();
        let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let dropped = |i: usize| i < KC || i.is_multiple_of(3);
        let offsets: Vec<usize> = (0..k).map(|i| if dropped(i) { 2000 + i % 50 } else { (i * 37) % 1900 }).collect();
        let bases: Vec<usize> = (0..len).map(|q| q * 3).collect();
        let kept: Vec<usize> = offsets.iter().enumerate().filter(|&(i, _)| !dropped(i)).map(|(_, &o)| o).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            let full = ShiftedWeights::new(level, &w, n, k);
            let some = ShiftedWeights::keeping(level, &w, n, k, |i| !dropped(i));
            assert_eq!(some.reduction(), kept.len());
            // The rows dropped from the packed weights: the same packing, value for value.
            let from_full = full.dropping(|i| !dropped(i));
            assert_eq!(from_full.blocks, some.blocks, "{level}");
            assert_eq!(bits(&from_full.panels), bits(&some.panels), "{level}");
            let (mut a, mut b) = (vec![f32::NAN; len * n], vec![f32::NAN; len * n]);
            shifted_gemm(&full, &src, (&offsets, &bases), 0..n, (&mut a, n));
            shifted_gemm(&some, &src, (&kept, &bases), 0..n, (&mut b, n));
            assert_eq!(bits(&a), bits(&b), "{level}");
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }

    /// The dot product against float64 sums at every level, with row and output edges, runs
    /// that end inside a vector, several blocks of runs, and the same bits whatever rows a
    /// call takes; output counts below, past and across the packing's 8-row transposes and
    /// the tile's panels.
    #[test]
    fn dot_matches_the_definition_at_every_level() {
        for n in [7, 19, 70] {
            dot_matches_the_definition_for(n);
        }
    }

    fn dot_matches_the_definition_for(n: usize) {
        let (k, run_len, ldg) = (29, 45, 3000);
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
            let mut panels = DotPanels::new(level, n, (&runs, run_len));
            let panels = panels.pack((&g, ldg));
            shifted_dot(panels, &src, &offsets, 0..k, (&mut dst, k), true);
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
                shifted_dot(panels, &src, &offsets, rows, (&mut split[at..], k), true);
            }
            assert_eq!(dst, split, "{level}: splitting the rows changed bits");
            // The source is read at the runs' positions only: cut right after the last one,
            // the same bits.
            let reach = offsets.iter().max().unwrap() + runs.iter().map(|r| r.at_src).max().unwrap() + run_len;
            let mut exact = vec![1f32; n * k];
            let cut = &src[..reach];
            shifted_dot(panels, cut, &offsets, 0..k, (&mut exact, k), true);
            assert_eq!(dst, exact, "{level}: a source without slack changed bits");
        }
    }

    #[test]
    #[should_panic(expected = "positions read reach")]
    fn refuses_a_source_too_short() {
        let packed = ShiftedWeights::new(Isa::Scalar, &[1.0; 4], 2, 2);
        let mut dst = vec![0f32; 20];
        shifted_gemm(&packed, &[0.0; 12], (&[0, 2], &[0, 10]), 0..2, (&mut dst, 2));
    }
}
