//! The losses of docs/method.md section 2 and their weighted sum:
//! w_clip·L_clip + w_triplet·L_triplet + w_ce·L_ce + w_center·L_center.

pub mod center;
pub mod clip_loss;
pub mod cross_entropy;
pub mod triplet;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use center::CenterLoss;
pub use clip_loss::{clip_loss, inverse_temperature};
pub use cross_entropy::{accuracy, cross_entropy};
pub use triplet::{batch_hard_triplet, euclidean_distances};

use crate::error::{ModelError, Result};
use crate::nn::Vb;

/// Loss weights and their parameters. A weight of 0 switches a term off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Symmetric multi-positive InfoNCE between videos and molecules.
    pub clip: f64,
    /// Batch-hard triplet on the video feature before BNNeck.
    pub triplet: f64,
    /// The triplet margin.
    pub margin: f64,
    /// Cross-entropy of the classifier of the identity being learned (drug, then MoA).
    pub ce: f64,
    /// Label smoothing of the cross-entropy, in [0, 1).
    pub label_smoothing: f64,
    /// Centre loss on the video feature before BNNeck (MitoReID: 0.01).
    pub center: f64,
    /// 0 (default): the centres are trained by the run's optimiser. Above 0: by their own
    /// plain SGD at this rate, on the centre loss's gradient before its weight (MitoReID:
    /// 0.05).
    pub center_lr: f64,
    /// MitoReID's `num_mislabel`: after a stage's `hold_epochs`, a batch's videos of a
    /// treated drug that the classifier calls the control (DMSO) are left out of every term
    /// of its loss, when there are fewer than this many (MitoReID: 5); 0 (default): never.
    pub control_mislabels: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip: 1.0,
            triplet: 1.0,
            margin: 0.3,
            ce: 1.0,
            label_smoothing: 0.1,
            center: 0.0,
            center_lr: 0.0,
            control_mislabels: 0,
        }
    }
}

impl LossConfig {
    /// Refuses negative or non-finite weights, naming the field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("clip", self.clip),
            ("triplet", self.triplet),
            ("ce", self.ce),
            ("center", self.center),
            ("margin", self.margin),
            ("center_lr", self.center_lr),
        ] {
            if !(v >= 0.0) || !v.is_finite() {
                return Err(ModelError::config(format!("loss.{field}"), format!("{v} is not a finite number >= 0")));
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(ModelError::config(
                "loss.label_smoothing",
                format!("{} is not in [0, 1)", self.label_smoothing),
            ));
        }
        Ok(())
    }
}

/// What the CLIP term needs, when the model has a molecule branch.
pub struct ClipInputs<'a> {
    /// `[B, d]` unit-norm video embeddings.
    pub videos: &'a Tensor,
    /// `[P, d]` unit-norm molecule embeddings.
    pub molecules: &'a Tensor,
    /// Each video's drug.
    pub video_drugs: &'a [u32],
    /// Each molecule's drug.
    pub molecule_drugs: &'a [u32],
    /// The learned log inverse temperature.
    pub logit_scale: &'a Tensor,
    /// Its cap.
    pub max_logit_scale: f64,
}

/// What the metric and classification terms need.
pub struct MetricInputs<'a> {
    /// `[B, D]` feature before BNNeck.
    pub feature: &'a Tensor,
    /// `[B, classes]` logits of the head being trained, if any.
    pub logits: Option<&'a Tensor>,
    /// The identity being learned (drug or MoA) of each video.
    pub labels: &'a [u32],
}

