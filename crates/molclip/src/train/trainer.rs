//! The training loop: stages (drug identity, then MoA), P x K batches, the configured losses,
//! gradient clipping, the optimiser and the learning-rate schedule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use molclip_chem::Molecule;
use molclip_data::loader::{Loader, Mode, VideoDataset};
use molclip_data::sampler::PkSampler;
use molclip_data::{DatasetIndex, Split};

use serde::{Deserialize, Serialize};

use super::checkpoint::{load_checkpoint, save_checkpoint};
use super::config::StageConfig;
use super::config::{Identity, ModelKind, Precision, TrainConfig};
use super::feed::{Fed, Feed};
use super::schedule::{Decay, LrSchedule, Plateau};
use crate::error::{ModelError, Result};
use crate::losses::{inverse_temperature, without_control_mislabels, ClipInputs, Criterion, LossTerm, MetricInputs};
use crate::models::{drug_molecule, MolClip, MoleculeInput, VideoModel};
use crate::nn::staging::Staging;
use crate::nn::ParamStore;
use crate::optim::{clip_coefficient, grad_norm, Optimizer, OptimizerConfig, OptimizerKind};

/// The model a run trains: MolCLIP, or its video branch alone (same weight names).
pub enum TrainModel {
    /// Video and molecule encoders with their projections.
    MolClip(MolClip),
    /// The video encoder with its BNNeck and classifiers (video-only, single-frame).
    Video(VideoModel),
}

impl TrainModel {
    /// The model `cfg.kind` names, with classifiers for `drugs` and `moas` classes, its
    /// weights from `store` (initialised, or loaded).
    pub fn build(store: &ParamStore, cfg: &TrainConfig, drugs: usize, moas: usize) -> Result<Self> {
        Ok(match cfg.kind {
            ModelKind::Molclip => Self::MolClip(MolClip::new(&store.root(), &cfg.model, drugs, moas)?),
            ModelKind::VideoOnly | ModelKind::SingleFrame => {
                Self::Video(VideoModel::new(&store.root().pp("video"), &cfg.model.video, drugs, moas)?)
            }
        })
    }

    /// The video branch.
    pub fn video(&self) -> &VideoModel {
        match self {
            Self::MolClip(m) => &m.video,
            Self::Video(v) => v,
        }
    }
}

/// One optimisation step, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The stage (0-based).
    pub stage: usize,
    /// The identity it learns.
    pub identity: Identity,
    /// The epoch within the stage.
    pub epoch: usize,
    /// The global step.
    pub step: u64,
    /// Learning rate.
    pub lr: f64,
    /// Total loss.
    pub loss: f32,
    /// Each weighted loss term.
    pub terms: Vec<(LossTerm, f32)>,
    /// The CLIP inverse temperature (MolCLIP only).
    pub temperature: Option<f32>,
    /// Before clipping; NaN when clipping is off.
    pub grad_norm: f64,
    /// Validation mAP (drug, MoA) when the run was validated after this step.
    #[serde(default)]
    pub validation: Option<(f64, f64)>,
    /// Videos left out of the step's loss by `loss.control_mislabels` (MitoReID's
    /// `num_mislabel`).
    #[serde(default)]
    pub left_out: usize,
}

/// Where a trainer writes: its last checkpoint (a folder) and the weights at the best
/// validation mAP. A run folder decides where these live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainOutputs {
    /// The checkpoint folder, rewritten atomically.
    pub checkpoint: PathBuf,
    /// The best weights of the current stage (a safetensors file).
    pub best: PathBuf,
}

/// What a resumed run continues from, read back from its last checkpoint.
pub struct Resume {
    /// Where the run was.
    pub state: RunState,
    /// The current stage's criterion weights (the centre loss's centres).
    pub criterion: HashMap<String, Tensor>,
    /// The optimiser's state.
    pub optimizer: HashMap<String, Tensor>,
}

/// Where the video encoder's weights live in the model (`train --init` must cover them).
pub const ENCODER: &str = "video.encoder.";

/// The checkpoint's parameter stores: the model's, and the current stage's criterion's.
const MODEL_STORE: &str = "model";
const CRITERION_STORE: &str = "criterion";

