use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("invalid simulation config: {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("unknown preset {0:?}: expected one of tiny, demo, bench, mito")]
    UnknownPreset(String),
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("drug table {path}: {reason}")]
    Drugs { path: PathBuf, reason: String },
    #[error("drug {name:?} (MoA {moa:?}): {source}")]
    Molecule { name: String, moa: String, source: molclip_chem::ChemError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot encode image: {reason}")]
    Encode { path: PathBuf, reason: String },
}

impl SimError {
    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
