//! Cross-entropy with label smoothing (Szegedy et al. 2016), as PyTorch's
//! `F.cross_entropy(logits, target, label_smoothing=ε)`: the target puts 1 − ε on the class and
//! spreads ε evenly over all classes.

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::nn::log_softmax_last_dim;

/// Mean cross-entropy of `logits` against `targets`, with label smoothing.
pub fn cross_entropy(logits: &Tensor, targets: &[u32], label_smoothing: f64) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if targets.len() != b {
        return Err(ModelError::Input(format!("cross-entropy: {b} rows of logits, {} targets", targets.len())));
    }
    let off = (label_smoothing / c as f64) as f32;
    let mut q = vec![off; b * c];
    for (i, &t) in targets.iter().enumerate() {
        if t as usize >= c {
            return Err(ModelError::Input(format!(
                "cross-entropy: target {t} of row {i} is not below the {c} classes"
            )));
        }
        q[i * c + t as usize] += (1.0 - label_smoothing) as f32;
    }
    let q = Tensor::from_vec(q, (b, c), logits.device())?;
    Ok((log_softmax_last_dim(logits)? * q)?.sum_all()?.affine(-1.0 / b as f64, 0.0)?)
}

/// Share of rows whose largest logit is the target.
pub fn accuracy(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let hits = pred.iter().zip(targets).filter(|(p, t)| p == t).count();
    Ok(hits as f64 / targets.len().max(1) as f64)
}
