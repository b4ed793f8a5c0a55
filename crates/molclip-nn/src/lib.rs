//! The kernels and building blocks molclip's models are made of, in candle: parameters with
//! PyTorch's names and initialisation, layers, the 3D operations candle lacks, and fused CPU
//! kernels with hand-written backward passes, and the optimiser's update in place. On other devices every layer runs the same
//! maths as composed candle ops. The CPU and GPU speed work grows here; the models
//! (the method) live in the `molclip` crate.

pub mod conv3d;
mod cpu;
#[cfg(feature = "cudnn")]
mod cudnn;
pub mod device;
mod error;
pub mod flops;
pub(crate) mod fused;
#[cfg(feature = "cuda")]
mod kernels;
pub mod layers;
pub mod norm;
pub mod params;
pub mod precision;
pub mod staging;
pub mod update;

pub use conv3d::{conv3d, cudnn_benchmark, max_pool3d, set_cudnn_benchmark, Window3d};
pub use error::{NnError, Result};
pub use layers::{
    add_relu, attention, attention_of_first, gelu, l2_normalize, log_softmax_last_dim, matmul_t, relu,
    softmax_last_dim, BatchNorm, Embedding, LayerNorm, Linear,
};
pub use norm::square_sums;
pub use params::{read_safetensors, read_weights, write_safetensors, Init, ParamStore, Vb};
pub use precision::{autocast, Autocast};
pub use update::{adamw_in_place, adamw_in_place_all, AdamWSlot, AdamWStep};
