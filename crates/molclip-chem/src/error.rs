use thiserror::Error;

/// Why a SMILES string could not become a molecule, with the character
/// position (0-based, in characters of the input) wherever one is known.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChemError {
    /// An empty string.
    #[error("empty SMILES: expected at least one atom")]
    Empty,
    /// Not SMILES syntax.
    #[error("invalid SMILES {smiles:?} at character {position}: {reason}")]
    Syntax {
        /// The input.
        smiles: String,
        /// Where it went wrong (0-based character).
        position: usize,
        /// What was expected.
        reason: String,
    },
    /// Valid syntax, but not a molecule RDKit would accept (valence, aromaticity).
    #[error("SMILES {smiles:?} cannot be sanitised{}: {reason}", position.map(|p| format!(" (atom at character {p})")).unwrap_or_default())]
    Sanitization {
        /// The input.
        smiles: String,
        /// The offending atom's character, when known.
        position: Option<usize>,
        /// Why.
        reason: String,
    },
    /// A feature molclip does not support.
    #[error("SMILES {smiles:?}: {reason}")]
    Unsupported {
        /// The input.
        smiles: String,
        /// What is not supported.
        reason: String,
    },
    /// A fingerprint setting that cannot work (radius, width).
    #[error("fingerprint: {0}")]
    Fingerprint(String),
    /// A SMILES table that cannot be read.
    #[error("{path}: {reason}")]
    Table {
        /// The table.
        path: String,
        /// What is wrong, and where.
        reason: String,
    },
}
