//! How hard is a dataset, and where does its signal live? Nearest-neighbour
//! MoA accuracy (gallery against train) on three handcrafted feature sets:
//!
//! - (a) `last_frame_histogram`: the intensity histogram of the last frame;
//! - (b) `brightness_trajectory`: the mean intensity of every frame;
//! - (c) `texture_shape_trajectory`: per-frame texture and shape features
//!   (bright area, fragment count, edge density, spread around the centroid,
//!   frame-to-frame change, contrast), each normalised against brightness.
//!
//! If (a) or (b) name the MoA, the data leak it through brightness; if (c)
//! reaches 100%, nothing is left to learn.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::DataError;
use crate::frames::{read_video, Video};
use crate::index::{CellVideo, DatasetIndex};

/// How hard the MoA task is for simple features (nearest neighbour, gallery against train).
#[derive(Debug, Clone, Serialize)]
pub struct DifficultyReport {
    /// Training videos.
    pub train_cells: usize,
    /// Gallery videos.
    pub gallery_cells: usize,
    /// MoAs.
    pub moas: usize,
    /// Accuracy of always answering the most common gallery MoA, percent.
    pub majority_baseline: f64,
    /// 1 / number of MoAs, percent.
    pub chance: f64,
    /// Accuracy (%) with the last frame's intensity histogram.
    pub last_frame_histogram: f64,
    /// Accuracy (%) with the mean intensity over time.
    pub brightness_trajectory: f64,
    /// Accuracy (%) with texture and shape over time.
    pub texture_shape_trajectory: f64,
}

const HIST_BINS: usize = 32;

struct Features {
    histogram: Vec<f64>,
    brightness: Vec<f64>,
    texture: Vec<f64>,
}

fn features(video: &Video) -> Features {
    let last = video.frames.last().expect("videos have frames");
    let mut histogram = vec![0.0; HIST_BINS];
    for &v in last {
        histogram[((v * HIST_BINS as f32) as usize).min(HIST_BINS - 1)] += 1.0 / last.len() as f64;
    }
    let brightness = video.frames.iter().map(|f| f.iter().map(|&v| v as f64).sum::<f64>() / f.len() as f64).collect();
    let mut texture = Vec::new();
    let mut previous: Option<Vec<f64>> = None;
    for frame in &video.frames {
        let f = frame_texture(frame, video.width, video.height);
        let normalised: Vec<f64> = {
            let mean = frame.iter().map(|&v| v as f64).sum::<f64>() / frame.len() as f64;
            frame.iter().map(|&v| v as f64 / mean.max(1e-6)).collect()
        };
        let change = previous
            .as_ref()
            .map_or(0.0, |p| p.iter().zip(&normalised).map(|(a, b)| (a - b).abs()).sum::<f64>() / p.len() as f64);
        texture.extend(f);
        texture.push(change);
        previous = Some(normalised);
    }
    Features { histogram, brightness, texture }
}

/// Brightness-invariant texture and shape of one frame.
fn frame_texture(frame: &[f32], w: usize, h: usize) -> [f64; 5] {
    let n = frame.len() as f64;
    let mean = frame.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (frame.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let threshold = (mean + std) as f32;
    let mask: Vec<bool> = frame.iter().map(|&v| v > threshold).collect();
    let area = mask.iter().filter(|&&m| m).count().max(1) as f64;
    // Connected bright fragments (4-connectivity).
    let mut seen = vec![false; mask.len()];
    let mut fragments = 0usize;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        fragments += 1;
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1)
            }
            if x + 1 < w {
                visit(i + 1)
            }
            if y > 0 {
                visit(i - w)
            }
            if y + 1 < h {
                visit(i + w)
            }
        }
    }
    let mut gradient = 0.0;
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            let i = y * w + x;
            gradient += ((frame[i + 1] - frame[i]).abs() + (frame[i + w] - frame[i]).abs()) as f64;
        }
    }
    let (mut cx, mut cy) = (0.0, 0.0);
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        cx += (i % w) as f64;
        cy += (i / w) as f64;
    }
    let (cx, cy) = (cx / area, cy / area);
    let spread = mask
        .iter()
        .enumerate()
        .filter(|(_, &m)| m)
        .map(|(i, _)| (((i % w) as f64 - cx).powi(2) + ((i / w) as f64 - cy).powi(2)).sqrt())
        .sum::<f64>()
        / area;
    [area / n, fragments as f64 / area.sqrt(), gradient / n / mean.max(1e-6), spread / (w as f64), std / mean.max(1e-6)]
}

