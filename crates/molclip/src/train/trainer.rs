//! The training loop: stages (drug identity, then MoA), P x K batches, the configured losses,
//! gradient clipping, the optimiser and the learning-rate schedule.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use molclip_chem::Molecule;
use molclip_data::loader::{Mode, VideoDataset};
use molclip_data::sampler::PkSampler;
use molclip_data::DatasetIndex;

use super::config::{Identity, ModelKind, TrainConfig};
use super::schedule::LrSchedule;
use crate::error::{ModelError, Result};
use crate::losses::{inverse_temperature, ClipInputs, Criterion, MetricInputs};
use crate::models::{MolClip, MoleculeInput, VideoModel};
use crate::nn::ParamStore;
use crate::optim::{clip_grad_norm, Optimizer};

/// The model a run trains: MolCLIP, or its video branch alone (same weight names).
pub enum TrainModel {
    MolClip(MolClip),
    Video(VideoModel),
}

impl TrainModel {
    pub fn video(&self) -> &VideoModel {
        match self {
            Self::MolClip(m) => &m.video,
            Self::Video(v) => v,
        }
    }
}

/// One optimisation step, as logged.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub stage: usize,
    pub identity: Identity,
    pub epoch: usize,
    pub step: u64,
    pub lr: f64,
    pub loss: f32,
    /// Each weighted loss term.
    pub terms: Vec<(&'static str, f32)>,
    /// The CLIP inverse temperature (MolCLIP only).
    pub temperature: Option<f32>,
    pub grad_norm: f64,
}

/// Labels as contiguous class indices: dataset ids can be sparse.
fn contiguous(ids: &[usize]) -> (Vec<u32>, usize) {
    let classes: BTreeMap<usize, u32> = ids.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().enumerate().map(|(i, id)| (id, i as u32)).collect();
    (ids.iter().map(|id| classes[id]).collect(), classes.len())
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub store: ParamStore,
    pub model: TrainModel,
    train: Arc<VideoDataset>,
    drugs: Vec<u32>,
    moas: Vec<u32>,
    replicates: Vec<usize>,
    /// Parsed molecule of each drug class (MolCLIP only).
    molecules: Vec<Option<Molecule>>,
}

