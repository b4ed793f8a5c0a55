//! `molclip`: the command-line tool. Argument parsing and wiring only; the
//! work is done by the library crates.

mod bench;
mod demo;
mod evaluate;
mod extract;
mod predict;
mod progress;
mod references;
mod report;
mod train;

#[cfg(test)]
#[path = "../tests/common/readme.rs"]
mod readme;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use mitosim::{DatasetPlan, FrameFormat, SimConfig};
use molclip_chem::{FeaturizeOptions, FingerprintConfig, FragmentPolicy};
use molclip_core::write_atomic;
use molclip_data::Split;
use molclip_experiment::{open_dataset, Progress};

/// The allocator: mimalloc, freed memory kept for the rest of the job ([`molclip_cpu::allocator`]).
#[global_allocator]
static ALLOCATOR: molclip_cpu::allocator::Allocator = molclip_cpu::allocator::Allocator;

#[derive(Parser)]
#[command(
    name = "molclip",
    version,
    about = "Drug mechanism of action from mitochondrial time-lapse videos, helped by chemical structure (MolCLIP)"
)]
struct Cli {
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole story in minutes: simulate, train single-frame, video-only and MolCLIP,
    /// evaluate them and write DIR/report.html and DIR/metrics.json.
    Demo(demo::DemoArgs),
    /// Write a simulated MitoDataset (MitoReID layout).
    Simulate(SimulateArgs),
    /// Raw time-lapse fields of view -> single-cell videos in the MitoReID layout: nuclei and
    /// cells segmented, tracked over time (Hungarian assignment), cropped and written.
    Extract(extract::ExtractArgs),
    /// Validate a dataset (folder or manifest CSV) and summarise it; optionally draw a montage and measure difficulty.
    Inspect(InspectArgs),
    /// Re-identification metrics (mAP, CMC) for drug identification and MoA recognition.
    Evaluate(evaluate::EvaluateArgs),
    /// Chemistry tools.
    #[command(subcommand)]
    Chem(ChemCommand),
    /// Data tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Join SMILES into a dataset's annotation (the published annotation.xlsx has none) by CAS
    /// number or name, and write DIR/annotation.csv (annotation.xlsx is never touched).
    Annotate(AnnotateArgs),
    /// Train a model (molclip, video-only or single-frame) from a TOML config; --resume continues a run.
    Train(train::TrainArgs),
    /// Embed a dataset's videos with a trained run: .npy embeddings and a metadata CSV (the `evaluate` schema).
    Embed(train::EmbedArgs),
    /// Self-contained HTML report of runs: results with gains, training and CMC curves,
    /// embedding map, MoA confusion, temporal attention, example videos.
    Report(report::ReportArgs),
    /// MoA ranking for new videos (against the run's gallery), or for a new drug from its
    /// SMILES alone (zero-shot, MolCLIP runs).
    Predict(predict::PredictArgs),
    /// Model weights (safetensors): list them, or import a pretrained ViT for frame-vit.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Speed tables against reference implementations, measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// List the tensors of a safetensors file: name, shape, dtype, and the parameter count.
    List { file: PathBuf },
    /// Map a pretrained ViT (timm or HuggingFace names, in safetensors) onto frame-vit's names,
    /// for a model config's frame-vit: RGB patch embeddings are summed to one channel and the
    /// position embedding resampled to the frame size. Never downloads anything.
    ImportVit {
        /// The pretrained ViT's safetensors file.
        file: PathBuf,
        /// A model config (TOML) whose [video.vit] section describes the frame ViT; defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Prefix of the frame ViT's weights in the model.
        #[arg(long, default_value = "video.encoder.")]
        prefix: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Map a pretrained 3D ResNet (kenshohara's names, as MitoReID starts from) onto the
    /// config's video encoder, for `molclip train --init`. Never downloads anything.
    ImportI3d(ImportI3dArgs),
}

#[derive(Args)]
struct AnnotateArgs {
    /// The dataset folder, whose annotation.xlsx (or annotation.csv) is read.
    #[arg(long)]
    data: PathBuf,
    /// A TSV or CSV table with `name` and `smiles` columns, and optionally `cas`.
    #[arg(long)]
    smiles: PathBuf,
    /// Where to write the joined annotation (default: DATA/annotation.csv, which must not exist).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ImportI3dArgs {
    /// The pretrained 3D ResNet: a PyTorch checkpoint (.pth, its `state_dict`) or safetensors,
    /// with kenshohara's 3D-ResNets-PyTorch names (MitoReID's Kinetics-pretrained ResNet-50).
    file: PathBuf,
    /// The training config the weights are for (its [model.video] section: i3d-resnet50 with
    /// blocks = "r3d" for MitoReID's network; in_channels from its frames).
    #[arg(long)]
    config: PathBuf,
    /// The weights for `molclip train --init`.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SimulateArgs {
    /// tiny, demo, bench or mito.
    #[arg(long, default_value = "demo")]
    preset: String,
    /// A TOML config (a full config, e.g. a dataset's simulation.toml); overrides --preset.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// How much drug effects follow structure, in [0, 1].
    #[arg(long, allow_hyphen_values = true)]
    structure_coupling: Option<f64>,
    /// A drug table (TSV/CSV with name, moa, smiles) instead of the built-in library.
    #[arg(long)]
    drugs: Option<PathBuf>,
    /// With --drugs: keep MoAs with at least this many drugs.
    #[arg(long)]
    min_drugs_per_moa: Option<usize>,
    /// png (8-bit frames) or tiff (16-bit multi-page stacks).
    #[arg(long)]
    format: Option<FrameFormat>,
    #[arg(long, default_value = "data/demo")]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Write raw time-lapse fields of view instead of crops (many cells of one drug per
    /// field, three stains, with ground-truth masks and tracks), for `molclip extract`.
    #[arg(long)]
    raw: bool,
    /// With --raw: mitoreid (one TIFF per field, time point and stain) or ome-tiff.
    #[arg(long, requires = "raw")]
    raw_format: Option<mitosim::RawFormat>,
    /// With --raw: field side in pixels.
    #[arg(long, requires = "raw")]
    field_size: Option<usize>,
}

#[derive(Args)]
struct InspectArgs {
    dir: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Draw frames 1, 4, 8, 12, 16 of one cell per MoA into this PNG.
    #[arg(long)]
    montage: Option<PathBuf>,
    /// Nearest-neighbour MoA accuracy on handcrafted features (train vs gallery).
    #[arg(long)]
    difficulty: bool,
    /// Refuse the dataset when MitoReID's selection rules would skip anything (drug folders
    /// without an annotation row, drugs of unknown MoA) instead of reporting it.
    #[arg(long)]
    strict: bool,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Pixel mean and std over the training split, written to a config's [data.normalize].
    Stats {
        /// A dataset folder (MitoReID layout) or a manifest CSV.
        dir: PathBuf,
        /// A TOML config whose [data] section says how frames are read; the
        /// result is written back into it. Without it, the section is printed.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ChemCommand {
    /// SMILES table -> JSONL of graphs and fingerprints (schema of rdkit_oracle.jsonl).
    Featurize(FeaturizeArgs),
}

#[derive(Args)]
struct FeaturizeArgs {
    /// TSV or CSV with a `smiles` column (and `name`); `#` lines are comments.
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 2)]
    radius: u32,
    #[arg(long, default_value_t = 2048)]
    bits: usize,
    /// largest (largest organic fragment) or whole.
    #[arg(long, default_value = "largest")]
    fragments: FragmentPolicy,
}

/// A count that must be at least 1 (`--top`, `--novel-k`), refused when parsed.
fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() {
    molclip_cpu::allocator::keep_freed_memory(molclip_cpu::allocator::KeepFreed::UntilExit);
    // Ctrl-C and SIGTERM: staging folders go before the process does (a run folder's
    // checkpoint needs nothing: it is swapped in atomically and resumes).
    let _ = ctrlc::set_handler(|| {
        molclip_core::remove_registered();
        eprintln!("interrupted");
        std::process::exit(130);
    });
    let cli = Cli::parse();
    if let Err(e) = molclip_cpu::check_cap().map_err(anyhow::Error::from).and_then(|()| run(cli)) {
        if molclip_core::interrupted() {
            // The error is the interruption's (the handler removed a staging folder a worker
            // was writing into): the handler says so and exits with 130 once it is done.
            std::thread::sleep(std::time::Duration::from_secs(30));
            std::process::exit(130);
        }
        // Each cause once: our errors already quote the OS error they wrap.
        eprintln!("error: {}", molclip_core::error_text(e.as_ref()));
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Simulate(args) => simulate(args, quiet),
        Command::Extract(args) => extract::extract(args, quiet),
        Command::Inspect(args) => inspect(args, quiet),
        Command::Evaluate(args) => evaluate::evaluate(args, quiet),
        Command::Chem(ChemCommand::Featurize(args)) => featurize(args),
        Command::Data(DataCommand::Stats { dir, config }) => data_stats(&dir, config.as_deref(), quiet),
        Command::Annotate(args) => annotate(args),
        Command::Bench(cmd) => bench::run(cmd, quiet),
        Command::Train(args) => train::train(args, quiet),
        Command::Demo(args) => demo::demo(args, quiet),
        Command::Report(args) => report::report(args, quiet),
        Command::Predict(args) => predict::predict(args, quiet),
        Command::Embed(args) => train::embed(args, quiet),
        Command::Weights(cmd) => weights(cmd),
    }
}

/// The config a simulate invocation asks for: preset or file, then flags.
fn simulation_config(args: &SimulateArgs) -> Result<SimConfig> {
    let mut config = match &args.config {
        Some(path) => SimConfig::from_toml_file(path)?,
        None => SimConfig::preset(&args.preset)?,
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(c) = args.structure_coupling {
        config.biology.structure_coupling = c;
    }
    if let Some(drugs) = &args.drugs {
        config.library.table = Some(drugs.clone());
    }
    if let Some(k) = args.min_drugs_per_moa {
        config.library.min_drugs_per_moa = k;
    }
    if let Some(f) = args.format {
        config.layout.format = f;
    }
    if let Some(f) = args.raw_format {
        config.raw.format = f;
    }
    if let Some(side) = args.field_size {
        config.raw.field_size = side;
    }
    config.validate()?;
    Ok(config)
}

fn simulate(args: SimulateArgs, quiet: bool) -> Result<()> {
    let config = simulation_config(&args)?;
    let plan = DatasetPlan::new(config, Path::new(".")).context("planning the simulation")?;
    if args.raw {
        return simulate_raw(&plan, &args, quiet);
    }
    let bar = progress::bar(plan.jobs.len() as u64, "simulating cells", quiet);
    let report = mitosim::generate(&plan, &args.out, args.force, &|| bar.inc(1))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    for stale in &report.removed_staging {
        eprintln!("removed {}, left by an interrupted simulation", stale.display());
    }
    println!(
        "wrote {}: {} MoAs, {} drugs ({} novel), {} cells, {} frames of {}x{} in {:.1} s ({:.0} frames/s)",
        args.out.display(),
        report.moas,
        report.drugs,
        plan.library.novel_drugs().count(),
        report.cells,
        report.frames,
        plan.config.layout.size,
        plan.config.layout.size,
        report.seconds,
        report.frames as f64 / report.seconds
    );
    Ok(())
}

fn simulate_raw(plan: &DatasetPlan, args: &SimulateArgs, quiet: bool) -> Result<()> {
    let fields = mitosim::field::field_jobs(plan).len();
    let bar = progress::bar(fields as u64, "simulating fields", quiet);
    let report = mitosim::generate_raw(plan, &args.out, args.force, &|| bar.inc(1))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    for stale in &report.removed_staging {
        eprintln!("removed {}, left by an interrupted simulation", stale.display());
    }
    let side = plan.config.raw.field_size;
    println!(
        "wrote {}: {} raw fields of {side}x{side}, {} frames, 3 stains; ground truth: {} tracks, {} of them whole \
         (in every frame), in {:.1} s",
        args.out.display(),
        report.fields,
        plan.config.layout.frames,
        report.tracks,
        report.whole_tracks,
        report.seconds
    );
    Ok(())
}

/// What MitoReID's selection rules leave out of a dataset, on stderr; with `strict`, an
/// error instead.
fn report_selection(index: &molclip_data::DatasetIndex, strict: bool) -> Result<()> {
    if strict {
        index.strict()?;
    }
    let skips = index.skips();
    let (rows, unknown): (Vec<_>, Vec<_>) =
        skips.iter().partition(|s| matches!(s, molclip_data::Skip::NoAnnotationRow { .. }));
    if !rows.is_empty() {
        let cells: usize = rows
            .iter()
            .map(|s| if let molclip_data::Skip::NoAnnotationRow { cells, .. } = s { *cells } else { 0 })
            .sum();
        eprintln!("skipped {} drug folder(s) without an annotation row ({cells} cells):", rows.len());
        for s in rows.iter().take(10) {
            eprintln!("  {s}");
        }
        if rows.len() > 10 {
            eprintln!("  ... and {} more", rows.len() - 10);
        }
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .filter_map(|s| if let molclip_data::Skip::UnknownMoa { drug, .. } = s { Some(drug.clone()) } else { None })
            .collect();
        let shown = names.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 10 { format!(", ... ({} in all)", names.len()) } else { String::new() };
        eprintln!(
            "{} drug(s) of unknown MoA serve drug identification only, not the MoA task: {shown}{more}",
            names.len()
        );
    }
    let unchosen: std::collections::BTreeSet<&str> = index
        .cells
        .iter()
        .filter(|c| c.moa_id.is_none())
        .filter_map(|c| index.annotation.lookup_in(c.split, &c.drug_folder))
        .filter(|r| r.moa_id.is_some() && !r.moa_choose)
        .map(|r| r.index.as_str())
        .collect();
    if !unchosen.is_empty() {
        eprintln!("{} drug(s) with moa_choose != 1 serve drug identification only", unchosen.len());
    }
    Ok(())
}

fn inspect(args: InspectArgs, quiet: bool) -> Result<()> {
    let progress = progress::Bars::new(quiet);
    let index = open_dataset(&args.dir, &progress)?;
    report_selection(&index, args.strict)?;
    progress.start("decoding frames", index.cells.len() as u64);
    let verified = index.verify_frames_with_progress(&molclip_data::FrameOptions::default(), &|p| {
        if p == molclip_data::index::Progress::Cell {
            progress.advance(1)
        }
    });
    progress.finish();
    verified?;
    let counts = index.counts();
    let difficulty = if args.difficulty { Some(molclip_data::difficulty::difficulty(&index)?) } else { None };
    if let Some(path) = &args.montage {
        molclip_data::montage::write_montage(&index, path)?;
    }
    if args.json {
        let mut value = serde_json::json!({
            "root": args.dir,
            "cells": index.cells.len(),
            "drugs": index.annotation.drugs.len(),
            "splits": counts,
            "skipped": index.skips(),
            "natural_compounds": index.natural_compounds,
        });
        if let Some(d) = &difficulty {
            value["difficulty"] = serde_json::to_value(d)?;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_inspection(&args, &index, &counts, difficulty.as_ref());
    }
    Ok(())
}

/// `inspect`'s summary for people: sizes, counts per replicate and split, difficulty.
fn print_inspection(
    args: &InspectArgs,
    index: &molclip_data::DatasetIndex,
    counts: &[molclip_data::SplitCounts],
    difficulty: Option<&molclip_data::difficulty::DifficultyReport>,
) {
    let sizes: std::collections::BTreeSet<(u32, u32, usize)> =
        index.cells.iter().map(|c| (c.width, c.height, c.n_frames)).collect();
    println!(
        "{}: valid. {} cells, {} annotated drugs",
        args.dir.display(),
        index.cells.len(),
        index.annotation.drugs.len()
    );
    if sizes.len() <= 4 {
        for (w, h, t) in &sizes {
            println!("  videos of {t} frames, {w}x{h}");
        }
    } else {
        // Crops whose size varies per cell (the published data): a range, not a list.
        let frames: std::collections::BTreeSet<usize> = sizes.iter().map(|s| s.2).collect();
        let sides = sizes.iter().map(|s| s.0.max(s.1));
        let (lo, hi) = (sides.clone().min().unwrap_or(0), sides.max().unwrap_or(0));
        println!("  videos of {frames:?} frames, {} frame sizes from {lo} to {hi} px", sizes.len());
    }
    println!("  {:<10} {:<8} {:>6} {:>5} {:>7} {:>8}", "replicate", "split", "drugs", "MoAs", "cells", "frames");
    for c in counts {
        let rep = if c.replicate.is_empty() { "-" } else { &c.replicate };
        println!("  {:<10} {:<8} {:>6} {:>5} {:>7} {:>8}", rep, c.split, c.drugs, c.moas, c.cells, c.frames);
    }
    for nc in &index.natural_compounds {
        println!(
            "  {}: {} natural compounds, {} cells (not trained on; name them with predict --videos {})",
            nc.path.display(),
            nc.compounds,
            nc.cells,
            nc.path.display()
        );
    }
    if let Some(d) = difficulty {
        println!(
            "difficulty: nearest-neighbour MoA accuracy, gallery ({} cells) vs train ({} cells), {} MoAs",
            d.gallery_cells, d.train_cells, d.moas
        );
        println!("  chance (1 / MoAs)                      {:>6.1}%", d.chance);
        println!("  majority class                         {:>6.1}%", d.majority_baseline);
        println!("  (a) last-frame intensity histogram     {:>6.1}%", d.last_frame_histogram);
        println!("  (b) mean-intensity trajectory          {:>6.1}%", d.brightness_trajectory);
        println!("  (c) texture + shape over time          {:>6.1}%", d.texture_shape_trajectory);
    }
    if let Some(path) = &args.montage {
        println!("montage: {}", path.display());
    }
}

fn data_stats(dir: &Path, config: Option<&Path>, quiet: bool) -> Result<()> {
    let mut table: toml::Table = match config {
        Some(path) if path.exists() => {
            std::fs::read_to_string(path)?.parse().with_context(|| format!("parsing {}", path.display()))?
        }
        _ => toml::Table::new(),
    };
    let data: molclip_data::loader::DataConfig = match table.get("data") {
        Some(v) => v
            .clone()
            .try_into()
            .with_context(|| format!("[data] in {}", config.map_or("".into(), |p| p.display().to_string())))?,
        None => Default::default(),
    };
    let index = open_dataset(dir, &progress::Bars::new(quiet))?;
    let cells: Vec<_> = index.split(Split::Train).cloned().collect();
    anyhow::ensure!(!cells.is_empty(), "{}: the train split is empty", dir.display());
    let stats = molclip_data::loader::pixel_stats(&cells, &data.frames, data.augment.resize)?;
    let show = |v: &[f32]| v.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join(", ");
    println!(
        "train split of {}: {} videos, pixel mean [{}], std [{}] per channel",
        dir.display(),
        cells.len(),
        show(&stats.mean.0),
        show(&stats.std.0)
    );
    let section = table.entry("data").or_insert_with(|| toml::Value::Table(Default::default()));
    let section = section.as_table_mut().context("`data` in the config is not a table")?;
    let normalize = section.entry("normalize").or_insert_with(|| toml::Value::Table(Default::default()));
    let normalize = normalize.as_table_mut().context("`data.normalize` in the config is not a table")?;
    normalize.insert("mean".into(), toml::Value::try_from(&stats.mean)?);
    normalize.insert("std".into(), toml::Value::try_from(&stats.std)?);
    match config {
        Some(path) => {
            write_atomic(path, toml::to_string_pretty(&table)?.as_bytes())?;
            println!("wrote [data.normalize] to {}", path.display());
        }
        None => print!("[data.normalize]\n{}", toml::to_string(&stats)?),
    }
    Ok(())
}

fn annotate(args: AnnotateArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.data.join("annotation.csv"));
    anyhow::ensure!(
        !out.exists(),
        "{} exists: molclip does not replace it (pass --out elsewhere, or move it away)",
        out.display()
    );
    let mut annotation = molclip_data::Annotation::read_dir(&args.data)?;
    let table: Vec<molclip_data::SmilesSource> = molclip_chem::read_smiles_table(&args.smiles)?
        .into_iter()
        .map(|r| molclip_data::SmilesSource {
            cas: r.fields.get("cas").cloned().filter(|c| !c.is_empty()),
            name: r.name,
            smiles: r.smiles,
        })
        .collect();
    let report = annotation.join_smiles(&table);
    write_atomic(&out, annotation.to_csv().as_bytes())?;
    let drugs = annotation.drugs.len() + annotation.novel.len();
    println!(
        "{}: {} of {drugs} drugs have a SMILES ({} by CAS, {} by name, {} already had one)",
        out.display(),
        drugs - report.unmatched.len(),
        report.by_cas,
        report.by_name,
        report.kept
    );
    if !report.unmatched.is_empty() {
        println!("no SMILES for {} drug(s): {}", report.unmatched.len(), report.unmatched.join(", "));
    }
    Ok(())
}

fn featurize(args: FeaturizeArgs) -> Result<()> {
    let rows = molclip_chem::read_smiles_table(&args.input)?;
    let options = FeaturizeOptions {
        fingerprint: FingerprintConfig { radius: args.radius, n_bits: args.bits },
        fragments: args.fragments,
    };
    // Refuse a bad radius or width once, not once per row.
    options.fingerprint.validate()?;
    // Streamed: a chunk of rows at a time, to a temporary file renamed into place at the end.
    let mut failed = 0;
    molclip_core::write_atomic_with(&args.output, |tmp| -> Result<(), molclip_core::IoError> {
        let write = || -> std::io::Result<usize> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            let on_error = &mut |row: &molclip_chem::SmilesRow, error: &str| {
                eprintln!("{}:{}: {error}", args.input.display(), row.line)
            };
            let failed = molclip_chem::featurize_to(&rows, &options, &mut out, on_error)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(failed)
        };
        failed = write().map_err(molclip_core::IoError::at(&args.output))?;
        Ok(())
    })?;
    println!("featurized {} of {} molecules into {}", rows.len() - failed, rows.len(), args.output.display());
    if failed > 0 {
        eprintln!("{failed} row(s) failed; their lines hold {{name, smiles, error}}");
        std::process::exit(1);
    }
    Ok(())
}

fn weights(cmd: WeightsCommand) -> Result<()> {
    use molclip::nn::{read_safetensors, write_safetensors};
    match cmd {
        WeightsCommand::List { file } => {
            let tensors = read_safetensors(&file)?;
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            let mut total = 0;
            for name in names {
                let t = &tensors[name];
                total += t.elem_count();
                println!("{name:<60} {:<20} {:?}", format!("{:?}", t.dims()), t.dtype());
            }
            println!("{} tensors, {total} values", tensors.len());
        }
        WeightsCommand::ImportVit { file, config, prefix, out } => {
            let cfg: molclip::models::MolClipConfig = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("{}: not a model config", path.display()))?
                }
                None => Default::default(),
            };
            let tensors = read_safetensors(&file)?;
            let mapped = molclip::models::adapt_pretrained_vit(&tensors, &cfg.video.vit, &prefix)
                .with_context(|| format!("importing {}", file.display()))?;
            // Check the result builds a frame ViT of the config before writing it.
            let renamed =
                mapped.iter().map(|(k, v)| (k.strip_prefix(&prefix).unwrap_or(k).to_string(), v.clone())).collect();
            let store = molclip::nn::ParamStore::with_tensors(0, renamed, &molclip::candle_core::Device::Cpu);
            molclip::models::FrameVit::new(&store.root(), &cfg.video.vit)?;
            store.check_all_used(&file)?;
            write_safetensors(&mapped, &out)?;
            println!(
                "{}: {} tensors for frame-vit under `{prefix}` (the temporal blocks keep their initialisation)",
                out.display(),
                mapped.len()
            );
        }
        WeightsCommand::ImportI3d(args) => import_i3d(&args)?,
    }
    Ok(())
}

