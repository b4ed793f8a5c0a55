//! A training run into a run folder: the config and dataset recorded, validation on the query
//! and gallery splits (MitoReID protocol), the log, the final weights and the training time.

use std::path::Path;
use std::time::Instant;

use molclip::candle_core::Device;
use molclip::models::VideoModel;
use molclip::train::feed::Feed;
use molclip::train::{embed_cells, RunState, StagePlan, StepRecord, StepTimes, TrainConfig, Trainer, Validator};
use molclip::ModelError;
use molclip_data::{DatasetIndex, Split};

use crate::embedding::{embeddings, metadata, EMBED_BATCH};
use crate::error::{ExperimentError, Result};
use crate::progress::Progress;
use crate::run_dir::RunDir;

/// What a finished (or stopped) training reports.
pub struct TrainOutcome {
    /// Where the run is.
    pub state: RunState,
    /// Training time over every session of the run.
    pub seconds: f64,
    /// MolCLIP runs: training drugs with a molecule (the CLIP term's), and all.
    pub molecules: Option<(usize, usize)>,
    /// This session's steps: their time, and the part spent waiting for batches.
    pub step_times: StepTimes,
}

impl TrainOutcome {
    /// One line: steps, time, final loss, the last validation, the videos left out of the
    /// loss by `loss.control_mislabels`, and the share of the steps spent waiting for data.
    pub fn summary(&self, run: &RunDir) -> String {
        let last = self.state.records.last();
        let validated = self.state.records.iter().rev().find_map(|r| r.validation);
        let waited = if self.step_times.steps > 0 {
            format!("; the steps waited for data {:.1} % of their time", 100.0 * self.step_times.data_share())
        } else {
            String::new()
        };
        let left_out: usize = self.state.records.iter().map(|r| r.left_out).sum();
        let left_out = if left_out > 0 {
            format!(
                "; {left_out} videos of treated drugs that the classifier called the control left out of the loss \
                 (loss.control_mislabels)"
            )
        } else {
            String::new()
        };
        format!(
            "{}: {} steps in {:.1} s, final loss {}{}{}{left_out}{waited}",
            run.root().display(),
            self.state.step,
            self.seconds,
            last.map_or("-".into(), |r| format!("{:.4}", r.loss)),
            validated.map_or(String::new(), |(d, m)| format!(", validation mAP drug {d:.2} MoA {m:.2}")),
            self.molecules.map_or(String::new(), |(with, all)| format!(
                "; CLIP term on the {with} of {all} training drugs with a molecule, metric losses on all"
            ))
        )
    }
}

/// What a training would do ([`Training::plan`]), found without training or writing.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPlan {
    /// Each stage, in order.
    pub stages: Vec<StagePlan>,
    /// Videos in the training split.
    pub videos: usize,
    /// Steps already done (a resumed run).
    pub done: u64,
    /// Whether the run being resumed has already finished (it has nothing left to train).
    pub finished: bool,
}

impl TrainPlan {
    /// Steps over every stage, epoch 1's count taken for every epoch (the P x K sampler's
    /// count varies a little by epoch; with `patience`, a stage may stop earlier).
    pub fn steps(&self) -> usize {
        self.stages.iter().map(StagePlan::steps).sum()
    }

    /// A line for the run, then one per stage.
    pub fn summary(&self, run: &RunDir, cfg: &TrainConfig) -> String {
        let sampler = &cfg.data.sampler;
        let at = match (self.finished, self.done) {
            (true, done) => format!("; the run finished at step {done}: nothing is left to train"),
            (false, 0) => String::new(),
            (false, done) => format!("; resuming after step {done}"),
        };
        let mut out = format!(
            "{}: {} training videos, batches of P x K = {} x {}, about {} steps{at}",
            run.root().display(),
            self.videos,
            sampler.p,
            sampler.k,
            self.steps()
        );
        for (i, stage) in self.stages.iter().enumerate() {
            out += &format!("\n  stage {} ({}): ", i + 1, stage.identity.task());
            out += &if stage.epochs == 0 {
                "skipped (0 epochs)".to_string()
            } else {
                format!(
                    "{} {} over {} videos, {} epochs of about {} steps",
                    stage.classes,
                    stage.identity.plural(),
                    stage.videos,
                    stage.epochs,
                    stage.steps_per_epoch
                )
            };
        }
        out
    }
}

/// What a front end changes in a config before training: `--set`-style overrides by dotted
/// path, a cap on every stage's epochs, pretrained weights. Recorded in run.toml.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `(dotted.path, value)` pairs, validated like the file.
    pub sets: Vec<(String, String)>,
    /// Cap every stage at this many epochs.
    pub epochs: Option<usize>,
    /// Start from these pretrained weights.
    pub init: Option<std::path::PathBuf>,
}

