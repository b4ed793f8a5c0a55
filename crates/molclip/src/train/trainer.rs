//! The training loop: stages (drug identity, then MoA), P x K batches, the configured losses,
//! gradient clipping, the optimiser and the learning-rate schedule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use molclip_chem::Molecule;
use molclip_data::loader::{Mode, VideoDataset};
use molclip_data::sampler::PkSampler;
use molclip_data::{DatasetIndex, Split};

use serde::{Deserialize, Serialize};

use super::checkpoint::{load_checkpoint, save_checkpoint};
use super::config::{Identity, ModelKind, TrainConfig};
use super::schedule::LrSchedule;
use crate::error::{ModelError, Result};
use crate::losses::{inverse_temperature, ClipInputs, Criterion, LossTerm, MetricInputs};
use crate::models::{batch_tensor, drug_molecule, MolClip, MoleculeInput, VideoModel};
use crate::nn::ParamStore;
use crate::optim::{clip_grad_norm, Optimizer};

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
    mode: Mode,
    lr: f64,
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
    /// The run's resolved config (TOML), so that a checkpoint says what it is of.
    #[serde(default)]
    pub config: String,
}

/// Validation: the video model to (drug mAP, MoA mAP) on held-out videos.
pub type Validator = Box<dyn FnMut(&VideoModel) -> Result<(f64, f64)>>;

/// Labels as contiguous class indices: dataset ids can be sparse.
fn contiguous(ids: &[usize]) -> (Vec<u32>, usize) {
    let classes: BTreeMap<usize, u32> = ids
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i as u32))
        .collect();
    (ids.iter().map(|id| classes[id]).collect(), classes.len())
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
    moas: Vec<u32>,
    replicates: Vec<usize>,
    /// Parsed molecule of each drug class (MolCLIP only).
    molecules: Vec<Option<Molecule>>,
    /// Set by [`Trainer::resume`]: where to continue from.
    resume: Option<Resume>,
    validator: Option<Validator>,
}

