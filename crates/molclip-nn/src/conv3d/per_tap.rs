//! Convolutions as one product per tap of the window, over the outputs at which that tap reads
//! inside the input, summed tap by tap: for windows of which much falls in the padding, as on
//! the deepest layer's small frames. In `layer4`'s 4 x 4 x 4 outputs, 42 % of a 3 x 3 x 3
//! window's reads are padding; a window matrix holds zeros there, and its product multiplies
//! them.
//!
//! Tap `t`'s product is `[O, C] · [C, P]` over its `P` outputs (across the videos): the
//! forward pass adds it into the outputs, the input gradient's transpose `[C, O] · [O, P]`
//! adds into the input, and the weight gradient's `[O, P] · [P, C]` is the tap's slice of it.
//! A reduction of hundreds of channels keeps each product near the GEMM's peak, and each tap's
//! operands (about a MB) are gathered just before it, in cache: no window matrix is built.
//! The videos go innermost first (`[C, T, H, W, B]`), so that a line of a tap's outputs is one
//! run of all the videos' values (`layer4`'s lines are 3 or 4 outputs long), and each tap's
//! slice of the weights, `[O, C]`, is read from the weights reordered tap-major
//! ([`taps_inside`]).
//!
//! On `layer4`'s 3 x 3 x 3 convolution (a Xeon, 2 threads, scratch op timers), the forward
//! pass went from 44-45 to 39-40 ms at AVX2, the input gradient from 52-53 to 47-48, and from
//! 35-38 to 30 at AVX-512, where the forward pass measured the same; the weight gradients of
//! `layer4`'s three stride-1 convolutions together from 81-82 to 75 ms at AVX2, and 46-48 to
//! 47-49 at AVX-512.
//!
//! The sums are those of the window matrix's product but for terms that are exactly zero
//! (padding times a weight), in another order: taps outermost, each tap's channels in the
//! GEMM's order. The order depends on the shapes alone, not on the threads.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{phase_split, tap_runs_in, Window3d};
use crate::cpu::{as_uninit, gemm_f32, gemm_f32_strided, written_by, Scratch};

/// One convolution's sizes, and each tap's runs.
pub(super) struct TapProducts {
    window: Window3d,
    /// Videos, input channels, output channels.
    b: usize,
    c: usize,
    o: usize,
    input: [usize; 3],
    out: [usize; 3],
    /// Each tap's runs, each run's input index in the phase-split videos ([`phase_split`]).
    runs: Vec<Vec<[usize; 3]>>,
}

/// Which index of a run ([`super::tap_runs`]) a gather or a scatter goes by: the run's first
/// output, or its first input (in the phase-split videos).
#[derive(Clone, Copy)]
enum Side {
    Output = 0,
    Input = 1,
}

impl TapProducts {
    pub(super) fn new(window: Window3d, [b, c, t, h, w]: [usize; 5], o: usize, out: [usize; 3]) -> Self {
        let runs = (0..window.taps()).map(|tap| tap_runs_in(window, [t, h, w], out, tap, true)).collect();
        Self { window, b, c, o, input: [t, h, w], out, runs }
    }

    /// Whether a convolution of these sizes runs tap by tap: a window of several taps of
    /// which more than a third of the reads fall in the padding (`layer4`'s 3 x 3 x 3 window of
    /// stride 1, 42 %). Where less of the window reads padding (`layer4`'s 1 x 3 x 3 windows,
    /// 31 %, and its strided 3 x 3 x 3 one, 30 %), the products per tap measured no faster than
    /// one product over the window matrix; wider frames (`layer3`'s 7 x 7 and up) run on the
    /// grid, or on tiles of the window matrix.
    pub(super) fn serves(&self) -> bool {
        let taps = self.window.taps();
        let inside: usize = self.runs.iter().map(|runs| columns(runs)).sum();
        taps > 1 && inside * 3 < taps * self.positions() * 2
    }

    /// Output positions per video.
    fn positions(&self) -> usize {
        self.out.iter().product()
    }

    /// Values per channel of a phase-split video.
    fn channel(&self) -> usize {
        let [t, h, w] = self.input;
        let sw = self.window.stride[2];
        t * h * sw * w.div_ceil(sw)
    }