impl Overrides {
    /// Whether anything is overridden.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.epochs.is_none() && self.init.is_none()
    }

    /// `cfg` with the overrides applied.
    pub fn apply(&self, mut cfg: TrainConfig) -> Result<TrainConfig> {
        if !self.sets.is_empty() {
            let pairs: Vec<(&str, &str)> = self.sets.iter().map(|(k, v)| (k.trim(), v.trim())).collect();
            cfg.set_all(&pairs)?;
        }
        if let Some(n) = self.epochs {
            cfg.cap_epochs(n)?;
        }
        if let Some(init) = &self.init {
            cfg.init = Some(
                std::path::absolute(init).map_err(|e| ExperimentError::Input(format!("{}: {e}", init.display())))?,
            );
        }
        Ok(cfg)
    }
}

/// The config a training runs with: `given` (named `what` in errors) with `overrides`; with
/// `resume`, the run's own run.toml, which anything given must match (a run continues as it
/// was configured).
pub fn resolve_config(
    run: &RunDir,
    given: Option<(String, TrainConfig)>,
    overrides: &Overrides,
    resume: bool,
) -> Result<TrainConfig> {
    if !resume {
        let (_, cfg) = given.ok_or_else(|| ExperimentError::Input("a config is needed (except to resume)".into()))?;
        return overrides.apply(cfg);
    }
    let own = run.read_config()?;
    let given = match given {
        Some((what, cfg)) => Some((what, overrides.apply(cfg)?)),
        None if !overrides.is_empty() => Some(("the overrides".to_string(), overrides.apply(own.clone())?)),
        None => None,
    };
    if let Some((what, given)) = given {
        if let Some(field) = own.difference(&given) {
            return Err(ExperimentError::Input(format!(
                "{what}: {field} differs from the run's own {} (run against given): resuming continues the \
                 run as it was configured",
                run.config_path().display()
            )));
        }
    }
    Ok(own)
}

/// Validation on the query and gallery splits: the MitoReID protocol, drug and MoA mAP.
fn validator(cfg: &TrainConfig, index: &DatasetIndex, device: &Device) -> Option<Validator> {
    let query: Vec<_> = index.split(Split::Query).cloned().collect();
    let gallery: Vec<_> = index.split(Split::Gallery).cloned().collect();
    let never = cfg.stages.iter().all(|s| s.validate_every.unwrap_or(cfg.validate_every) == 0);
    if never || query.is_empty() || gallery.is_empty() {
        return None;
    }
    let (qm, gm) = (metadata(&query), metadata(&gallery));
    let (cfg, device) = (cfg.clone(), device.clone());
    // One staging for every validation, its pinned buffers (on a GPU) kept between them.
    let staging = Feed::staging(&device);
    Some(Box::new(move |model: &VideoModel| {
        let embed = |cells: &[molclip_data::CellVideo]| -> molclip::Result<molclip_eval::Embeddings> {
            let rows = embed_cells(model, &cfg, cells.to_vec(), &device, &staging, EMBED_BATCH, &mut |_| {})?;
            embeddings(&rows, model.dim(), 0..cells.len()).map_err(|e| ModelError::Input(e.to_string()))
        };
        let (q, g) = (embed(&query)?, embed(&gallery)?);
        let ev =
            molclip_eval::evaluate(&q, &qm, &g, &gm, 10).map_err(|e| ModelError::Input(format!("validation: {e}")))?;
        Ok((ev.drug.map, ev.moa.map))
    }))
}

/// A training run: `cfg` on `index` (opened from `data`) into `run`, or the continuation of
/// the run there with `resume`.
pub struct Training<'a> {
    /// The config (with `resume`, the run's own).
    pub cfg: &'a TrainConfig,
    /// The dataset's path, recorded in the run.
    pub data: &'a Path,
    /// The dataset.
    pub index: &'a DatasetIndex,
    /// The run folder.
    pub run: &'a RunDir,
    /// Where the model trains.
    pub device: &'a Device,
    /// Continue from the run's last checkpoint.
    pub resume: bool,
    /// Decode every frame of the dataset before the first step, so that a corrupt file
    /// stops the run before anything is written, not hours in.
    pub check_frames: bool,
}

