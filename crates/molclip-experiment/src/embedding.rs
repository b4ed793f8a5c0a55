//! Embedding a dataset's videos with a run, and the bridge from embeddings to the
//! evaluation: labels by id and rows as the evaluator takes them.

use std::path::{Path, PathBuf};

use molclip::candle_core::Device;
use molclip::train::embed_cells;
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

/// Embeds the videos of `splits` with the run's model (the BNNeck feature) into `out`
/// (float32 `.npy`, `[N, D]`) and the metadata CSV beside it (`set,replicate,drug,moa,path`,
/// the `evaluate` schema; `moa` is empty outside the MoA task, `path` is the cell's folder
/// relative to the dataset); returns the metadata's path.
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
    let cells = cells_of(index, splits)?;
    let mut metadata = csv::Writer::from_writer(Vec::new());
    let header = ["set", "replicate", "drug", "moa", "path"];
    metadata.write_record(header).expect("writing to memory");
    for c in &cells {
        // Empty outside the MoA task, which `evaluate` reads as drug identification only.
        let moa = c.moa_id.map(|m| index.annotation.moa_name(m)).unwrap_or_default();
        let path = c.dir.strip_prefix(&index.root).unwrap_or(&c.dir);
        let fields = [c.split.name(), &c.replicate, drug_key(&c.drug_folder), &moa, &path.to_string_lossy()];
        metadata.write_record(fields).expect("writing to memory");
    }
    let metadata = metadata.into_inner().expect("writing to memory");
    let (n, dim) = (cells.len(), trained.video().dim());
    progress.start("embedding", n as u64);
    let rows = embed_cells(trained.video(), &trained.cfg, cells, device, batch, &mut |k| progress.advance(k as u64));
    progress.finish();
    let rows = rows?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(IoError::at(parent))?;
    }
    molclip_eval::npy::write_npy_f32(out, n, dim, &rows)?;
    let meta_path = out.with_extension("csv");
    molclip_core::write_atomic(&meta_path, &metadata)?;
    Ok(meta_path)
}