    /// Each tap, its runs, and its columns (its outputs across the videos).
    fn each_tap(&self) -> impl Iterator<Item = (usize, &[[usize; 3]], usize)> + '_ {
        self.runs.iter().enumerate().map(|(tap, runs)| (tap, runs.as_slice(), self.b * columns(runs)))
    }

    /// The most columns of any tap.
    fn most_columns(&self) -> usize {
        self.each_tap().map(|(.., m)| m).max().unwrap_or(0)
    }

    /// The videos `x` (`[B, C, T, H, W]`) phase-split and with the videos innermost, `[C,
    /// phase-split values, B]`: a run of a tap's outputs then reads one contiguous run of
    /// every video's values at once (`layer4`'s lines are 4 outputs long).
    fn inputs_inner(&self, x: &[f32]) -> Vec<f32> {
        videos_inner(&phase_split(x, self.input[2], self.window.stride[2]), self.b)
    }

    /// y `[B, O, N]` of the videos `x` (`[B, C, T, H, W]`) by the weights `w` (`[O, C, taps]`).
    pub(super) fn forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (b, c, o, taps) = (self.b, self.c, self.o, self.window.taps());
        let n = self.positions();
        let xs = self.inputs_inner(x);
        let wt = taps_inside(w, c, taps);
        let most = self.most_columns();
        let (mut cols, mut prod) = (Scratch::take(c * most), Scratch::take(o * most));
        let mut y = vec![0f32; b * o * n];
        for (tap, runs, m) in self.each_tap().filter(|&(.., m)| m > 0) {
            let (cols, prod) = (&mut cols[..c * m], &mut prod[..o * m]);
            gather(&xs, (self.channel(), b), runs, Side::Input, cols);
            gemm_f32(o, m, c, prod, false, &wt[tap * c..], (1, (taps * c) as isize), cols, (1, m as isize));
            scatter_add(prod, (n, b), runs, Side::Output, &mut y);
        }
        videos_outer(&y, b)
    }

    /// dX `[B, C, T, H, W]` from the output gradient `gy` (`[B, O, N]`) and the weights `w`.
    pub(super) fn input_grad(&self, gy: &[f32], w: &[f32]) -> Vec<f32> {
        let (b, c, o, taps) = (self.b, self.c, self.o, self.window.taps());
        let n = self.positions();
        let gy = videos_inner(gy, b);
        let wt = taps_inside(w, c, taps);
        let most = self.most_columns();
        let (mut grads, mut prod) = (Scratch::take(o * most), Scratch::take(c * most));
        let mut gx = vec![0f32; c * self.channel() * b];
        for (tap, runs, m) in self.each_tap().filter(|&(.., m)| m > 0) {
            let (grads, prod) = (&mut grads[..o * m], &mut prod[..c * m]);
            gather(&gy, (n, b), runs, Side::Output, grads);
            // The tap's weights transposed: element (ci, oi) at oi · taps · C + ci.
            gemm_f32(c, m, o, prod, false, &wt[tap * c..], ((taps * c) as isize, 1), grads, (1, m as isize));
            scatter_add(prod, (self.channel(), b), runs, Side::Input, &mut gx);
        }
        let [_, _, width] = self.input;
        phase_merged(videos_outer(&gx, b), width, self.window.stride[2])
    }

    /// The weight gradient `[O, C, taps]` of the videos `x` whose output gradient is `gy`.
    pub(super) fn weight_grad(&self, x: &[f32], gy: &[f32]) -> Vec<f32> {
        let (b, c, o, taps) = (self.b, self.c, self.o, self.window.taps());
        let n = self.positions();
        let (xs, gy) = (self.inputs_inner(x), videos_inner(gy, b));
        let most = self.most_columns();
        let (mut cols, mut grads) = (Scratch::take(c * most), Scratch::take(o * most));
        // `[O, taps, C]`: each tap's `[O, C]` at a row stride of taps · C.
        let mut gt = Scratch::take(o * taps * c);
        for (tap, runs, m) in self.each_tap() {
            if m == 0 {
                // No output reads this tap inside the input: its gradient is zero.
                gt.chunks_exact_mut(taps * c).for_each(|row| row[tap * c..(tap + 1) * c].fill(0.0));
                continue;
            }
            let dst = (&mut gt[tap * c..], (1, (taps * c) as isize));
            let (cols, grads) = (&mut cols[..c * m], &mut grads[..o * m]);
            gather(&xs, (self.channel(), b), runs, Side::Input, cols);
            gather(&gy, (n, b), runs, Side::Output, grads);
            // dY_t · colsᵀ: colsᵀ's element (position, ci) at ci · m + position.
            let m_ = m as isize;
            gemm_f32_strided(o, c, m, dst, false, (grads, (1, m_)), (cols, (m_, 1)), rayon::current_num_threads());
        }
        taps_outside(&gt, c, taps)
    }
}

/// Outputs per video of a tap's runs.
fn columns(runs: &[[usize; 3]]) -> usize {
    runs.iter().map(|r| r[2]).sum()
}

