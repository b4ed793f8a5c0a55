//! A trained run's model, and embeddings of a dataset's videos and of molecules with it.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use molclip_data::loader::{eval_input, stack, DataConfig, Loader, Mode, VideoDataset};
use molclip_data::{CellVideo, Video};
use rayon::prelude::*;

use super::config::TrainConfig;
use super::feed::Feed;
use super::trainer::TrainModel;
use crate::error::{ModelError, Result};
use molclip_chem::Molecule;

use crate::models::{parse_smiles, MolClip, MoleculeInput, VideoModel};
use crate::nn::staging::Staging;
use crate::nn::{read_safetensors, ParamStore};

/// A trained model with its config, ready to embed videos and molecules.
pub struct TrainedRun {
    /// The config it was trained with.
    pub cfg: TrainConfig,
    /// The model.
    pub model: TrainModel,
    /// Where it runs.
    pub device: Device,
    /// The batches' way to the device, kept from call to call (on a GPU, pinned buffers
    /// that each call would otherwise allocate again).
    staging: Staging,
}

impl TrainedRun {
    /// The model of `cfg` with the weights in `weights` (a safetensors file), loaded strictly:
    /// a missing, extra or mis-shaped weight is an error naming it. The classifiers take
    /// their class counts from the file.
    pub fn load(cfg: TrainConfig, weights: &Path, device: &Device) -> Result<Self> {
        let tensors = read_safetensors(weights)?;
        let classes = |name: &str| tensors.get(name).map_or(Ok(0), |t| t.dim(0));
        let (drugs, moas) = (classes("video.drug_classifier.weight")?, classes("video.moa_classifier.weight")?);
        let store = ParamStore::load(weights, device)?;
        let model = TrainModel::build(&store, &cfg, drugs, moas)?;
        store.check_all_used(weights)?;
        Ok(Self { cfg, model, device: device.clone(), staging: Feed::staging(device) })
    }

    /// The batches' way to the device ([`embed_cells`] takes it).
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// The video branch.
    pub fn video(&self) -> &VideoModel {
        self.model.video()
    }

    /// The MolCLIP model, or an error saying that `what` needs one.
    pub fn molclip(&self, what: &str) -> Result<&MolClip> {
        match &self.model {
            TrainModel::MolClip(m) => Ok(m),
            TrainModel::Video(_) => Err(ModelError::Input(format!(
                "{what} needs a molclip run (this one is {:?}: it has no molecule encoder)",
                self.cfg.kind
            ))),
        }
    }

