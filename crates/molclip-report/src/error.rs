//! What can go wrong drawing or writing a report.

use std::path::PathBuf;

/// An error of the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Data that cannot be drawn (sizes that do not fit), said why.
    #[error("{0}")]
    Input(String),
    /// plotters refused to draw.
    #[error("drawing {what}: {message}")]
    Plot {
        /// The plot.
        what: String,
        /// plotters' message.
        message: String,
    },
    /// A file that cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl From<molclip_core::IoError> for ReportError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}