/// `[B, X]` as `[X, B]`.
fn videos_inner(src: &[f32], b: usize) -> Vec<f32> {
    let x = src.len() / b.max(1);
    let write = |dst: &mut [MaybeUninit<f32>]| {
        dst.par_chunks_mut((b * 1024).max(1)).enumerate().for_each(|(k, to)| {
            for (i, vals) in to.chunks_exact_mut(b).enumerate() {
                let at = k * 1024 + i;
                for (bi, v) in vals.iter_mut().enumerate() {
                    v.write(src[bi * x + at]);
                }
            }
        })
    };
    // SAFETY: the chunks of whole `[B]` rows tile the destination (of src's length, a
    // multiple of b), and each sets every value of its rows.
    unsafe { written_by(src.len(), write) }
}

/// `[X, B]` as `[B, X]`.
fn videos_outer(src: &[f32], b: usize) -> Vec<f32> {
    let x = src.len() / b.max(1);
    let write = |dst: &mut [MaybeUninit<f32>]| {
        dst.par_chunks_mut(x.max(1)).enumerate().for_each(|(bi, to)| {
            for (i, v) in to.iter_mut().enumerate() {
                v.write(src[i * b + bi]);
            }
        })
    };
    // SAFETY: the chunks, one per video, tile the destination, and each sets all its values.
    unsafe { written_by(src.len(), write) }
}

/// [`phase_split`] undone: lines of `sw` phases of `⌈w / sw⌉` values to lines of `w`.
fn phase_merged(xs: Vec<f32>, w: usize, sw: usize) -> Vec<f32> {
    if sw == 1 {
        return xs;
    }
    let wp = w.div_ceil(sw);
    let mut x = vec![0f32; xs.len() / (sw * wp) * w];
    x.par_chunks_mut(w).zip(xs.par_chunks(sw * wp)).for_each(|(line, phases)| {
        for (i, v) in line.iter_mut().enumerate() {
            *v = phases[(i % sw) * wp + i / sw];
        }
    });
    x
}

/// `[rows, P · B]`: for each row of `src` (`[rows, len, B]`, the videos innermost: `(len,
/// B)`), the values of every video at the runs' `side` indices, in order.
fn gather(src: &[f32], (len, b): (usize, usize), runs: &[[usize; 3]], side: Side, dst: &mut [f32]) {
    let rows = src.len() / (len * b).max(1);
    dst.par_chunks_mut((dst.len() / rows.max(1)).max(1)).enumerate().for_each(|(r, to)| {
        let from = &src[r * len * b..][..len * b];
        let mut at = 0;
        for run in runs {
            let k = run[2] * b;
            to[at..at + k].copy_from_slice(&from[run[side as usize] * b..][..k]);
            at += k;
        }
    });
}

/// [`gather`] transposed: adds `src` (`[rows, P · B]`) into `dst` (`[rows, len, B]`) at the
/// runs' `side` indices.
fn scatter_add(src: &[f32], (len, b): (usize, usize), runs: &[[usize; 3]], side: Side, dst: &mut [f32]) {
    let rows = dst.len() / (len * b).max(1);
    let per_row = src.len() / rows.max(1);
    dst.par_chunks_mut((len * b).max(1)).enumerate().for_each(|(r, to)| {
        let mut at = r * per_row;
        for run in runs {
            let k = run[2] * b;
            let seg = &mut to[run[side as usize] * b..][..k];
            seg.iter_mut().zip(&src[at..at + k]).for_each(|(d, v)| *d += v);
            at += k;
        }
    });
}

/// The weights `[O, C, taps]` as `[O, taps, C]`: tap `t`'s `[O, C]` starts at `t · C`, at a
/// row stride of taps · C.
fn taps_inside(w: &[f32], c: usize, taps: usize) -> Scratch {
    let mut wt = Scratch::take(w.len());
    // SAFETY: the transpose writes only values.
    transpose_each(w, (c, taps), unsafe { as_uninit(&mut wt) });
    wt
}

/// [`taps_inside`] undone: `[O, taps, C]` to `[O, C, taps]`.
fn taps_outside(wt: &[f32], c: usize, taps: usize) -> Vec<f32> {
    // SAFETY: the transpose sets every value of every matrix.
    unsafe { written_by(wt.len(), |w| transpose_each(wt, (taps, c), w)) }
}

/// Each `[rows, cols]` matrix of `src`, one after the other, transposed into `dst`, in
/// parallel: sixteen rows at a time, so that each column's sixteen values are written as one
/// cache line (a value at a time, the columns' lines a few KB apart would share the level-1
/// cache's sets: `layer4`'s 28 MB of weights took 11 ms).
fn transpose_each(src: &[f32], (rows, cols): (usize, usize), dst: &mut [MaybeUninit<f32>]) {
    let size = (rows * cols).max(1);
    dst.par_chunks_mut(size).zip(src.par_chunks(size)).for_each(|(to, from)| {
        for r0 in (0..rows).step_by(16) {
            let r1 = (r0 + 16).min(rows);
            for col in 0..cols {
                for r in r0..r1 {
                    to[col * rows + r].write(from[r * cols + col]);
                }
            }
        }
    });
}
