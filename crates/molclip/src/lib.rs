//! MolCLIP in candle: video encoders, molecule encoders, projection heads and losses
//! (METHOD.md section 2), built as plain structs with a config and a `forward`.

pub mod error;
pub mod nn;

pub use error::{ModelError, Result};
pub mod losses;
pub mod models;
pub mod optim;
