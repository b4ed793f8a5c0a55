//! MolCLIP: a video encoder aligned, CLIP-style, with a molecule encoder (arXiv 2507.07663).
//!
//! ```text
//!  video ─ VideoModel ─ pooled feature ─ BNNeck ─┬─ classifiers (drug, MoA)      ─ CE
//!                        └──────────────────────┼─ (metric losses: triplet, centre)
//!                                               └─ video_projection ─┐
//!  SMILES ─ MoleculeEncoder ─ molecule_projection ────────────────────┴─ symmetric InfoNCE
//! ```
//! Retrieval at test time is video to video on the BNNeck feature; the shared space also
//! serves molecule-to-video retrieval and zero-shot MoA prediction.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::molecule::{MoleculeConfig, MoleculeEncoder, MoleculeInput};
use super::projection::Projection;
use super::video::{VideoConfig, VideoModel, VideoOutput};
use crate::error::{ModelError, Result};
use crate::nn::{Init, Vb};

/// MolCLIP: the video model, the molecule encoder and the shared space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MolClipConfig {
    /// The video branch.
    pub video: VideoConfig,
    /// The molecule branch.
    pub molecule: MoleculeConfig,
    /// Width of the shared space.
    pub projection_dim: usize,
    /// The learnable inverse temperature starts at 1 / this (CLIP: 0.07).
    pub init_temperature: f64,
    /// The inverse temperature is clamped at this (CLIP: 100).
    pub max_logit_scale: f64,
}

impl Default for MolClipConfig {
    fn default() -> Self {
        Self {
            video: VideoConfig::default(),
            molecule: MoleculeConfig::default(),
            projection_dim: 256,
            init_temperature: 0.07,
            max_logit_scale: 100.0,
        }
    }
}

impl MolClipConfig {
    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.video.validate()?;
        if self.projection_dim == 0 {
            return Err(ModelError::config("projection_dim", "must be positive"));
        }
        if !(self.init_temperature > 0.0) || !(self.max_logit_scale >= 1.0 / self.init_temperature) {
            return Err(ModelError::config(
                "init_temperature",
                format!(
                    "needs 0 < init_temperature and 1/init_temperature <= max_logit_scale ({})",
                    self.max_logit_scale
                ),
            ));
        }
        Ok(())
    }
}

/// MolCLIP: video and molecule encoders with their projections into one space.
#[derive(Clone, Debug)]
pub struct MolClip {
    /// The video branch (encoder, pooling, BNNeck, classifiers).
    pub video: VideoModel,
    /// The molecule encoder.
    pub molecule: MoleculeEncoder,
    video_projection: Projection,
    molecule_projection: Projection,
    /// log of the inverse temperature (CLIP's `logit_scale`, originally an nn.Parameter).
    logit_scale: Tensor,
    max_logit_scale: f64,
}

impl MolClip {
    /// The model, with classifiers for `drugs` and `moas` classes (0: none).
    pub fn new(vb: &Vb, cfg: &MolClipConfig, drugs: usize, moas: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            video: VideoModel::new(&vb.pp("video"), &cfg.video, drugs, moas)?,
            molecule: MoleculeEncoder::new(&vb.pp("molecule"), &cfg.molecule)?,
            video_projection: Projection::new(&vb.pp("video_projection"), cfg.video.feature_dim(), cfg.projection_dim)?,
            molecule_projection: Projection::new(
                &vb.pp("molecule_projection").frozen(cfg.molecule.freeze_projection),
                cfg.molecule.feature_dim(),
                cfg.projection_dim,
            )?,
            logit_scale: vb.param("logit_scale", &[], Init::Const((1.0 / cfg.init_temperature).ln()))?,
            max_logit_scale: cfg.max_logit_scale,
        })
    }

    /// The video branch's outputs and the video's unit-norm embedding in the shared space.
    pub fn encode_videos(&self, videos: &Tensor, train: bool) -> Result<(VideoOutput, Tensor)> {
        let out = self.video.forward_t(videos, train)?;
        let embedding = self.video_projection.forward(&out.neck_feature)?;
        Ok((out, embedding))
    }

    /// Unit-norm molecule embeddings in the shared space.
    pub fn encode_molecules(&self, molecules: &MoleculeInput, train: bool) -> Result<Tensor> {
        self.molecule_projection.forward(&self.molecule.forward_t(molecules, train)?)
    }

    /// The raw (log) inverse temperature; the loss clamps and exponentiates it.
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The cap on the inverse temperature.
    pub fn max_logit_scale(&self) -> f64 {
        self.max_logit_scale
    }
}
