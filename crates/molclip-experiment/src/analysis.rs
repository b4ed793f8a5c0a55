//! What a report shows about one run, computed from the run and a dataset: metrics on the
//! query and gallery splits, the training curves, the embedding map, the MoA confusion of the
//! query videos, the temporal attention per MoA, and the novel drugs (by video vote and, for
//! MolCLIP, zero-shot from the structure alone).

use std::collections::BTreeSet;

use molclip::candle_core::Device;
use molclip::train::{TrainedRun, VideoEmbeddings};
use molclip_data::frames::sample_indices;
use molclip_data::{CellVideo, DatasetIndex, ShortVideoPolicy, Split};
use molclip_eval::TaskMetrics;
use molclip_report::plots::MapPoint;
use molclip_report::{Attention, Confusion, EmbeddingMap, NovelResult, RunResult, TaskResult, TsneConfig};

use crate::embedding::{embeddings, gather, metadata, EMBED_BATCH};
use crate::error::{ExperimentError, Result};
use crate::predict::{predict_smiles, reference};
use crate::progress::Progress;
use crate::reference::{zero_shot_accuracy, ZeroShot};
use crate::run_dir::RunDir;

/// Nearest gallery videos that vote on a video's MoA (confusion matrix, novel drugs).
pub const VOTERS: usize = 10;

/// What one run's analysis yields: the report's section and the zero-shot figures.
pub struct Analysis {
    /// The run's section of the report.
    pub result: RunResult,
    /// Zero-shot MoA of the novel drugs from their structure (MolCLIP runs with novel drugs).
    pub zero_shot: Option<ZeroShot>,
}

/// The MoA names by id, for the report's legends.
pub fn moa_names(index: &DatasetIndex) -> Vec<String> {
    let n = index.cells.iter().filter_map(|c| c.moa_id).max().map_or(0, |m| m + 1);
    (0..n).map(|m| index.annotation.moa_name(m)).collect()
}

/// The query, gallery and novel videos of a dataset, with the positions of each split.
struct Splits<'a> {
    cells: Vec<&'a CellVideo>,
    query: Vec<usize>,
    gallery: Vec<usize>,
    novel: Vec<usize>,
}

impl<'a> Splits<'a> {
    fn new(index: &'a DatasetIndex) -> Result<Self> {
        let cells: Vec<&CellVideo> =
            [Split::Query, Split::Gallery, Split::Novel].into_iter().flat_map(|s| index.split(s)).collect();
        let pick = |split: Split| -> Vec<usize> { (0..cells.len()).filter(|&i| cells[i].split == split).collect() };
        let (query, gallery, novel) = (pick(Split::Query), pick(Split::Gallery), pick(Split::Novel));
        if query.is_empty() || gallery.is_empty() {
            return Err(ExperimentError::Input(format!(
                "{}: the query and gallery splits are needed (query {}, gallery {})",
                index.root.display(),
                query.len(),
                gallery.len()
            )));
        }
        Ok(Self { cells, query, gallery, novel })
    }

    fn sub(&self, picks: &[usize]) -> Vec<&'a CellVideo> {
        picks.iter().map(|&i| self.cells[i]).collect()
    }
}

