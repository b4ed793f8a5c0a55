//! Molecules for MolCLIP's molecule branch.
//!
//! SMILES in, an RDKit-identical molecular graph and Morgan fingerprint out.
//! Parsing and perception are `chematic` (a pure-Rust port of RDKit's
//! semantics); this crate adds what a training pipeline needs around it:
//! errors that point at a character, salt stripping, the OGB-style integer
//! encoding of atoms and bonds, and the `featurize` record format shared with
//! `../shared/chem/rdkit_oracle.jsonl`.
//!
//! ```
//! use molclip_chem::{Molecule, FingerprintConfig};
//! let aspirin = Molecule::parse("CC(=O)Oc1ccccc1C(=O)O").unwrap();
//! assert_eq!(aspirin.canonical_smiles(), "CC(=O)Oc1ccccc1C(=O)O");
//! assert_eq!(aspirin.graph().atoms.len(), 13);
//! let fp = aspirin.morgan(&FingerprintConfig::default()).unwrap();
//! assert_eq!(fp.dense().len(), 2048);
//! ```

mod error;
mod featurize;
mod fingerprint;
mod graph;
mod molecule;

pub use error::ChemError;
pub use featurize::{
    featurize_rows, featurize_smiles, featurize_to, read_smiles_table, FeatureRecord, FeaturizeOptions, SmilesRow,
};
pub use fingerprint::{Fingerprint, FingerprintConfig};
pub use graph::{
    AtomFeatures, BondFeatures, BondStereo, BondType, ChiralTag, Graph, Hybridization, ATOM_FEATURE_DIMS,
    BOND_FEATURE_DIMS,
};
pub use molecule::{FragmentPolicy, Molecule, MAX_HEAVY_ATOMS, MAX_SMILES_CHARS};
