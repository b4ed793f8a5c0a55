//! Extraction measured against ground truth, as the Cell Tracking Challenge measures it:
//! detection F1 at IoU 0.5, SEG (the Jaccard index of each true cell with the predicted
//! cell that covers more than half of it, 0 when none does), and the share of true tracks
//! present in every frame that one predicted track follows whole.

use std::collections::HashMap;

/// Counts over frames and fields; add them up with [`Score::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// True cells matched at IoU > 0.5.
    pub true_positives: usize,
    /// Predicted cells matching no true cell.
    pub false_positives: usize,
    /// True cells matching no predicted cell.
    pub false_negatives: usize,
    /// Sum of the true cells' Jaccard indices (SEG's numerator).
    pub jaccard_sum: f64,
    /// True cells (SEG's denominator).
    pub true_cells: usize,
    /// True tracks in every frame that one predicted track follows, matched in every frame.
    pub whole_recovered: usize,
    /// True tracks present in every frame.
    pub whole_tracks: usize,
}

impl Score {
    /// Adds another field's counts.
    pub fn add(&mut self, other: &Score) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
        self.jaccard_sum += other.jaccard_sum;
        self.true_cells += other.true_cells;
        self.whole_recovered += other.whole_recovered;
        self.whole_tracks += other.whole_tracks;
    }
    /// Detection F1 at IoU 0.5.
    pub fn f1(&self) -> f64 {
        let tp = self.true_positives as f64;
        2.0 * tp / (2.0 * tp + self.false_positives as f64 + self.false_negatives as f64).max(1.0)
    }
    /// SEG: the mean Jaccard index over true cells.
    pub fn seg(&self) -> f64 {
        self.jaccard_sum / self.true_cells.max(1) as f64
    }
    /// Share of whole true tracks recovered whole.
    pub fn tracks_recovered(&self) -> f64 {
        self.whole_recovered as f64 / self.whole_tracks.max(1) as f64
    }
}

fn areas(labels: &[u32]) -> HashMap<u32, usize> {
    let mut a = HashMap::new();
    for &l in labels.iter().filter(|&&l| l != 0) {
        *a.entry(l).or_insert(0) += 1;
    }
    a
}

/// Scores one field: `truth[t]` and `predicted[t]` are label images of frame `t` whose
/// labels are track ids (the same cell has the same label in every frame). Both hold the
/// same number of frames.
pub fn score_field(truth: &[Vec<u32>], predicted: &[Vec<u32>]) -> Score {
    assert_eq!(truth.len(), predicted.len(), "frames of the truth and of the prediction");
    let mut score = Score::default();
    // Per frame: true label -> predicted label matched at IoU > 0.5.
    let mut matched: Vec<HashMap<u32, u32>> = Vec::with_capacity(truth.len());
    // Frames each true label is present in.
    let mut present: HashMap<u32, usize> = HashMap::new();
    for (gt, pr) in truth.iter().zip(predicted) {
        let (ga, pa) = (areas(gt), areas(pr));
        for &g in ga.keys() {
            *present.entry(g).or_insert(0) += 1;
        }
        let mut common: HashMap<(u32, u32), usize> = HashMap::new();
        for (&g, &p) in gt.iter().zip(pr) {
            if g != 0 && p != 0 {
                *common.entry((g, p)).or_insert(0) += 1;
            }
        }
        let mut frame_matches = HashMap::new();
        for (&(g, p), &c) in &common {
            let union = ga[&g] + pa[&p] - c;
            let iou = c as f64 / union as f64;
            // SEG: a predicted cell covering more than half of the true one.
            if 2 * c > ga[&g] {
                score.jaccard_sum += iou;
            }
            // IoU > 0.5 pairs are one-to-one.
            if iou > 0.5 {
                frame_matches.insert(g, p);
            }
        }
        score.true_cells += ga.len();
        score.true_positives += frame_matches.len();
        score.false_negatives += ga.len() - frame_matches.len();
        score.false_positives += pa.len() - frame_matches.len();
        matched.push(frame_matches);
    }
    // Whole tracks: true ids present in every frame.
    for (g, _) in present.into_iter().filter(|&(_, n)| n == truth.len()) {
        score.whole_tracks += 1;
        let first = matched.first().and_then(|m| m.get(&g)).copied();
        if first.is_some() && matched.iter().all(|m| m.get(&g).copied() == first) {
            score.whole_recovered += 1;
        }
    }
    score
}

/// Reads a multi-page label TIFF (8-, 16- or 32-bit grey): one label image per page.
pub fn read_label_stack(path: &std::path::Path) -> Result<Vec<Vec<u32>>, crate::ExtractError> {
    let bad = |e: tiff::TiffError| crate::ExtractError::invalid(path, format!("not a readable label TIFF: {e}"));
    let file = std::fs::File::open(path).map_err(crate::ExtractError::io(path))?;
    let mut decoder = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).map_err(bad)?;
    let mut pages = Vec::new();
    loop {
        let (w, h) = decoder.dimensions().map_err(bad)?;
        if w as u64 * h as u64 > crate::raw::MAX_FIELD_PIXELS {
            return Err(crate::ExtractError::invalid(path, format!("{w}x{h}: larger than a field may be")));
        }
        pages.push(match decoder.read_image().map_err(bad)? {
            tiff::decoder::DecodingResult::U8(v) => v.into_iter().map(u32::from).collect(),
            tiff::decoder::DecodingResult::U16(v) => v.into_iter().map(u32::from).collect(),
            tiff::decoder::DecodingResult::U32(v) => v,
            _ => return Err(crate::ExtractError::invalid(path, "expected 8-, 16- or 32-bit integer labels")),
        });
        if !decoder.more_images() {
            return Ok(pages);
        }
        decoder.next_image().map_err(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_made_case() {
        // Frame 0: truth cells 1 (4 px) and 2 (4 px); prediction 7 covers 1 exactly, 8 covers
        // half of 2 plus 2 pixels of background (IoU 2/6), 9 is a false positive.
        // Frame 1: both found exactly, but 2 by another predicted id than at frame 0.
        let truth = vec![vec![1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0], vec![1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]];
        let pred = vec![vec![7, 7, 7, 7, 8, 8, 0, 0, 8, 8, 9], vec![7, 7, 7, 7, 5, 5, 5, 5, 0, 0, 0]];
        let s = score_field(&truth, &pred);
        assert_eq!((s.true_positives, s.false_positives, s.false_negatives), (3, 2, 1));
        // Cell 2 at frame 0: 8 covers exactly half, not more: Jaccard 0.
        assert_eq!(s.true_cells, 4);
        assert!((s.seg() - 0.75).abs() < 1e-12);
        assert!((s.f1() - 6.0 / 9.0).abs() < 1e-12);
        // Cell 1 followed by 7 throughout; cell 2 missed at frame 0.
        assert_eq!((s.whole_recovered, s.whole_tracks), (1, 2));
    }
}
