use std::path::PathBuf;
use thiserror::Error;

/// What can be wrong with a dataset, its files or the data config.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or folder that is not what the dataset needs.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// Where.
        path: PathBuf,
        /// What was expected.
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A data config field with a value that cannot work.
    #[error("data config field `{field}`: {message}")]
    Config {
        /// The field's dotted path under `[data]` (`augment.crop`).
        field: String,
        /// Why, and what would.
        message: String,
    },
    /// Every problem a scan found, together.
    #[error("{} problem(s) in the dataset:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<crate::index::Problem>),
}

impl From<molclip_core::IoError> for DataError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

impl DataError {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { field: field.into(), message: message.into() }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
