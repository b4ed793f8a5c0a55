//! A multilayer perceptron over a Morgan (ECFP) fingerprint: the simple molecule encoder.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::nn::{relu, Linear, Vb};

/// The Morgan MLP's size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MorganMlpConfig {
    /// Morgan radius (2 is ECFP4).
    pub radius: u32,
    /// Fingerprint width.
    pub bits: usize,
    /// Use counts instead of bits.
    pub counts: bool,
    /// Hidden width.
    pub hidden: usize,
    /// Linear layers (ReLU between them).
    pub layers: usize,
}

impl Default for MorganMlpConfig {
    fn default() -> Self {
        Self { radius: 2, bits: 2048, counts: false, hidden: 512, layers: 2 }
    }
}

/// An MLP over a Morgan fingerprint.
#[derive(Clone, Debug)]
pub struct MorganMlp {
    layers: Vec<Linear>,
    hidden: usize,
}

impl MorganMlp {
    /// The network, its weights under `vb`.
    pub fn new(vb: &Vb, cfg: &MorganMlpConfig) -> Result<Self> {
        if cfg.layers == 0 || cfg.hidden == 0 {
            return Err(ModelError::config("morgan.layers", "layers and hidden must be positive"));
        }
        // Named as the indices of an `nn.Sequential(Linear, ReLU, Linear, ...)`.
        let layers = (0..cfg.layers)
            .map(|i| Linear::new(&vb.pp("mlp").pp(2 * i), if i == 0 { cfg.bits } else { cfg.hidden }, cfg.hidden, true))
            .collect::<molclip_nn::Result<_>>()?;
        Ok(Self { layers, hidden: cfg.hidden })
    }

    /// Feature width.
    pub fn out_dim(&self) -> usize {
        self.hidden
    }

    /// `fingerprints`: `[G, bits]` (0/1 or counts).
    pub fn forward(&self, fingerprints: &Tensor) -> Result<Tensor> {
        let mut x = fingerprints.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = relu(&x)?;
            }
        }
        Ok(x)
    }
}
