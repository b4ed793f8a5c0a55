//! Convolutions on the grid of their zero-padded input, without a window matrix
//! (`molclip_cpu::shifted`): the forward pass and the weight gradient (strided windows on the
//! input split into the phases of the stride), and for stride 1 the input gradient, which is
//! then the same convolution of the zero-padded output gradient with the kernel flipped and
//! its channels swapped.

use std::mem::MaybeUninit;

use molclip_cpu::shifted::MAX_TILE;
use molclip_cpu::{shifted_dot, shifted_gemm, DotPanels, Run, Shared, ShiftedWeights};
use rayon::prelude::*;

use super::Window3d;

/// How the forward product of `total` positions by `outputs` x `reduction` weights (in panels
/// of `panel` outputs) splits into tasks, for a padded input of `input` values: the outputs in
/// groups (outputs per group, a whole number of panels) and the positions in blocks
/// (positions per block, a multiple of [`MAX_TILE`]).
///
/// Each task streams its group's weights once and its block's part of the input once. Where
/// the weights are the larger (the deep layers: many channels, few positions), the outputs
/// are split among the threads and every task takes every position it can, so that the
/// weights are read about once in all; elsewhere the positions alone are split. A block's
/// outputs, `[positions, group]`, stay in the level-2 cache, and the tasks come in a multiple
/// of the threads, of about one size.
fn split_product((outputs, reduction, panel): (usize, usize, usize), total: usize, input: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads();
    let panels = outputs.div_ceil(panel);
    let groups = if outputs * reduction > input { panels.min(2 * threads) } else { 1 };
    let group = panels.div_ceil(groups) * panel;
    let most = (65536 / group.max(1)).clamp(64, 1024) / MAX_TILE * MAX_TILE;
    let blocks = total.div_ceil(most);
    let blocks = if groups == 1 { blocks.next_multiple_of(threads) } else { blocks };
    (group, total.div_ceil(blocks).next_multiple_of(MAX_TILE))
}

/// A convolution of `b` videos of `c` channels and `input` (time, height, width) by a window,
/// on the grid of its zero-padded input split into the phases of its stride: value `i` of
/// the padded input along an axis of stride `s` goes to phase `i mod s`, at `i div s`, each
/// phase of each channel a plane of its own. Output `o` reads padded value `o·s + k` at tap
/// `k`: in phase `k mod s`, at `o + k div s`, so that every tap is a fixed offset from the
/// output's own position on the grid (for stride 1, the padded input itself).
///
/// Along an axis of stride 1 and padding `p` (below the kernel), consecutive lines share
/// their padding: the line's pitch is `input + p`, not `input + 2p`, and a tap that reads
/// past a line's end reads the next line's `p` leading zeros (past a plane's last line, the
/// next plane's leading zero lines; past a channel's last plane, the next one's). Each output
/// reads the same values at the same taps as on a grid padded on both sides, so its sum is
/// the same to the bit, but the padded input is smaller: 28 x 28 frames on a 29 x 29 grid
/// instead of 30 x 30, and 7 x 7 frames on 8 x 8 instead of 9 x 9. The products compute the
/// outputs alone (no position of the grid past a line or a plane).
#[derive(Clone, Copy, Debug)]
pub(super) struct PaddedGrid {
    b: usize,
    c: usize,
    input: [usize; 3],
    window: Window3d,
    /// The dims of one phase's plane, and the outputs'.
    phased: [usize; 3],
    out: [usize; 3],
    /// Whether every output reads every tap, padding included, as the products ran before
    /// [`PaddedGrid::time_classes`]: for tests, which compare the bits.
    #[cfg(test)]
    every_tap: bool,
    /// Whether the weight gradient splits its rows among tasks whatever its size: for tests.
    #[cfg(test)]
    by_rows: bool,
}

impl PaddedGrid {
    /// None where the window does not fit the padded input.
    pub(super) fn new(b: usize, c: usize, input: [usize; 3], window: Window3d) -> Option<Self> {
        let out = window.out_dims(input).ok()?;
        let Window3d { kernel, stride, padding } = window;
        let phased = std::array::from_fn(|i| match stride[i] {
            1 if padding[i] < kernel[i] => input[i] + padding[i],
            s => (input[i] + 2 * padding[i]).div_ceil(s),
        });
        Some(Self {
            b,
            c,
            input,
            window,
            phased,
            out,
            #[cfg(test)]
            every_tap: false,
            #[cfg(test)]
            by_rows: false,
        })
    }

