//! `molclip`: the command-line tool. Argument parsing and wiring only; the
//! work is done by the library crates.

mod bench;
mod demo;
mod evaluate;
mod predict;
mod progress;
mod report;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use mitosim::{DatasetPlan, FrameFormat, SimConfig};
use molclip_chem::{FeaturizeOptions, FingerprintConfig, FragmentPolicy};
use molclip_core::write_atomic;
use molclip_data::Split;
use molclip_experiment::{open_dataset, Progress};

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
    #[arg(long)]
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

/// Training allocates and frees tensors of tens of megabytes at every step. glibc serves
/// those with fresh `mmap`s, so each step pays page faults to zero new pages (measured: 40% of
/// an I3D step). Keeping freed memory in the heap makes the next step reuse it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Simulate(args) => simulate(args, quiet),
        Command::Inspect(args) => inspect(args, quiet),
        Command::Evaluate(args) => evaluate::evaluate(args, quiet),
        Command::Chem(ChemCommand::Featurize(args)) => featurize(args),
        Command::Data(DataCommand::Stats { dir, config }) => data_stats(&dir, config.as_deref(), quiet),
        Command::Bench(cmd) => bench::run(cmd),
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
    config.validate()?;
    Ok(config)
}

fn simulate(args: SimulateArgs, quiet: bool) -> Result<()> {
    let config = simulation_config(&args)?;
    let plan = DatasetPlan::new(config, Path::new(".")).context("planning the simulation")?;
    let bar = progress::bar(plan.jobs.len() as u64, "simulating cells", quiet);
    let report = mitosim::generate(&plan, &args.out, args.force, &|| bar.inc(1))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
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

fn inspect(args: InspectArgs, quiet: bool) -> Result<()> {
    let progress = progress::Bars::new(quiet);
    let index = open_dataset(&args.dir, &progress)?;
    progress.start("decoding frames", index.cells.len() as u64);
    let verified = index.verify_frames_with_progress(&|p| {
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
    for (w, h, t) in &sizes {
        println!("  videos of {t} frames, {w}x{h}");
    }
    println!("  {:<10} {:<8} {:>6} {:>5} {:>7} {:>8}", "replicate", "split", "drugs", "MoAs", "cells", "frames");
    for c in counts {
        let rep = if c.replicate.is_empty() { "-" } else { &c.replicate };
        println!("  {:<10} {:<8} {:>6} {:>5} {:>7} {:>8}", rep, c.split, c.drugs, c.moas, c.cells, c.frames);
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
    let stats = molclip_data::loader::pixel_stats(&cells, &data.frames)?;
    println!(
        "train split of {}: {} videos, pixel mean {:.6}, std {:.6}",
        dir.display(),
        cells.len(),
        stats.mean,
        stats.std
    );
    let section = table.entry("data").or_insert_with(|| toml::Value::Table(Default::default()));
    let section = section.as_table_mut().context("`data` in the config is not a table")?;
    let normalize = section.entry("normalize").or_insert_with(|| toml::Value::Table(Default::default()));
    let normalize = normalize.as_table_mut().context("`data.normalize` in the config is not a table")?;
    normalize.insert("mean".into(), toml::Value::Float(stats.mean as f64));
    normalize.insert("std".into(), toml::Value::Float(stats.std as f64));
    match config {
        Some(path) => {
            write_atomic(path, toml::to_string_pretty(&table)?.as_bytes())?;
            println!("wrote [data.normalize] to {}", path.display());
        }
        None => print!("[data.normalize]\nmean = {}\nstd = {}\n", stats.mean, stats.std),
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
    molclip_chem::Molecule::parse("C")?.morgan(&options.fingerprint)?;
    let records = molclip_chem::featurize_rows(&rows, &options);
    let mut text = String::new();
    let mut failed = 0;
    for (row, record) in rows.iter().zip(&records) {
        let json = record.to_json();
        if record.is_err() {
            failed += 1;
            eprintln!("{}:{}: {}", args.input.display(), row.line, json["error"].as_str().unwrap_or(""));
        }
        text.push_str(&json.to_string());
        text.push('\n');
    }
    write_atomic(&args.output, text.as_bytes())?;
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
    }
    Ok(())
}