impl Trainer {
    /// Builds the model for the training split of `index`.
    pub fn new(cfg: &TrainConfig, index: &DatasetIndex, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let cells: Vec<_> = index.split("train").cloned().collect();
        if cells.is_empty() {
            return Err(ModelError::Input(format!("{}: the training split is empty", index.root.display())));
        }
        let (drugs, n_drugs) = contiguous(&cells.iter().map(|c| c.drug_id).collect::<Vec<_>>());
        let (moas, n_moas) = contiguous(&cells.iter().map(|c| c.moa_id).collect::<Vec<_>>());
        let (replicates, _) = contiguous(&cells.iter().map(|c| c.replicate.trim_start_matches('l').parse::<usize>().unwrap_or(0)).collect::<Vec<_>>());
        let replicates = replicates.into_iter().map(|r| r as usize).collect();
        let mut molecules = vec![None; n_drugs];
        if cfg.kind == ModelKind::Molclip {
            for (cell, &d) in cells.iter().zip(&drugs) {
                if molecules[d as usize].is_some() {
                    continue;
                }
                let record = index.annotation.lookup(&cell.drug_folder).ok_or_else(|| {
                    ModelError::Input(format!("{}: drug folder `{}` has no row in the annotation", index.root.display(), cell.drug_folder))
                })?;
                let smiles = record.smiles.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
                    ModelError::Input(format!("annotation row `{}`: no SMILES, which a molclip model needs (or train kind = \"video-only\")", record.index))
                })?;
                let policy = molclip_chem::FragmentPolicy::Largest;
                let m = Molecule::parse_with(smiles, policy).map_err(|e| ModelError::Input(format!("annotation row `{}`: {e}", record.index)))?;
                molecules[d as usize] = Some(m);
            }
        }
        let store = ParamStore::new(cfg.seed, device);
        let model = match cfg.kind {
            ModelKind::Molclip => TrainModel::MolClip(MolClip::new(&store.root(), &cfg.model, n_drugs, n_moas)?),
            _ => TrainModel::Video(VideoModel::new(&store.root().pp("video"), &cfg.model.video, n_drugs, n_moas)?),
        };
        let train = Arc::new(VideoDataset::new(cells, cfg.data.clone())?);
        Ok(Self { cfg: cfg.clone(), device: device.clone(), store, model, train, drugs, moas, replicates, molecules })
    }

    /// Runs every stage; `on_step` sees each step (progress, metrics).
    pub fn train(&mut self, on_step: &mut dyn FnMut(&StepRecord)) -> Result<Vec<StepRecord>> {
        let mut records = Vec::new();
        let mut global_step = 0u64;
        let loss_cfg = self.cfg.effective_loss();
        let dim = self.model.video().dim();
        for (si, stage) in self.cfg.stages.clone().iter().enumerate() {
            if stage.epochs == 0 {
                continue;
            }
            let labels = match stage.identity {
                Identity::Drug => &self.drugs,
                Identity::Moa => &self.moas,
            };
            let classes = labels.iter().max().map_or(0, |m| *m as usize + 1);
            let identity: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            let sampler = PkSampler::new(&identity, &self.replicates, self.cfg.data.sampler.clone(), self.cfg.seed ^ (si as u64 + 1))
                .map_err(|e| ModelError::config("data.sampler", e))?;
            let steps_per_epoch = sampler.epoch(0).len();
            let base_lr = self.cfg.optimizer.lr * stage.lr_scale;
            let schedule = LrSchedule::new(&self.cfg.schedule, base_lr, steps_per_epoch, stage.epochs)?;
            // The centre loss's centres belong to the stage's identity.
            let criterion = Criterion::new(&self.store.root().pp(format!("stage{si}")), &loss_cfg, classes, dim)?;
            let mut optimizer = Optimizer::new(self.store.trainable(), &self.cfg.optimizer)?;
            for epoch in 0..stage.epochs {
                let mode = Mode::Train { seed: self.cfg.seed ^ (si as u64) << 32, epoch: epoch as u64 };
                for (i, batch_indices) in sampler.epoch(epoch as u64).into_iter().enumerate() {
                    let step_in_stage = epoch * steps_per_epoch + i;
                    let lr = schedule.lr(step_in_stage);
                    let record = self.step(si, stage.identity, epoch, global_step, &batch_indices, mode, &criterion, &mut optimizer, lr)?;
                    on_step(&record);
                    records.push(record);
                    global_step += 1;
                }
            }
        }
        Ok(records)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        stage: usize,
        identity: Identity,
        epoch: usize,
        global_step: u64,
        indices: &[usize],
        mode: Mode,
        criterion: &Criterion,
        optimizer: &mut Optimizer,
        lr: f64,
    ) -> Result<StepRecord> {
        let batch = self.train.batch(indices, mode)?;
        let x = batch.to_tensor(&self.device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| if identity == Identity::Drug { self.drugs[i] } else { self.moas[i] }).collect();
        let video_drugs: Vec<u32> = indices.iter().map(|&i| self.drugs[i]).collect();
        let (terms, temperature) = match &self.model {
            TrainModel::MolClip(m) => {
                let (out, emb) = m.encode_videos(&x, true)?;
                let unique: Vec<u32> = video_drugs.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                let mols: Vec<&Molecule> = unique.iter().map(|&d| self.molecules[d as usize].as_ref().expect("parsed for every drug")).collect();
                let input = MoleculeInput::new(&self.cfg.model.molecule, &mols, &self.device)?;
                let mol_emb = m.encode_molecules(&input, true)?;
                let logits = if identity == Identity::Drug { out.drug_logits.as_ref() } else { out.moa_logits.as_ref() };
                let clip = ClipInputs {
                    videos: &emb,
                    molecules: &mol_emb,
                    video_drugs: &video_drugs,
                    molecule_drugs: &unique,
                    logit_scale: m.logit_scale(),
                    max_logit_scale: m.max_logit_scale(),
                };
                let terms = criterion.forward(&MetricInputs { feature: &out.feature, logits, labels: &labels }, Some(&clip))?;
                let t = inverse_temperature(m.logit_scale(), m.max_logit_scale())?.to_scalar::<f32>()?;
                (terms, Some(t))
            }
            TrainModel::Video(v) => {
                let out = v.forward_t(&x, true)?;
                let logits = if identity == Identity::Drug { out.drug_logits.as_ref() } else { out.moa_logits.as_ref() };
                (criterion.forward(&MetricInputs { feature: &out.feature, logits, labels: &labels }, None)?, None)
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
            return Err(ModelError::NonFinite { step: global_step, term: "gradient norm".into(), value: grad_norm as f32 });
        }
        optimizer.step(&grads, lr)?;
        Ok(StepRecord { stage, identity, epoch, step: global_step, lr, loss, terms: values, temperature, grad_norm })
    }

    /// Embeds videos (evaluation mode): the BNNeck feature of each, `[N, D]`.
    pub fn embed(&self, videos: &Tensor) -> Result<Tensor> {
        Ok(self.model.video().forward_t(videos, false)?.neck_feature)
    }
}