    /// The grid for the input gradient of a stride-1 `window` whose output gradient has
    /// `out` dims: the same convolution of the output gradient padded by `kernel - 1 -
    /// padding`, the kernel flipped ([`flipped`]). None where the padding is larger than that,
    /// or the window strided.
    pub(super) fn for_input_grad(b: usize, o: usize, out: [usize; 3], window: Window3d) -> Option<Self> {
        if window.stride != [1, 1, 1] || (0..3).any(|i| window.padding[i] + 1 > window.kernel[i]) {
            return None;
        }
        let pad = std::array::from_fn(|i| window.kernel[i] - 1 - window.padding[i]);
        Self::new(b, o, out, Window3d::new(window.kernel, [1, 1, 1], pad))
    }

    /// The same grid with every line padded on both sides (no padding shared), as the
    /// products ran on before lines shared theirs: for tests, which compare the bits.
    #[cfg(test)]
    pub(super) fn padded_on_both_sides(mut self) -> Self {
        let Window3d { stride, padding, .. } = self.window;
        self.phased = std::array::from_fn(|i| (self.input[i] + 2 * padding[i]).div_ceil(stride[i]));
        self
    }

    /// The same grid with every output reading every tap (the padding's included).
    #[cfg(test)]
    pub(super) fn reading_every_tap(mut self) -> Self {
        self.every_tap = true;
        self
    }

    /// The same grid with the weight gradient's rows split among tasks at any size.
    #[cfg(test)]
    pub(super) fn summing_by_rows(mut self) -> Self {
        self.by_rows = true;
        self
    }

    /// The output dims (time, height, width).
    pub(super) fn out(&self) -> [usize; 3] {
        self.out
    }

    /// Whether the grid is dense enough in outputs to run on, measured on a video's grid
    /// through its last output. The first layers' grids are 87 to 94 % outputs (28 x 28
    /// frames on a 29 x 29 grid), the third stage's 77 % (7 x 7 on 8 x 8); the deepest ones'
    /// are not (4 x 4 on 5 x 5: 64 %), and their products run faster on a window matrix (on
    /// a Xeon with AVX-512, the 512-channel 3 x 3 x 3 convolution's forward pass took 42 ms
    /// on the grid against 29 to 34 on the window matrix, its input gradient 57 against 40).
    pub(super) fn dense(&self) -> bool {
        let outputs: usize = self.out.iter().product();
        outputs * 4 >= self.span() * 3
    }

    /// Phases per channel.
    fn phases(&self) -> usize {
        self.window.stride.iter().product()
    }

    /// Values of one phase's plane.
    fn volume(&self) -> usize {
        self.phased.iter().product()
    }

    /// Positions of one video's grid that the product runs over: through the last output.
    fn span(&self) -> usize {
        let [_, hp, wp] = self.phased;
        let [to, ho, wo] = self.out;
        ((to - 1) * hp + ho - 1) * wp + wo
    }

