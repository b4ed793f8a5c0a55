//! `molclip report`: gathers, for each run, what the report shows (metrics on the query and
//! gallery splits, curves, the embedding map, MoA confusion, attention, novel drugs) and
//! hands it to molclip-report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use molclip::predict::{zero_shot_accuracy, Prediction, Reference, ZeroShot};
use molclip::train::{TrainedRun, VideoEmbeddings};
use molclip_data::frames::sample_indices;
use molclip_data::{CellVideo, DatasetIndex};
use molclip_eval::TaskMetrics;
use molclip_report::plots::MapPoint;
use molclip_report::{Attention, Confusion, CurvePoint, EmbeddingMap, NovelResult, Report, RunResult, TaskResult, TsneConfig};

use crate::progress;
use crate::train::{embeddings, metadata, open_dataset};

#[derive(Args)]
pub struct ReportArgs {
    /// Run folders written by `molclip train`, in the order the table compares them
    /// (each row's gain is over the row above).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The dataset whose query, gallery and novel videos are embedded (default: the one
    /// the first run was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "molclip report")]
    title: String,
}

/// Nearest gallery videos that vote on a video's MoA (confusion matrix, novel drugs).
pub const VOTERS: usize = 10;

/// The dataset a run was trained on, as `molclip train` recorded it.
pub fn trained_on(run: &Path) -> Result<PathBuf> {
    let path = run.join("data.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: no record of the run's dataset; pass --data", path.display()))?;
    Ok(PathBuf::from(text.trim()))
}

fn task(t: &TaskMetrics) -> TaskResult {
    TaskResult { map: t.map, rank1: t.rank1, rank5: t.rank5, rank10: t.rank10, cmc: t.cmc.clone() }
}

/// The training log of a run (`metrics.csv`).
pub fn read_curves(run: &Path) -> Result<Vec<CurvePoint>> {
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (step, loss) = (col("step").context("metrics.csv: no step column")?, col("loss").context("metrics.csv: no loss column")?);
    let terms: Vec<(usize, &str)> = ["clip", "triplet", "ce", "center"].iter().filter_map(|t| col(t).map(|c| (c, *t))).collect();
    let (vd, vm) = (col("val_drug_map"), col("val_moa_map"));
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Option<f64> { f.get(c).and_then(|v| v.parse().ok()) };
        let (Some(s), Some(l)) = (num(step), num(loss)) else {
            bail!("{}: line {}: expected numbers in the step and loss columns", path.display(), n + 2);
        };
        let validation = match (vd.and_then(num), vm.and_then(num)) {
            (Some(d), Some(m)) => Some((d, m)),
            _ => None,
        };
        out.push(CurvePoint { step: s, loss: l, terms: terms.iter().filter_map(|&(c, t)| num(c).map(|v| (t.to_string(), v))).collect(), validation });
    }
    Ok(out)
}

/// The frames each of the encoder's time steps covers, as `first-last` (1-based).
fn step_labels(cells: &[&CellVideo], frames: usize, steps: usize) -> Vec<String> {
    let n = cells.first().map_or(frames, |c| c.n_frames);
    let picks = sample_indices(n, frames, molclip_data::ShortVideoPolicy::RepeatLast).unwrap_or_else(|_| (0..frames.max(1)).collect());
    (0..steps)
        .map(|s| {
            let (a, b) = (s * picks.len() / steps, ((s + 1) * picks.len() / steps).max(s * picks.len() / steps + 1));
            let (first, last) = (picks[a.min(picks.len() - 1)] + 1, picks[(b - 1).min(picks.len() - 1)] + 1);
            if first == last { first.to_string() } else { format!("{first}-{last}") }
        })
        .collect()
}

/// What one run's analysis yields: the report's section and the zero-shot figures.
pub struct Analysis {
    pub result: RunResult,
    pub zero_shot: Option<ZeroShot>,
}

