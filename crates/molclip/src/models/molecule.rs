//! The molecule branch: a GIN over the molecular graph, or an MLP over a Morgan fingerprint.

use candle_core::{Device, Tensor};
use molclip_chem::{FingerprintConfig, FragmentPolicy, Molecule};
use molclip_data::{CellVideo, DatasetIndex};
use serde::{Deserialize, Serialize};

use super::gin::{Gin, GinConfig, GraphBatch};
use super::morgan_mlp::{MorganMlp, MorganMlpConfig};
use crate::error::{ModelError, Result};
use crate::nn::Vb;

/// Which molecule encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MoleculeEncoderKind {
    /// A GIN over the molecular graph.
    #[serde(rename = "gin")]
    #[default]
    Gin,
    /// An MLP over a Morgan fingerprint.
    #[serde(rename = "morgan-mlp")]
    MorganMlp,
}

/// The molecule branch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MoleculeConfig {
    /// `gin` (default) or `morgan-mlp`.
    pub encoder: MoleculeEncoderKind,
    /// Keep the encoder's weights fixed (for example after loading pretrained ones).
    pub freeze: bool,
    /// Keep the molecule projection fixed too, so the shared space is the molecular
    /// latent space itself and only the video side moves into it.
    pub freeze_projection: bool,
    /// The GIN's size.
    pub gin: GinConfig,
    /// The Morgan MLP's size.
    pub morgan: MorganMlpConfig,
}

impl MoleculeConfig {
    /// Feature width of the configured encoder.
    pub fn feature_dim(&self) -> usize {
        match self.encoder {
            MoleculeEncoderKind::Gin => self.gin.hidden,
            MoleculeEncoderKind::MorganMlp => self.morgan.hidden,
        }
    }
}

/// A SMILES as the molecule encoders read it: its largest organic fragment (salts and
/// solvents dropped); an unparsable SMILES is an error naming it.
pub fn parse_smiles(smiles: &str) -> Result<Molecule> {
    // The chemistry error quotes the SMILES itself (shortened when long).
    Molecule::parse_with(smiles, FragmentPolicy::Largest).map_err(|e| ModelError::Input(e.to_string()))
}

/// The molecule of a video's drug, from the annotation's SMILES.
pub fn drug_molecule(index: &DatasetIndex, cell: &CellVideo) -> Result<Molecule> {
    let folder = &cell.drug_folder;
    let smiles = index.annotation.smiles(cell.split, folder).ok_or_else(|| {
        ModelError::Input(format!(
            "{}: drug folder `{folder}` has no SMILES in the annotation, which a molclip model needs (or use kind = \"video-only\")",
            index.root.display()
        ))
    })?;
    parse_smiles(smiles).map_err(|e| ModelError::Input(format!("drug folder `{folder}`: {e}")))
}

/// A batch of molecules, in the form the configured encoder reads.
#[derive(Clone, Debug)]
pub enum MoleculeInput {
    /// Graphs, for the GIN.
    Graphs(GraphBatch),
    /// `[G, bits]`
    Fingerprints(Tensor),
}

impl MoleculeInput {
    /// `molecules` in the form `cfg`'s encoder reads, on `device`.
    pub fn new(cfg: &MoleculeConfig, molecules: &[&Molecule], device: &Device) -> Result<Self> {
        match cfg.encoder {
            MoleculeEncoderKind::Gin => {
                let graphs: Vec<_> = molecules.iter().map(|m| m.graph()).collect();
                Ok(Self::Graphs(GraphBatch::new(&graphs, device)?))
            }
            MoleculeEncoderKind::MorganMlp => {
                let fp_cfg = FingerprintConfig { radius: cfg.morgan.radius, n_bits: cfg.morgan.bits };
                let mut rows = Vec::with_capacity(molecules.len() * cfg.morgan.bits);
                for m in molecules {
                    let fp = m.morgan(&fp_cfg).map_err(|e| ModelError::config("morgan", e.to_string()))?;
                    rows.extend(if cfg.morgan.counts { fp.dense_counts() } else { fp.dense() });
                }
                Ok(Self::Fingerprints(Tensor::from_vec(rows, (molecules.len(), cfg.morgan.bits), device)?))
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Encoder {
    Gin(Gin),
    MorganMlp(MorganMlp),
}

/// The configured molecule encoder.
#[derive(Clone, Debug)]
pub struct MoleculeEncoder {
    encoder: Encoder,
    frozen: bool,
}

impl MoleculeEncoder {
    /// The encoder `cfg` names, its weights under `vb`.
    pub fn new(vb: &Vb, cfg: &MoleculeConfig) -> Result<Self> {
        let vb = vb.clone().frozen(cfg.freeze);
        let encoder = match cfg.encoder {
            MoleculeEncoderKind::Gin => Encoder::Gin(Gin::new(&vb, &cfg.gin)?),
            MoleculeEncoderKind::MorganMlp => Encoder::MorganMlp(MorganMlp::new(&vb, &cfg.morgan)?),
        };
        Ok(Self { encoder, frozen: cfg.freeze })
    }

    /// One `[G, D]` row per molecule. A frozen encoder always runs in evaluation mode.
    pub fn forward_t(&self, input: &MoleculeInput, train: bool) -> Result<Tensor> {
        let train = train && !self.frozen;
        match (&self.encoder, input) {
            (Encoder::Gin(m), MoleculeInput::Graphs(g)) => m.forward_t(g, train),
            (Encoder::MorganMlp(m), MoleculeInput::Fingerprints(f)) => m.forward(f),
            _ => Err(ModelError::Input(
                "molecule input does not match the encoder (graphs for gin, fingerprints for morgan-mlp)".into(),
            )),
        }
    }
}
