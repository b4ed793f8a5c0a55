//! What can go wrong in the experiment layer: every lower floor's errors, and run folders.

use std::path::PathBuf;

use thiserror::Error;

/// An error of a run, an analysis, a prediction or the demo.
#[derive(Debug, Error)]
pub enum ExperimentError {
    /// Models, training or loading weights.
    #[error(transparent)]
    Model(#[from] molclip::ModelError),
    /// The dataset.
    #[error(transparent)]
    Data(#[from] molclip_data::DataError),
    /// The evaluation.
    #[error(transparent)]
    Eval(#[from] molclip_eval::EvalError),
    /// The report.
    #[error(transparent)]
    Report(#[from] molclip_report::ReportError),
    /// The simulator.
    #[error(transparent)]
    Simulation(#[from] mitosim::SimError),
    /// A file or folder that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A run folder that lacks a file or holds one that does not parse.
    #[error("{}: {message}", path.display())]
    Run {
        /// The file in the run folder.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
    /// An output another process is writing.
    #[error(transparent)]
    Lock(#[from] molclip_core::LockError),
    /// A request that cannot be served (an empty split, a missing SMILES), said why.
    #[error("{0}")]
    Input(String),
}

impl From<molclip_core::IoError> for ExperimentError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

/// The result of the experiment layer.
pub type Result<T> = std::result::Result<T, ExperimentError>;