/// Embeds the query, gallery and novel videos with the run and computes every figure.
pub fn analyse_run(
    run: &RunDir,
    index: &DatasetIndex,
    device: &Device,
    seed: u64,
    progress: &dyn Progress,
) -> Result<Analysis> {
    let trained = run.load(device)?;
    let s = Splits::new(index)?;
    progress.start("embedding", s.cells.len() as u64);
    let e = trained
        .embed_videos(s.cells.iter().map(|c| (*c).clone()).collect(), EMBED_BATCH, &mut |k| progress.advance(k as u64));
    progress.finish();
    let e = e?;
    let (qm, gm) = (metadata(s.sub(&s.query)), metadata(s.sub(&s.gallery)));
    let q = embeddings(&e.feature, e.dim, s.query.iter().copied())?;
    let g = embeddings(&e.feature, e.dim, s.gallery.iter().copied())?;
    let ev = molclip_eval::evaluate(&q, &qm, &g, &gm, 20)?;
    let n_moas = moa_names(index).len();
    let mut counts = vec![vec![0usize; n_moas]; n_moas];
    for (i, p) in molclip_eval::query_moa_votes(&q, &qm, &g, &gm, VOTERS)?.into_iter().enumerate() {
        if let (Some(p), true) = (p, qm.moa[i] != molclip_eval::NO_MOA) {
            counts[qm.moa[i] as usize][p as usize] += 1;
        }
    }
    let method = format!(
        "each query video named by its {VOTERS} nearest gallery videos, its own drug in its own replicate left out"
    );
    let mut novel = None;
    let mut zero_shot = None;
    if !s.novel.is_empty() {
        let nm = metadata(s.sub(&s.novel));
        let n = embeddings(&e.feature, e.dim, s.novel.iter().copied())?;
        let votes = molclip_eval::novel_moa_votes(&n, &nm, &g, &gm, VOTERS)?;
        if !e.shared.is_empty() {
            zero_shot = zero_shot_novel(&trained, index, &e, &s)?;
        }
        novel = Some(NovelResult {
            drugs: votes.drugs.len(),
            video_vote: votes.drug_accuracy,
            zero_shot: zero_shot.as_ref().map(|z| [z.top1, z.top3, z.chance_top1, z.chance_top3]),
        });
    }
    let result = RunResult {
        name: run.root().display().to_string(),
        kind: trained.cfg.kind.name().to_string(),
        drug: task(&ev.drug),
        moa: task(&ev.moa),
        curves: run.read_curves().unwrap_or_default(),
        map: Some(embedding_map(&trained, index, &e, &s, seed)?),
        confusion: Some(Confusion { counts, method }),
        // One time step (a single frame) has nothing to weigh.
        attention: (e.steps > 1).then(|| attention(&e, &s, n_moas, trained.cfg.data.frames.frames)),
        novel,
        train_seconds: run.train_seconds(),
    };
    Ok(Analysis { result, zero_shot })
}

fn task(t: &TaskMetrics) -> TaskResult {
    TaskResult { map: t.map, rank1: t.rank1, rank5: t.rank5, rank10: t.rank10, cmc: t.cmc.clone() }
}

/// Mean temporal pooling weight per MoA and time step, over the query and gallery videos.
fn attention(e: &VideoEmbeddings, s: &Splits, n_moas: usize, frames: usize) -> Attention {
    let mut weights = vec![vec![0.0f64; e.steps]; n_moas];
    let mut seen = vec![0usize; n_moas];
    for (i, c) in s.cells.iter().enumerate().filter(|(_, c)| c.split != Split::Novel) {
        let Some(moa) = c.moa_id else { continue };
        seen[moa] += 1;
        for (w, a) in weights[moa].iter_mut().zip(&e.attention[i * e.steps..(i + 1) * e.steps]) {
            *w += *a as f64;
        }
    }
    for (row, n) in weights.iter_mut().zip(&seen) {
        row.iter_mut().for_each(|w| *w /= (*n).max(1) as f64);
    }
    Attention { steps: step_labels(&s.cells, frames, e.steps), weights }
}