fn standardise(train: &mut [Vec<f64>], test: &mut [Vec<f64>]) {
    let d = train.first().map_or(0, |v| v.len());
    for k in 0..d {
        let n = train.len() as f64;
        let mean = train.iter().map(|v| v[k]).sum::<f64>() / n;
        let sd = (train.iter().map(|v| (v[k] - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-9);
        for v in train.iter_mut().chain(test.iter_mut()) {
            v[k] = (v[k] - mean) / sd;
        }
    }
}

/// Percent of test vectors whose nearest train vector has the same label.
pub fn nearest_neighbour_accuracy(
    mut train: Vec<Vec<f64>>,
    train_labels: &[usize],
    mut test: Vec<Vec<f64>>,
    test_labels: &[usize],
) -> f64 {
    standardise(&mut train, &mut test);
    let correct = test
        .par_iter()
        .zip(test_labels)
        .filter(|(q, &label)| {
            let best = train
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t.iter().zip(q.iter()).map(|(a, b)| (a - b).powi(2)).sum::<f64>()))
                .fold((0, f64::MAX), |b, x| if x.1 < b.1 { x } else { b });
            train_labels[best.0] == label
        })
        .count();
    100.0 * correct as f64 / test.len().max(1) as f64
}

/// Measures [`DifficultyReport`] on a dataset's train and gallery splits.
pub fn difficulty(index: &DatasetIndex) -> Result<DifficultyReport, DataError> {
    let load = |cells: Vec<&CellVideo>| -> Result<(Vec<Features>, Vec<usize>), DataError> {
        let feats = cells.par_iter().map(|c| read_video(c).map(|v| features(&v))).collect::<Result<Vec<_>, _>>()?;
        Ok((feats, cells.iter().filter_map(|c| c.moa_id).collect()))
    };
    // The MoA task's videos only.
    let task = |split| index.split(split).filter(|c| c.moa_id.is_some()).collect();
    let (train, train_y) = load(task(molclip_core::Split::Train))?;
    let (gallery, gallery_y) = load(task(molclip_core::Split::Gallery))?;
    if train.is_empty() || gallery.is_empty() {
        return Err(DataError::invalid(&index.root, "difficulty needs cells in both train and gallery"));
    }
    let pick = |f: &[Features], g: fn(&Features) -> Vec<f64>| f.iter().map(g).collect::<Vec<_>>();
    let acc = |g: fn(&Features) -> Vec<f64>| {
        nearest_neighbour_accuracy(pick(&train, g), &train_y, pick(&gallery, g), &gallery_y)
    };
    let moas: std::collections::BTreeSet<usize> = gallery_y.iter().copied().collect();
    let majority = moas.iter().map(|m| gallery_y.iter().filter(|&&y| y == *m).count()).max().unwrap_or(0);
    Ok(DifficultyReport {
        train_cells: train.len(),
        gallery_cells: gallery.len(),
        moas: moas.len(),
        majority_baseline: 100.0 * majority as f64 / gallery_y.len() as f64,
        chance: 100.0 / moas.len() as f64,
        last_frame_histogram: acc(|f| f.histogram.clone()),
        brightness_trajectory: acc(|f| f.brightness.clone()),
        texture_shape_trajectory: acc(|f| f.texture.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_neighbour_on_separable_and_identical_data() {
        let train = vec![vec![0.0, 0.0], vec![10.0, 10.0]];
        let test = vec![vec![1.0, 0.5], vec![9.0, 11.0], vec![0.2, 0.1]];
        assert_eq!(nearest_neighbour_accuracy(train.clone(), &[0, 1], test.clone(), &[0, 1, 0]), 100.0);
        let acc = nearest_neighbour_accuracy(train, &[0, 1], test, &[1, 1, 1]);
        assert!((acc - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn texture_counts_fragments_independently_of_brightness() {
        let (w, h) = (16, 16);
        let mut frame = vec![0.1f32; w * h];
        for &(x, y) in &[(2, 2), (10, 10), (2, 12)] {
            frame[y * w + x] = 0.9;
        }
        let bright: Vec<f32> = frame.iter().map(|v| v * 0.5).collect();
        let a = frame_texture(&frame, w, h);
        let b = frame_texture(&bright, w, h);
        assert!((a[1] - 3.0 / 3f64.sqrt()).abs() < 1e-9, "{a:?}");
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }
}
