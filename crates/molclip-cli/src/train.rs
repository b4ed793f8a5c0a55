//! `molclip train` and `molclip embed`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use molclip_data::Split;
use molclip_experiment::{embed_to_files, open_dataset, read_config, resolve_config, Overrides, RunDir, Training};

use crate::progress::Bars;

#[derive(Args)]
pub struct TrainArgs {
    /// The run's TOML config (see configs/). With --resume, the run's own run.toml is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dataset folder (MitoReID layout) or a manifest CSV.
    #[arg(long)]
    data: PathBuf,
    /// The run folder: run.toml, metrics.csv, checkpoints/last, model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start from these pretrained weights (`molclip weights import-i3d` writes them): the
    /// whole video encoder must be there; the heads start fresh. Recorded in run.toml.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Cap every stage at N epochs (smoke runs); recorded in run.toml.
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Override a config field by its dotted path (`--set data.sampler.p=4`), validated like
    /// the file; repeatable; recorded in run.toml.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Refuse the dataset when MitoReID's selection rules would skip anything (drug folders
    /// without an annotation row, drugs of unknown MoA) instead of reporting it.
    #[arg(long)]
    strict: bool,
    /// Start training without first decoding every frame of the dataset (the check stops a
    /// run on a corrupt file before its first step).
    #[arg(long)]
    skip_check: bool,
    /// Check everything a run checks before its first step (the frames, the run folder, the
    /// config, --init's weights, every stage's batches), print the stages, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// (testing) kill this process with SIGKILL after this many steps.
    #[arg(long, hide = true)]
    kill_after_steps: Option<u64>,
}

pub fn train(args: TrainArgs, quiet: bool) -> Result<()> {
    let run = RunDir::new(&args.out);
    let overrides = Overrides { sets: crate::parse_sets(&args.sets)?, epochs: args.epochs, init: args.init.clone() };
    let given = match &args.config {
        Some(path) => Some((path.display().to_string(), read_config(path)?)),
        None if !args.resume => bail!("--config is needed (except with --resume)"),
        None => None,
    };
    let cfg = resolve_config(&run, given, &overrides, args.resume)?;
    let progress = Bars::new(quiet);
    let index = open_dataset(&args.data, &progress)?;
    crate::report_selection(&index, args.strict)?;
    let device = molclip::parse_device(&args.device)?;
    let training = Training {
        cfg: &cfg,
        data: &args.data,
        index: &index,
        run: &run,
        device: &device,
        resume: args.resume,
        check_frames: !args.skip_check,
    };
    if args.dry_run {
        let plan = training.plan(&progress)?;
        println!("{}", plan.summary(&run, &cfg));
        println!("checked; nothing written (--dry-run)");
        return Ok(());
    }
    let outcome = training.run(&progress, &mut |state| {
        if args.kill_after_steps == Some(state.step) {
            kill_self();
        }
        true
    })?;
    println!("{}", outcome.summary(&run));
    Ok(())
}

/// Ends this process with SIGKILL, as a crash would (for the resume tests).
fn kill_self() {
    #[cfg(unix)]
    // SAFETY: kill(2) with this process's own id and a valid signal number touches no memory.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[derive(Args)]
pub struct EmbedArgs {
    /// A run folder written by `molclip train`.
    #[arg(long)]
    run: PathBuf,
    /// The dataset folder or manifest CSV.
    #[arg(long)]
    data: PathBuf,
    /// Splits to embed, in this order.
    #[arg(long, value_delimiter = ',', default_value = "query,gallery")]
    split: Vec<Split>,
    /// The embeddings (.npy, float32, [N, D]); the metadata CSV (set, replicate, drug, moa)
    /// goes beside it with the extension .csv.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Videos per forward pass.
    #[arg(long, default_value_t = molclip_experiment::embedding::EMBED_BATCH)]
    batch: usize,
}

pub fn embed(args: EmbedArgs, quiet: bool) -> Result<()> {
    let progress = Bars::new(quiet);
    let index = open_dataset(&args.data, &progress)?;
    let device = molclip::parse_device(&args.device)?;
    let run = RunDir::new(&args.run);
    let meta = embed_to_files(&run, &index, &args.split, &args.out, &device, args.batch, &progress)?;
    println!("{} and {}", args.out.display(), meta.display());
    Ok(())
}
