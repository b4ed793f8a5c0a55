//! Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017): for each
//! anchor, its farthest positive and nearest negative in the batch, Euclidean distance,
//! hinge with a margin (PyTorch's `MarginRankingLoss`).

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::nn::matmul_t;

/// Pairwise Euclidean distances `[B, B]`, computed as in the re-identification baselines:
/// sqrt(max(|a|² + |b|² − 2ab, 1e-12)).
pub fn euclidean_distances(x: &Tensor) -> Result<Tensor> {
    let sq = x.sqr()?.sum_keepdim(1)?;
    let d2 = sq.broadcast_add(&sq.t()?)?.sub(&(matmul_t(x, x)? * 2.0)?)?;
    Ok(d2.clamp(1e-12f32, f32::MAX)?.sqrt()?)
}

/// `features`: `[B, D]`; `labels`: the identity of each row. Needs at least two identities.
pub fn batch_hard_triplet(features: &Tensor, labels: &[u32], margin: f64) -> Result<Tensor> {
    let b = features.dim(0)?;
    if labels.len() != b {
        return Err(ModelError::Input(format!("triplet loss: {b} features, {} labels", labels.len())));
    }
    if labels.iter().all(|&l| l == labels[0]) {
        return Err(ModelError::Input(
            "triplet loss: the batch holds a single identity, so there are no negatives".into(),
        ));
    }
    let same: Vec<u8> = (0..b * b).map(|k| (labels[k / b] == labels[k % b]) as u8).collect();
    let device = features.device();
    let same = Tensor::from_vec(same, (b, b), device)?;
    let dist = euclidean_distances(features)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (b, b), device)?.to_dtype(DType::F32)?;
    let pos_inf = Tensor::full(f32::INFINITY, (b, b), device)?.to_dtype(DType::F32)?;
    let hardest_positive = same.where_cond(&dist, &neg_inf)?.max(1)?;
    let hardest_negative = same.where_cond(&pos_inf, &dist)?.min(1)?;
    Ok((hardest_positive - hardest_negative)?.affine(1.0, margin)?.relu()?.mean_all()?)
}