    /// The videos `[B, C, T, H, W]` zero-padded and split into phases, `[B, C · phases, Tp,
    /// Hp, Wp]` (phases time-major), followed by the zeros that the last video's taps read
    /// past its end (where lines share their padding, its last plane's last taps read the
    /// leading zeros a next plane would have). `offsets` are [`Self::offsets`].
    fn pad_input(&self, x: &[f32], offsets: &[usize]) -> Vec<f32> {
        let [t, h, w] = self.input;
        let [_, hp, wp] = self.phased;
        let ([st, sh, sw], [pt, ph, pw]) = (self.window.stride, self.window.padding);
        let vol = self.volume();
        let planes = self.phases() * vol;
        let video = self.c * planes;
        let last_read = offsets.iter().max().map_or(0, |m| m + self.span());
        let len = self.b.saturating_sub(1) * video + video.max(last_read);
        let write = |xp: &mut [MaybeUninit<f32>]| {
            let (videos, tail) = xp.split_at_mut(self.b * self.c * planes);
            crate::cpu::zeroed(tail);
            videos.par_chunks_mut(planes).zip(x.par_chunks(t * h * w)).for_each(|(dst, src)| {
                if [st, sh, sw] == [1, 1, 1] {
                    // One plane, its lines in order: each written after the zeros before it
                    // (the padding), each value once.
                    let mut next = 0;
                    for (l, line) in src.chunks_exact(w).enumerate() {
                        let at = ((l / h + pt) * hp + l % h + ph) * wp + pw;
                        crate::cpu::zeroed(&mut dst[next..at]);
                        crate::cpu::write_copy(&mut dst[at..at + w], line);
                        next = at + w;
                    }
                    crate::cpu::zeroed(&mut dst[next..]);
                    return;
                }
                // Each plane set zeroed, then its lines written, by one task: the zeros it
                // keeps are the padding.
                let dst = crate::cpu::zeroed(dst);
                for (l, line) in src.chunks_exact(w).enumerate() {
                    let (it, ih) = (l / h + pt, l % h + ph);
                    let row = ((it % st) * sh + ih % sh) * sw;
                    let at = ((it / st) * hp + ih / sh) * wp;
                    // Each phase of the width in turn: the line's values every `sw` from the
                    // first that falls in it (padded value `iw + pw` in phase `(iw + pw) mod
                    // sw`, at `(iw + pw) div sw`), a contiguous run of the phase's plane.
                    for phase in 0..sw {
                        let first = (phase + sw - pw % sw) % sw;
                        let to = &mut dst[(row + phase) * vol + at + (first + pw) / sw..];
                        for (d, &v) in to.iter_mut().zip(line.iter().skip(first).step_by(sw)) {
                            *d = v;
                        }
                    }
                }
            })
        };
        // SAFETY: every value is set: the tail past the videos zeroed at once, and each
        // channel's planes by its task, either line by line (zeros up to each line, the line,
        // zeros past the last) or zeroed whole before the lines are written over some of them.
        unsafe { crate::cpu::written_by(len, write) }
    }

    /// Where row `ci · taps + tap` of the (never built) window matrix starts in a video of
    /// the phase-split padded input.
    fn offsets(&self) -> Vec<usize> {
        let Window3d { kernel: [kt, kh, kw], stride: [st, sh, sw], .. } = self.window;
        let [_, hp, wp] = self.phased;
        let (vol, phases) = (self.volume(), self.phases());
        let tap = move |ci: usize, a: usize, b: usize, c: usize| {
            let plane = ci * phases + ((a % st) * sh + b % sh) * sw + c % sw;
            plane * vol + ((a / st) * hp + b / sh) * wp + c / sw
        };
        (0..self.c)
            .flat_map(|ci| (0..kt).flat_map(move |a| (0..kh).flat_map(move |b| (0..kw).map(move |c| tap(ci, a, b, c)))))
            .collect()
    }

    /// The output times in runs that read the same taps of time inside the input (the others
    /// read its zero padding): `(first time, times, whether each tap of time is read)`. The
    /// first and last times of a padded window skip a tap or more.
    fn time_classes(&self) -> Vec<(usize, usize, Vec<bool>)> {
        let kt = self.window.kernel[0];
        let reads = |ot: usize| -> Vec<bool> {
            (0..kt).map(|k| self.window.tap_input(0, ot, k, self.input[0]).is_some()).collect()
        };
        #[cfg(test)]
        let reads = |ot: usize| if self.every_tap { vec![true; kt] } else { reads(ot) };
        let mut classes: Vec<(usize, usize, Vec<bool>)> = Vec::new();
        for ot in 0..self.out[0] {
            let taps = reads(ot);
            match classes.last_mut() {
                Some((_, times, last)) if *last == taps => *times += 1,
                _ => classes.push((ot, 1, taps)),
            }
        }
        classes
    }

