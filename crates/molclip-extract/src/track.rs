//! Tracks: cells linked from frame to frame by an optimal assignment (the Hungarian
//! method) on overlap and centroid distance. A track missing from up to `max_gap` frames
//! is picked up again; a cell no track can take starts a new one.

use std::collections::HashMap;

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;

use crate::config::TrackConfig;
use crate::segment::Segmentation;

/// One tracked cell: its label in each frame where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// `(frame, label)`, frames increasing.
    pub detections: Vec<(usize, u32)>,
}

impl Track {
    /// First frame.
    pub fn first(&self) -> usize {
        self.detections[0].0
    }
    /// Last frame.
    pub fn last(&self) -> usize {
        self.detections[self.detections.len() - 1].0
    }
    /// Frames from the first to the last, gaps included.
    pub fn span(&self) -> usize {
        self.last() - self.first() + 1
    }
}

/// Pixels shared by each pair of labels of two label images.
fn overlaps(a: &[u32], b: &[u32]) -> HashMap<(u32, u32), usize> {
    let mut counts = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        if x != 0 && y != 0 {
            *counts.entry((x, y)).or_insert(0) += 1;
        }
    }
    counts
}

/// Costs are scaled to integers for the assignment.
const SCALE: f64 = 1e6;
/// The cost of leaving a track or a cell unmatched: a link must cost less.
const UNMATCHED: f64 = 1.0;
/// What forbids a link.
const FORBIDDEN: i64 = 1 << 40;

/// Links the cells of `frames` into tracks.
pub fn track(frames: &[Segmentation], cfg: &TrackConfig) -> Vec<Track> {
    let mut tracks: Vec<Track> = Vec::new();
    let Some(first) = frames.first() else { return tracks };
    tracks.extend(first.cells.iter().map(|c| Track { detections: vec![(0, c.label)] }));
    for t in 1..frames.len() {
        let current = &frames[t];
        let open: Vec<usize> =
            (0..tracks.len()).filter(|&k| tracks[k].last() < t && t - tracks[k].last() <= cfg.max_gap + 1).collect();
        // Overlaps with each earlier frame an open track was last seen in.
        let mut shared: HashMap<usize, HashMap<(u32, u32), usize>> = HashMap::new();
        for &k in &open {
            let last = tracks[k].last();
            shared.entry(last).or_insert_with(|| overlaps(&frames[last].labels, &current.labels));
        }
        let (m, n) = (open.len(), current.cells.len());
        let size = m + n;
        // Rows: open tracks, then one "new track" row per cell. Columns: cells, then one
        // "track ends" column per track. Unmatched pairs cost UNMATCHED each.
        let mut costs = vec![FORBIDDEN; size * size];
        for (r, &k) in open.iter().enumerate() {
            let (last, label) = *tracks[k].detections.last().expect("a track has a detection");
            let before = &frames[last].cells[label as usize - 1];
            let gap = (t - last - 1) as f64;
            for (j, cell) in current.cells.iter().enumerate() {
                let d = ((before.centroid[0] - cell.centroid[0]).powi(2)
                    + (before.centroid[1] - cell.centroid[1]).powi(2))
                .sqrt();
                if d > cfg.max_distance * (1.0 + gap) {
                    continue;
                }
                let common = shared[&last].get(&(label, cell.label)).copied().unwrap_or(0) as f64;
                let iou = common / ((before.area + cell.area) as f64 - common);
                let cost = (1.0 - iou) * 0.5 + 0.5 * d / (cfg.max_distance * (1.0 + gap)) + 0.2 * gap;
                if cost < 2.0 * UNMATCHED {
                    costs[r * size + j] = (cost * SCALE) as i64;
                }
            }
            costs[r * size + n + r] = (UNMATCHED * SCALE) as i64;
        }
        for j in 0..n {
            costs[(m + j) * size + j] = (UNMATCHED * SCALE) as i64;
            for r in 0..m {
                costs[(m + j) * size + n + r] = 0;
            }
        }
        if size == 0 {
            continue;
        }
        let matrix = Matrix::from_vec(size, size, costs).expect("a square matrix");
        let (_, assignment) = kuhn_munkres_min(&matrix);
        let mut taken = vec![false; n];
        for (r, &k) in open.iter().enumerate() {
            let j = assignment[r];
            if j < n && matrix[(r, j)] < FORBIDDEN {
                tracks[k].detections.push((t, current.cells[j].label));
                taken[j] = true;
            }
        }
        for (j, cell) in current.cells.iter().enumerate() {
            if !taken[j] {
                tracks.push(Track { detections: vec![(t, cell.label)] });
            }
        }
    }
    tracks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::measure;

    /// A frame of squares of side 6 at the given top-left corners, labelled in order.
    fn frame(corners: &[(usize, usize)]) -> Segmentation {
        let (w, h) = (60, 60);
        let mut labels = vec![0u32; w * h];
        for (k, &(x0, y0)) in corners.iter().enumerate() {
            for y in y0..y0 + 6 {
                for x in x0..x0 + 6 {
                    labels[y * w + x] = k as u32 + 1;
                }
            }
        }
        measure(labels, w, h, 1)
    }

    #[test]
    fn cells_keep_their_tracks_and_a_gap_is_bridged() {
        // One cell moving right, one moving left; the second is missed at frame 2.
        let frames = vec![
            frame(&[(10, 10), (30, 40)]),
            frame(&[(14, 10), (26, 40)]),
            frame(&[(18, 10)]),
            frame(&[(18, 40), (22, 10)]),
        ];
        let cfg = TrackConfig { max_distance: 10.0, max_gap: 1 };
        let tracks = track(&frames, &cfg);
        assert_eq!(tracks.len(), 2, "{tracks:?}");
        let centre = |t: usize, l: u32| frames[t].cells[l as usize - 1].centroid[0];
        // The first moves right all along; the second moves left and skips frame 2.
        let xs: Vec<f64> = tracks[0].detections.iter().map(|&(t, l)| centre(t, l)).collect();
        assert_eq!(xs, vec![12.5, 16.5, 20.5, 24.5]);
        let ys: Vec<usize> = tracks[1].detections.iter().map(|&(t, _)| t).collect();
        assert_eq!(ys, vec![0, 1, 3]);
        assert_eq!(tracks[1].span(), 4);
    }

    #[test]
    fn a_far_cell_starts_a_new_track() {
        let frames = vec![frame(&[(10, 10)]), frame(&[(40, 40)])];
        let tracks = track(&frames, &TrackConfig { max_distance: 10.0, max_gap: 1 });
        assert_eq!(tracks.len(), 2);
    }
}