/// `--set KEY=VALUE` arguments as (key, value) pairs.
fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>> {
    sets.iter()
        .map(|set| {
            let (key, value) = set.split_once('=').with_context(|| format!("--set {set}: expected KEY=VALUE"))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// A training config read from `path`, its errors naming the file.
fn read_train_config(path: &Path) -> Result<molclip::train::TrainConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    molclip::train::TrainConfig::from_toml(&text).with_context(|| path.display().to_string())
}

fn import_i3d(args: &ImportI3dArgs) -> Result<()> {
    let cfg = read_train_config(&args.config)?;
    anyhow::ensure!(
        cfg.model.video.encoder != molclip::models::VideoEncoderKind::FrameVit,
        "{}: the config's video encoder is frame-vit; import-i3d is for the I3D ResNets",
        args.config.display()
    );
    let i3d = cfg.model.video.i3d_config();
    let tensors = molclip::nn::read_weights(&args.file)?;
    let prefix = molclip::train::ENCODER;
    let mapped = molclip::models::adapt_pretrained_r3d(&tensors, &i3d, prefix)
        .with_context(|| format!("importing {}", args.file.display()))?;
    // Strict both ways: the network built from the file uses every tensor and lacks none.
    let renamed = mapped.iter().map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(k).to_string(), v.clone())).collect();
    let store = molclip::nn::ParamStore::with_tensors(0, renamed, &molclip::candle_core::Device::Cpu);
    molclip::models::I3dResNet::new(&store.root(), &i3d)
        .with_context(|| format!("{}: does not fit the config's encoder", args.file.display()))?;
    store.check_all_used(&args.file)?;
    let missing = store.missing_under("");
    anyhow::ensure!(
        missing.is_empty(),
        "{}: {} of the encoder's tensors are missing (first: {}): weights of another depth?",
        args.file.display(),
        missing.len(),
        missing.first().map_or("", |s| s.as_str())
    );
    molclip::nn::write_safetensors(&mapped, &args.out)?;
    println!(
        "{}: {} tensors of the video encoder (i3d-resnet{}, blocks {:?}, {} input channel(s)); the heads start fresh",
        args.out.display(),
        mapped.len(),
        i3d.depth,
        i3d.blocks,
        i3d.in_channels
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::readme::{bash_blocks, molclip_args, readme};
    use super::Cli;

    /// Every `molclip` command in the README's shell examples parses as this binary's
    /// arguments: no example names a flag or subcommand that is not there.
    #[test]
    fn every_readme_command_parses() {
        let readme = readme();
        let mut parsed = Vec::new();
        let mut failures = Vec::new();
        for block in bash_blocks(&readme) {
            for (line, words) in &block.commands {
                let Some(args) = molclip_args(words) else { continue };
                match Cli::try_parse_from(std::iter::once("molclip".to_string()).chain(args.iter().cloned())) {
                    Ok(_) => parsed.push(args.join(" ")),
                    Err(e) => failures.push(format!(
                        "README line {line} ({}): molclip {}\n{e}",
                        block.heading,
                        args.join(" ")
                    )),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The reading itself: examples from a block with a continuation, a `&&`, an
        // environment variable and `cargo run` are all there.
        for expected in [
            "demo",
            "train --config configs/mitoreid.toml --data data/Mito --out runs/smoke --epochs 1",
            "extract --raw raw --masks raw/ground_truth --out truth",
            "bench evaluate --sizes 2000 --dim 128",
        ] {
            assert!(
                parsed.iter().any(|p| p.starts_with(expected)),
                "no README command starts with `molclip {expected}`"
            );
        }
        assert!(parsed.len() > 60, "{} commands read from the README", parsed.len());
    }
}
