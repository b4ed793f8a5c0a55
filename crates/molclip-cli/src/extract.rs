//! `molclip extract`: raw fields of view -> single-cell videos (MitoReID layout).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use molclip_extract::{CropFormat, ExtractConfig, ExtractOptions, SplitPolicy};

use crate::progress;

#[derive(Args)]
pub struct ExtractArgs {
    /// The raw folder: replicate folders l1, l2, ... (or the fields directly) holding
    /// `<field>_<t>_<w1|w2|w3>.tif` or `<field>.ome.tif`; field names are `<drug>-<n>`.
    #[arg(long)]
    raw: PathBuf,
    /// The dataset to write (MitoReID layout, readable by inspect and train).
    #[arg(long)]
    out: PathBuf,
    /// Segmentation, tracking and crop parameters (TOML; see configs/extract.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// random (MitoReID's 80/20 per field: train, then query and gallery), train, or novel.
    #[arg(long, default_value = "random")]
    split: SplitPolicy,
    /// Seeds the random split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// jpeg (MitoReID's RGB frames) or tiff (16-bit stacks); overrides the config's.
    #[arg(long)]
    format: Option<CropFormat>,
    /// The drug table to copy into the dataset (default: RAW/annotation.xlsx or .csv).
    #[arg(long)]
    annotation: Option<PathBuf>,
    /// Write an overlay PNG per field here: outlines and track numbers on the first and
    /// last frames (green: became a video; red: dropped).
    #[arg(long)]
    qc: Option<PathBuf>,
    /// Take cells from these label masks instead of segmenting and tracking:
    /// `<replicate>/<field>.masks.tif`, one page per frame, labels = track ids (another
    /// segmenter's output, or `simulate --raw`'s RAW/ground_truth).
    #[arg(long)]
    masks: Option<PathBuf>,
    /// Replace --out if it is an earlier extraction.
    #[arg(long)]
    force: bool,
}

pub fn extract(args: ExtractArgs, quiet: bool) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => ExtractConfig::from_toml_file(path)?,
        None => ExtractConfig::default(),
    };
    if let Some(format) = args.format {
        config.crop.format = format;
    }
    let fields = molclip_extract::discover(&args.raw)?;
    let bar = progress::bar(fields.len() as u64, "extracting fields", quiet);
    let options = ExtractOptions {
        split: args.split,
        seed: args.seed,
        qc: args.qc.clone(),
        overwrite: args.force,
        annotation: args.annotation.clone(),
        masks: args.masks.clone(),
    };
    let report = molclip_extract::extract(&args.raw, &fields, &args.out, &config, &options, &|| bar.inc(1))
        .with_context(|| format!("extracting {} into {}", args.raw.display(), args.out.display()))?;
    bar.finish_and_clear();
    for stale in &report.removed_staging {
        eprintln!("removed {}, left by an interrupted extraction", stale.display());
    }
    if !report.unannotated.is_empty() {
        eprintln!(
            "{} field(s) of drugs without an annotation row (readers skip them): {}",
            report.unannotated.len(),
            report.unannotated.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let [train, query, gallery, novel] = report.videos;
    println!(
        "wrote {}: {} videos (train {train}, query {query}, gallery {gallery}, novel {novel}) from {} tracks \
         in {} fields ({} frames) in {:.1} s ({:.2} fields/s)",
        args.out.display(),
        train + query + gallery + novel,
        report.tracks,
        report.fields,
        report.frames,
        report.seconds,
        report.fields as f64 / report.seconds
    );
    if let Some(qc) = &args.qc {
        println!("overlays: {}", qc.display());
    }
    Ok(())
}