impl Trainer {
    /// Builds the model for the training split of `index`.
    pub fn new(cfg: &TrainConfig, index: &DatasetIndex, device: &Device) -> Result<Self> {
        Self::build(cfg, index, device, HashMap::new())
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
        let cells: Vec<_> = index.split(Split::Train).cloned().collect();
        if cells.is_empty() {
            return Err(ModelError::Input(format!("{}: the training split is empty", index.root.display())));
        }
        let (drugs, n_drugs) = contiguous(&cells.iter().map(|c| c.drug_id).collect::<Vec<_>>());
        let (moas, n_moas) = contiguous(&cells.iter().map(|c| c.moa_id).collect::<Vec<_>>());
        let (replicates, _) = contiguous(&cells.iter().map(|c| c.replicate_number() as usize).collect::<Vec<_>>());
        let replicates = replicates.into_iter().map(|r| r as usize).collect();
        let mut molecules = vec![None; n_drugs];
        if cfg.kind == ModelKind::Molclip {
            for (cell, &d) in cells.iter().zip(&drugs) {
                if molecules[d as usize].is_none() {
                    molecules[d as usize] = Some(drug_molecule(index, &cell.drug_folder)?);
                }
            }
        }
        let store = ParamStore::with_tensors(cfg.seed, weights, device);
        let model = TrainModel::build(&store, cfg, n_drugs, n_moas)?;
        let train = Arc::new(VideoDataset::new(cells, cfg.data.clone())?);
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            store,
            model,
            train,
            drugs,
            moas,
            replicates,
            molecules,
            resume: None,
            validator: None,
        })
    }

    /// Each training video's class under `identity` (contiguous ids).
    fn labels(&self, identity: Identity) -> &[u32] {
        match identity {
            Identity::Drug => &self.drugs,
            Identity::Moa => &self.moas,
        }
    }

    /// Validate every `validate_every` epochs with this; with `patience`, a stage stops early
    /// when the mAP has not improved that many times; the best weights go to
    /// `RUN/best.safetensors`.
    pub fn set_validator(&mut self, validator: Validator) {
        self.validator = Some(validator);
    }

    /// Steps per epoch of each stage (0 for a skipped stage), for progress bars.
    pub fn steps_per_stage(&self) -> Result<Vec<usize>> {
        self.cfg
            .stages
            .iter()
            .enumerate()
            .map(|(si, st)| {
                Ok(if st.epochs == 0 { 0 } else { self.sampler(si, st.identity)?.epoch(0).len() * st.epochs })
            })
            .collect()
    }

    fn sampler(&self, si: usize, identity: Identity) -> Result<PkSampler> {
        let identity: Vec<usize> = self.labels(identity).iter().map(|&l| l as usize).collect();
        PkSampler::new(&identity, &self.replicates, self.cfg.data.sampler.clone(), self.cfg.seed ^ (si as u64 + 1))
            .map_err(super::config::data_error)
    }

    /// Runs every stage, or what is left of them after [`Trainer::resume`]. With `outputs`,
    /// a checkpoint is written every `checkpoint_every` steps and at the end of every epoch,
    /// and the best weights whenever validation improves. `on_step` sees each step
    /// (progress, metrics) and the run state after it, and returns false to stop there (the
    /// state returned is then not `finished`).
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
                let classes = self.labels(stage.identity).iter().max().map_or(0, |m| *m as usize + 1);
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
                params.extend(criterion_store.trainable());
                let mut optimizer = Optimizer::new(params, &self.cfg.optimizer)?;
                if let Some(opt) = optimizer_state.take() {
                    optimizer.load_state(&opt)?;
                }
                while state.epoch < stage.epochs {
                    let epoch = state.epoch;
                    let mode = Mode::Train { seed: self.cfg.seed ^ ((si as u64) << 32), epoch: epoch as u64 };
                    let batches = sampler.epoch(epoch as u64);
                    while state.batch < batches.len() {
                        let lr = schedule.lr(epoch * steps_per_epoch + state.batch);
                        let at = StepAt { stage: si, identity: stage.identity, epoch, step: state.step, mode, lr };
                        let record = self.step(at, &batches[state.batch], &criterion, &mut optimizer)?;
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
                            if self.validate(&mut state, stage.identity, outputs)? == Some(true) {
                                state.epoch = stage.epochs;
                            }
                        }
                        if let Some(out) = outputs {
                            if epoch_done || (every > 0 && state.step % every as u64 == 0) {
                                let stores = [(MODEL_STORE, &self.store), (CRITERION_STORE, &criterion_store)];
                                save_checkpoint(&out.checkpoint, &stores, &optimizer, &state)?;
                            }
                        }
                        if !on_step(state.records.last().expect("just pushed"), &state) {
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
        }
        state.finished = true;
        Ok(state)
    }

    /// Validates at the end of an epoch when due; returns whether the stage should stop.
    fn validate(
        &mut self,
        state: &mut RunState,
        identity: Identity,
        outputs: Option<&TrainOutputs>,
    ) -> Result<Option<bool>> {
        let every = self.cfg.validate_every;
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
        Ok(Some(self.cfg.patience > 0 && state.stale >= self.cfg.patience))
    }

    fn step(
        &self,
        at: StepAt,
        indices: &[usize],
        criterion: &Criterion,
        optimizer: &mut Optimizer,
    ) -> Result<StepRecord> {
        let StepAt { stage, identity, epoch, step: global_step, mode, lr } = at;
        let x = batch_tensor(&self.train.batch(indices, mode)?, &self.device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels(identity)[i]).collect();
        let video_drugs: Vec<u32> = indices.iter().map(|&i| self.drugs[i]).collect();
        let (terms, temperature) = match &self.model {
            TrainModel::MolClip(m) => {
                let (out, emb) = m.encode_videos(&x, true)?;
                let unique: Vec<u32> = video_drugs.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
                let mols: Vec<&Molecule> = unique
                    .iter()
                    .map(|&d| self.molecules[d as usize].as_ref().expect("parsed for every drug"))
                    .collect();
                let input = MoleculeInput::new(&self.cfg.model.molecule, &mols, &self.device)?;
                let mol_emb = m.encode_molecules(&input, true)?;
                let clip = ClipInputs {
                    videos: &emb,
                    molecules: &mol_emb,
                    video_drugs: &video_drugs,
                    molecule_drugs: &unique,
                    logit_scale: m.logit_scale(),
                    max_logit_scale: m.max_logit_scale(),
                };
                let metric = MetricInputs { feature: &out.feature, logits: out.logits(identity), labels: &labels };
                let t = inverse_temperature(m.logit_scale(), m.max_logit_scale())?.to_scalar::<f32>()?;
                (criterion.forward(&metric, Some(&clip))?, Some(t))
            }
            TrainModel::Video(v) => {
                let out = v.forward_t(&x, true)?;
                let metric = MetricInputs { feature: &out.feature, logits: out.logits(identity), labels: &labels };
                (criterion.forward(&metric, None)?, None)
            }
        };
        let mut values = Vec::new();
        for (name, t) in &terms.terms {
            let v = t.to_scalar::<f32>()?;
            if !v.is_finite() {
                return Err(ModelError::NonFinite { step: global_step, term: name.to_string(), value: v });
            }
            values.push((*name, v));
        }
        let loss = terms.total.to_scalar::<f32>()?;
        let mut grads = terms.total.backward()?;
        let grad_norm = if self.cfg.clip_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, optimizer.params(), self.cfg.clip_grad_norm)?
        } else {
            f64::NAN
        };
        if !grad_norm.is_nan() && !grad_norm.is_finite() {
            return Err(ModelError::NonFinite {
                step: global_step,
                term: "gradient norm".into(),
                value: grad_norm as f32,
            });
        }
        optimizer.step(&grads, lr)?;
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
        })
    }
}
