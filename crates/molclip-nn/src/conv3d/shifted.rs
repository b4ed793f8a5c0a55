//! Convolutions on the grid of their zero-padded input, without a window matrix
//! (`molclip_cpu::shifted`): the forward pass and the weight gradient (strided windows on the
//! input split into the phases of the stride), and for stride 1 the input gradient, which is
//! then the same convolution of the zero-padded output gradient with the kernel flipped and
//! its channels swapped.

use molclip_cpu::shifted::MAX_TILE;
use molclip_cpu::{shifted_dot, shifted_gemm, DotPanels, Run, Shared, ShiftedWeights};
use rayon::prelude::*;

use super::Window3d;

/// Positions per task: the task's outputs `[O, positions]` stay in the level-2 cache.
fn positions_per_task(outputs: usize) -> usize {
    (65536 / outputs.max(1)).clamp(64, 1024) / MAX_TILE * MAX_TILE
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
/// the same to the bit, but fewer positions of the grid are not outputs: 28 x 28 frames on a
/// 29 x 29 grid instead of 30 x 30 (the positions the product computes and drops fall from
/// 13 % to 7 %), 14 x 14 from 23 % to 13 %, and 7 x 7 frames (8 x 8) become dense enough to
/// run on.
#[derive(Clone, Copy, Debug)]
pub(super) struct PaddedGrid {
    b: usize,
    c: usize,
    input: [usize; 3],
    window: Window3d,
    /// The dims of one phase's plane, and the outputs'.
    phased: [usize; 3],
    out: [usize; 3],
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
        Some(Self { b, c, input, window, phased, out })
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

    /// The output dims (time, height, width).
    pub(super) fn out(&self) -> [usize; 3] {
        self.out
    }

    /// Whether the grid is dense enough in outputs to run on: the product computes every
    /// position of a video's grid through its last output, and drops those past a line or a
    /// plane. The first layers' grids are 87 to 94 % outputs (28 x 28 frames on a 29 x 29
    /// grid), the third stage's 77 % (7 x 7 on 8 x 8); the deepest ones' are not (4 x 4 on
    /// 5 x 5: 64 %), and their products run faster on a window matrix.
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
    /// leading zeros a next plane would have) and the slack the products' last vectors read
    /// ([`MAX_TILE`] values; `shifted_dot` reads none). `offsets` are [`Self::offsets`].
    fn pad_input(&self, x: &[f32], offsets: &[usize]) -> Vec<f32> {
        let [t, h, w] = self.input;
        let [_, hp, wp] = self.phased;
        let ([st, sh, sw], [pt, ph, pw]) = (self.window.stride, self.window.padding);
        let vol = self.volume();
        let planes = self.phases() * vol;
        let video = self.c * planes;
        let last_read = offsets.iter().max().map_or(0, |m| m + self.span());
        let mut xp = vec![0f32; self.b.saturating_sub(1) * video + video.max(last_read) + MAX_TILE];
        xp[..self.b * self.c * planes].par_chunks_mut(planes).zip(x.par_chunks(t * h * w)).for_each(|(dst, src)| {
            for (l, line) in src.chunks_exact(w).enumerate() {
                let (it, ih) = (l / h + pt, l % h + ph);
                let row = ((it % st) * sh + ih % sh) * sw;
                let at = ((it / st) * hp + ih / sh) * wp;
                if sw == 1 {
                    dst[row * vol + at + pw..][..w].copy_from_slice(line);
                } else {
                    for (iw, &v) in line.iter().enumerate() {
                        let iw = iw + pw;
                        dst[(row + iw % sw) * vol + at + iw / sw] = v;
                    }
                }
            }
        });
        xp
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

    /// `y [B, O, To, Ho, Wo]`: the videos `x` (`[B, C, T, H, W]`) convolved with `w`
    /// (`[O, C · taps]`, taps time-major, packed).
    pub(super) fn convolve(&self, x: &[f32], w: &ShiftedWeights) -> Vec<f32> {
        let o = w.outputs();
        let offsets = self.offsets();
        let xp = self.pad_input(x, &offsets);
        let [to, ho, wo] = self.out;
        let [_, hp, wp] = self.phased;
        let (n, span, video) = (to * ho * wo, self.span(), self.c * self.phases() * self.volume());
        let per_task = positions_per_task(o);
        let tasks: Vec<(usize, usize)> =
            (0..self.b).flat_map(|bi| (0..span).step_by(per_task).map(move |q0| (bi, q0))).collect();
        let write = |y: &mut [std::mem::MaybeUninit<f32>]| {
            let dst = Shared(y.as_mut_ptr().cast::<f32>());
            tasks.into_par_iter().for_each_init(
                || vec![0f32; o * per_task],
                |tile, (bi, q0)| {
                    let len = per_task.min(span - q0);
                    shifted_gemm(w, &xp[bi * video + q0..], &offsets, len, tile, per_task);
                    // The grid's lines (ot, oh) this block of positions meets; of each, the outputs
                    // ow < Wo inside the block.
                    for line in q0 / wp..=(q0 + len - 1) / wp {
                        let (ot, oh) = (line / hp, line % hp);
                        let (lo, hi) = ((line * wp).max(q0), (line * wp + wo).min(q0 + len));
                        if ot >= to || oh >= ho || lo >= hi {
                            continue;
                        }
                        let first = (ot * ho + oh) * wo + lo - line * wp;
                        for oi in 0..o {
                            let from = &tile[oi * per_task + lo - q0..oi * per_task + hi - q0];
                            // SAFETY: y holds B·O·N values; this task writes, for video bi, the
                            // outputs of the lines its block of grid positions covers, and the
                            // blocks of a video are disjoint: no other task writes these values.
                            unsafe {
                                let to_ptr = dst.get().add((bi * o + oi) * n + first);
                                std::ptr::copy_nonoverlapping(from.as_ptr(), to_ptr, from.len());
                            }
                        }
                    }
                },
            );
        };
        // SAFETY: the tasks' blocks of positions tile each video's grid through its last
        // output, and each block writes the outputs of every line it meets: all B·O·N values.
        unsafe { crate::cpu::written_by(self.b * o * n, write) }
    }

    /// The weight gradient `[O, C · taps]` of the convolution of the videos `x` whose output
    /// gradient is `gy` (`[B, O, To, Ho, Wo]`): for each row of the (never built) window
    /// matrix, its dot product with each output channel's gradient, a line of outputs at a
    /// time (the line's gradient against the grid's positions it falls on), summed over the
    /// videos in order. The rows are split among tasks, which changes no bit.
    pub(super) fn weight_grad(&self, x: &[f32], gy: &[f32], o: usize) -> Vec<f32> {
        let offsets = self.offsets();
        let xp = self.pad_input(x, &offsets);
        let [to, ho, wo] = self.out;
        let [_, hp, wp] = self.phased;
        let (n, video, k) = (to * ho * wo, self.c * self.phases() * self.volume(), offsets.len());
        let runs: Vec<Run> =
            (0..to * ho).map(|l| Run { at_g: l * wo, at_src: ((l / ho) * hp + l % ho) * wp }).collect();
        let level = molclip_cpu::isa();
        let per_task = k.div_ceil(2 * rayon::current_num_threads()).next_multiple_of(12);
        let starts: Vec<usize> = (0..k).step_by(per_task).collect();
        let mut parts: Vec<Vec<f32>> = starts.iter().map(|&r0| vec![0f32; o * (per_task.min(k - r0))]).collect();
        let mut panels = DotPanels::new(level, o, (&runs, wo));
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
        let parts = starts.into_iter().zip(parts);
        let mut gw = vec![0f32; o * k];
        for (r0, part) in parts {
            let width = part.len() / o.max(1);
            for (oi, row) in part.chunks_exact(width.max(1)).enumerate() {
                gw[oi * k + r0..oi * k + r0 + width].copy_from_slice(row);
            }
        }
        gw
    }
}

/// The weights `[O, C, taps]` as the input gradient's convolution takes them, `[C, O · taps]`,
/// with the taps reversed (the kernel flipped along every axis).
pub(super) fn flipped(w: &[f32], o: usize, c: usize, taps: usize) -> Vec<f32> {
    let mut f = vec![0f32; w.len()];
    f.par_chunks_mut(o * taps).enumerate().for_each(|(ci, row)| {
        for oi in 0..o {
            for t in 0..taps {
                row[oi * taps + t] = w[(oi * c + ci) * taps + taps - 1 - t];
            }
        }
    });
    f
}
