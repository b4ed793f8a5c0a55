//! A training run's configuration: one TOML file, every section with documented defaults,
//! unknown fields refused. `configs/` holds the three model kinds.

use molclip_data::loader::DataConfig;
use molclip_data::DataError;
pub use molclip_data::Identity;
use serde::{Deserialize, Serialize};

use super::schedule::ScheduleConfig;
use crate::error::{ModelError, Result};
use crate::losses::LossConfig;
use crate::models::MolClipConfig;
use crate::optim::OptimizerConfig;

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Video encoder + molecule encoder, CLIP loss plus the metric losses.
    #[default]
    Molclip,
    /// The MitoReID recipe: CE with label smoothing + batch-hard triplet + centre loss.
    VideoOnly,
    /// The same as video-only, seeing one frame per video (the temporal ablation).
    SingleFrame,
}

impl ModelKind {
    /// The kind's name, as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Molclip => "molclip",
            ModelKind::VideoOnly => "video-only",
            ModelKind::SingleFrame => "single-frame",
        }
    }
}

/// A data config error as a training config error, its field under `data.`.
pub(crate) fn data_error(e: DataError) -> ModelError {
    match e {
        DataError::Config { field, message } => ModelError::config(format!("data.{field}"), message),
        other => other.into(),
    }
}

/// One training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// `drug` or `moa`.
    pub identity: Identity,
    /// 0 skips the stage.
    pub epochs: usize,
    /// The optimiser's learning rate is multiplied by this in the stage.
    #[serde(default = "one")]
    pub lr_scale: f64,
}

fn one() -> f64 {
    1.0
}

/// A training run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `molclip` (default), `video-only` or `single-frame`.
    pub kind: ModelKind,
    /// Fixes the initialisation, the sampler, the augmentation and the order of everything.
    pub seed: u64,
    /// The model.
    pub model: MolClipConfig,
    /// Reading, augmenting and sampling the data.
    pub data: DataConfig,
    /// Loss weights.
    pub loss: LossConfig,
    /// The optimiser.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Drug identity first, then MoA (docs/method.md); each stage configurable and skippable.
    pub stages: Vec<StageConfig>,
    /// Largest global gradient norm (0: no clipping).
    pub clip_grad_norm: f64,
    /// Validation mAP every this many epochs (0: never).
    pub validate_every: usize,
    /// Stop a stage after this many validations without a better mAP (0: never).
    pub patience: usize,
    /// Write a checkpoint every this many steps, as well as at the end of every epoch (0: at
    /// epoch ends only).
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Molclip,
            seed: 0,
            model: MolClipConfig::default(),
            data: DataConfig::default(),
            loss: LossConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            stages: vec![
                StageConfig { identity: Identity::Drug, epochs: 10, lr_scale: 1.0 },
                StageConfig { identity: Identity::Moa, epochs: 5, lr_scale: 0.5 },
            ],
            clip_grad_norm: 5.0,
            validate_every: 1,
            patience: 0,
            checkpoint_every: 0,
        }
    }
}

impl TrainConfig {
    /// Parses and validates; errors name the field.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| ModelError::config("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.data.validate().map_err(data_error)?;
        if self.stages.iter().all(|s| s.epochs == 0) {
            return Err(ModelError::config("stages", "no stage has epochs > 0: nothing to train"));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if !(s.lr_scale > 0.0) || !s.lr_scale.is_finite() {
                return Err(ModelError::config(
                    format!("stages[{i}].lr_scale"),
                    format!("{} is not a positive number", s.lr_scale),
                ));
            }
        }
        if !(self.clip_grad_norm >= 0.0) {
            return Err(ModelError::config("clip_grad_norm", "must be >= 0 (0: off)"));
        }
        match self.kind {
            ModelKind::SingleFrame if self.data.frames.frames != 1 => Err(ModelError::config(
                "data.frames.frames",
                format!("{}: a single-frame model reads 1 frame per video", self.data.frames.frames),
            )),
            ModelKind::Molclip if self.loss.clip == 0.0 => {
                Err(ModelError::config("loss.clip", "0 for a molclip model: use kind = \"video-only\""))
            }
            _ => Ok(()),
        }
    }

    /// The first field (a dotted path) where `other` differs from this config, with both
    /// values; `None` when they are equal.
    pub fn difference(&self, other: &TrainConfig) -> Option<String> {
        let (a, b) = (toml::Value::try_from(self).ok()?, toml::Value::try_from(other).ok()?);
        first_difference(&a, &b, "")
    }

    /// The loss terms this kind uses: no CLIP term without a molecule branch.
    pub fn effective_loss(&self) -> LossConfig {
        match self.kind {
            ModelKind::Molclip => self.loss.clone(),
            _ => LossConfig { clip: 0.0, ..self.loss.clone() },
        }
    }
}

/// The first dotted path where two TOML values differ, with both values.
fn first_difference(a: &toml::Value, b: &toml::Value, path: &str) -> Option<String> {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &join(k)),
                (u, v) => Some(format!("`{}` ({} against {})", join(k), show(u), show(v))),
            })
        }
        (toml::Value::Array(x), toml::Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("`{path}` ({a} against {b})")),
    }
}

fn show(v: Option<&toml::Value>) -> String {
    v.map_or_else(|| "absent".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn shipped(name: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_shipped_configs_are_valid_and_differ_where_they_should() {
        let molclip = TrainConfig::from_toml(&shipped("molclip.toml")).unwrap();
        let video = TrainConfig::from_toml(&shipped("video-only.toml")).unwrap();
        let single = TrainConfig::from_toml(&shipped("single-frame.toml")).unwrap();
        assert_eq!(
            (molclip.kind, video.kind, single.kind),
            (ModelKind::Molclip, ModelKind::VideoOnly, ModelKind::SingleFrame)
        );
        assert_eq!(single.data.frames.frames, 1);
        assert!(molclip.effective_loss().clip > 0.0 && video.effective_loss().clip == 0.0);
        assert_eq!(molclip.stages[0].identity, Identity::Drug);
        // Same recipe otherwise: the comparison isolates the molecule and the time axis.
        assert_eq!(molclip.optimizer, video.optimizer);
        assert_eq!(video.stages, single.stages);
    }

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        assert_eq!(a.difference(&b), None);
        b.optimizer.lr = 0.5;
        b.stages[1].epochs = 9;
        let d = a.difference(&b).unwrap();
        assert!(d.contains("`optimizer.lr`") && d.contains("0.5"), "{d}");
        b.optimizer.lr = a.optimizer.lr;
        assert!(a.difference(&b).unwrap().contains("`stages[1].epochs`"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let err =
            TrainConfig::from_toml("kind = \"molclip\"\n[optimizer]\nlearning_rate = 0.1\n").unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let err = TrainConfig::from_toml("[optimizer]\nlr = -1.0\n").unwrap_err().to_string();
        assert!(err.contains("optimizer.lr"), "{err}");
        let err = TrainConfig::from_toml("kind = \"single-frame\"\n").unwrap_err().to_string();
        assert!(err.contains("data.frames.frames"), "{err}");
        let err = TrainConfig::from_toml("[[stages]]\nidentity = \"moa\"\nepochs = 0\n").unwrap_err().to_string();
        assert!(err.contains("stages"), "{err}");
        let err = TrainConfig::from_toml("[[stages]]\nidentity = \"cell\"\nepochs = 3\n").unwrap_err().to_string();
        assert!(err.contains("cell"), "{err}");
        let err = TrainConfig::from_toml("[data.augment]\ncrop = 200\n").unwrap_err().to_string();
        assert!(err.contains("crop"), "{err}");
    }
}
