//! Building blocks: parameters, layers and the 3D operations candle lacks.

pub mod conv3d;
pub mod layers;
pub mod params;

pub use conv3d::{conv3d, max_pool3d, Window3d};
pub use layers::{l2_normalize, log_softmax_last_dim, softmax_last_dim, BatchNorm, Embedding, LayerNorm, Linear};
pub use params::{read_safetensors, write_safetensors, Init, ParamStore, Vb};
