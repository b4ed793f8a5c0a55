//! A trained run's model, and embeddings of a dataset's videos and of molecules with it.

use std::path::Path;

use candle_core::{Device, Tensor};
use molclip_chem::{FragmentPolicy, Molecule};
use molclip_data::loader::{Mode, VideoDataset};
use molclip_data::CellVideo;

use super::config::{ModelKind, TrainConfig};
use super::trainer::TrainModel;
use crate::error::{ModelError, Result};
use crate::models::{MolClip, MoleculeInput, VideoModel};
use crate::nn::{read_safetensors, ParamStore};

/// A run folder's config and model (`model.safetensors`).
pub struct TrainedRun {
    pub cfg: TrainConfig,
    pub model: TrainModel,
    pub device: Device,
}

impl TrainedRun {
    pub fn load(run: &Path, device: &Device) -> Result<Self> {
        let run_toml = run.join("run.toml");
        let text = std::fs::read_to_string(&run_toml).map_err(|e| ModelError::Weights { path: run_toml.display().to_string(), message: e.to_string() })?;
        let cfg = TrainConfig::from_toml(&text)?;
        let weights = run.join("model.safetensors");
        let tensors = read_safetensors(&weights)?;
        let classes = |name: &str| tensors.get(name).map_or(Ok(0), |t| t.dim(0));
        let (drugs, moas) = (classes("video.drug_classifier.weight")?, classes("video.moa_classifier.weight")?);
        let store = ParamStore::load(&weights, device)?;
        let model = match cfg.kind {
            ModelKind::Molclip => TrainModel::MolClip(MolClip::new(&store.root(), &cfg.model, drugs, moas)?),
            _ => TrainModel::Video(VideoModel::new(&store.root().pp("video"), &cfg.model.video, drugs, moas)?),
        };
        store.check_all_used(&weights.display().to_string())?;
        Ok(Self { cfg, model, device: device.clone() })
    }

    pub fn video(&self) -> &VideoModel {
        self.model.video()
    }

    /// The MolCLIP model, or an error saying that `what` needs one.
    pub fn molclip(&self, what: &str) -> Result<&MolClip> {
        match &self.model {
            TrainModel::MolClip(m) => Ok(m),
            TrainModel::Video(_) => Err(ModelError::Input(format!("{what} needs a molclip run (this one is {:?}: it has no molecule encoder)", self.cfg.kind))),
        }
    }

    /// Videos in evaluation mode (centre crop), `batch` at a time: retrieval features,
    /// temporal attention and, for MolCLIP, the shared-space embedding.
    pub fn embed_videos(&self, cells: Vec<CellVideo>, batch: usize, on_batch: &mut dyn FnMut(usize)) -> Result<VideoEmbeddings> {
        let mut e = VideoEmbeddings { dim: self.video().dim(), ..Default::default() };
        for_each_batch(&self.cfg, cells, &self.device, batch, on_batch, &mut |x| {
            let (out, shared) = match &self.model {
                TrainModel::MolClip(m) => {
                    let (out, shared) = m.encode_videos(x, false)?;
                    (out, Some(shared))
                }
                TrainModel::Video(v) => (v.forward_t(x, false)?, None),
            };
            e.steps = out.attention.dim(1)?;
            e.feature.extend(rows(&out.neck_feature)?);
            e.attention.extend(rows(&out.attention)?);
            if let Some(s) = shared {
                e.shared_dim = s.dim(1)?;
                e.shared.extend(rows(&s)?);
            }
            Ok(())
        })?;
        Ok(e)
    }

    /// Unit-norm shared-space embeddings of molecules given as SMILES (MolCLIP runs only);
    /// an unparsable SMILES is an error naming it.
    pub fn embed_smiles(&self, smiles: &[&str]) -> Result<(Vec<f32>, usize)> {
        let m = self.molclip("embedding a molecule")?;
        let policy = FragmentPolicy::Largest;
        let mols = smiles
            .iter()
            .map(|s| Molecule::parse_with(s, policy).map_err(|e| ModelError::Input(format!("SMILES {s:?}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Molecule> = mols.iter().collect();
        let input = MoleculeInput::new(&self.cfg.model.molecule, &refs, &self.device)?;
        let emb = m.encode_molecules(&input, false)?;
        Ok((rows(&emb)?, emb.dim(1)?))
    }
}

/// Row-major values of a `[N, D]` tensor, on the CPU.
fn rows(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// What [`TrainedRun::embed_videos`] computes, row-major, one row per video (`n` of them).
#[derive(Clone, Debug, Default)]
pub struct VideoEmbeddings {
    /// `[n, dim]`: the BNNeck feature, which retrieval uses.
    pub feature: Vec<f32>,
    pub dim: usize,
    /// `[n, steps]`: temporal pooling weights over the encoder's time steps.
    pub attention: Vec<f32>,
    pub steps: usize,
    /// `[n, shared_dim]`: unit-norm shared-space embeddings (MolCLIP only; else empty).
    pub shared: Vec<f32>,
    pub shared_dim: usize,
}

/// Runs `f` on `cells` in evaluation mode (centre crop), `batch` videos at a time, in order.
fn for_each_batch(
    cfg: &TrainConfig,
    cells: Vec<CellVideo>,
    device: &Device,
    batch: usize,
    on_batch: &mut dyn FnMut(usize),
    f: &mut dyn FnMut(&Tensor) -> Result<()>,
) -> Result<()> {
    let n = cells.len();
    let dataset = VideoDataset::new(cells, cfg.data.clone())?;
    for start in (0..n).step_by(batch.max(1)) {
        let indices: Vec<usize> = (start..(start + batch).min(n)).collect();
        f(&dataset.batch(&indices, Mode::Eval)?.to_tensor(device)?)?;
        on_batch(indices.len());
    }
    Ok(())
}

/// The retrieval features (BNNeck) of `cells` with a video model being trained: `[N, D]` rows.
pub fn embed_cells(model: &VideoModel, cfg: &TrainConfig, cells: Vec<CellVideo>, device: &Device, batch: usize, on_batch: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(cells.len() * model.dim());
    for_each_batch(cfg, cells, device, batch, on_batch, &mut |x| {
        out.extend(rows(&model.forward_t(x, false)?.neck_feature)?);
        Ok(())
    })?;
    Ok(out)
}
