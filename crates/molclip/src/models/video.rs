//! The video branch: encoder, temporal aggregation, BNNeck and classifier heads.
//!
//! BNNeck (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
//! Re-identification", CVPRW 2019): metric losses see the feature before the batch norm,
//! classifiers and retrieval the feature after it.

use candle_core::Tensor;
use molclip_data::Identity;
use serde::{Deserialize, Serialize};

use super::aggregation::{Pooling, TemporalPool};
use super::frame_vit::{FrameVit, FrameVitConfig};
use super::i3d_resnet::{I3dConfig, I3dResNet};
use crate::error::{ModelError, Result};
use crate::nn::{BatchNorm, Linear, Vb};

/// Which video encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VideoEncoderKind {
    /// I3D-ResNet-18.
    #[serde(rename = "i3d-resnet18")]
    #[default]
    I3dResnet18,
    /// I3D-ResNet-50.
    #[serde(rename = "i3d-resnet50")]
    I3dResnet50,
    /// A ViT per frame, then a temporal transformer.
    #[serde(rename = "frame-vit")]
    FrameVit,
}

impl VideoEncoderKind {
    /// The encoder's name, as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::I3dResnet18 => "i3d-resnet18",
            Self::I3dResnet50 => "i3d-resnet50",
            Self::FrameVit => "frame-vit",
        }
    }
}

/// The video branch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    /// `i3d-resnet18` (default), `i3d-resnet50` or `frame-vit`.
    pub encoder: VideoEncoderKind,
    /// `attention` (default) or `mean`.
    pub pooling: Pooling,
    /// The I3D's shape (its depth follows `encoder`).
    pub i3d: I3dConfig,
    /// The frame ViT's shape.
    pub vit: FrameVitConfig,
}

impl VideoConfig {
    /// The I3D config of `encoder`.
    pub fn i3d_config(&self) -> I3dConfig {
        let depth = if self.encoder == VideoEncoderKind::I3dResnet50 { 50 } else { 18 };
        I3dConfig { depth, ..self.i3d.clone() }
    }

    /// Channels the encoder takes, and the config field that says so.
    pub fn in_channels(&self) -> (usize, &'static str) {
        match self.encoder {
            VideoEncoderKind::FrameVit => (self.vit.in_channels, "model.video.vit.in_channels"),
            _ => (self.i3d.in_channels, "model.video.i3d.in_channels"),
        }
    }

    /// Feature width.
    pub fn feature_dim(&self) -> usize {
        match self.encoder {
            VideoEncoderKind::FrameVit => self.vit.dim,
            _ => self.i3d_config().out_dim(),
        }
    }

    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        match self.encoder {
            VideoEncoderKind::FrameVit => self.vit.validate(),
            _ => self.i3d_config().validate(),
        }
    }
}

/// The configured video encoder.
#[derive(Clone, Debug)]
pub enum VideoEncoder {
    /// An inflated 3D ResNet.
    I3d(I3dResNet),
    /// A frame ViT with a temporal transformer.
    FrameVit(FrameVit),
}

impl VideoEncoder {
    /// The encoder `cfg` names, its weights under `vb`.
    pub fn new(vb: &Vb, cfg: &VideoConfig) -> Result<Self> {
        Ok(match cfg.encoder {
            VideoEncoderKind::FrameVit => Self::FrameVit(FrameVit::new(vb, &cfg.vit)?),
            _ => Self::I3d(I3dResNet::new(vb, &cfg.i3d_config())?),
        })
    }

    /// `x`: `[B, T, C, H, W]`. Returns `[B, T', D]` (T' < T where the I3D downsamples time).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::I3d(m) => m.forward_t(&x.permute((0, 2, 1, 3, 4))?.contiguous()?, train),
            Self::FrameVit(m) => m.forward(x),
        }
    }
}

/// What the video branch computes for a batch.
#[derive(Clone, Debug)]
pub struct VideoOutput {
    /// `[B, T', D]`: one feature per remaining time step.
    pub time_features: Tensor,
    /// `[B, T']`: the temporal pooling weights.
    pub attention: Tensor,
    /// `[B, D]`: the pooled feature before BNNeck (metric losses).
    pub feature: Tensor,
    /// `[B, D]`: after BNNeck (classifiers, retrieval).
    pub neck_feature: Tensor,
    /// `[B, drugs]`: the drug classifier's logits, when the model has one.
    pub drug_logits: Option<Tensor>,
    /// `[B, MoAs]`: the MoA classifier's logits, when the model has one.
    pub moa_logits: Option<Tensor>,
}

impl VideoOutput {
    /// The logits of the classifier of `identity`, when the model has one.
    pub fn logits(&self, identity: Identity) -> Option<&Tensor> {
        match identity {
            Identity::Drug => self.drug_logits.as_ref(),
            Identity::Moa => self.moa_logits.as_ref(),
        }
    }
}

/// The video branch: encoder, temporal pooling, BNNeck and classifiers.
#[derive(Clone, Debug)]
pub struct VideoModel {
    encoder: VideoEncoder,
    pool: TemporalPool,
    neck: BatchNorm,
    drug_classifier: Option<Linear>,
    moa_classifier: Option<Linear>,
    dim: usize,
}

impl VideoModel {
    /// `drugs` / `moas`: classes of the classifier heads (0: no head).
    pub fn new(vb: &Vb, cfg: &VideoConfig, drugs: usize, moas: usize) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.feature_dim();
        let head = |name: &str, n: usize| -> Result<Option<Linear>> {
            if n == 0 {
                Ok(None)
            } else {
                Ok(Some(Linear::new(&vb.pp(name), dim, n, false)?))
            }
        };
        Ok(Self {
            encoder: VideoEncoder::new(&vb.pp("encoder"), cfg)?,
            pool: TemporalPool::new(&vb.pp("pool"), cfg.pooling, dim)?,
            neck: BatchNorm::without_bias_training(&vb.pp("neck"), dim)?,
            drug_classifier: head("drug_classifier", drugs)?,
            moa_classifier: head("moa_classifier", moas)?,
            dim,
        })
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `x`: `[B, T, C, H, W]`; `train` selects batch statistics in the batch norms.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<VideoOutput> {
        if x.rank() != 5 {
            return Err(ModelError::Input(format!("videos must be [B, T, C, H, W], got {:?}", x.dims())));
        }
        let time_features = self.encoder.forward_t(x, train)?;
        let (feature, attention) = self.pool.forward(&time_features)?;
        let neck_feature = self.neck.forward_t(&feature, train)?;
        let logits = |head: &Option<Linear>| head.as_ref().map(|h| h.forward(&neck_feature)).transpose();
        Ok(VideoOutput {
            drug_logits: logits(&self.drug_classifier)?,
            moa_logits: logits(&self.moa_classifier)?,
            time_features,
            attention,
            feature,
            neck_feature,
        })
    }
}
