//! MolCLIP in candle: video encoders, molecule encoders, projection heads and losses
//! (docs/method.md section 2), built as plain structs with a config and a `forward`.

pub mod error;

pub use candle_core;
pub use error::{ModelError, Result};
/// The kernels and layers the models are built from (the `molclip-nn` crate).
pub use molclip_nn as nn;
pub mod losses;
pub mod models;
pub mod optim;
pub mod train;

/// `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda`.
pub fn parse_device(name: &str) -> Result<candle_core::Device> {
    let bad = || ModelError::config("device", format!("`{name}` is not cpu, cuda or cuda:N"));
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or_else(bad)?,
                None => return Err(bad()),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::config(
                    "device",
                    format!("`{name}`: this molclip was built without CUDA (rebuild with `--features cuda`)"),
                ));
            }
            Ok(molclip_nn::device::cuda(ordinal)?)
        }
    }
}
