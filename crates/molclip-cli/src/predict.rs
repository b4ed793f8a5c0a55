//! `molclip predict`: the MoA of new videos, against a run's gallery; or of a new drug from
//! its structure alone (zero-shot, MolCLIP runs), through the shared embedding space.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use molclip_experiment::{open_dataset, Prediction, Query, RunDir};

use crate::progress::Bars;

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
    #[arg(long, default_value_t = 5, value_parser = crate::at_least_one)]
    top: usize,
    /// Nearest reference drugs to show per query.
    #[arg(long, default_value_t = 3, value_parser = crate::at_least_one)]
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
        if let Some(w) = &p.warning {
            println!("  warning: {w}");
        }
        println!("  {:<4} {:<40} {:>8}", "rank", "MoA", "cosine");
        for (k, m) in p.moas.iter().take(top).enumerate() {
            println!("  {:<4} {:<40} {:>8.3}", k + 1, m.moa, m.score);
        }
        let near: Vec<String> =
            p.nearest.iter().map(|n| format!("{} ({}, {:.3})", n.drug, n.moa, n.similarity)).collect();
        println!("  nearest reference drugs: {}\n", near.join("; "));
    }
}

pub fn predict(args: PredictArgs, quiet: bool) -> Result<()> {
    let device = molclip::parse_device(&args.device)?;
    let run = RunDir::new(&args.run);
    let trained = run.load(&device)?;
    let molecules: Vec<(String, String)> = match &args.drugs {
        Some(path) => molclip_chem::read_smiles_table(path)?.into_iter().map(|r| (r.name, r.smiles)).collect(),
        None => args.smiles.iter().map(|s| (s.clone(), s.clone())).collect(),
    };
    let query = match &args.videos {
        Some(dir) => Query::Videos(dir),
        None => Query::Molecules(&molecules),
    };
    let data = match &args.data {
        Some(d) => d.clone(),
        None => run.trained_on()?,
    };
    let progress = Bars::new(quiet);
    let index = open_dataset(&data, &progress)?;
    let mut predictions = molclip_experiment::predict(&trained, &index, &query, args.nearest, &progress)?;
    for p in predictions.iter().filter_map(|p| p.warning.as_ref().map(|w| (&p.query, w))) {
        eprintln!("warning: {}: {}", p.0, p.1);
    }
    if args.json {
        predictions.iter_mut().for_each(|p| p.moas.truncate(args.top));
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        print_table(&predictions, args.top, if args.videos.is_some() { "videos" } else { "molecule" });
    }
    Ok(())
}
