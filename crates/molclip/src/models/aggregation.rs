//! Temporal aggregation: per-time-step features to one video feature.
//!
//! Attention pooling learns which time points matter (a learned query attends over the
//! frame features); its weights are returned so that reports can show them. Mean pooling is
//! the ablation.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::nn::{matmul_t, softmax_last_dim, Init, Linear, Vb};

/// How time steps are pooled into one feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// A learned query attends over the time steps.
    #[default]
    Attention,
    /// The mean over time.
    Mean,
}

/// Temporal pooling, with its weights.
#[derive(Clone, Debug)]
pub enum TemporalPool {
    /// Attention with a key projection and a learned query.
    Attention {
        /// Projects each time step to a key.
        key: Linear,
        /// The learned query, `[D]`.
        query: Tensor,
    },
    /// The mean.
    Mean,
}

impl TemporalPool {
    /// The pooling `pooling` names, over features of width `dim`.
    pub fn new(vb: &Vb, pooling: Pooling, dim: usize) -> Result<Self> {
        Ok(match pooling {
            Pooling::Attention => TemporalPool::Attention {
                key: Linear::new(&vb.pp("key"), dim, dim, true)?,
                query: vb.param("query", &[dim], Init::TruncNormal(0.02))?,
            },
            Pooling::Mean => TemporalPool::Mean,
        })
    }

    /// `x`: `[B, T, D]`. Returns the pooled `[B, D]` and the weight of each time step `[B, T]`
    /// (uniform for mean pooling).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, d) = x.dims3()?;
        let weights = match self {
            TemporalPool::Attention { key, query } => {
                let scores = matmul_t(&key.forward(x)?.reshape((b * t, d))?, &query.reshape((1, d))?)?;
                softmax_last_dim(&(scores.reshape((b, t))? * (d as f64).powf(-0.5))?)?
            }
            TemporalPool::Mean => Tensor::full(1.0 / t as f32, (b, t), x.device())?,
        };
        // Σ_t weights[b, t] · x[b, t, :]: element-wise, so that no product of training is left
        // to candle's GEMM and its own instruction-set choice (`MOLCLIP_CPU` caps molclip's).
        let pooled = weights.unsqueeze(2)?.broadcast_mul(x)?.sum(1)?;
        Ok((pooled, weights))
    }
}