    /// `y [B, O, To, Ho, Wo]`: the videos `x` (`[B, C, T, H, W]`) convolved with `w`
    /// (`[O, C · taps]`, taps time-major): the outputs alone, each where its window starts on
    /// the grid, in blocks of positions across the videos; each block's product,
    /// position-major, transposed into place. The output times whose windows reach into the
    /// padding of time (the first and last) skip the taps that read it: their weights are
    /// packed apart without those taps ([`ShiftedWeights::keeping`]), the same sums but for
    /// terms that are exactly zero (19 % of an i3d-resnet18's multiply-adds read padding,
    /// most of them in height and width, which the grid's blocks of positions do not
    /// separate).
    pub(super) fn convolve(&self, x: &[f32], (w, o): (&[f32], usize)) -> Vec<f32> {
        let offsets = self.offsets();
        let xp = self.pad_input(x, &offsets);
        let [_, ho, wo] = self.out;
        let [_, hp, wp] = self.phased;
        let (n, video) = (self.out.iter().product::<usize>(), self.c * self.phases() * self.volume());
        let total = self.b * n;
        let isa = molclip_cpu::isa();
        let k = offsets.len();
        let per_tap = self.window.kernel[1] * self.window.kernel[2];
        let taps = self.window.kernel[0] * per_tap;
        // Each class of output times: its packed weights (None: all of them), its taps'
        // offsets, and its runs of positions (a run per video). The weights are packed once,
        // and a class that skips taps drops their rows from that packing.
        let full = ShiftedWeights::new(isa, w, o, k);
        let classes: Vec<(Option<ShiftedWeights>, Vec<usize>, usize, usize)> = self
            .time_classes()
            .into_iter()
            .map(|(first, times, reads)| {
                let keep = |i: usize| reads[i % taps / per_tap];
                let packed = (!reads.iter().all(|&r| r)).then(|| full.dropping(keep));
                let offs = offsets.iter().enumerate().filter(|&(i, _)| keep(i)).map(|(_, &v)| v).collect();
                (packed, offs, first * ho * wo, times * ho * wo)
            })
            .collect();
        let (group, per_task) = split_product((o, k, full.panel_width()), total, xp.len());
        // Where output f (video-major) starts on the grid.
        let base = |f: usize| {
            let (bi, i) = (f / n, f % n);
            let (line, ow) = (i / wo, i % wo);
            bi * video + ((line / ho) * hp + line % ho) * wp + ow
        };
        let write = |y: &mut [std::mem::MaybeUninit<f32>]| {
            let dst = Shared(y.as_mut_ptr().cast::<f32>());
            // A class's positions are its run in each video, one after the other: position
            // q is output f(q). Blocks of at most per_task of them (across videos), by
            // groups of outputs.
            let f_of = |ci: usize, q: usize| {
                let (start, len) = (classes[ci].2, classes[ci].3);
                q / len * n + start + q % len
            };
            let tasks: Vec<(usize, usize, usize, usize)> = (0..classes.len())
                .flat_map(|ci| {
                    let all = self.b * classes[ci].3;
                    (0..all)
                        .step_by(per_task)
                        .flat_map(move |q0| (0..o).step_by(group).map(move |j0| (ci, q0, per_task.min(all - q0), j0)))
                })
                .collect();
            tasks.into_par_iter().for_each_init(
                || (vec![0f32; per_task * group], Vec::with_capacity(per_task)),
                |(tile, bases), (ci, q0, len, j0)| {
                    let width = group.min(o - j0);
                    let (w, offsets, class_len) =
                        (classes[ci].0.as_ref().unwrap_or(&full), &classes[ci].1, classes[ci].3);
                    bases.clear();
                    bases.extend((q0..q0 + len).map(|q| base(f_of(ci, q))));
                    shifted_gemm(w, &xp, (offsets, bases), j0..j0 + width, (tile, width));
                    // Output f of the block goes to y[(bi · O + j) · N + i], a run of the
                    // block's positions per video and output: 8 positions at a time as a
                    // transpose of their rows of outputs, the rest value by value.
                    let mut q = q0;
                    while q < q0 + len {
                        let f = f_of(ci, q);
                        let (bi, i0) = (f / n, f % n);
                        let run = (class_len - q % class_len).min(q0 + len - q);
                        let rows = &tile[(q - q0) * width..(q - q0 + run) * width];
                        // SAFETY: y holds B·O·N values; this task writes, for video bi and the
                        // outputs j0..j0 + width, the positions i0..i0 + run < N of its own
                        // block of positions and group of outputs, and the tasks' blocks and
                        // groups are disjoint: no other task writes these values. The level
                        // is molclip_cpu's, which runs here.
                        unsafe {
                            let to = dst.get().add((bi * o + j0) * n + i0);
                            let (whole, outputs) = (run / 8 * 8, width / 8 * 8);
                            // Eight outputs' planes at a time: eight streams of stores, which
                            // the level-1 cache holds even where the planes are a multiple of
                            // 4 KiB apart (the stem's: 49 x 4 KiB) and so share its sets.
                            for j in (0..outputs).step_by(8) {
                                for r0 in (0..whole).step_by(8) {
                                    let eight = std::array::from_fn(|k| &rows[(r0 + k) * width + j..][..8]);
                                    molclip_cpu::transpose_rows_into(isa, eight, to.add(j * n + r0), n);
                                }
                            }
                            for (r, row) in rows.chunks_exact(width).enumerate() {
                                let from = if r < whole { outputs } else { 0 };
                                for (j, &v) in row.iter().enumerate().skip(from) {
                                    *to.add(j * n + r) = v;
                                }
                            }
                        }
                        q += run;
                    }
                },
            );
        };
        // SAFETY: the classes' runs tile each video's N outputs, the tasks' blocks of a class's
        // positions tile its runs in every video, their groups the O channels, and each task
        // writes every output of its positions in its group: all B·O·N values.
        unsafe { crate::cpu::written_by(self.b * o * n, write) }
    }

