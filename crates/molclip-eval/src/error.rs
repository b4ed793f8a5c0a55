use std::path::PathBuf;
use thiserror::Error;

/// What can be wrong with an evaluation's input.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A file whose content is not what was expected.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was expected, and where (line, row).
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Features or labels that do not fit together (sizes, widths, empty sets).
    #[error("{0}")]
    Input(String),
    #[error(
        "no valid query: every query lost all its true matches to the same-replicate-and-drug exclusion ({task} task)"
    )]
    /// No query kept a true match.
    NoValidQuery {
        /// `drug` or `MoA`.
        task: &'static str,
    },
}

impl From<molclip_core::IoError> for EvalError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

impl EvalError {
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::File { path: path.into(), reason: reason.into() }
    }
}