/// Where a step is: its stage, epoch and global step, how its batch is augmented, and
/// its learning rate.
#[derive(Clone, Copy, Debug)]
struct StepAt {
    stage: usize,
    identity: Identity,
    epoch: usize,
    step: u64,
    lr: f64,
    /// `loss.control_mislabels` once the stage's hold is over, else 0.
    control_mislabels: usize,
}

/// Where a run is: saved in every checkpoint, so that a resumed run continues exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The stage, epoch and batch (within the epoch) to run next.
    pub stage: usize,
    /// The epoch within the stage.
    pub epoch: usize,
    /// The batch within the epoch.
    pub batch: usize,
    /// Steps done over all stages.
    pub step: u64,
    /// Every step so far.
    pub records: Vec<StepRecord>,
    /// Whether every stage is done.
    pub finished: bool,
    /// The best validation mAP of the current stage (drug mAP in a drug stage, MoA mAP in
    /// a MoA stage), and validations since it improved.
    #[serde(default)]
    pub best: Option<f64>,
    /// Validations since the best.
    #[serde(default)]
    pub stale: usize,
    /// The current stage's plateau decay (`schedule.decay = "plateau"`).
    #[serde(default)]
    pub plateau: Plateau,
    /// The run's resolved config (TOML), so that a checkpoint says what it is of.
    #[serde(default)]
    pub config: String,
}

impl RunState {
    /// Whether nothing is left to train under `stages`: finished, or at the end of the last
    /// stage that has epochs (where the last epoch's checkpoint is).
    pub fn is_complete(&self, stages: &[StageConfig]) -> bool {
        self.finished
            || stages.iter().enumerate().skip(self.stage).all(|(i, s)| {
                if i == self.stage {
                    self.epoch >= s.epochs
                } else {
                    s.epochs == 0
                }
            })
    }
}

/// Validation: the video model to (drug mAP, MoA mAP) on held-out videos.
pub type Validator = Box<dyn FnMut(&VideoModel) -> Result<(f64, f64)>>;

/// Labels as contiguous class indices: dataset ids can be sparse. Videos without a label
/// (`None`: outside the task) keep none.
fn contiguous(ids: &[Option<usize>]) -> (Vec<Option<u32>>, usize) {
    let classes: BTreeMap<usize, u32> = ids
        .iter()
        .flatten()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i as u32))
        .collect();
    (ids.iter().map(|id| id.map(|id| classes[&id])).collect(), classes.len())
}

/// MitoReID's update of the centre loss's centres: their own plain SGD, on the gradient of
/// the centre loss before its weight (`loss.center_lr`).
struct CentreSgd {
    optimizer: Optimizer,
    /// `center_lr / center`: the rate on the weighted loss's gradient.
    rate: f64,
}

/// [`contiguous`] for labels every video has.
fn dense(ids: impl Iterator<Item = usize>) -> (Vec<u32>, usize) {
    let (labels, n) = contiguous(&ids.map(Some).collect::<Vec<_>>());
    (labels.into_iter().map(|l| l.expect("every id was given")).collect(), n)
}

/// A stage's P x K batches over the videos that have a label in the stage's task, as
/// indices into the training split.
struct StageSampler {
    sampler: PkSampler,
    /// Training-split index of each video the sampler draws from.
    members: Vec<usize>,
}

impl StageSampler {
    fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.sampler.epoch(epoch).into_iter().map(|b| b.into_iter().map(|i| self.members[i]).collect()).collect()
    }
}

/// Trains a [`TrainConfig`] on a dataset's training split.
pub struct Trainer {
    /// The run's config.
    pub cfg: TrainConfig,
    /// Where the model runs.
    pub device: Device,
    /// The model's parameters and buffers.
    pub store: ParamStore,
    /// The model.
    pub model: TrainModel,
    train: Arc<VideoDataset>,
    drugs: Vec<u32>,
    /// `None` for videos outside the MoA task: the MoA stage does not draw them.
    moas: Vec<Option<u32>>,
    replicates: Vec<usize>,
    /// Parsed molecule of each drug class (MolCLIP only).
    molecules: Vec<Option<Molecule>>,
    /// A training video of the vehicle control (DMSO), whose classes are the control's.
    control: Option<usize>,
    /// Set by [`Trainer::resume`]: where to continue from.
    resume: Option<Resume>,
    validator: Option<Validator>,
    times: StepTimes,
    /// The batches' way to the device, kept across epochs (pinned buffers on a GPU).
    staging: Staging,
}

