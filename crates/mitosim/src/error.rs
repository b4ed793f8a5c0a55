use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong planning or writing a simulated dataset.
#[derive(Debug, Error)]
pub enum SimError {
    /// A config field with a value that cannot work.
    #[error("invalid simulation config: {field}: {reason}")]
    Config {
        /// The field's dotted path (`biology.structure_coupling`).
        field: String,
        /// Why, and what would.
        reason: String,
    },
    /// A preset that does not exist.
    #[error("unknown preset {0:?}: expected one of tiny, demo, bench, mito")]
    UnknownPreset(String),
    /// A config file that does not parse.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A drug table that cannot be used.
    #[error("drug table {path}: {reason}")]
    Drugs {
        /// The table.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A drug whose SMILES does not parse.
    #[error("drug {name:?} (MoA {moa:?}): {source}")]
    Molecule {
        /// The drug.
        name: String,
        /// Its MoA.
        moa: String,
        /// Why the SMILES was refused.
        source: molclip_chem::ChemError,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An output another process is writing.
    #[error(transparent)]
    Lock(#[from] molclip_core::LockError),
    /// A frame that cannot be encoded.
    #[error("{path}: cannot encode image: {reason}")]
    Encode {
        /// The frame's file.
        path: PathBuf,
        /// The encoder's message.
        reason: String,
    },
}

impl From<molclip_core::IoError> for SimError {
    fn from(e: molclip_core::IoError) -> Self {
        Self::Io { path: e.path, source: e.source }
    }
}

impl SimError {
    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// The error with a path under `from` named as under `to`: files written in a staging
    /// folder are named where the user will find them.
    pub(crate) fn moved(self, from: &std::path::Path, to: &std::path::Path) -> Self {
        let rename = |path: PathBuf| molclip_core::published_path(path, from, to);
        match self {
            Self::Io { path, source } => Self::Io { path: rename(path), source },
            Self::Encode { path, reason } => Self::Encode { path: rename(path), reason },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_a_staging_folder_name_the_output() {
        let e = SimError::io("/d/.out.partial-7/l1/a.png")(std::io::Error::other("disk full"));
        let moved = e.moved(std::path::Path::new("/d/.out.partial-7"), std::path::Path::new("/d/out"));
        assert_eq!(moved.to_string(), "/d/out/l1/a.png: disk full");
        let elsewhere = SimError::io("/e/f")(std::io::Error::other("x")).moved("/d".as_ref(), "/o".as_ref());
        assert_eq!(elsewhere.to_string(), "/e/f: x");
    }
}
