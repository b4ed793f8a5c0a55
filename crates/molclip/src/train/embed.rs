//! A trained run's video model, and embeddings of a dataset's videos with it.

use std::path::Path;

use candle_core::{Device, Tensor};
use molclip_data::loader::{Mode, VideoDataset};
use molclip_data::CellVideo;

use super::config::{ModelKind, TrainConfig};
use crate::error::{ModelError, Result};
use crate::models::{MolClip, VideoModel};
use crate::nn::{read_safetensors, ParamStore};

/// The run's config and its video model (the BNNeck feature is what retrieval uses).
pub fn load_video_model(run: &Path, device: &Device) -> Result<(TrainConfig, VideoModel)> {
    let run_toml = run.join("run.toml");
    let text = std::fs::read_to_string(&run_toml).map_err(|e| ModelError::Weights { path: run_toml.display().to_string(), message: e.to_string() })?;
    let cfg = TrainConfig::from_toml(&text)?;
    let weights = run.join("model.safetensors");
    let tensors = read_safetensors(&weights)?;
    let classes = |name: &str| tensors.get(name).map_or(Ok(0), |t| t.dim(0));
    let (drugs, moas) = (classes("video.drug_classifier.weight")?, classes("video.moa_classifier.weight")?);
    let store = ParamStore::load(&weights, device)?;
    let video = match cfg.kind {
        ModelKind::Molclip => MolClip::new(&store.root(), &cfg.model, drugs, moas)?.video,
        _ => VideoModel::new(&store.root().pp("video"), &cfg.model.video, drugs, moas)?,
    };
    store.check_all_used(&weights.display().to_string())?;
    Ok((cfg, video))
}

/// Embeds `cells` in evaluation mode (centre crop), `batch` videos at a time: `[N, D]` rows.
pub fn embed_cells(model: &VideoModel, cfg: &TrainConfig, cells: Vec<CellVideo>, device: &Device, batch: usize, on_batch: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
    let n = cells.len();
    let dataset = VideoDataset::new(cells, cfg.data.clone())?;
    let mut out = Vec::with_capacity(n * model.dim());
    for start in (0..n).step_by(batch.max(1)) {
        let indices: Vec<usize> = (start..(start + batch).min(n)).collect();
        let x = dataset.batch(&indices, Mode::Eval)?.to_tensor(device)?;
        let feature: Tensor = model.forward_t(&x, false)?.neck_feature;
        out.extend(feature.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
        on_batch(indices.len());
    }
    Ok(out)
}
