//! `molclip train`: a run folder with its resolved config, checkpoints, metrics and weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use molclip::train::{last_checkpoint, RunState, StepRecord, TrainConfig, TrainedRun, Trainer};
use molclip_data::{CellVideo, DatasetIndex};
use molclip_eval::{Embeddings, Metadata};

use crate::progress;

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

/// The columns of metrics.csv: one row per step.
const TERMS: [&str; 4] = ["clip", "triplet", "ce", "center"];

fn metrics_csv(records: &[StepRecord]) -> String {
    let mut out = format!("step,stage,identity,epoch,lr,loss,{},temperature,grad_norm,val_drug_map,val_moa_map\n", TERMS.join(","));
    for r in records {
        let term = |t: &str| r.terms.iter().find(|(n, _)| n == t).map_or(String::new(), |(_, v)| v.to_string());
        let terms: Vec<String> = TERMS.iter().map(|t| term(t)).collect();
        let (vd, vm) = r.validation.map_or((String::new(), String::new()), |(d, m)| (format!("{d:.4}"), format!("{m:.4}")));
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{vd},{vm}\n",
            r.step,
            r.stage,
            format!("{:?}", r.identity).to_lowercase(),
            r.epoch,
            r.lr,
            r.loss,
            terms.join(","),
            r.temperature.map_or(String::new(), |t| t.to_string()),
            if r.grad_norm.is_nan() { String::new() } else { r.grad_norm.to_string() }
        ));
    }
    out
}

/// Write then rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::write_atomically(path, text.as_bytes())
}

/// Validation on the query and gallery splits: the MitoReID protocol, drug and MoA mAP.
fn validator(cfg: &TrainConfig, index: &DatasetIndex, device: &molclip::candle_core::Device) -> Option<molclip::train::Validator> {
    let (query, gallery): (Vec<_>, Vec<_>) = (index.split("query").cloned().collect(), index.split("gallery").cloned().collect());
    if cfg.validate_every == 0 || query.is_empty() || gallery.is_empty() {
        return None;
    }
    let (qm, gm) = (metadata(&query), metadata(&gallery));
    let (cfg, device) = (cfg.clone(), device.clone());
    Some(Box::new(move |model: &molclip::models::VideoModel| {
        let embed = |cells: &[molclip_data::CellVideo]| -> molclip::Result<molclip_eval::Embeddings> {
            let rows = molclip::train::embed_cells(model, &cfg, cells.to_vec(), &device, 32, &mut |_| {})?;
            embeddings(&rows, model.dim(), 0..cells.len()).map_err(|e| molclip::ModelError::Input(e.to_string()))
        };
        let (q, g) = (embed(&query)?, embed(&gallery)?);
        let ev = molclip_eval::evaluate(&q, &qm, &g, &gm, 10).map_err(|e| molclip::ModelError::Input(format!("validation: {e}")))?;
        Ok((ev.drug.map, ev.moa.map))
    }))
}

pub fn train(args: TrainArgs, quiet: bool) -> Result<()> {
    let run_toml = args.out.join("run.toml");
    let (config_path, text) = if args.resume {
        (run_toml.clone(), std::fs::read_to_string(&run_toml).with_context(|| format!("reading {}", run_toml.display()))?)
    } else {
        let path = args.config.clone().context("--config is needed (except with --resume)")?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        (path, text)
    };
    let cfg = TrainConfig::from_toml(&text).with_context(|| format!("{}", config_path.display()))?;
    let index = open_dataset(&args.data, quiet)?;
    let outcome = run_training(&cfg, &args.data, &index, &args.out, &args.device, args.resume, quiet, args.kill_after_steps)?;
    println!("{}", outcome.summary(&args.out));
    Ok(())
}

/// What a finished training reports.
pub struct TrainOutcome {
    pub state: RunState,
    pub seconds: f64,
}

impl TrainOutcome {
    pub fn summary(&self, out: &Path) -> String {
        let last = self.state.records.last();
        let validated = self.state.records.iter().rev().find_map(|r| r.validation);
        format!(
            "{}: {} steps in {:.1} s, final loss {}{}",
            out.display(),
            self.state.step,
            self.seconds,
            last.map_or("-".into(), |r| format!("{:.4}", r.loss)),
            validated.map_or(String::new(), |(d, m)| format!(", validation mAP drug {d:.2} MoA {m:.2}"))
        )
    }
}

