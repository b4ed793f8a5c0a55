//! The encoders and MolCLIP itself, one file per model (docs/method.md section 2).

pub mod aggregation;
pub mod frame_vit;
pub mod gin;
pub mod i3d_resnet;
pub mod molclip;
pub mod molecule;
pub mod morgan_mlp;
pub mod projection;
pub mod video;

pub use aggregation::{Pooling, TemporalPool};
pub use frame_vit::{adapt_pretrained_vit, FrameVit, FrameVitConfig};
pub use gin::{Gin, GinConfig, GraphBatch};
pub use i3d_resnet::{adapt_pretrained_r3d, BlockStyle, I3dConfig, I3dResNet, TemporalDownsampling};
pub use molclip::{MolClip, MolClipConfig};
pub use molecule::{drug_molecule, parse_smiles, MoleculeConfig, MoleculeEncoder, MoleculeEncoderKind, MoleculeInput};
pub use morgan_mlp::{MorganMlp, MorganMlpConfig};
pub use projection::Projection;
pub use video::{VideoConfig, VideoEncoder, VideoEncoderKind, VideoModel, VideoOutput};
