//! `molclip train` and `molclip embed`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use molclip::train::TrainConfig;
use molclip_data::Split;
use molclip_experiment::{embed_to_files, open_dataset, RunDir, Training};

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
    /// (testing) kill this process with SIGKILL after this many steps.
    #[arg(long, hide = true)]
    kill_after_steps: Option<u64>,
}

pub fn train(args: TrainArgs, quiet: bool) -> Result<()> {
    let run = RunDir::new(&args.out);
    let read = |path: &Path| -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        TrainConfig::from_toml(&text).with_context(|| format!("{}", path.display()))
    };
    let cfg = match (&args.config, args.resume) {
        (given, true) => {
            let cfg = read(&run.config_path())?;
            // A config given with --resume must be the run's own: the run continues as it began.
            if let Some(path) = given {
                if let Some(field) = cfg.difference(&read(path)?) {
                    bail!(
                        "{}: {field} differs from the run's own {} (run against given): \
                         --resume continues the run as it was configured",
                        path.display(),
                        run.config_path().display()
                    );
                }
            }
            cfg
        }
        (Some(path), false) => read(path)?,
        (None, false) => bail!("--config is needed (except with --resume)"),
    };
    let progress = Bars::new(quiet);
    let index = open_dataset(&args.data, &progress)?;
    let device = molclip::parse_device(&args.device)?;
    let training =
        Training { cfg: &cfg, data: &args.data, index: &index, run: &run, device: &device, resume: args.resume };
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