/// Trains `cfg` on the dataset `index`, opened from `data`, into the run folder `out` (or
/// continues it with `resume`).
#[allow(clippy::too_many_arguments)]
pub fn run_training(cfg: &TrainConfig, data: &Path, index: &DatasetIndex, out: &Path, device: &str, resume: bool, quiet: bool, kill_after_steps: Option<u64>) -> Result<TrainOutcome> {
    let has_checkpoint = last_checkpoint(out).join("state.json").exists();
    if resume && !has_checkpoint {
        bail!("{}: no checkpoint to resume (checkpoints/last)", out.display());
    }
    if !resume && has_checkpoint {
        bail!("{} already holds a run (checkpoints/last): pass --resume to continue it, or choose another --out", out.display());
    }
    let device = molclip::parse_device(device)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("run.toml"), &toml::to_string(cfg).context("serialising the config")?)?;
    // Where the run's data is: `report` and `predict` find the gallery there.
    let data_abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    write_atomic(&out.join("data.txt"), &format!("{}\n", data_abs.display()))?;

    let mut trainer = if resume { Trainer::resume(cfg, index, &device, out)? } else { Trainer::new(cfg, index, &device)? };
    if let Some(v) = validator(cfg, index, &device) {
        trainer.set_validator(v);
    }
    let total: usize = trainer.steps_per_stage()?.iter().sum();
    let bar = progress::bar(total as u64, "training", quiet);
    let start = Instant::now();
    let metrics = out.join("metrics.csv");
    let mut write_error = None;
    let result = trainer.train(Some(out), &mut |r: &StepRecord, state: &RunState| {
        bar.set_position(state.step);
        bar.set_message(format!("stage {} ({:?}) epoch {} loss {:.3}", r.stage + 1, r.identity, r.epoch + 1, r.loss));
        if state.batch == 0 {
            // An epoch ended: its checkpoint is written, and so is the log up to it.
            if let Err(e) = write_atomic(&metrics, &metrics_csv(&state.records)) {
                write_error = Some(e);
                return false;
            }
        }
        if kill_after_steps == Some(state.step) {
            #[cfg(unix)]
            // SAFETY: sends a signal to this very process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        true
    });
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e);
    }
    let state = result.with_context(|| format!("training stopped; the last good checkpoint is {}", last_checkpoint(out).display()))?;
    write_atomic(&metrics, &metrics_csv(&state.records))?;
    trainer.store.save(&out.join("model.safetensors"))?;
    // Training time over every session of the run (an interrupted run adds up its parts).
    let before = if resume { train_seconds(out).unwrap_or(0.0) } else { 0.0 };
    let seconds = before + start.elapsed().as_secs_f64();
    write_atomic(&out.join("train_seconds.txt"), &format!("{seconds:.3}\n"))?;
    Ok(TrainOutcome { state, seconds })
}

/// The wall-clock training time a finished run recorded.
pub fn train_seconds(run: &Path) -> Option<f64> {
    std::fs::read_to_string(run.join("train_seconds.txt")).ok()?.trim().parse().ok()
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
    split: Vec<String>,
    /// The embeddings (.npy, float32, [N, D]); the metadata CSV (set, replicate, drug, moa)
    /// goes beside it with the extension .csv.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Videos per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// Scans a dataset (folder or manifest) with a progress bar.
pub fn open_dataset(data: &Path, quiet: bool) -> Result<DatasetIndex> {
    let bar = progress::bar(0, "scanning", quiet);
    let index = DatasetIndex::open_with_progress(data, &progress::scan_callback(&bar))?;
    bar.finish_and_clear();
    Ok(index)
}

/// The evaluation's metadata of `cells`: replicate number, drug and MoA ids.
pub fn metadata<'a>(cells: impl IntoIterator<Item = &'a CellVideo>) -> Metadata {
    let mut m = Metadata { replicate: Vec::new(), drug: Vec::new(), moa: Vec::new() };
    for c in cells {
        m.replicate.push(molclip::train::replicate_number(c));
        m.drug.push(c.drug_id as u32);
        m.moa.push(c.moa_id as u32);
    }
    m
}

/// Rows `picks` of the row-major `[N, dim]` matrix `rows`, for the evaluation.
pub fn embeddings(rows: &[f32], dim: usize, picks: impl IntoIterator<Item = usize>) -> Result<Embeddings> {
    let mut e = Embeddings::empty(dim);
    for i in picks {
        e.push_row(&rows[i * dim..(i + 1) * dim].iter().map(|&v| v as f64).collect::<Vec<_>>()).map_err(anyhow::Error::msg)?;
    }
    Ok(e)
}

/// Embeds the splits of a dataset with a run's model; returns the metadata path.
pub fn embed_to_files(run: &Path, index: &DatasetIndex, splits: &[String], out: &Path, device: &str, batch: usize, quiet: bool) -> Result<PathBuf> {
    let device = molclip::parse_device(device)?;
    let trained = TrainedRun::load(run, &device).with_context(|| format!("loading the run {}", run.display()))?;
    let mut cells = Vec::new();
    for split in splits {
        let before = cells.len();
        cells.extend(index.split(split).cloned());
        if cells.len() == before {
            bail!("{}: the split `{split}` is empty", index.root.display());
        }
    }
    let mut metadata = String::from("set,replicate,drug,moa\n");
    for c in &cells {
        let moa = index.annotation.moa_name(c.moa_id);
        metadata.push_str(&format!("{},{},{},{}\n", c.split, c.replicate, molclip_data::annotation::drug_key(&c.drug_folder), moa.replace(',', ";")));
    }
    let n = cells.len();
    let dim = trained.video().dim();
    let bar = progress::bar(n as u64, "embedding", quiet);
    let rows = molclip::train::embed_cells(trained.video(), &trained.cfg, cells, &device, batch, &mut |k| bar.inc(k as u64))?;
    bar.finish_and_clear();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = out.with_extension("npy.tmp");
    molclip_eval::npy::write_npy_f32(&tmp, n, dim, &rows)?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let meta_path = out.with_extension("csv");
    write_atomic(&meta_path, &metadata)?;
    Ok(meta_path)
}

pub fn embed(args: EmbedArgs, quiet: bool) -> Result<()> {
    let index = open_dataset(&args.data, quiet)?;
    let meta = embed_to_files(&args.run, &index, &args.split, &args.out, &args.device, args.batch, quiet)?;
    println!("{} and {}", args.out.display(), meta.display());
    Ok(())
}