    /// The weight gradient `[O, C · taps]` of the convolution of the videos `x` whose output
    /// gradient is `gy` (`[B, O, To, Ho, Wo]`): for each row of the (never built) window
    /// matrix, its dot product with each output channel's gradient, a line of outputs at a
    /// time (the line's gradient against the grid's positions it falls on), summed over the
    /// videos. Where the gradient is small ([`VIDEO_PARTS_MOST_WEIGHTS`]), the videos are
    /// split into parts, each summed in order by a task of its own, and the parts summed in
    /// order ([`Self::weight_grad_by_videos`]); elsewhere the rows are split among tasks and
    /// the videos summed in order. Neither split depends on the thread count.
    pub(super) fn weight_grad(&self, x: &[f32], gy: &[f32], o: usize) -> Vec<f32> {
        let offsets = self.offsets();
        let xp = self.pad_input(x, &offsets);
        let [to, ho, wo] = self.out;
        let [_, hp, wp] = self.phased;
        let (n, video, k) = (to * ho * wo, self.c * self.phases() * self.volume(), offsets.len());
        let runs: Vec<Run> =
            (0..to * ho).map(|l| Run { at_g: l * wo, at_src: ((l / ho) * hp + l % ho) * wp }).collect();
        let by_videos = o * k <= VIDEO_PARTS_MOST_WEIGHTS;
        #[cfg(test)]
        let by_videos = by_videos && !self.by_rows;
        if by_videos {
            return self.weight_grad_by_videos((&xp, video), (gy, n), (&offsets, &runs), o);
        }
        let mut panels = DotPanels::new(molclip_cpu::isa(), o, (&runs, wo));
        // One part of the rows per thread, whole tiles of rows each, as even as they come:
        // each part streams the video's packed gradient once, so more parts read it more.
        let tile = panels.rows_per_tile();
        let per_task = k.div_ceil(tile).div_ceil(rayon::current_num_threads()).max(1) * tile;
        let starts: Vec<usize> = (0..k).step_by(per_task).collect();
        // Zeroed by the tasks, in parallel (the first video's dot products set them).
        let mut parts: Vec<Vec<f32>> = starts.par_iter().map(|&r0| vec![0f32; o * (per_task.min(k - r0))]).collect();
        for bi in 0..self.b {
            // The video's output gradient, packed once for every task's rows.
            let panels = panels.pack((&gy[bi * o * n..], n));
            let src = &xp[bi * video..];
            parts.par_iter_mut().zip(&starts).for_each(|(part, &r0)| {
                let rows = r0..(r0 + per_task).min(k);
                let width = rows.len();
                shifted_dot(panels, src, &offsets, rows, (part, width), bi > 0);
            });
        }
        // Each output's row of gw gathered from the parts, the rows in parallel.
        let gather = |gw: &mut [MaybeUninit<f32>]| {
            gw.par_chunks_mut(k.max(1)).enumerate().for_each(|(oi, row)| {
                for (&r0, part) in starts.iter().zip(&parts) {
                    let width = part.len() / o.max(1);
                    crate::cpu::write_copy(&mut row[r0..r0 + width], &part[oi * width..(oi + 1) * width]);
                }
            })
        };
        // SAFETY: the parts' rows r0..r0 + width tile 0..k, so each output's row of k values is
        // written whole.
        unsafe { crate::cpu::written_by(o * k, gather) }
    }
}

