//! `molclip report`: the analysis of each run (`molclip_experiment::analyse_run`), handed to
//! molclip-report as one self-contained HTML file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use molclip_experiment::{analyse_run, moa_names, open_dataset, RunDir};
use molclip_report::Report;

use crate::progress::Bars;

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

pub fn report(args: ReportArgs, quiet: bool) -> Result<()> {
    let runs: Vec<RunDir> = args.runs.iter().map(RunDir::new).collect();
    let data = match &args.data {
        Some(d) => d.clone(),
        None => runs[0].trained_on()?,
    };
    let device = molclip::parse_device(&args.device)?;
    let progress = Bars::new(quiet);
    let index = open_dataset(&data, &progress)?;
    let results = runs
        .iter()
        .map(|run| Ok(analyse_run(run, &index, &device, 0, &progress)?.result))
        .collect::<Result<Vec<_>>>()?;
    let report = Report {
        title: args.title.clone(),
        summary: vec![format!("dataset {} ({} videos)", data.display(), index.cells.len())],
        moas: moa_names(&index),
        runs: results,
        montage_png: molclip_data::montage::montage_png(&index).ok(),
    };
    molclip_report::write(&report, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}
