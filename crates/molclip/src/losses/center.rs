//! Centre loss (Wen et al., ECCV 2016): pulls each feature towards a learned centre of its
//! class. Here the mean over the batch of the squared distance to the centre, as the
//! re-identification baselines compute it; the centres are ordinary parameters.

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::nn::{Init, Vb};

/// Centre loss: the squared distance of each feature to its class centre (the centres are parameters).
#[derive(Clone, Debug)]
pub struct CenterLoss {
    centers: Tensor,
}

impl CenterLoss {
    /// Centres start N(0, 1), as `torch.randn`.
    pub fn new(vb: &Vb, classes: usize, dim: usize) -> Result<Self> {
        Ok(Self { centers: vb.param("centers", &[classes, dim], Init::Normal(1.0))? })
    }

    /// Mean over the batch of ‖feature − centre(label)‖² / 2.
    pub fn forward(&self, features: &Tensor, labels: &[u32]) -> Result<Tensor> {
        let classes = self.centers.dim(0)?;
        if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(ModelError::Input(format!("centre loss: label {l} is not below the {classes} classes")));
        }
        let ids = Tensor::from_vec(labels.to_vec(), labels.len(), features.device())?;
        let c = self.centers.index_select(&ids, 0)?;
        Ok((features - c)?.sqr()?.sum(1)?.mean_all()?)
    }
}