/// How long the training steps of this process took, and how much of it they waited for
/// their batches (reading and augmenting that the loader's prefetch did not hide).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    /// Steps taken.
    pub steps: u64,
    /// Their time, from asking for the batch to the optimiser's update.
    pub total: Duration,
    /// The part of it spent waiting for batches.
    pub data_wait: Duration,
}

impl StepTimes {
    /// The share of the steps' time spent waiting for data (0 before any step).
    pub fn data_share(&self) -> f64 {
        if self.total.is_zero() {
            0.0
        } else {
            self.data_wait.as_secs_f64() / self.total.as_secs_f64()
        }
    }
}

/// One stage of a run as [`Trainer::plan`] sees it before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    /// The stage's task.
    pub identity: Identity,
    /// Classes of the task among the training videos (drugs, or MoAs).
    pub classes: usize,
    /// Training videos the stage's batches draw from (those with a label in its task; 0 for
    /// a skipped stage).
    pub videos: usize,
    /// Epochs (0: skipped).
    pub epochs: usize,
    /// P x K batches in the stage's first epoch (the sampler's count varies a little by
    /// epoch).
    pub steps_per_epoch: usize,
}

impl StagePlan {
    /// Steps of the whole stage, the first epoch's count taken for every epoch (with
    /// `patience`, the stage may stop earlier).
    pub fn steps(&self) -> usize {
        self.steps_per_epoch * self.epochs
    }
}

