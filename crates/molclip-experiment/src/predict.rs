//! `predict`: the MoA of new videos against a run's gallery, or of a new drug from its
//! structure alone (zero-shot, MolCLIP runs) through the shared embedding space.

use std::path::Path;

use molclip::train::TrainedRun;
use molclip_data::{CellVideo, DatasetIndex, Split};

use crate::embedding::{gather, EMBED_BATCH};
use crate::error::{ExperimentError, Result};
use crate::progress::Progress;
use crate::reference::{Prediction, Reference};

/// What to name.
pub enum Query<'a> {
    /// Videos in `DIR/<drug>/<cell>/`: each drug folder gets its own ranking.
    Videos(&'a Path),
    /// New drugs by name and SMILES (MolCLIP runs only).
    Molecules(&'a [(String, String)]),
}

/// Rows `picks` of the row-major `[N, dim]` matrix `values`, labelled with their cells' drug
/// and MoA names: what queries are ranked against. Only videos of the MoA task (a known,
/// chosen MoA) stand for a MoA.
pub fn reference(
    index: &DatasetIndex,
    values: &[f32],
    dim: usize,
    cells: &[&CellVideo],
    picks: &[usize],
) -> Result<Reference> {
    let picks: Vec<usize> = picks.iter().copied().filter(|&i| cells[i].moa_id.is_some()).collect();
    if picks.is_empty() {
        return Err(ExperimentError::Input(format!(
            "{}: no gallery video of the MoA task (every gallery drug's MoA is unknown or not chosen)",
            index.root.display()
        )));
    }
    let picks = &picks;
    let drugs: Vec<String> =
        picks.iter().map(|&i| index.annotation.drug_name(cells[i].split, &cells[i].drug_folder)).collect();
    let moas: Vec<String> =
        picks.iter().map(|&i| index.annotation.moa_name(cells[i].moa_id.expect("filtered above"))).collect();
    Reference::new(&gather(values, dim, picks), dim, &drugs, &moas)
}

/// Zero-shot: each named SMILES embedded by the molecule encoder (in one batch) and ranked
/// against `reference`, which must be in the shared space.
pub fn predict_smiles(
    trained: &TrainedRun,
    reference: &Reference,
    named: &[(String, &str)],
    nearest: usize,
) -> Result<Vec<Prediction>> {
    let smiles: Vec<&str> = named.iter().map(|(_, s)| *s).collect();
    let (emb, dim) = trained.embed_smiles(&smiles)?;
    named.iter().zip(emb.chunks(dim)).map(|((name, _), row)| reference.predict(name, row, nearest)).collect()
}

/// Names `query` with `trained` against the gallery of `index` (which stands for the known
/// MoAs), showing the `nearest` reference drugs of each.
pub fn predict(
    trained: &TrainedRun,
    index: &DatasetIndex,
    query: &Query,
    nearest: usize,
    progress: &dyn Progress,
) -> Result<Vec<Prediction>> {
    // Per molecule, why its ranking may say little.
    let mut warnings: Vec<Option<String>> = Vec::new();
    if let Query::Molecules(named) = query {
        trained.molclip("zero-shot prediction from a SMILES")?;
        if named.is_empty() {
            return Err(ExperimentError::Input("nothing to predict: give videos or SMILES".into()));
        }
        // Parse everything first, so a bad SMILES is reported before any embedding work.
        for (name, smiles) in named.iter() {
            let molecule = molclip::models::parse_smiles(smiles)
                .map_err(|e| ExperimentError::Input(format!("drug `{name}`: {e}")))?;
            warnings.push((!molecule.is_organic()).then(|| {
                format!(
                    "no organic fragment: the encoded molecule `{}` has no carbon (a salt or an ion), \
                     so this ranking says little about a drug",
                    molecule.canonical_smiles()
                )
            }));
        }
    }
    let gallery: Vec<&CellVideo> = index.split(Split::Gallery).collect();
    if gallery.is_empty() {
        return Err(ExperimentError::Input(format!(
            "{}: the gallery split, which stands for the known MoAs, is empty",
            index.root.display()
        )));
    }
    let new_cells = match query {
        Query::Videos(dir) => DatasetIndex::unlabelled(dir)?,
        Query::Molecules(_) => Vec::new(),
    };
    // Gallery rows first, then the new videos.
    let refs: Vec<&CellVideo> = gallery.iter().copied().chain(&new_cells).collect();
    progress.start("embedding", refs.len() as u64);
    let e = trained
        .embed_videos(refs.iter().map(|c| (*c).clone()).collect(), EMBED_BATCH, &mut |k| progress.advance(k as u64));
    progress.finish();
    let e = e?;
    let gallery_rows: Vec<usize> = (0..gallery.len()).collect();
    match query {
        Query::Molecules(named) => {
            let reference = reference(index, &e.shared, e.shared_dim, &refs, &gallery_rows)?;
            let named: Vec<(String, &str)> = named.iter().map(|(n, s)| (n.clone(), s.as_str())).collect();
            let mut predictions = predict_smiles(trained, &reference, &named, nearest)?;
            for (p, warning) in predictions.iter_mut().zip(warnings) {
                p.warning = warning;
            }
            Ok(predictions)
        }
        Query::Videos(_) => {
            let reference = reference(index, &e.feature, e.dim, &refs, &gallery_rows)?;
            let mut by_drug: Vec<(String, Vec<f32>)> = Vec::new();
            for (k, c) in new_cells.iter().enumerate() {
                let row = &e.feature[(gallery.len() + k) * e.dim..(gallery.len() + k + 1) * e.dim];
                match by_drug.iter_mut().find(|(d, _)| *d == c.drug_folder) {
                    Some((_, rows)) => rows.extend_from_slice(row),
                    None => by_drug.push((c.drug_folder.clone(), row.to_vec())),
                }
            }
            by_drug.iter().map(|(d, rows)| reference.predict(d, rows, nearest)).collect()
        }
    }
}