/// Most values of a weight gradient that [`PaddedGrid::weight_grad`] sums by parts of the
/// videos (a part's sums take as many): the stem's (64 x 245) and the first two stages'
/// (up to 128 x 3,456). On a Xeon with 2 threads (scratch op timers, steady steps), the stem's
/// weight gradient went from 48-49 to 41 ms at AVX-512 and from 74 to 66 at AVX2, and
/// `layer1`'s four from 85 to 80 and from 147-148 to 141; `layer2`'s and `layer3`'s measured
/// the same either way. Split by rows, the two threads share each video's packed gradient
/// (the stem's is 13 MB) and wait for each other at every video, the stem's 21 register tiles
/// of rows splitting 11 to 10.
const VIDEO_PARTS_MOST_WEIGHTS: usize = 1 << 19;

/// Most parts of the videos in [`PaddedGrid::weight_grad_by_videos`].
const VIDEO_PARTS: usize = 8;

impl PaddedGrid {
    /// [`Self::weight_grad`] by parts of the videos: each part (a run of whole videos, as many
    /// parts as [`VIDEO_PARTS`] at most, set by the batch alone) packs each of its videos'
    /// gradients and sums every row's dot products over its videos in order, on one task; the
    /// parts' sums are then added in order, element by element.
    fn weight_grad_by_videos(
        &self,
        (xp, video): (&[f32], usize),
        (gy, n): (&[f32], usize),
        (offsets, runs): (&[usize], &[Run]),
        o: usize,
    ) -> Vec<f32> {
        let (k, wo) = (offsets.len(), self.out[2]);
        let parts = self.b.clamp(1, VIDEO_PARTS);
        // A panel buffer per job of rayon's, not per part: the packing overwrites it whole
        // (but for lanes past the last output, which stay zero), and zeroing a new one for
        // each part (the stem's takes 13 MB) is a pass through memory.
        let sums: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map_init(
                || DotPanels::new(molclip_cpu::isa(), o, (runs, wo)),
                |panels, p| {
                    let mut sum = vec![0f32; o * k];
                    let videos = p * self.b / parts..(p + 1) * self.b / parts;
                    for bi in videos.clone() {
                        let panels = panels.pack((&gy[bi * o * n..], n));
                        shifted_dot(panels, &xp[bi * video..], offsets, 0..k, (&mut sum, k), bi > videos.start);
                    }
                    sum
                },
            )
            .collect();
        super::sum_in_order(&sums.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }
}

/// The weights `[O, C, taps]` as the input gradient's convolution takes them, `[C, O · taps]`,
/// with the taps reversed (the kernel flipped along every axis).
pub(super) fn flipped(w: &[f32], o: usize, c: usize, taps: usize) -> Vec<f32> {
    assert_eq!(w.len(), o * c * taps, "flipped: {} weights for {o} x {c} x {taps}", w.len());
    let flip = |f: &mut [MaybeUninit<f32>]| {
        f.par_chunks_mut((o * taps).max(1)).enumerate().for_each(|(ci, row)| {
            for oi in 0..o {
                for t in 0..taps {
                    row[oi * taps + t].write(w[(oi * c + ci) * taps + taps - 1 - t]);
                }
            }
        })
    };
    // SAFETY: w holds O·C·taps values; each of the C rows of O·taps is written whole.
    unsafe { crate::cpu::written_by(w.len(), flip) }
}
