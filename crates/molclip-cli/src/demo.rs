//! `molclip demo`: the whole story in one command (the work is `molclip_experiment::demo`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use molclip_experiment::{run_demo, DemoOptions};

use crate::progress::Bars;

#[derive(Args)]
pub struct DemoArgs {
    /// A smoke test: the tiny dataset and a few epochs (well under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the dataset, the runs, metrics.json and report.html go.
    #[arg(long, default_value = "demo")]
    out: PathBuf,
    /// Fixes the dataset, the sampling and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How much drug effects follow structure in the simulated dataset, in [0, 1]; at 0 the
    /// molecule says nothing about a drug's phenotype beyond its MoA.
    #[arg(long, allow_hyphen_values = true)]
    structure_coupling: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn demo(args: DemoArgs, quiet: bool) -> Result<()> {
    let device = molclip::parse_device(&args.device)?;
    let options =
        DemoOptions { quick: args.quick, out: args.out, seed: args.seed, structure_coupling: args.structure_coupling };
    let done = run_demo(&options, &device, &Bars::new(quiet))?;
    println!("{:<14} {:>9} {:>9} {:>9} {:>9}", "model", "drug mAP", "rank-1", "MoA mAP", "rank-1");
    for r in &done.report.runs {
        println!("{:<14} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", r.kind, r.drug.map, r.drug.rank1, r.moa.map, r.moa.rank1);
    }
    println!("{} and {} in {:.0} s", done.html.display(), done.metrics.display(), done.seconds);
    Ok(())
}