impl Training<'_> {
    /// What [`Training::run`] would do, checked as it checks before its first step: every
    /// frame (with `check_frames`), the run folder (a checkpoint to resume, or none to
    /// overwrite; resuming, the run's own dataset), the config, the initial weights and every
    /// stage's P x K batches. Nothing is written.
    pub fn plan(&self, progress: &dyn Progress) -> Result<TrainPlan> {
        self.check_frames(progress)?;
        self.check_run_folder()?;
        let trainer = self.trainer()?;
        Ok(TrainPlan {
            stages: trainer.plan()?,
            videos: self.index.split(Split::Train).count(),
            done: trainer.resumed_at().map_or(0, |s| s.step),
            finished: trainer.resumed_at().is_some_and(|s| s.is_complete(&self.cfg.stages)),
        })
    }

    /// Decodes every frame of the dataset (`check_frames`), so that a corrupt file stops the
    /// run before anything is written.
    fn check_frames(&self, progress: &dyn Progress) -> Result<()> {
        if !self.check_frames {
            return Ok(());
        }
        progress.start("checking frames", self.index.cells.len() as u64);
        let checked = self.index.verify_frames_with_progress(&self.cfg.data.frames, &crate::progress::scan(progress));
        progress.finish();
        Ok(checked?)
    }

    /// The run folder holds a checkpoint to resume (and, resuming, the run's own dataset is
    /// given), or none to overwrite.
    fn check_run_folder(&self) -> Result<()> {
        let Training { data, index, run, resume, .. } = *self;
        let has_checkpoint = run.has_checkpoint();
        if resume && !has_checkpoint {
            return Err(ExperimentError::Input(format!(
                "{}: no checkpoint to resume (checkpoints/last)",
                run.root().display()
            )));
        }
        if !resume && has_checkpoint {
            return Err(ExperimentError::Input(format!(
                "{} already holds a run (checkpoints/last): pass --resume to continue it, or choose another --out",
                run.root().display()
            )));
        }
        if resume {
            run.check_dataset(data, index)?;
        }
        Ok(())
    }

    /// The trainer: a new one, or one from the run's last checkpoint.
    fn trainer(&self) -> Result<Trainer> {
        Ok(if self.resume {
            Trainer::resume(self.cfg, self.index, self.device, &self.run.outputs().checkpoint)?
        } else {
            Trainer::new(self.cfg, self.index, self.device)?
        })
    }

    /// Trains; `on_step` sees the run state after every step and returns false to stop there
    /// (a checkpoint of that step is written and the run can resume; the outcome's state is
    /// not `finished` and no final weights are written).
    pub fn run(&self, progress: &dyn Progress, on_step: &mut dyn FnMut(&RunState) -> bool) -> Result<TrainOutcome> {
        let Training { cfg, data, index, run, device, resume, .. } = *self;
        // Before anything is written (the lock file included): the frames, and a new run's
        // model and batches.
        self.check_frames(progress)?;
        let fresh = if resume {
            None
        } else {
            self.check_run_folder()?;
            Some(self.trainer()?)
        };
        let _lock = run.lock()?;
        // Again, now that no other training writes the folder.
        self.check_run_folder()?;
        run.create()?;
        run.write_config(cfg)?;
        run.record_dataset(data, index)?;
        let outputs = run.outputs();
        let mut trainer = match fresh {
            Some(trainer) => trainer,
            None => self.trainer()?,
        };
        if let Some(v) = validator(cfg, index, device) {
            trainer.set_validator(v);
        }
        let total: usize = trainer.plan()?.iter().map(StagePlan::steps).sum();
        progress.start("training", total as u64);
        let start = Instant::now();
        // The time of earlier sessions, up to their last checkpoint.
        let before = if resume { run.train_seconds().unwrap_or(0.0) } else { 0.0 };
        let mut write_error = None;
        let result = trainer.train(Some(&outputs), &mut |r: &StepRecord, state: &RunState| {
            progress.set_position(state.step);
            progress.message(&format!(
                "stage {} ({:?}) epoch {} loss {:.3}",
                r.stage + 1,
                r.identity,
                r.epoch + 1,
                r.loss
            ));
            // An epoch ended: its checkpoint is written, and so is the log up to it. With every
            // checkpoint goes the time so far, so that a killed run keeps it.
            let every = cfg.checkpoint_every as u64;
            let written = if state.batch == 0 {
                run.write_metrics(&state.records)
                    .and_then(|()| run.write_train_seconds(before + start.elapsed().as_secs_f64()))
            } else if every > 0 && state.step.is_multiple_of(every) {
                run.write_train_seconds(before + start.elapsed().as_secs_f64())
            } else {
                Ok(())
            };
            if let Err(e) = written {
                write_error = Some(e);
                return false;
            }
            on_step(state)
        });
        progress.finish();
        if let Some(e) = write_error {
            return Err(e);
        }
        let state = result.map_err(|e| ExperimentError::Run {
            path: outputs.checkpoint.clone(),
            message: format!("training stopped ({e}); this is the last good checkpoint"),
        })?;
        run.write_metrics(&state.records)?;
        // A run stopped by `on_step` has its checkpoint, not final weights: it resumes.
        if state.finished {
            run.save_model(&trainer.store)?;
        }
        let seconds = before + start.elapsed().as_secs_f64();
        run.write_train_seconds(seconds)?;
        let molecules = (cfg.kind == molclip::train::ModelKind::Molclip).then(|| trainer.molecule_coverage());
        Ok(TrainOutcome { state, seconds, molecules, step_times: trainer.step_times() })
    }
}
