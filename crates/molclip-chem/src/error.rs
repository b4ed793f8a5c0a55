use thiserror::Error;

/// Why a SMILES string could not become a molecule, with the character
/// position (0-based, in characters of the input) wherever one is known.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChemError {
    /// An empty string.
    #[error("empty SMILES: expected at least one atom")]
    Empty,
    /// Not SMILES syntax.
    #[error("invalid SMILES {} at character {position}: {reason}", shown(smiles))]
    Syntax {
        /// The input.
        smiles: String,
        /// Where it went wrong (0-based character).
        position: usize,
        /// What was expected.
        reason: String,
    },
    /// Valid syntax, but not a molecule RDKit would accept (valence, aromaticity).
    #[error("SMILES {} cannot be sanitised{}: {reason}", shown(smiles), position.map(|p| format!(" (atom at character {p})")).unwrap_or_default())]
    Sanitization {
        /// The input.
        smiles: String,
        /// The offending atom's character, when known.
        position: Option<usize>,
        /// Why.
        reason: String,
    },
    /// A feature molclip does not support.
    #[error("SMILES {}: {reason}", shown(smiles))]
    Unsupported {
        /// The input.
        smiles: String,
        /// What is not supported.
        reason: String,
    },
    /// Larger than the caps ([`crate::MAX_SMILES_CHARS`], [`crate::MAX_HEAVY_ATOMS`]),
    /// refused before parsing.
    #[error("SMILES {} is too large: {reason}", shown(smiles))]
    TooLarge {
        /// The input.
        smiles: String,
        /// Which cap, and by how much.
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

/// How an error quotes a SMILES: whole up to 80 characters, else its start and its length,
/// so that a 200k-atom input does not flood the terminal.
fn shown(smiles: &str) -> String {
    const KEEP: usize = 60;
    let chars = smiles.chars().count();
    if chars <= 80 {
        format!("{smiles:?}")
    } else {
        let head: String = smiles.chars().take(KEEP).collect();
        format!("{:?} ({chars} characters)", format!("{head}..."))
    }
}
