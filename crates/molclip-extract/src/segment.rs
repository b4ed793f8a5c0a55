//! Cells in one frame: nuclei from w1 (smoothing, Otsu's threshold, distance-transform
//! seeds split touching nuclei), then each cell by a watershed on the smoothed w2 + w3
//! image seeded by its nucleus, inside the cell foreground.

use std::collections::VecDeque;

use image::{GrayImage, Luma};
use imageproc::region_labelling::{connected_components, Connectivity};

use crate::config::SegmentConfig;

/// One cell of a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellRegion {
    /// Its label in [`Segmentation::labels`].
    pub label: u32,
    /// Its label before [`measure`] renumbered it (a track id, in masks that carry them).
    pub source: u32,
    /// Pixels.
    pub area: usize,
    /// Mean (x, y) of its pixels.
    pub centroid: [f64; 2],
    /// Bounding box: x0, y0, x1, y1 (exclusive).
    pub bbox: [usize; 4],
}

/// A frame's cells: a label image (0 background, cells from 1) and each cell's measures.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// Width of the label image.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Row-major labels.
    pub labels: Vec<u32>,
    /// `cells[label - 1]`.
    pub cells: Vec<CellRegion>,
}

/// Separable Gaussian smoothing (edges clamp).
pub fn gaussian(image: &[f32], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    let kernel: Vec<f32> = {
        let k: Vec<f32> =
            (0..=2 * radius).map(|i| (-((i as f32 - radius as f32).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
        let total: f32 = k.iter().sum();
        k.iter().map(|v| v / total).collect()
    };
    // Rows: pad each row by clamping, then convolve.
    let mut rows = vec![0.0f32; image.len()];
    let mut padded = vec![0.0f32; width + 2 * radius];
    for y in 0..height {
        let src = &image[y * width..(y + 1) * width];
        padded[..radius].fill(src[0]);
        padded[radius..radius + width].copy_from_slice(src);
        padded[radius + width..].fill(src[width - 1]);
        let dst = &mut rows[y * width..(y + 1) * width];
        for (x, d) in dst.iter_mut().enumerate() {
            *d = kernel.iter().zip(&padded[x..x + 2 * radius + 1]).map(|(k, v)| k * v).sum();
        }
    }
    // Columns: whole rows at a time, so the inner loop runs along memory.
    let mut out = vec![0.0f32; image.len()];
    for y in 0..height {
        let dst = &mut out[y * width..(y + 1) * width];
        for (j, k) in kernel.iter().enumerate() {
            let yy = (y + j).saturating_sub(radius).min(height - 1);
            let src = &rows[yy * width..(yy + 1) * width];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += k * s;
            }
        }
    }
    out
}

/// Otsu's threshold of `values`, over 256 bins between their minimum and maximum.
pub fn otsu(values: &[f32]) -> f32 {
    let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if !(hi > lo) {
        return hi;
    }
    let scale = 255.0 / (hi - lo);
    let quantised =
        GrayImage::from_fn(values.len() as u32, 1, |x, _| Luma([((values[x as usize] - lo) * scale) as u8]));
    let level = imageproc::contrast::otsu_level(&quantised);
    // Pixels above `level` are foreground: the threshold sits at the top of its bin.
    lo + (level as f32 + 1.0) / scale
}

/// A binary image as imageproc's grey image (255 where `mask`).
fn to_gray(mask: &[bool], width: usize, height: usize) -> GrayImage {
    GrayImage::from_fn(width as u32, height as u32, |x, y| {
        Luma([if mask[y as usize * width + x as usize] { 255 } else { 0 }])
    })
}

/// The 8-connected components of `mask` of at least `min_area` pixels, measured; smaller
/// ones are removed from `mask`.
fn components(mask: &mut [bool], width: usize, height: usize, min_area: usize) -> Segmentation {
    let labels = connected_components(&to_gray(mask, width, height), Connectivity::Eight, Luma([0u8])).into_raw();
    let kept = measure(labels, width, height, min_area);
    for (m, &l) in mask.iter_mut().zip(&kept.labels) {
        *m = l != 0;
    }
    kept
}

/// Euclidean distance from each pixel of `mask` (`width` x `height`) to the nearest pixel
/// outside it.
fn distance_inside(mask: &[bool], width: usize, height: usize) -> Vec<f32> {
    let outside = GrayImage::from_fn(width as u32, height as u32, |x, y| {
        Luma([if mask[y as usize * width + x as usize] { 0 } else { 255 }])
    });
    let squared = imageproc::distance_transform::euclidean_squared_distance_transform(&outside);
    squared.as_raw().iter().map(|&d| (d as f32).sqrt()).collect()
}

/// Maximum over a (2r + 1)-square window (edges clamp), separably.
fn max_filter(image: &[f32], width: usize, height: usize, r: usize) -> Vec<f32> {
    let mut rows = vec![0.0f32; image.len()];
    for y in 0..height {
        let src = &image[y * width..(y + 1) * width];
        for x in 0..width {
            let (a, b) = (x.saturating_sub(r), (x + r + 1).min(width));
            rows[y * width + x] = src[a..b].iter().copied().fold(f32::MIN, f32::max);
        }
    }
    let mut out = vec![f32::MIN; image.len()];
    for y in 0..height {
        let (a, b) = (y.saturating_sub(r), (y + r + 1).min(height));
        let dst = &mut out[y * width..(y + 1) * width];
        for yy in a..b {
            for (d, s) in dst.iter_mut().zip(&rows[yy * width..(yy + 1) * width]) {
                *d = d.max(*s);
            }
        }
    }
    out
}

/// The distance transform of every nucleus (`depth`, 0 outside) and seed labels: the
/// plateaus of its local maxima over `seed_radius`, searched within each nucleus alone (a
/// neighbour's deeper centre never suppresses a nucleus' own seed), at least
/// `min_seed_depth` deep. Works nucleus by nucleus, in each one's bounding box.
fn seeds(nuclei: &Segmentation, cfg: &SegmentConfig) -> (Vec<f32>, Vec<u32>) {
    let (labels, width, height) = (&nuclei.labels, nuclei.width, nuclei.height);
    let mut depth = vec![0.0f32; labels.len()];
    let mut seeds = vec![0u32; labels.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for &CellRegion { label: l, bbox: b, .. } in &nuclei.cells {
        // The box, one pixel wider where the field allows, so that its edge is background.
        let (x0, y0) = (b[0].saturating_sub(1), b[1].saturating_sub(1));
        let (x1, y1) = ((b[2] + 1).min(width), (b[3] + 1).min(height));
        let (w, h) = (x1 - x0, y1 - y0);
        let at = |x: usize, y: usize| (y0 + y) * width + x0 + x;
        let mine: Vec<bool> = (0..w * h).map(|i| labels[at(i % w, i / w)] == l).collect();
        let d = distance_inside(&mine, w, h);
        let masked: Vec<f32> = d.iter().zip(&mine).map(|(&v, &m)| if m { v } else { f32::MIN }).collect();
        let peak = max_filter(&masked, w, h, cfg.seed_radius);
        let is_seed: Vec<bool> = (0..w * h).map(|i| mine[i] && d[i] >= cfg.min_seed_depth && d[i] >= peak[i]).collect();
        let mut labelled = vec![false; w * h];
        for i in 0..w * h {
            if mine[i] {
                depth[at(i % w, i / w)] = d[i];
            }
            if !is_seed[i] || labelled[i] {
                continue;
            }
            // A new plateau: flood its 8-connected seed pixels.
            next += 1;
            labelled[i] = true;
            stack.push(i);
            while let Some(j) = stack.pop() {
                let (x, y) = (j % w, j / w);
                seeds[at(x, y)] = next;
                for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let k = ny as usize * w + nx as usize;
                    if is_seed[k] && !labelled[k] {
                        labelled[k] = true;
                        stack.push(k);
                    }
                }
            }
        }
    }
    (depth, seeds)
}

/// Grey levels a watershed floods by.
const LEVELS: usize = 1024;

/// Seeded watershed: floods `labels` (seeds non-zero) over `mask`, lowest `elevation`
/// first, 4-connected, first come first served within a level (a FIFO per level).
/// Pixels of `mask` no seed reaches stay 0.
pub fn watershed(elevation: &[f32], labels: &mut [u32], mask: &[bool], width: usize, height: usize) {
    let (lo, hi) = elevation
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .fold((f32::MAX, f32::MIN), |(lo, hi), (&v, _)| (lo.min(v), hi.max(v)));
    let scale = if hi > lo { (LEVELS - 1) as f32 / (hi - lo) } else { 0.0 };
    let level = |i: usize| (((elevation[i] - lo) * scale).max(0.0) as usize).min(LEVELS - 1);
    let mut queues: Vec<VecDeque<u32>> = vec![VecDeque::new(); LEVELS];
    let mut queued = vec![false; labels.len()];
    for i in 0..labels.len() {
        if labels[i] != 0 {
            queued[i] = true;
            queues[level(i)].push_back(i as u32);
        }
    }
    for current in 0..LEVELS {
        while let Some(i) = queues[current].pop_front() {
            let i = i as usize;
            let (x, y) = (i % width, i / width);
            let label = labels[i];
            let mut visit = |j: usize| {
                if mask[j] && !queued[j] {
                    queued[j] = true;
                    labels[j] = label;
                    queues[level(j).max(current)].push_back(j as u32);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - width);
            }
            if y + 1 < height {
                visit(i + width);
            }
        }
    }
}

/// Segments one frame of three stains (w1, w2, w3), each `width * height` in [0, 1].
pub fn segment(stains: &[Vec<f32>; 3], width: usize, height: usize, cfg: &SegmentConfig) -> Segmentation {
    let n = width * height;
    // Nuclei: smooth, threshold, drop debris.
    let w1 = gaussian(&stains[0], width, height, cfg.nucleus_sigma);
    let t = otsu(&w1) * cfg.nucleus_threshold;
    let mut nuclei: Vec<bool> = w1.iter().map(|&v| v > t).collect();
    let components = components(&mut nuclei, width, height, cfg.min_nucleus_area);
    // Seeds: plateaus of the distance transform's local maxima, one per nucleus unless two
    // are joined by a neck; a watershed on the distance splits them there.
    let (depth, mut labels) = seeds(&components, cfg);
    let negative: Vec<f32> = depth.iter().map(|d| -d).collect();
    watershed(&negative, &mut labels, &nuclei, width, height);
    // Cells: the nuclei grow over the cell foreground, through the valleys of the inverted
    // cell image (membranes between touching cells are dim).
    let [a, b] = cfg.cell_weights;
    let mixed: Vec<f32> = stains[1].iter().zip(&stains[2]).map(|(m, c)| a * m + b * c).collect();
    let body = gaussian(&mixed, width, height, cfg.cell_sigma);
    let t = otsu(&body) * cfg.cell_threshold;
    let foreground: Vec<bool> = (0..n).map(|i| body[i] > t || labels[i] != 0).collect();
    let inverted: Vec<f32> = body.iter().map(|v| -v).collect();
    watershed(&inverted, &mut labels, &foreground, width, height);
    measure(labels, width, height, cfg.min_cell_area)
}

/// Drops regions smaller than `min_area`, renumbers the rest from 1 in order of first
/// appearance, and measures them.
pub fn measure(mut labels: Vec<u32>, width: usize, height: usize, min_area: usize) -> Segmentation {
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut area = vec![0usize; max + 1];
    for &l in &labels {
        area[l as usize] += 1;
    }
    let mut renumber = vec![0u32; max + 1];
    let mut cells: Vec<CellRegion> = Vec::new();
    let mut sums: Vec<[f64; 2]> = Vec::new();
    for (i, l) in labels.iter_mut().enumerate() {
        let old = *l as usize;
        if old == 0 || area[old] < min_area {
            *l = 0;
            continue;
        }
        if renumber[old] == 0 {
            cells.push(CellRegion {
                label: cells.len() as u32 + 1,
                source: old as u32,
                area: area[old],
                centroid: [0.0; 2],
                bbox: [usize::MAX, usize::MAX, 0, 0],
            });
            sums.push([0.0; 2]);
            renumber[old] = cells.len() as u32;
        }
        *l = renumber[old];
        let k = *l as usize - 1;
        let (x, y) = (i % width, i / width);
        sums[k][0] += x as f64;
        sums[k][1] += y as f64;
        let b = &mut cells[k].bbox;
        *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
    }
    for (c, s) in cells.iter_mut().zip(&sums) {
        c.centroid = [s[0] / c.area as f64, s[1] / c.area as f64];
    }
    Segmentation { width, height, labels, cells }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_keeps_a_constant_and_spreads_a_point_symmetrically() {
        let flat = gaussian(&vec![0.5; 20 * 10], 20, 10, 2.0);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut point = vec![0.0; 21 * 21];
        point[10 * 21 + 10] = 1.0;
        let g = gaussian(&point, 21, 21, 1.5);
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!((g[10 * 21 + 12] - g[12 * 21 + 10]).abs() < 1e-7 && (g[10 * 21 + 8] - g[10 * 21 + 12]).abs() < 1e-7);
    }

    #[test]
    fn otsu_splits_two_levels() {
        let mut v = vec![0.1f32; 600];
        v.extend(vec![0.7f32; 400]);
        let t = otsu(&v);
        assert!(t > 0.1 && t < 0.7, "{t}");
    }

    #[test]
    fn watershed_splits_two_touching_discs_at_their_neck() {
        // Two discs of radius 8 whose centres are 14 apart: one mask, two nuclei.
        let (w, h) = (40, 24);
        let disc = |x: usize, y: usize, cx: f64| ((x as f64 - cx).powi(2) + (y as f64 - 12.0).powi(2)).sqrt() < 8.0;
        let w1: Vec<f32> =
            (0..w * h).map(|i| if disc(i % w, i / w, 12.0) || disc(i % w, i / w, 26.0) { 1.0 } else { 0.0 }).collect();
        let cfg = SegmentConfig { nucleus_sigma: 0.5, min_cell_area: 10, ..SegmentConfig::default() };
        let s = segment(&[w1.clone(), vec![0.0; w * h], w1], w, h, &cfg);
        assert_eq!(s.cells.len(), 2, "{:?}", s.cells);
        let (a, b) = (s.cells[0], s.cells[1]);
        assert!((a.centroid[0] - 12.0).abs() < 1.5 && (b.centroid[0] - 26.0).abs() < 1.5, "{a:?} {b:?}");
        assert!(a.area.abs_diff(b.area) * 10 < a.area, "{a:?} {b:?}");
    }

    #[test]
    fn a_deeper_neighbouring_nucleus_does_not_take_a_small_nucleus_seed() {
        // Two separate nuclei, radii 10 and 3.3, two pixels apart along a diagonal: the big
        // one is deeper than the small one within the small one's seed window, so a maximum
        // filter over the whole field would find no seed in the small one.
        let (w, h) = (40, 40);
        let disc = |i: usize, c: f64, r: f64| (((i % w) as f64 - c).powi(2) + ((i / w) as f64 - c).powi(2)).sqrt() < r;
        let w1: Vec<f32> =
            (0..w * h).map(|i| if disc(i, 14.0, 10.0) || disc(i, 25.0, 3.3) { 1.0 } else { 0.0 }).collect();
        let cfg = SegmentConfig { nucleus_sigma: 0.5, min_cell_area: 10, ..SegmentConfig::default() };
        let s = segment(&[w1.clone(), vec![0.0; w * h], w1], w, h, &cfg);
        assert_eq!(s.cells.len(), 2, "{:?}", s.cells);
        assert!((s.cells[1].centroid[0] - 25.0).abs() < 1.5, "{:?}", s.cells);
    }

    #[test]
    fn measure_drops_small_regions_and_renumbers() {
        let labels = vec![0, 5, 5, 5, 2, 0, 5, 9, 9];
        let s = measure(labels, 3, 3, 2);
        assert_eq!(s.labels, vec![0, 1, 1, 1, 0, 0, 1, 2, 2]);
        assert_eq!(s.cells[0].area, 4);
        assert_eq!(s.cells[0].bbox, [0, 0, 3, 3]);
        assert_eq!(s.cells[1].centroid, [1.5, 2.0]);
    }
}
