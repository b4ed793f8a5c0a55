//! Symmetric InfoNCE between videos and molecules (CLIP, Radford et al. 2021), with
//! multi-positive targets: a batch holds several videos of each drug, and all of them are
//! positives of that drug's molecule, never negatives of one another.

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::nn::{log_softmax_last_dim, matmul_t};

/// The clamped inverse temperature, exp(min(logit_scale, ln max)).
pub fn inverse_temperature(logit_scale: &Tensor, max_logit_scale: f64) -> Result<Tensor> {
    Ok(logit_scale.minimum(max_logit_scale.ln())?.exp()?)
}

/// `videos`: `[B, d]` and `molecules`: `[P, d]`, both unit-norm. `video_drugs[b]` and
/// `molecule_drugs[p]` say which drug each row is; rows with the same drug are positives.
/// Returns (video→molecule + molecule→video) / 2, each the mean over rows of the cross-entropy
/// against the positives, weighted equally.
pub fn clip_loss(
    videos: &Tensor,
    molecules: &Tensor,
    video_drugs: &[u32],
    molecule_drugs: &[u32],
    logit_scale: &Tensor,
    max_logit_scale: f64,
) -> Result<Tensor> {
    let (b, p) = (videos.dim(0)?, molecules.dim(0)?);
    if video_drugs.len() != b || molecule_drugs.len() != p {
        return Err(ModelError::Input(format!(
            "clip loss: {b} videos with {} labels, {p} molecules with {} labels",
            video_drugs.len(),
            molecule_drugs.len()
        )));
    }
    let v2m = targets(video_drugs, molecule_drugs, "video", "molecule")?;
    let m2v = targets(molecule_drugs, video_drugs, "molecule", "video")?;
    let device = videos.device();
    let v2m = Tensor::from_vec(v2m, (b, p), device)?;
    let m2v = Tensor::from_vec(m2v, (p, b), device)?;
    let scale = inverse_temperature(logit_scale, max_logit_scale)?;
    let logits = matmul_t(videos, molecules)?.broadcast_mul(&scale)?;
    let loss_v = (log_softmax_last_dim(&logits)? * v2m)?.sum_all()?.affine(-1.0 / b as f64, 0.0)?;
    let loss_m = (log_softmax_last_dim(&logits.t()?)? * m2v)?.sum_all()?.affine(-1.0 / p as f64, 0.0)?;
    Ok(((loss_v + loss_m)? * 0.5)?)
}

/// Row-normalised targets `[rows, cols]`: each row spreads 1 evenly over the columns of the
/// same drug. A row without any is an error naming it.
fn targets(rows: &[u32], cols: &[u32], row_kind: &str, col_kind: &str) -> Result<Vec<f32>> {
    let mut t = vec![0f32; rows.len() * cols.len()];
    for (i, &d) in rows.iter().enumerate() {
        let positives = cols.iter().filter(|&&c| c == d).count();
        if positives == 0 {
            return Err(ModelError::Input(format!(
                "clip loss: {row_kind} {i} (drug {d}) has no {col_kind} in the batch"
            )));
        }
        for (j, &c) in cols.iter().enumerate() {
            if c == d {
                t[i * cols.len() + j] = 1.0 / positives as f32;
            }
        }
    }
    Ok(t)
}
