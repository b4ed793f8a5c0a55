//! Projection heads into the shared video-molecule space, L2-normalised (CLIP).

use candle_core::Tensor;

use crate::error::Result;
use crate::nn::{l2_normalize, Linear, Vb};

/// A linear map into the shared space, L2-normalised.
#[derive(Clone, Debug)]
pub struct Projection {
    linear: Linear,
}

impl Projection {
    /// `in_dim` to `out_dim`, its weights under `vb`.
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self { linear: Linear::new(vb, in_dim, out_dim, true)? })
    }

    /// `[N, in]` to unit-norm `[N, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(&self.linear.forward(x)?)?)
    }
}