impl Trainer {
    /// Builds the model for the training split of `index`, from `cfg.init` when it names
    /// pretrained weights.
    pub fn new(cfg: &TrainConfig, index: &DatasetIndex, device: &Device) -> Result<Self> {
        let Some(init) = &cfg.init else { return Self::build(cfg, index, device, HashMap::new()) };
        let trainer = Self::build(cfg, index, device, crate::nn::read_weights(init)?)?;
        trainer.store.check_all_used(init)?;
        let missing = trainer.store.missing_under(ENCODER);
        if !missing.is_empty() {
            return Err(ModelError::Weights {
                what: init.display().to_string(),
                message: format!(
                    "the video encoder must come whole from the initial weights, but {} of its tensors are \
                     missing (first: {}): weights for another depth or block style?",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        Ok(trainer)
    }

    /// A trainer that continues a run from its last checkpoint (`checkpoint`, a folder).
    pub fn resume(cfg: &TrainConfig, index: &DatasetIndex, device: &Device, checkpoint: &Path) -> Result<Self> {
        let ck = load_checkpoint::<RunState>(checkpoint)?;
        let what = || checkpoint.display().to_string();
        let saved: TrainConfig = toml::from_str(&ck.state.config).map_err(|e| ModelError::Weights {
            what: what(),
            message: format!("the checkpoint's config does not parse: {e}"),
        })?;
        if &saved != cfg {
            let field = saved.difference(cfg).unwrap_or_else(|| "a field".into());
            return Err(ModelError::config(
                "config",
                format!(
                    "{field}: differs from the config {} was written with (checkpoint against now); \
                     resume with the run's own run.toml",
                    what()
                ),
            ));
        }
        let mut stores = ck.stores;
        let model = stores
            .remove(MODEL_STORE)
            .ok_or_else(|| ModelError::Weights { what: what(), message: "the checkpoint has no model".into() })?;
        let mut trainer = Self::build(cfg, index, device, model)?;
        trainer.store.check_all_used(checkpoint)?;
        let criterion = stores.remove(CRITERION_STORE).unwrap_or_default();
        trainer.resume = Some(Resume { state: ck.state, criterion, optimizer: ck.optimizer });
        Ok(trainer)
    }

    fn build(
        cfg: &TrainConfig,
        index: &DatasetIndex,
        device: &Device,
        weights: HashMap<String, Tensor>,
    ) -> Result<Self> {
        cfg.validate()?;
        match (cfg.precision, device.is_cuda()) {
            (Precision::Tf32, false) => {
                return Err(ModelError::config(
                    "precision",
                    "tf32 is a mode of CUDA's tensor cores: train on a CUDA device, or use f32 or bf16",
                ))
            }
            // cuBLAS's float32 products: TF32 only where the run asks for it.
            (p, true) => candle_core::cuda::set_gemm_reduced_precision_f32(p == Precision::Tf32),
            _ => {}
        }
        // The run's own setting, whatever an earlier run in this process set (the environment's
        // MOLCLIP_CUDNN_BENCHMARK=1 still turns it on).
        if device.is_cuda() {
            molclip_nn::set_cudnn_benchmark(cfg.cudnn_benchmark);
        }
        let cells: Vec<_> = index.split(Split::Train).cloned().collect();
        if cells.is_empty() {
            return Err(ModelError::Input(format!("{}: the training split is empty", index.root.display())));
        }
        let (drugs, n_drugs) = dense(cells.iter().map(|c| c.drug_id));
        let (moas, n_moas) = contiguous(&cells.iter().map(|c| c.moa_id).collect::<Vec<_>>());
        let moa_stage = cfg.stages.iter().any(|s| s.identity == Identity::Moa && s.epochs > 0);
        if moa_stage && n_moas == 0 {
            return Err(ModelError::Input(format!(
                "{}: a MoA stage is configured, but no training video belongs to the MoA task (a known MoA \
                 and moa_choose = 1)",
                index.root.display()
            )));
        }
        let replicates = dense(cells.iter().map(|c| c.replicate_number() as usize)).0;
        let replicates = replicates.into_iter().map(|r| r as usize).collect();
        // The CLIP term learns from the drugs with a molecule; the metric losses from all.
        let mut molecules = vec![None; n_drugs];
        if cfg.kind == ModelKind::Molclip {
            for (cell, &d) in cells.iter().zip(&drugs) {
                let d = d as usize;
                if molecules[d].is_none() && index.annotation.smiles(cell.split, &cell.drug_folder).is_some() {
                    molecules[d] = Some(drug_molecule(index, cell)?);
                }
            }
            if molecules.iter().all(Option::is_none) {
                return Err(ModelError::Input(format!(
                    "{}: no training drug has a SMILES in the annotation, which the CLIP term needs (join them \
                     with `molclip annotate --smiles`, or use kind = \"video-only\")",
                    index.root.display()
                )));
            }
        }
        let control = cells
            .iter()
            .position(|c| index.annotation.lookup_in(c.split, &c.drug_folder).is_some_and(|d| d.is_control()));
        let store = ParamStore::with_tensors(cfg.seed, weights, device);
        let model = TrainModel::build(&store, cfg, n_drugs, n_moas)?;
        let train = Arc::new(VideoDataset::new(cells, cfg.data.clone())?);
        let trainer = Self {
            cfg: cfg.clone(),
            device: device.clone(),
            store,
            model,
            train,
            drugs,
            moas,
            replicates,
            molecules,
            control,
            resume: None,
            validator: None,
            times: StepTimes::default(),
            staging: Feed::staging(device),
        };
        // Every stage can draw its batches: found now, not when the stage begins.
        trainer.plan()?;
        Ok(trainer)
    }

    /// Where a trainer made by [`Trainer::resume`] continues from (`None` for a new run, or
    /// once it has begun).
    pub fn resumed_at(&self) -> Option<&RunState> {
        self.resume.as_ref().map(|r| &r.state)
    }

    /// Training drugs with a molecule (which the CLIP term learns from), and all training
    /// drugs (MolCLIP runs; (0, drugs) otherwise).
    pub fn molecule_coverage(&self) -> (usize, usize) {
        (self.molecules.iter().filter(|m| m.is_some()).count(), self.molecules.len())
    }

    /// Training video `i`'s class under `identity` (a contiguous id; `None` outside the task).
    fn label(&self, identity: Identity, i: usize) -> Option<u32> {
        match identity {
            Identity::Drug => Some(self.drugs[i]),
            Identity::Moa => self.moas[i],
        }
    }

    /// Classes of `identity` among the training videos.
    pub fn classes(&self, identity: Identity) -> usize {
        (0..self.drugs.len()).filter_map(|i| self.label(identity, i)).max().map_or(0, |m| m as usize + 1)
    }

    /// Each training video's class under `identity`, in the training split's order, as the
    /// classifiers number them (`None` outside the task), and the number of classes.
    pub fn labels(&self, identity: Identity) -> (Vec<Option<u32>>, usize) {
        ((0..self.drugs.len()).map(|i| self.label(identity, i)).collect(), self.classes(identity))
    }

    /// Validate every `validate_every` epochs with this; with `patience`, a stage stops early
    /// when the mAP has not improved that many times; the best weights go to
    /// `RUN/best.safetensors`.
    pub fn set_validator(&mut self, validator: Validator) {
        self.validator = Some(validator);
    }

    /// The time of the steps this trainer took, and the part spent waiting for data.
    pub fn step_times(&self) -> StepTimes {
        self.times
    }

    /// What each stage will train: its task's classes and videos, and its steps (0 for a
    /// skipped stage). Fails, naming the stage, when a stage cannot draw its P x K batches.
    pub fn plan(&self) -> Result<Vec<StagePlan>> {
        self.cfg
            .stages
            .iter()
            .enumerate()
            .map(|(si, st)| {
                let (sampler, steps_per_epoch) = if st.epochs == 0 {
                    (None, 0)
                } else {
                    let sampler = self.sampler(si, st.identity)?;
                    let steps = sampler.epoch(0).len();
                    (Some(sampler), steps)
                };
                Ok(StagePlan {
                    identity: st.identity,
                    classes: self.classes(st.identity),
                    videos: sampler.map_or(0, |s| s.members.len()),
                    epochs: st.epochs,
                    steps_per_epoch,
                })
            })
            .collect()
    }

    /// The P x K sampler of stage `si` (0-based), over the training videos with a label in
    /// its task.
    fn sampler(&self, si: usize, identity: Identity) -> Result<StageSampler> {
        // Too few classes for P: which stage, and what P would do.
        let (available, p) = (self.classes(identity), self.cfg.data.sampler.p);
        if available > 0 && available < p {
            return Err(ModelError::config(
                "data.sampler.p",
                format!(
                    "stage {} ({identity}): the training videos hold {available} {}, but a batch needs P = {p} \
                     different ones; set P to at most {available} (--set data.sampler.p={available})",
                    si + 1,
                    identity.plural()
                ),
            ));
        }
        let labelled: Vec<(usize, usize)> =
            (0..self.drugs.len()).filter_map(|i| Some((i, self.label(identity, i)? as usize))).collect();
        let members: Vec<usize> = labelled.iter().map(|m| m.0).collect();
        let classes: Vec<usize> = labelled.iter().map(|m| m.1).collect();
        let replicates: Vec<usize> = members.iter().map(|&i| self.replicates[i]).collect();
        let seed = self.cfg.seed ^ (si as u64 + 1);
        let sampler = PkSampler::new(&classes, &replicates, self.cfg.data.sampler.clone(), seed)
            .map_err(super::config::data_error)?;
        Ok(StageSampler { sampler, members })
    }

    /// Runs every stage, or what is left of them after [`Trainer::resume`]. With `outputs`,
    /// a checkpoint is written every `checkpoint_every` steps and at the end of every epoch,
    /// and the best weights whenever validation improves. `on_step` sees each step
    /// (progress, metrics) and the run state after it, and returns false to stop there (the
    /// state returned is then not `finished`, and with `outputs` a checkpoint of that step is
    /// written).
    pub fn train(
        &mut self,
        outputs: Option<&TrainOutputs>,
        on_step: &mut dyn FnMut(&StepRecord, &RunState) -> bool,
    ) -> Result<RunState> {
        let Resume { mut state, criterion: mut criterion_weights, optimizer: optimizer_state } =
            self.resume.take().unwrap_or_else(|| Resume {
                state: RunState::default(),
                criterion: HashMap::new(),
                optimizer: HashMap::new(),
            });
        let mut optimizer_state = Some(optimizer_state).filter(|o| !o.is_empty());
        state.config = toml::to_string(&self.cfg).map_err(|e| ModelError::config("config", e.to_string()))?;
        let loss_cfg = self.cfg.effective_loss();
        let dim = self.model.video().dim();
        let stages = self.cfg.stages.clone();
        while state.stage < stages.len() {
            let (si, stage) = (state.stage, &stages[state.stage]);
            if stage.epochs > 0 {
                let sampler = self.sampler(si, stage.identity)?;
                let classes = self.classes(stage.identity);
                let steps_per_epoch = sampler.epoch(0).len();
                let schedule = LrSchedule::new(
                    &self.cfg.schedule,
                    self.cfg.optimizer.lr * stage.lr_scale,
                    steps_per_epoch,
                    stage.epochs,
                )?;
                // The centre loss's centres belong to the stage's identity: their own store.
                let criterion_store = ParamStore::with_tensors(
                    self.cfg.seed ^ (0xc0 + si as u64),
                    std::mem::take(&mut criterion_weights),
                    &self.device,
                );
                let criterion = Criterion::new(&criterion_store.root(), &loss_cfg, classes, dim)?;
                let mut params = self.store.trainable();
                // MitoReID's centres have their own plain SGD; otherwise the run's optimiser.
                let mut centres = None;
                if loss_cfg.center_lr > 0.0 && loss_cfg.center > 0.0 {
                    let sgd = OptimizerConfig {
                        kind: OptimizerKind::Sgd,
                        lr: loss_cfg.center_lr,
                        weight_decay: 0.0,
                        momentum: 0.0,
                        nesterov: false,
                        ..OptimizerConfig::default()
                    };
                    let optimizer = Optimizer::new(criterion_store.trainable(), &sgd)?;
                    centres = Some(CentreSgd { optimizer, rate: loss_cfg.center_lr / loss_cfg.center });
                } else {
                    params.extend(criterion_store.trainable());
                }
                let mut optimizer = Optimizer::new(params, &self.cfg.optimizer)?;
                if let Some(opt) = optimizer_state.take() {
                    optimizer.load_state(&opt)?;
                }
                while state.epoch < stage.epochs {
                    let epoch = state.epoch;
                    let mode = Mode::Train { seed: self.cfg.seed ^ ((si as u64) << 32), epoch: epoch as u64 };
                    let batches = sampler.epoch(epoch as u64);
                    // The rest of the epoch's batches, built ahead as `data.prefetch` says and
                    // staged for the device (pinned memory on a GPU) one ahead of its step.
                    let loader = Loader::start(self.train.clone(), batches[state.batch..].to_vec(), mode);
                    let mut feed = Feed::new(loader, &self.staging);
                    while state.batch < batches.len() {
                        let lr = schedule.lr(epoch * steps_per_epoch + state.batch)
                            * state.plateau.factor(&self.cfg.schedule);
                        // MitoReID applies `num_mislabel` after the stage's `warmup_epoch`.
                        let control_mislabels = if epoch > stage.hold_epochs { loss_cfg.control_mislabels } else { 0 };
                        let at = StepAt {
                            stage: si,
                            identity: stage.identity,
                            epoch,
                            step: state.step,
                            lr,
                            control_mislabels,
                        };
                        let started = Instant::now();
                        let fed = feed.next().expect("the feed holds the rest of the epoch's batches")?;
                        let waited = started.elapsed();
                        let record = self.step(at, fed, &criterion, &mut optimizer, centres.as_mut())?;
                        self.times.steps += 1;
                        self.times.data_wait += waited;
                        self.times.total += started.elapsed();
                        state.batch += 1;
                        state.step += 1;
                        state.records.push(record);
                        let every = self.cfg.checkpoint_every;
                        let epoch_done = state.batch == batches.len();
                        if epoch_done {
                            state.batch = 0;
                            state.epoch += 1;
                            // Early stopping ends the stage here, before the checkpoint, so a
                            // resumed run stops at the same place.
                            if self.validate(&mut state, stage, outputs)? == Some(true) {
                                state.epoch = stage.epochs;
                            }
                        }
                        let due = epoch_done || (every > 0 && state.step % every as u64 == 0);
                        let save = |state: &RunState| -> Result<()> {
                            match outputs {
                                Some(out) => {
                                    let stores = [(MODEL_STORE, &self.store), (CRITERION_STORE, &criterion_store)];
                                    save_checkpoint(&out.checkpoint, &stores, &optimizer, state)
                                }
                                None => Ok(()),
                            }
                        };
                        if due {
                            save(&state)?;
                        }
                        if !on_step(state.records.last().expect("just pushed"), &state) {
                            // Stopped between checkpoints: one here, so that a resume starts
                            // at this very step.
                            if !due {
                                save(&state)?;
                            }
                            return Ok(state);
                        }
                        if epoch_done {
                            break;
                        }
                    }
                }
            }
            state.stage += 1;
            state.epoch = 0;
            state.batch = 0;
            state.best = None;
            state.stale = 0;
            state.plateau = Plateau::default();
        }
        state.finished = true;
        Ok(state)
    }

    /// Validates at the end of an epoch when due; returns whether the stage should stop.
    /// Within the stage's `hold_epochs`, validations without gain neither count towards
    /// early stopping nor towards a plateau decay.
    fn validate(
        &mut self,
        state: &mut RunState,
        stage: &StageConfig,
        outputs: Option<&TrainOutputs>,
    ) -> Result<Option<bool>> {
        let identity = stage.identity;
        let every = stage.validate_every.unwrap_or(self.cfg.validate_every);
        if every == 0 || !state.epoch.is_multiple_of(every) {
            return Ok(None);
        }
        let Some(validator) = self.validator.as_mut() else { return Ok(None) };
        let (drug, moa) = validator(self.model.video())?;
        if let Some(last) = state.records.last_mut() {
            last.validation = Some((drug, moa));
        }
        let score = match identity {
            Identity::Drug => drug,
            Identity::Moa => moa,
        };
        if state.best.is_none_or(|b| score > b) {
            state.best = Some(score);
            state.stale = 0;
            if let Some(out) = outputs {
                if let Some(folder) = out.best.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(folder).map_err(ModelError::io(folder))?;
                }
                self.store.save(&out.best)?;
            }
        } else {
            state.stale += 1;
        }
        let held = state.epoch <= stage.hold_epochs;
        if held {
            state.stale = 0;
        } else if self.cfg.schedule.decay == Decay::Plateau {
            state.plateau.observe(score, self.cfg.schedule.plateau_patience);
        }
        let patience = stage.patience.unwrap_or(self.cfg.patience);
        Ok(Some(patience > 0 && state.stale >= patience))
    }

    fn step(
        &self,
        at: StepAt,
        fed: Fed,
        criterion: &Criterion,
        optimizer: &mut Optimizer,
        centres: Option<&mut CentreSgd>,
    ) -> Result<StepRecord> {
        let StepAt { stage, identity, epoch, step: global_step, lr, control_mislabels } = at;
        // Forward and losses under the run's precision (float32 outside autocast).
        let _autocast = crate::nn::autocast(self.cfg.precision.autocast());
        let indices = &fed.batch.indices;
        let x = fed.input.into_tensor(&self.device)?;
        let (out, mut video_embeddings) = match &self.model {
            TrainModel::MolClip(m) => {
                let (out, emb) = m.encode_videos(&x, true)?;
                (out, Some(emb))
            }
            TrainModel::Video(v) => (v.forward_t(&x, true)?, None),
        };
        // The stage's sampler draws labelled videos only.
        let mut labels: Vec<u32> =
            indices.iter().map(|&i| self.label(identity, i).expect("sampled in the task")).collect();
        let mut video_drugs: Vec<u32> = indices.iter().map(|&i| self.drugs[i]).collect();
        let mut logits = out.logits(identity).cloned();
        let mut feature = out.feature.clone();
        // MitoReID's `num_mislabel`: the videos of treated drugs called the control, out.
        let control = self.control.and_then(|i| self.label(identity, i));
        let mut left_out = 0;
        if let (Some(l), Some(control), true) = (&logits, control, control_mislabels > 0) {
            let predicted: Vec<u32> = l.argmax(1)?.to_vec1()?;
            if let Some(kept) = without_control_mislabels(&predicted, &labels, control, control_mislabels) {
                left_out = labels.len() - kept.len();
                let rows = Tensor::new(kept.as_slice(), &self.device)?;
                let keep = |t: &Tensor| t.index_select(&rows, 0);
                feature = keep(&feature)?;
                logits = Some(keep(l)?);
                video_embeddings = video_embeddings.map(|e| keep(&e)).transpose()?;
                labels = kept.iter().map(|&k| labels[k as usize]).collect();
                video_drugs = kept.iter().map(|&k| video_drugs[k as usize]).collect();
            }
        }
        let metric = MetricInputs { feature: &feature, logits: logits.as_ref(), labels: &labels };
        let (terms, temperature) = match (&self.model, video_embeddings) {
            (TrainModel::MolClip(m), Some(emb)) => {
                let t = inverse_temperature(m.logit_scale(), m.max_logit_scale())?;
                // The CLIP term on the batch's videos whose drug has a molecule.
                let with: Vec<u32> = (0..video_drugs.len() as u32)
                    .filter(|&k| self.molecules[video_drugs[k as usize] as usize].is_some())
                    .collect();
                if with.is_empty() {
                    (criterion.forward(&metric, None)?, Some(t))
                } else {
                    let (emb, clip_drugs) = if with.len() == video_drugs.len() {
                        (emb, video_drugs.clone())
                    } else {
                        let rows = Tensor::new(with.as_slice(), &self.device)?;
                        (emb.index_select(&rows, 0)?, with.iter().map(|&k| video_drugs[k as usize]).collect())
                    };
                    let unique: Vec<u32> = clip_drugs.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
                    let mols: Vec<&Molecule> =
                        unique.iter().filter_map(|&d| self.molecules[d as usize].as_ref()).collect();
                    let input = MoleculeInput::new(&self.cfg.model.molecule, &mols, &self.device)?;
                    let mol_emb = m.encode_molecules(&input, true)?;
                    let clip = ClipInputs {
                        videos: &emb,
                        molecules: &mol_emb,
                        video_drugs: &clip_drugs,
                        molecule_drugs: &unique,
                        logit_scale: m.logit_scale(),
                        max_logit_scale: m.max_logit_scale(),
                    };
                    (criterion.forward(&metric, Some(&clip))?, Some(t))
                }
            }
            _ => (criterion.forward(&metric, None)?, None),
        };
        // The backward pass is queued before any value is read back, so that a GPU goes on from
        // the forward pass to it without waiting for the host; nothing is updated before the
        // values are checked.
        let grads = terms.total.backward()?;
        let mut values = Vec::new();
        for (name, t) in &terms.terms {
            let v = t.to_scalar::<f32>()?;
            if !v.is_finite() {
                return Err(ModelError::NonFinite { step: global_step, term: name.to_string(), value: v });
            }
            values.push((*name, v));
        }
        let loss = terms.total.to_scalar::<f32>()?;
        let temperature = temperature.map(|t| t.to_scalar::<f32>()).transpose()?;
        // Clipping's coefficient goes into the update rather than into each gradient.
        let (grad_norm, scale) = if self.cfg.clip_grad_norm > 0.0 {
            let norm = grad_norm(&grads, optimizer.params())?;
            if !norm.is_finite() {
                return Err(ModelError::NonFinite {
                    step: global_step,
                    term: "gradient norm".into(),
                    value: norm as f32,
                });
            }
            (norm, clip_coefficient(norm, self.cfg.clip_grad_norm))
        } else {
            (f64::NAN, None)
        };
        optimizer.step_scaled(&grads, lr, scale)?;
        if let Some(c) = centres {
            c.optimizer.step(&grads, c.rate)?;
        }
        Ok(StepRecord {
            stage,
            identity,
            epoch,
            step: global_step,
            lr,
            loss,
            terms: values,
            temperature,
            grad_norm,
            validation: None,
            left_out,
        })
    }
}
