use thiserror::Error;

/// Why a SMILES string could not become a molecule, with the character
/// position (0-based, in characters of the input) wherever one is known.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChemError {
    #[error("empty SMILES: expected at least one atom")]
    Empty,
    #[error("invalid SMILES {smiles:?} at character {position}: {reason}")]
    Syntax {
        smiles: String,
        position: usize,
        reason: String,
    },
    #[error("SMILES {smiles:?} cannot be sanitised{}: {reason}", position.map(|p| format!(" (atom at character {p})")).unwrap_or_default())]
    Sanitization {
        smiles: String,
        position: Option<usize>,
        reason: String,
    },
    #[error("SMILES {smiles:?}: {reason}")]
    Unsupported { smiles: String, reason: String },
    #[error("fingerprint: {0}")]
    Fingerprint(String),
    #[error("{path}: {reason}")]
    Table { path: String, reason: String },
}