/// MitoReID's rule for `control_mislabels` (its `num_mislabel`): the rows of a batch to keep
/// when the classifier calls fewer than `limit` videos of a treated drug the `control` class
/// (`predicted`: its argmax per video), which it leaves out; `None` keeps every row: none
/// called so, `limit` or more, or the rest would hold a single identity (no negatives).
pub fn without_control_mislabels(predicted: &[u32], labels: &[u32], control: u32, limit: usize) -> Option<Vec<u32>> {
    let mislabelled = |k: usize| predicted[k] == control && labels[k] != control;
    let left_out = (0..labels.len()).filter(|&k| mislabelled(k)).count();
    if left_out == 0 || left_out >= limit {
        return None;
    }
    let kept: Vec<u32> = (0..labels.len()).filter(|&k| !mislabelled(k)).map(|k| k as u32).collect();
    let first = labels[*kept.first()? as usize];
    kept.iter().any(|&k| labels[k as usize] != first).then_some(kept)
}

/// The terms of the loss: the names logs, `metrics.csv` and checkpoints use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossTerm {
    /// Symmetric multi-positive InfoNCE between videos and molecules.
    Clip,
    /// Batch-hard triplet.
    Triplet,
    /// Cross-entropy with label smoothing.
    Ce,
    /// Centre loss.
    Center,
}

impl LossTerm {
    /// Every term, in the order of `metrics.csv`'s columns.
    pub const ALL: [LossTerm; 4] = [LossTerm::Clip, LossTerm::Triplet, LossTerm::Ce, LossTerm::Center];

    /// The term's name.
    pub fn name(self) -> &'static str {
        match self {
            LossTerm::Clip => "clip",
            LossTerm::Triplet => "triplet",
            LossTerm::Ce => "ce",
            LossTerm::Center => "center",
        }
    }
}

impl std::fmt::Display for LossTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// The total and each weighted term, for logs and for naming a NaN.
pub struct LossTerms {
    /// The weighted sum.
    pub total: Tensor,
    /// Each weighted term that is switched on.
    pub terms: Vec<(LossTerm, Tensor)>,
}

/// The configured sum of losses, with the centre-loss centres it owns.
#[derive(Clone, Debug)]
pub struct Criterion {
    cfg: LossConfig,
    center: Option<CenterLoss>,
}

impl Criterion {
    /// `classes` and `dim`: of the identity being learned, for the centre loss.
    pub fn new(vb: &Vb, cfg: &LossConfig, classes: usize, dim: usize) -> Result<Self> {
        cfg.validate()?;
        let center = if cfg.center > 0.0 { Some(CenterLoss::new(&vb.pp("center_loss"), classes, dim)?) } else { None };
        Ok(Self { cfg: cfg.clone(), center })
    }

    /// The weighted terms and their sum.
    pub fn forward(&self, metric: &MetricInputs, clip: Option<&ClipInputs>) -> Result<LossTerms> {
        let mut terms: Vec<(LossTerm, Tensor)> = Vec::new();
        if self.cfg.clip > 0.0 {
            if let Some(c) = clip {
                let l = clip_loss(
                    c.videos,
                    c.molecules,
                    c.video_drugs,
                    c.molecule_drugs,
                    c.logit_scale,
                    c.max_logit_scale,
                )?;
                terms.push((LossTerm::Clip, (l * self.cfg.clip)?));
            }
        }
        if self.cfg.triplet > 0.0 {
            terms.push((
                LossTerm::Triplet,
                (batch_hard_triplet(metric.feature, metric.labels, self.cfg.margin)? * self.cfg.triplet)?,
            ));
        }
        if self.cfg.ce > 0.0 {
            if let Some(logits) = metric.logits {
                terms.push((
                    LossTerm::Ce,
                    (cross_entropy(logits, metric.labels, self.cfg.label_smoothing)? * self.cfg.ce)?,
                ));
            }
        }
        if let Some(center) = &self.center {
            terms.push((LossTerm::Center, (center.forward(metric.feature, metric.labels)? * self.cfg.center)?));
        }
        let mut total = match terms.first() {
            Some((_, t)) => t.clone(),
            None => return Err(ModelError::config("loss", "every loss term is switched off or has no input")),
        };
        for (_, t) in terms.iter().skip(1) {
            total = (total + t)?;
        }
        Ok(LossTerms { total, terms })
    }
}