/// The map: gallery videos; for MolCLIP in the shared space, with the drugs' molecules.
fn embedding_map(
    trained: &TrainedRun,
    index: &DatasetIndex,
    e: &VideoEmbeddings,
    s: &Splits,
    seed: u64,
) -> Result<EmbeddingMap> {
    let (space, source, dim) = if e.shared.is_empty() {
        ("the gallery videos' retrieval features (after BNNeck)", &e.feature, e.dim)
    } else {
        ("the gallery videos and the drugs' molecules in the shared (CLIP) space", &e.shared, e.shared_dim)
    };
    // The MoA task's gallery videos: the map is coloured by MoA.
    let gallery: Vec<(usize, usize)> = s.gallery.iter().filter_map(|&i| Some((i, s.cells[i].moa_id?))).collect();
    let picks: Vec<usize> = gallery.iter().map(|g| g.0).collect();
    let mut rows = gather(source, dim, &picks);
    let mut points: Vec<MapPoint> =
        gallery.iter().map(|&(_, moa)| MapPoint { x: 0.0, y: 0.0, category: moa, molecule: false }).collect();
    if !e.shared.is_empty() {
        let mut seen = BTreeSet::new();
        let mut smiles = Vec::new();
        for &(i, moa) in &gallery {
            let c = s.cells[i];
            if let Some(sm) = index.annotation.smiles(c.split, &c.drug_folder).filter(|_| seen.insert(c.drug_id)) {
                smiles.push(sm);
                points.push(MapPoint { x: 0.0, y: 0.0, category: moa, molecule: true });
            }
        }
        rows.extend(trained.embed_smiles(&smiles)?.0);
    }
    let xy = molclip_report::tsne(&rows, dim, &TsneConfig { seed, ..Default::default() })?;
    for (p, c) in points.iter_mut().zip(xy) {
        (p.x, p.y) = (c[0], c[1]);
    }
    Ok(EmbeddingMap { space: space.to_string(), points })
}

/// Zero-shot MoA of each novel drug from its SMILES alone, against the gallery's MoAs; on
/// the novel drugs with a known MoA and a SMILES (`None` when there are none).
fn zero_shot_novel(
    trained: &TrainedRun,
    index: &DatasetIndex,
    e: &VideoEmbeddings,
    s: &Splits,
) -> Result<Option<ZeroShot>> {
    let reference = reference(index, &e.shared, e.shared_dim, &s.cells, &s.gallery)?;
    let mut named = Vec::new();
    let mut truth = Vec::new();
    let mut done = BTreeSet::new();
    // Scored on the novel drugs whose MoA is known.
    for &i in &s.novel {
        let c = s.cells[i];
        let Some(moa) = c.moa_id else { continue };
        let Some(smiles) = index.annotation.smiles(c.split, &c.drug_folder) else { continue };
        if !done.insert(c.drug_id) {
            continue;
        }
        named.push((index.annotation.drug_name(c.split, &c.drug_folder), smiles));
        truth.push(index.annotation.moa_name(moa));
    }
    if named.is_empty() {
        return Ok(None);
    }
    Ok(Some(zero_shot_accuracy(&predict_smiles(trained, &reference, &named, 3)?, &truth)?))
}

/// The frames each of the encoder's time steps covers, as `first-last` (1-based).
pub fn step_labels(cells: &[&CellVideo], frames: usize, steps: usize) -> Vec<String> {
    let n = cells.first().map_or(frames, |c| c.n_frames);
    let picks =
        sample_indices(n, frames, ShortVideoPolicy::RepeatLast).unwrap_or_else(|_| (0..frames.max(1)).collect());
    (0..steps)
        .map(|s| {
            let (a, b) = (s * picks.len() / steps, ((s + 1) * picks.len() / steps).max(s * picks.len() / steps + 1));
            let (first, last) = (picks[a.min(picks.len() - 1)] + 1, picks[(b - 1).min(picks.len() - 1)] + 1);
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cell(n_frames: usize) -> CellVideo {
        CellVideo {
            dir: PathBuf::from("c"),
            replicate: "l1".into(),
            split: Split::Query,
            drug_folder: "1".into(),
            drug_id: 1,
            moa_id: Some(0),
            source: molclip_data::index::FrameSource::Files(Vec::new()),
            n_frames,
            width: 8,
            height: 8,
        }
    }

    #[test]
    fn time_steps_name_the_frames_they_cover() {
        let c = cell(16);
        // 16 frames, 4 steps (time halved twice): 4 frames each.
        assert_eq!(step_labels(&[&c], 16, 4), ["1-4", "5-8", "9-12", "13-16"]);
        // 8 of 16 frames sampled evenly, 2 steps: frames 1,3,..,7 then 10,..,16.
        assert_eq!(step_labels(&[&c], 8, 2), ["1-7", "10-16"]);
        // One frame per step.
        assert_eq!(step_labels(&[&cell(3)], 3, 3), ["1", "2", "3"]);
    }
}
