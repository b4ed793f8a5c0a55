//! What can go wrong building, loading or running layers.

use std::path::PathBuf;

use thiserror::Error;

/// An error of the kernels, the layers or the parameter store.
#[derive(Debug, Error)]
pub enum NnError {
    /// candle refused an operation (shape, dtype or device).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An input a kernel cannot take, said why.
    #[error("{0}")]
    Shape(String),
    /// A loaded weight whose shape is not the one the model expects.
    #[error("weight `{name}`: expected shape {expected:?}, the file has {found:?}")]
    WeightShape {
        /// The weight's name (PyTorch state-dict style).
        name: String,
        /// The shape the model builds.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A weight file that does not fit the model: a missing or an extra weight.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The file (or checkpoint) the weights came from.
        path: PathBuf,
        /// Which weights, and what to check.
        message: String,
    },
    /// A weights file (safetensors, or a PyTorch checkpoint) that cannot be read or written.
    #[error("{}: cannot {action} the weights: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// `read` or `write`.
        action: &'static str,
        /// candle's reason.
        #[source]
        source: candle_core::Error,
    },
    /// An initialisation whose parameters are not valid (a negative bound or deviation).
    #[error("initialising `{name}`: {message}")]
    Init {
        /// The parameter.
        name: String,
        /// The distribution's complaint.
        message: String,
    },
    /// A file that cannot be written or renamed.
    #[error(transparent)]
    Io(#[from] molclip_core::IoError),
}

/// The result of the layers and kernels.
pub type Result<T> = std::result::Result<T, NnError>;
