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
    /// Epochs at the start of the stage before early stopping and the plateau decay count
    /// validations without gain (MitoReID's `warmup_epoch`; not a learning-rate warm-up).
    #[serde(default)]
    pub hold_epochs: usize,
    /// This stage's `validate_every`, when it differs from the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_every: Option<usize>,
    /// This stage's `patience`, when it differs from the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
}

impl StageConfig {
    /// A stage of `epochs` on `identity`, every other setting at its default.
    pub fn new(identity: Identity, epochs: usize, lr_scale: f64) -> Self {
        Self { identity, epochs, lr_scale, hold_epochs: 0, validate_every: None, patience: None }
    }
}

fn one() -> f64 {
    1.0
}

/// The arithmetic of a training step. Weights, batch norm, softmax, the losses and the
/// optimiser stay float32 in every case; validation and embedding run in float32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 throughout.
    #[default]
    F32,
    /// Float32, with matrix products in TF32 on the GPU's tensor cores (cuBLAS, and cuDNN's
    /// convolutions in a `cudnn` build; CUDA devices only).
    Tf32,
    /// Autocast: linear layers, attention's products and convolutions from bf16 operands
    /// with float32 sums (on the CPU, the operands rounded to bf16 and the float32 kernels).
    Bf16,
}

impl Precision {
    /// The dtype products compute in under autocast, if any.
    pub fn autocast(self) -> Option<candle_core::DType> {
        (self == Precision::Bf16).then_some(candle_core::DType::BF16)
    }
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
    /// The training step's arithmetic: `f32` (default), `tf32` or `bf16`.
    pub precision: Precision,
    /// On a CUDA device built with cuDNN: pick each convolution's algorithm by running
    /// cuDNN's candidates on its first shape and keeping the fastest (PyTorch's
    /// `cudnn.benchmark`), instead of cuDNN's heuristic choice. Faster steps for a search when
    /// each shape is first used; the GPU's last bits may then differ between runs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cudnn_benchmark: bool,
    /// Validation mAP every this many epochs (0: never).
    pub validate_every: usize,
    /// Stop a stage after this many validations without a better mAP (0: never).
    pub patience: usize,
    /// Write a checkpoint every this many steps, as well as at the end of every epoch (0: at
    /// epoch ends only).
    pub checkpoint_every: usize,
    /// Pretrained weights the run starts from (`molclip weights import-i3d` writes them): a
    /// safetensors file whose every tensor the model must use, and which must hold the whole
    /// video encoder; the heads start fresh. `train --init` sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
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
            stages: vec![StageConfig::new(Identity::Drug, 10, 1.0), StageConfig::new(Identity::Moa, 5, 0.5)],
            clip_grad_norm: 5.0,
            precision: Precision::F32,
            cudnn_benchmark: false,
            validate_every: 1,
            patience: 0,
            checkpoint_every: 0,
            init: None,
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
        let (model_channels, field) = self.model.video.in_channels();
        let data_channels = self.data.frames.channels.count();
        if model_channels != data_channels {
            return Err(ModelError::config(
                field,
                format!(
                    "{model_channels}, but data.frames.channels gives {data_channels} channel(s) per frame: \
                     set both to agree"
                ),
            ));
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

    /// Sets one field by its dotted path: [`TrainConfig::set_all`] with one pair.
    pub fn set(&mut self, path: &str, value: &str) -> Result<()> {
        self.set_all(&[(path, value)])
    }

    /// Sets fields by their dotted paths (`data.sampler.p`, `stages[1].epochs`) to TOML
    /// values (`4`, `0.5`, `true`, `"rgb"`, `[0, 1]`; a bare word is read as a string), then
    /// validates the whole config once, as a file would be (so that `resize` and `crop` can
    /// change together). Errors name the path; on error the config is unchanged.
    pub fn set_all(&mut self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut root = toml::Value::try_from(&*self).map_err(|e| ModelError::config("config", e.to_string()))?;
        for (path, value) in pairs {
            set_path(&mut root, path, value)?;
        }
        let what = pairs.iter().map(|p| p.0).collect::<Vec<_>>().join(", ");
        let cfg: Self = root.try_into().map_err(|e: toml::de::Error| ModelError::config(what, e.to_string()))?;
        cfg.validate()?;
        *self = cfg;
        Ok(())
    }

    /// Caps every stage at `epochs` (smoke runs).
    pub fn cap_epochs(&mut self, epochs: usize) -> Result<()> {
        if epochs == 0 {
            return Err(ModelError::config("--epochs", "must be at least 1"));
        }
        for s in &mut self.stages {
            s.epochs = s.epochs.min(epochs);
        }
        self.validate()
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

/// Sets the value at a dotted path (`stages[1].epochs`) of a TOML tree; a missing key is
/// added (the config's own check refuses unknown names).
fn set_path(root: &mut toml::Value, path: &str, value: &str) -> Result<()> {
    let bad = |message: String| ModelError::config(path, message);
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("just written"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    {
        let mut slot = root;
        for part in path.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((key, rest)) => {
                    let i = rest.strip_suffix(']').and_then(|i| i.parse::<usize>().ok());
                    (key, Some(i.ok_or_else(|| bad(format!("`{part}`: expected key[index]")))?))
                }
                None => (part, None),
            };
            let table = slot.as_table_mut().ok_or_else(|| bad(format!("`{key}` is inside a value, not a section")))?;
            slot = table.entry(key).or_insert(toml::Value::Table(toml::Table::new()));
            if let Some(i) = index {
                let list = slot.as_array_mut().ok_or_else(|| bad(format!("`{key}` is not a list")))?;
                let n = list.len();
                slot = list.get_mut(i).ok_or_else(|| bad(format!("`{key}` has {n} entries, no [{i}]")))?;
            }
        }
        *slot = parsed;
    }
    Ok(())
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
    fn the_mitoreid_recipe_is_shipped_as_mitoreid_trains() {
        use crate::models::{BlockStyle, Pooling, VideoEncoderKind};
        use crate::train::schedule::Decay;
        let reid = TrainConfig::from_toml(&shipped("mitoreid.toml")).unwrap();
        let (v, d) = (&reid.model.video, &reid.data);
        assert_eq!(
            (v.encoder, v.pooling, v.i3d.blocks, v.i3d.in_channels),
            (VideoEncoderKind::I3dResnet50, Pooling::Mean, BlockStyle::R3d, 3)
        );
        assert_eq!((d.frames.channels.count(), d.augment.resize, d.augment.crop), (3, 128, 112));
        assert_eq!((d.sampler.p, d.sampler.k), (32, 4));
        let o = &reid.optimizer;
        assert_eq!(
            (o.kind, o.lr, o.weight_decay, o.momentum, o.nesterov),
            (crate::optim::OptimizerKind::Sgd, 1e-3, 1e-3, 0.9, true)
        );
        let l = &reid.loss;
        assert_eq!(
            (l.ce, l.triplet, l.margin, l.label_smoothing, l.center, l.center_lr),
            (1.0, 1.0, 0.3, 0.1, 0.01, 0.05)
        );
        assert_eq!(
            (reid.schedule.decay, reid.schedule.gamma, reid.schedule.plateau_patience),
            (Decay::Plateau, 0.1, 3)
        );
        let stages: Vec<_> =
            reid.stages.iter().map(|s| (s.identity, s.epochs, s.hold_epochs, s.validate_every)).collect();
        assert_eq!(stages, vec![(Identity::Drug, 100, 80, Some(2)), (Identity::Moa, 300, 100, Some(4))]);
        // MitoReID sets cudnn.benchmark on a GPU; no gradient clipping.
        assert!(reid.cudnn_benchmark && reid.clip_grad_norm == 0.0);
        // MolCLIP on the same recipe: only the kind and the CLIP term differ.
        let mut mito = TrainConfig::from_toml(&shipped("molclip-mito.toml")).unwrap();
        assert!(mito.effective_loss().clip > 0.0);
        mito.kind = reid.kind;
        mito.loss.clip = reid.loss.clip;
        mito.model.molecule = reid.model.molecule.clone();
        assert_eq!(reid.difference(&mito), None);
        // A model whose channels disagree with the frames' is refused, naming both fields.
        let e = TrainConfig::from_toml(&shipped("mitoreid.toml").replace("in_channels = 3", "in_channels = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.video.i3d.in_channels") && e.contains("data.frames.channels"), "{e}");
    }

    #[test]
    fn measured_cudnn_algorithms_are_a_key_that_configs_written_before_it_lack() {
        let on = TrainConfig::from_toml("cudnn_benchmark = true").unwrap();
        assert!(on.cudnn_benchmark && !TrainConfig::default().cudnn_benchmark);
        // Off, it is not written: a run folder's config reads back as it was before the key.
        let off = toml::to_string(&TrainConfig::default()).unwrap();
        assert!(!off.contains("cudnn_benchmark"), "{off}");
        assert_eq!(TrainConfig::from_toml(&off).unwrap(), TrainConfig::default());
        assert_eq!(TrainConfig::from_toml(&toml::to_string(&on).unwrap()).unwrap(), on);
        assert!(TrainConfig::from_toml("cudnn_benchmark = 1").unwrap_err().to_string().contains("cudnn_benchmark"));
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
    fn fields_are_set_by_their_dotted_path_and_validated() {
        let mut cfg = TrainConfig::default();
        cfg.set("data.sampler.p", "4").unwrap();
        cfg.set("stages[1].epochs", "2").unwrap();
        cfg.set("optimizer.kind", "sgd").unwrap();
        cfg.set("data.normalize.mean", "[0.5]").unwrap();
        assert_eq!((cfg.data.sampler.p, cfg.stages[1].epochs), (4, 2));
        assert_eq!(cfg.optimizer.kind, crate::optim::OptimizerKind::Sgd);
        let before = cfg.clone();
        for (path, value, says) in [
            ("data.sampler.q", "4", "q"),
            ("optimizer.lr", "-1", "optimizer.lr"),
            ("stages[5].epochs", "1", "no [5]"),
            ("data.augment.crop", "\"big\"", "data.augment.crop"),
        ] {
            let e = cfg.set(path, value).unwrap_err().to_string();
            assert!(e.contains(says), "{path}: {e}");
        }
        assert_eq!(cfg, before, "a refused value leaves the config as it was");
        // Validated together: a smaller resize and crop in one go.
        cfg.set_all(&[("data.augment.resize", "32"), ("data.augment.crop", "28")]).unwrap();
        assert!(cfg.set("data.augment.resize", "16").unwrap_err().to_string().contains("crop"));
        cfg.cap_epochs(1).unwrap();
        assert!(cfg.stages.iter().all(|s| s.epochs <= 1));
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
