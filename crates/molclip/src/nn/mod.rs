//! Building blocks: parameters, layers and the 3D operations candle lacks.

mod cpu;
pub mod conv3d;
pub(crate) mod fused;
pub mod layers;
pub mod params;

pub use conv3d::{conv3d, max_pool3d, Window3d};
pub use layers::{add_relu, gelu, l2_normalize, log_softmax_last_dim, relu, softmax_last_dim, BatchNorm, Embedding, LayerNorm, Linear};
pub use params::{read_safetensors, write_safetensors, Init, ParamStore, Vb};
