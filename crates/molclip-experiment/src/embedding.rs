//! Embedding a dataset's videos with a run, and the bridge from embeddings to the
//! evaluation: labels by id and rows as the evaluator takes them.

use std::path::{Path, PathBuf};

use molclip::candle_core::Device;
use molclip::train::{embed_cells, TrainedRun};
use molclip_core::IoError;
use molclip_data::annotation::drug_key;
use molclip_data::{CellVideo, DatasetIndex, Split};
use molclip_eval::{Embeddings, Metadata};

use crate::error::{ExperimentError, Result};
use crate::progress::{self, Progress};
use crate::run_dir::RunDir;

/// Videos per forward pass when embedding.
pub const EMBED_BATCH: usize = 32;

/// Scans a dataset (folder or manifest) and validates it.
pub fn open_dataset(data: &Path, progress: &dyn Progress) -> Result<DatasetIndex> {
    progress.start("scanning", 0);
    let index = DatasetIndex::open_with_progress(data, &progress::scan(progress));
    progress.finish();
    Ok(index?)
}

/// The evaluation's labels of `cells`: replicate number, drug and MoA ids.
pub fn metadata<'a>(cells: impl IntoIterator<Item = &'a CellVideo>) -> Metadata {
    let mut m = Metadata::default();
    for c in cells {
        m.replicate.push(c.replicate_number());
        m.drug.push(c.drug_id as u32);
        m.moa.push(c.moa_id.map_or(molclip_eval::NO_MOA, |m| m as u32));
    }
    m
}

/// Rows `picks` of the row-major `[N, dim]` matrix `rows`, as the evaluator takes them.
pub fn embeddings(rows: &[f32], dim: usize, picks: impl IntoIterator<Item = usize>) -> Result<Embeddings> {
    let mut e = Embeddings::empty(dim);
    for i in picks {
        let row: Vec<f64> = rows[i * dim..(i + 1) * dim].iter().map(|&v| v as f64).collect();
        e.push_row(&row).map_err(|reason| ExperimentError::Input(format!("embedding row {i}: {reason}")))?;
    }
    Ok(e)
}

/// Rows `picks` of the row-major `[N, dim]` matrix `values`.
pub fn gather(values: &[f32], dim: usize, picks: &[usize]) -> Vec<f32> {
    picks.iter().flat_map(|&i| &values[i * dim..(i + 1) * dim]).copied().collect()
}

/// The videos of `splits`, in that order; an empty split is an error naming it.
pub fn cells_of(index: &DatasetIndex, splits: &[Split]) -> Result<Vec<CellVideo>> {
    let mut cells = Vec::new();
    for &split in splits {
        let before = cells.len();
        cells.extend(index.split(split).cloned());
        if cells.len() == before {
            return Err(ExperimentError::Input(format!("{}: the split `{split}` is empty", index.root.display())));
        }
    }
    Ok(cells)
}

/// The splits `evaluate --run` embeds: query and gallery, and novel when there is one.
pub fn evaluation_splits(index: &DatasetIndex) -> Vec<Split> {
    let mut splits = vec![Split::Query, Split::Gallery];
    if index.split(Split::Novel).next().is_some() {
        splits.push(Split::Novel);
    }
    splits
}

/// The metadata of embedded videos, one entry per row: the `evaluate` schema (`set`,
/// `replicate`, `drug`, `moa`, empty outside the MoA task) and `path`, the cell's folder
/// relative to the dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddedMetadata {
    /// Each row's split.
    pub set: Vec<String>,
    /// Each row's replicate.
    pub replicate: Vec<String>,
    /// Each row's drug (its folder's name without the `_suffix`).
    pub drug: Vec<String>,
    /// Each row's MoA; empty outside the MoA task.
    pub moa: Vec<String>,
    /// Each row's cell folder, relative to the dataset.
    pub path: Vec<String>,
}

impl EmbeddedMetadata {
    /// The columns' names, in the CSV's order.
    pub const COLUMNS: [&str; 5] = ["set", "replicate", "drug", "moa", "path"];

    /// The labels of `cells` of `index`.
    pub fn of(index: &DatasetIndex, cells: &[CellVideo]) -> Self {
        let mut m = Self::default();
        for c in cells {
            // Empty outside the MoA task, which `evaluate` reads as drug identification only.
            m.set.push(c.split.name().to_string());
            m.replicate.push(c.replicate.clone());
            m.drug.push(drug_key(&c.drug_folder).to_string());
            m.moa.push(c.moa_id.map(|m| index.annotation.moa_name(m)).unwrap_or_default());
            m.path.push(c.dir.strip_prefix(&index.root).unwrap_or(&c.dir).to_string_lossy().into_owned());
        }
        m
    }

    /// The columns in [`Self::COLUMNS`]' order.
    pub fn columns(&self) -> [&[String]; 5] {
        [&self.set, &self.replicate, &self.drug, &self.moa, &self.path]
    }

    /// The metadata CSV.
    pub fn to_csv(&self) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(Self::COLUMNS).expect("writing to memory");
        for i in 0..self.set.len() {
            w.write_record(self.columns().map(|c| c[i].as_str())).expect("writing to memory");
        }
        w.into_inner().expect("writing to memory")
    }
}

/// Videos embedded with a run's model: the BNNeck features, `[n, dim]` row-major, and their
/// labels.
#[derive(Debug, Clone)]
pub struct EmbeddedVideos {
    /// The features.
    pub rows: Vec<f32>,
    /// Feature width.
    pub dim: usize,
    /// One entry per row.
    pub metadata: EmbeddedMetadata,
}

/// Embeds the videos of `splits` (in that order) with `trained`, `batch` at a time.
pub fn embed_dataset(
    trained: &TrainedRun,
    index: &DatasetIndex,
    splits: &[Split],
    batch: usize,
    progress: &dyn Progress,
) -> Result<EmbeddedVideos> {
    let cells = cells_of(index, splits)?;
    let metadata = EmbeddedMetadata::of(index, &cells);
    let dim = trained.video().dim();
    progress.start("embedding", cells.len() as u64);
    let rows = embed_cells(trained.video(), &trained.cfg, cells, &trained.device, trained.staging(), batch, &mut |k| {
        progress.advance(k as u64)
    });
    progress.finish();
    Ok(EmbeddedVideos { rows: rows?, dim, metadata })
}

/// Embeds the videos of `splits` with the run's model (the BNNeck feature) into `out`
/// (float32 `.npy`, `[N, D]`) and the metadata CSV beside it ([`EmbeddedMetadata`]);
/// returns the metadata's path.
pub fn embed_to_files(
    run: &RunDir,
    index: &DatasetIndex,
    splits: &[Split],
    out: &Path,
    device: &Device,
    batch: usize,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let trained = run.load(device)?;
    let embedded = embed_dataset(&trained, index, splits, batch, progress)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(IoError::at(parent))?;
    }
    molclip_eval::npy::write_npy_f32(out, embedded.metadata.set.len(), embedded.dim, &embedded.rows)?;
    let meta_path = out.with_extension("csv");
    molclip_core::write_atomic(&meta_path, &embedded.metadata.to_csv())?;
    Ok(meta_path)
}
