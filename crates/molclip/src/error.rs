//! What can go wrong building, training or loading a model.

use std::path::PathBuf;

use thiserror::Error;

/// An error of the models, the losses, the optimisers or training.
#[derive(Debug, Error)]
pub enum ModelError {
    /// candle refused an operation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A kernel, a layer or the parameter store refused.
    #[error(transparent)]
    Nn(#[from] molclip_nn::NnError),
    /// A config field with a value that cannot work.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The field's dotted path (`optimizer.lr`).
        field: String,
        /// Why, and what would.
        message: String,
    },
    /// Weights or optimiser state that do not fit what they are loaded into.
    #[error("{what}: {message}")]
    Weights {
        /// What the weights are (a checkpoint's path, `pretrained ViT`, `optimizer state`).
        what: String,
        /// What is missing or wrong.
        message: String,
    },
    /// A file or folder that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// An input that does not fit (sizes, labels, a molecule), said why.
    #[error("{0}")]
    Input(String),
    /// The dataset or the data config.
    #[error(transparent)]
    Data(#[from] molclip_data::DataError),
    /// A loss term or the gradient norm became NaN or infinite.
    #[error("step {step}: the {term} is {value} (not finite); training stopped")]
    NonFinite {
        /// The global step.
        step: u64,
        /// The loss term (or `gradient norm`).
        term: String,
        /// Its value.
        value: f32,
    },
}

/// The result of the models and training.
pub type Result<T> = std::result::Result<T, ModelError>;

impl From<molclip_core::IoError> for ModelError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

impl ModelError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { field: field.into(), message: message.into() }
    }

    /// A `map_err` adapter for I/O at `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |source| Self::Io { path, source }
    }
}
