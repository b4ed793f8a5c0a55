//! `molclip predict`: the MoA of new videos, against a run's gallery; or of a new drug from
//! its structure alone (zero-shot, MolCLIP runs), through the shared embedding space.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use molclip::predict::Prediction;
use molclip::train::TrainedRun;
use molclip_data::{CellVideo, DatasetIndex};

use crate::progress;
use crate::report::{predict_smiles, reference, trained_on};
use crate::train::open_dataset;

#[derive(Args)]
pub struct PredictArgs {
    /// A run folder written by `molclip train`.
    #[arg(long)]
    run: PathBuf,
    /// Videos to name: DIR/<drug>/<cell>/ (numbered frames or one stack per cell); each drug
    /// folder gets its own ranking.
    #[arg(long, required_unless_present_any = ["smiles", "drugs"], conflicts_with_all = ["smiles", "drugs"])]
    videos: Option<PathBuf>,
    /// Zero-shot: a new drug's SMILES (repeatable). Needs a molclip run.
    #[arg(long)]
    smiles: Vec<String>,
    /// Zero-shot for a table of drugs (TSV or CSV with `name` and `smiles` columns).
    #[arg(long, conflicts_with = "smiles")]
    drugs: Option<PathBuf>,
    /// The reference dataset, whose gallery videos stand for the known MoAs (default: the
    /// dataset the run was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// MoAs to show per query.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Nearest reference drugs to show per query.
    #[arg(long, default_value_t = 3)]
    nearest: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn print_table(predictions: &[Prediction], top: usize, what: &str) {
    for p in predictions {
        println!("{} ({} {what})", p.query, p.rows);
        println!("  {:<4} {:<40} {:>8}", "rank", "MoA", "cosine");
        for (k, m) in p.moas.iter().take(top).enumerate() {
            println!("  {:<4} {:<40} {:>8.3}", k + 1, m.moa, m.score);
        }
        let near: Vec<String> = p.nearest.iter().map(|n| format!("{} ({}, {:.3})", n.drug, n.moa, n.similarity)).collect();
        println!("  nearest reference drugs: {}\n", near.join("; "));
    }
}

pub fn predict(args: PredictArgs, quiet: bool) -> Result<()> {
    let device = molclip::parse_device(&args.device)?;
    let trained = TrainedRun::load(&args.run, &device).with_context(|| format!("loading the run {}", args.run.display()))?;
    let queries: Vec<(String, String)> = match &args.drugs {
        Some(path) => molclip_chem::read_smiles_table(path)?.into_iter().map(|r| (r.name, r.smiles)).collect(),
        None => args.smiles.iter().map(|s| (s.clone(), s.clone())).collect(),
    };
    let zero_shot = args.videos.is_none();
    if zero_shot {
        trained.molclip("zero-shot prediction from a SMILES")?;
        if queries.is_empty() {
            bail!("nothing to predict: give --videos, --smiles or --drugs");
        }
        // Parse everything first, so a bad SMILES is reported before any embedding work.
        for (name, smiles) in &queries {
            molclip_chem::Molecule::parse_with(smiles, molclip_chem::FragmentPolicy::Largest).with_context(|| format!("drug `{name}`: invalid SMILES {smiles:?}"))?;
        }
    }
    let data = match &args.data {
        Some(d) => d.clone(),
        None => trained_on(&args.run)?,
    };
    let index = open_dataset(&data, quiet)?;
    let gallery: Vec<&CellVideo> = index.split("gallery").collect();
    if gallery.is_empty() {
        bail!("{}: the gallery split, which stands for the known MoAs, is empty", data.display());
    }
    let new_cells = match &args.videos {
        Some(dir) => DatasetIndex::unlabelled(dir)?,
        None => Vec::new(),
    };
    // Gallery rows first, then the new videos.
    let refs: Vec<&CellVideo> = gallery.iter().copied().chain(&new_cells).collect();
    let bar = progress::bar(refs.len() as u64, "embedding", quiet);
    let e = trained.embed_videos(refs.iter().map(|c| (*c).clone()).collect(), 32, &mut |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    let gallery_rows: Vec<usize> = (0..gallery.len()).collect();

    let predictions: Vec<Prediction> = if zero_shot {
        let reference = reference(&index, &e.shared, e.shared_dim, &refs, &gallery_rows)?;
        let named: Vec<(String, &str)> = queries.iter().map(|(name, smiles)| (name.clone(), smiles.as_str())).collect();
        predict_smiles(&trained, &reference, &named, args.nearest)?
    } else {
        let reference = reference(&index, &e.feature, e.dim, &refs, &gallery_rows)?;
        let mut by_drug: Vec<(String, Vec<f32>)> = Vec::new();
        for (k, c) in new_cells.iter().enumerate() {
            let row = &e.feature[(gallery.len() + k) * e.dim..(gallery.len() + k + 1) * e.dim];
            match by_drug.iter_mut().find(|(d, _)| *d == c.drug_folder) {
                Some((_, rows)) => rows.extend_from_slice(row),
                None => by_drug.push((c.drug_folder.clone(), row.to_vec())),
            }
        }
        by_drug.iter().map(|(d, rows)| reference.predict(d, rows, args.nearest)).collect::<molclip::Result<_>>()?
    };
    if args.json {
        let trimmed: Vec<Prediction> = predictions.into_iter().map(|mut p| {
            p.moas.truncate(args.top);
            p
        }).collect();
        println!("{}", serde_json::to_string_pretty(&trimmed)?);
    } else {
        print_table(&predictions, args.top, if zero_shot { "molecule" } else { "videos" });
    }
    Ok(())
}
