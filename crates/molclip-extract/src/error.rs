use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong reading raw fields, extracting cells or writing the dataset.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// A config field with a value that cannot work.
    #[error("invalid extract config: {field}: {reason}")]
    Config {
        /// The field's dotted path (`segment.nucleus_sigma`).
        field: String,
        /// Why, and what would.
        reason: String,
    },
    /// A raw folder, file or annotation that is not what extraction needs.
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
    /// An output another process is writing.
    #[error(transparent)]
    Lock(#[from] molclip_core::LockError),
    /// A dataset file (OME-TIFF layout, annotation) that cannot be read.
    #[error(transparent)]
    Data(#[from] molclip_data::DataError),
}

impl From<molclip_core::IoError> for ExtractError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

impl ExtractError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
    /// The error as it would read in `to`: paths under the staging folder `from` renamed.
    pub(crate) fn moved(self, from: &std::path::Path, to: &std::path::Path) -> Self {
        let rename = |path: PathBuf| molclip_core::published_path(path, from, to);
        match self {
            Self::Io { path, source } => Self::Io { path: rename(path), source },
            Self::Invalid { path, reason } => Self::Invalid { path: rename(path), reason },
            other => other,
        }
    }
}
