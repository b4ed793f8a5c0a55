//! Projection heads into the shared video-molecule space, L2-normalised (CLIP).

use candle_core::Tensor;

use crate::error::Result;
use crate::nn::{l2_normalize, Linear, Vb};

#[derive(Clone, Debug)]
pub struct Projection {
    linear: Linear,
}

impl Projection {
    pub fn new(vb: &Vb, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self { linear: Linear::new(vb, in_dim, out_dim, true)? })
    }

    /// `[N, in]` to unit-norm `[N, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.linear.forward(x)?)
    }
}