/// Embeds the query, gallery and novel videos with the run and computes every figure.
pub fn analyse_run(run: &Path, index: &DatasetIndex, device: &str, quiet: bool, seed: u64) -> Result<Analysis> {
    let device = molclip::parse_device(device)?;
    let trained = TrainedRun::load(run, &device).with_context(|| format!("loading the run {}", run.display()))?;
    let cells: Vec<&CellVideo> = ["query", "gallery", "novel"].iter().flat_map(|s| index.split(s)).collect();
    let pick = |split: &str| -> Vec<usize> { (0..cells.len()).filter(|&i| cells[i].split == split).collect() };
    let (qi, gi, ni) = (pick("query"), pick("gallery"), pick("novel"));
    if qi.is_empty() || gi.is_empty() {
        bail!("{}: the query and gallery splits are needed (query {}, gallery {})", index.root.display(), qi.len(), gi.len());
    }
    let bar = progress::bar(cells.len() as u64, "embedding", quiet);
    let e: VideoEmbeddings = trained.embed_videos(cells.iter().map(|c| (*c).clone()).collect(), 32, &mut |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    let sub = |idx: &[usize]| -> Vec<&CellVideo> { idx.iter().map(|&i| cells[i]).collect() };
    let (qm, gm) = (metadata(sub(&qi)), metadata(sub(&gi)));
    let (q, g) = (embeddings(&e.feature, e.dim, qi.iter().copied())?, embeddings(&e.feature, e.dim, gi.iter().copied())?);
    let ev = molclip_eval::evaluate(&q, &qm, &g, &gm, 20)?;

    let n_moas = moa_names(index).len();
    let mut counts = vec![vec![0usize; n_moas]; n_moas];
    for (i, p) in molclip_eval::query_moa_votes(&q, &qm, &g, &gm, VOTERS)?.into_iter().enumerate() {
        if let Some(p) = p {
            counts[qm.moa[i] as usize][p as usize] += 1;
        }
    }
    let confusion = Confusion { counts, method: format!("each query video named by its {VOTERS} nearest gallery videos, its own drug in its own replicate left out") };

    let mut weights = vec![vec![0.0f64; e.steps]; n_moas];
    let mut seen = vec![0usize; n_moas];
    for (i, c) in cells.iter().enumerate().filter(|(_, c)| c.split != "novel") {
        seen[c.moa_id] += 1;
        for (w, a) in weights[c.moa_id].iter_mut().zip(&e.attention[i * e.steps..(i + 1) * e.steps]) {
            *w += *a as f64;
        }
    }
    for (row, n) in weights.iter_mut().zip(&seen) {
        row.iter_mut().for_each(|w| *w /= (*n).max(1) as f64);
    }
    let attention = Attention { steps: step_labels(&cells, trained.cfg.data.frames.frames, e.steps), weights };

    // The map: gallery videos; for MolCLIP in the shared space, with the molecules.
    let smiles_of = |c: &CellVideo| index.annotation.lookup(&c.drug_folder).and_then(|r| r.smiles.clone()).filter(|s| !s.is_empty());
    let (space, source, dim) = if e.shared.is_empty() {
        ("the gallery videos' retrieval features (after BNNeck)", &e.feature, e.dim)
    } else {
        ("the gallery videos and the drugs' molecules in the shared (CLIP) space", &e.shared, e.shared_dim)
    };
    let mut rows = gather(source, dim, &gi);
    let mut points: Vec<MapPoint> = gi.iter().map(|&i| MapPoint { x: 0.0, y: 0.0, category: cells[i].moa_id, molecule: false }).collect();
    if !e.shared.is_empty() {
        let mut drugs: Vec<(&CellVideo, String)> = Vec::new();
        for &i in &gi {
            if !drugs.iter().any(|(c, _)| c.drug_id == cells[i].drug_id) {
                if let Some(s) = smiles_of(cells[i]) {
                    drugs.push((cells[i], s));
                }
            }
        }
        let smiles: Vec<&str> = drugs.iter().map(|(_, s)| s.as_str()).collect();
        rows.extend(trained.embed_smiles(&smiles)?.0);
        points.extend(drugs.iter().map(|(c, _)| MapPoint { x: 0.0, y: 0.0, category: c.moa_id, molecule: true }));
    }
    let xy = molclip_report::tsne(&rows, dim, &TsneConfig { seed, ..Default::default() })?;
    for (p, c) in points.iter_mut().zip(xy) {
        (p.x, p.y) = (c[0], c[1]);
    }

    let mut novel = None;
    let mut zero_shot = None;
    if !ni.is_empty() {
        let nm = metadata(sub(&ni));
        let n = embeddings(&e.feature, e.dim, ni.iter().copied())?;
        let votes = molclip_eval::novel_moa_votes(&n, &nm, &g, &gm, VOTERS)?;
        if !e.shared.is_empty() {
            zero_shot = Some(zero_shot_novel(&trained, index, &e, &cells, &gi, &ni)?);
        }
        novel = Some(NovelResult {
            drugs: votes.drugs.len(),
            video_vote: votes.drug_accuracy,
            zero_shot: zero_shot.as_ref().map(|z| [z.top1, z.top3, z.chance_top1, z.chance_top3]),
        });
    }
    let result = RunResult {
        name: run.display().to_string(),
        kind: kind_name(&trained),
        drug: task(&ev.drug),
        moa: task(&ev.moa),
        curves: read_curves(run).unwrap_or_default(),
        map: Some(EmbeddingMap { space: space.to_string(), points }),
        confusion: Some(confusion),
        // One time step (a single frame) has nothing to weigh.
        attention: (e.steps > 1).then_some(attention),
        novel,
        train_seconds: crate::train::train_seconds(run),
    };
    Ok(Analysis { result, zero_shot })
}

pub fn kind_name(run: &TrainedRun) -> String {
    toml::Value::try_from(run.cfg.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{:?}", run.cfg.kind))
}

/// Rows `picks` of the row-major `[N, dim]` matrix `values`.
fn gather(values: &[f32], dim: usize, picks: &[usize]) -> Vec<f32> {
    picks.iter().flat_map(|&i| &values[i * dim..(i + 1) * dim]).copied().collect()
}

/// Rows `picks` of the row-major `[N, dim]` matrix `values`, labelled with their cells' drug
/// and MoA names: what queries are ranked against.
pub fn reference(index: &DatasetIndex, values: &[f32], dim: usize, cells: &[&CellVideo], picks: &[usize]) -> Result<Reference> {
    let drugs: Vec<String> = picks.iter().map(|&i| drug_name(index, cells[i])).collect();
    let moas: Vec<String> = picks.iter().map(|&i| index.annotation.moa_name(cells[i].moa_id)).collect();
    Ok(Reference::new(&gather(values, dim, picks), dim, &drugs, &moas)?)
}

/// Zero-shot: each named SMILES embedded by the molecule encoder (in one batch) and ranked
/// against `reference`, which must be in the shared space.
pub fn predict_smiles(trained: &TrainedRun, reference: &Reference, named: &[(String, &str)], nearest: usize) -> Result<Vec<Prediction>> {
    let smiles: Vec<&str> = named.iter().map(|(_, s)| *s).collect();
    let (emb, dim) = trained.embed_smiles(&smiles)?;
    named.iter().zip(emb.chunks(dim)).map(|((name, _), row)| Ok(reference.predict(name, row, nearest)?)).collect()
}

/// A drug's name from the annotation, or its folder.
pub fn drug_name(index: &DatasetIndex, c: &CellVideo) -> String {
    index.annotation.lookup(&c.drug_folder).and_then(|r| r.name.clone()).unwrap_or_else(|| c.drug_folder.clone())
}

/// Zero-shot MoA of each novel drug from its SMILES alone, against the gallery's MoAs.
fn zero_shot_novel(trained: &TrainedRun, index: &DatasetIndex, e: &VideoEmbeddings, cells: &[&CellVideo], gallery: &[usize], novel: &[usize]) -> Result<ZeroShot> {
    let reference = reference(index, &e.shared, e.shared_dim, cells, gallery)?;
    let mut named = Vec::new();
    let mut truth = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for &i in novel {
        let c = cells[i];
        if !done.insert(c.drug_id) {
            continue;
        }
        let record = index.annotation.lookup(&c.drug_folder).context("a novel drug without an annotation row")?;
        let smiles = record.smiles.as_deref().filter(|s| !s.is_empty()).with_context(|| format!("novel drug `{}`: no SMILES in the annotation", record.index))?;
        named.push((drug_name(index, c), smiles));
        truth.push(index.annotation.moa_name(c.moa_id));
    }
    Ok(zero_shot_accuracy(&predict_smiles(trained, &reference, &named, 3)?, &truth)?)
}

/// The MoA names by id, for the report's legends.
pub fn moa_names(index: &DatasetIndex) -> Vec<String> {
    let n = index.cells.iter().map(|c| c.moa_id).max().map_or(0, |m| m + 1);
    (0..n).map(|m| index.annotation.moa_name(m)).collect()
}

pub fn report(args: ReportArgs, quiet: bool) -> Result<()> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => trained_on(&args.runs[0])?,
    };
    let index = open_dataset(&data, quiet)?;
    let mut runs = Vec::new();
    for run in &args.runs {
        runs.push(analyse_run(run, &index, &args.device, quiet, 0)?.result);
    }
    let report = Report {
        title: args.title.clone(),
        summary: vec![format!("dataset {} ({} videos)", data.display(), index.cells.len())],
        moas: moa_names(&index),
        runs,
        montage_png: molclip_data::montage::montage_png(&index).ok(),
    };
    molclip_report::write(&report, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(n_frames: usize) -> CellVideo {
        CellVideo {
            dir: PathBuf::from("c"),
            replicate: "l1".into(),
            split: "query".into(),
            drug_folder: "1".into(),
            drug_id: 1,
            moa_id: 0,
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

    #[test]
    fn curves_read_back_from_metrics_csv() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.csv"),
            "step,stage,identity,epoch,lr,loss,clip,triplet,ce,center,temperature,grad_norm,val_drug_map,val_moa_map\n\
             0,0,drug,0,0.001,5.5,,0.3,2.5,,,1.0,,\n\
             1,0,drug,0,0.001,4.5,,0.2,2.0,,,1.0,20.5000,40.2500\n",
        )
        .unwrap();
        let c = read_curves(dir.path()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].step, c[1].loss), (1.0, 4.5));
        assert_eq!(c[0].terms, vec![("triplet".to_string(), 0.3), ("ce".to_string(), 2.5)]);
        assert_eq!((c[0].validation, c[1].validation), (None, Some((20.5, 40.25))));
        std::fs::write(dir.path().join("metrics.csv"), "step,loss\nx,1\n").unwrap();
        assert!(read_curves(dir.path()).unwrap_err().to_string().contains("line 2"));
    }
}