    /// Videos in evaluation mode (centre crop), `batch` at a time: retrieval features,
    /// temporal attention and, for MolCLIP, the shared-space embedding.
    pub fn embed_videos(
        &self,
        cells: Vec<CellVideo>,
        batch: usize,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<VideoEmbeddings> {
        let mut e = VideoEmbeddings { dim: self.video().dim(), ..Default::default() };
        let (device, staging) = (&self.device, &self.staging);
        for_each_batch(&self.cfg, cells, device, staging, batch, on_batch, &mut |x| self.encode(x, &mut e))?;
        Ok(e)
    }

    /// Videos already in memory (every frame; values in [0, 1] at their source's depth; the
    /// channels the model sees), embedded as [`TrainedRun::embed_videos`] embeds the same
    /// videos read from disk: frames sampled, resized, centre-cropped and normalised as the
    /// run's config says, `batch` at a time (staged as [`TrainedRun::embed_videos`] stages
    /// them: through pinned memory on a GPU).
    pub fn embed_frames(
        &self,
        videos: &[Video],
        batch: usize,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<VideoEmbeddings> {
        let channels = self.cfg.data.frames.channels.count();
        if let Some((i, v)) = videos.iter().enumerate().find(|(_, v)| v.channels != channels) {
            return Err(ModelError::Input(format!(
                "video {i}: {} channels, but the run's model sees {channels} (data.frames.channels)",
                v.channels
            )));
        }
        let crop = self.cfg.data.augment.crop;
        let mut e = VideoEmbeddings { dim: self.video().dim(), ..Default::default() };
        let size = batch.max(1);
        for (k, chunk) in videos.chunks(size).enumerate() {
            let first = k * size;
            let items = chunk
                .par_iter()
                .enumerate()
                .map(|(j, v)| {
                    let mut out = Vec::new();
                    let frames = eval_input(v, &self.cfg.data, &mut out)
                        .map_err(|err| ModelError::Input(format!("video {}: {err}", first + j)))?;
                    Ok((out, frames))
                })
                .collect::<Result<Vec<_>>>()?;
            let (data, frames) =
                stack(items).map_err(|e| ModelError::Input(format!("video {}: {e}", first + e.position)))?;
            let x =
                self.staging.stage(data, &[chunk.len(), frames, channels, crop, crop])?.into_tensor(&self.device)?;
            self.encode(&x, &mut e)?;
            on_batch(chunk.len());
        }
        Ok(e)
    }

    /// One batch `[B, T, C, H, W]` in evaluation mode, its outputs appended to `e`.
    fn encode(&self, x: &Tensor, e: &mut VideoEmbeddings) -> Result<()> {
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
    }

    /// Unit-norm shared-space embeddings of molecules given as SMILES (MolCLIP runs only);
    /// an unparsable SMILES is an error naming it.
    pub fn embed_smiles(&self, smiles: &[&str]) -> Result<(Vec<f32>, usize)> {
        let m = self.molclip("embedding a molecule")?;
        let mols = smiles.iter().map(|s| parse_smiles(s)).collect::<Result<Vec<_>>>()?;
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
    /// Feature width.
    pub dim: usize,
    /// `[n, steps]`: temporal pooling weights over the encoder's time steps.
    pub attention: Vec<f32>,
    /// Encoder time steps.
    pub steps: usize,
    /// `[n, shared_dim]`: unit-norm shared-space embeddings (MolCLIP only; else empty).
    pub shared: Vec<f32>,
    /// Shared-space width.
    pub shared_dim: usize,
}

/// Runs `f` on `cells` in evaluation mode (centre crop), `batch` videos at a time, in order,
/// each batch staged for `device` through `staging`.
fn for_each_batch(
    cfg: &TrainConfig,
    cells: Vec<CellVideo>,
    device: &Device,
    staging: &Staging,
    batch: usize,
    on_batch: &mut dyn FnMut(usize),
    f: &mut dyn FnMut(&Tensor) -> Result<()>,
) -> Result<()> {
    let n = cells.len();
    // Each video is read once: a cache would only hold memory until the end.
    let dataset = Arc::new(VideoDataset::new(cells, DataConfig { cache: false, ..cfg.data.clone() })?);
    let batches = (0..n).step_by(batch.max(1)).map(|start| (start..(start + batch).min(n)).collect()).collect();
    // Built ahead as `data.prefetch` says, so that reading overlaps the model, and staged
    // for the device (pinned memory on a GPU).
    for fed in Feed::new(Loader::start(dataset, batches, Mode::Eval), staging) {
        let fed = fed?;
        f(&fed.input.into_tensor(device)?)?;
        on_batch(fed.batch.indices.len());
    }
    Ok(())
}

/// The retrieval features (BNNeck) of `cells` with a video model being trained: `[N, D]` rows.
/// Batches go to `device` through `staging` (`Feed::staging`), which a caller embedding again
/// and again keeps, with its pinned buffers on a GPU.
pub fn embed_cells(
    model: &VideoModel,
    cfg: &TrainConfig,
    cells: Vec<CellVideo>,
    device: &Device,
    staging: &Staging,
    batch: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(cells.len() * model.dim());
    for_each_batch(cfg, cells, device, staging, batch, on_batch, &mut |x| {
        out.extend(rows(&model.forward_t(x, false)?.neck_feature)?);
        Ok(())
    })?;
    Ok(out)
}
