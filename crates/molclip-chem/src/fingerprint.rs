//! Morgan / ECFP fingerprints, bit-identical to RDKit's Morgan generator
//! (`rdFingerprintGenerator.GetMorganGenerator(radius, fpSize)`).

use chematic_fp as fp;
use serde::{Deserialize, Serialize};

use crate::error::ChemError;

/// Radius and width of a Morgan fingerprint. Radius 0..=3 and widths
/// 128, 256, 512, 1024, 2048 are the combinations verified bit-exact against
/// RDKit; anything else is refused rather than silently approximated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FingerprintConfig {
    /// Neighbourhood radius (2 = ECFP4).
    pub radius: u32,
    /// Folded width in bits.
    pub n_bits: usize,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        Self { radius: 2, n_bits: 2048 }
    }
}

impl FingerprintConfig {
    /// Refuses a radius or width that is not verified against RDKit, naming it.
    pub fn validate(self) -> Result<(), ChemError> {
        self.to_chematic().map(|_| ())
    }

    fn to_chematic(self) -> Result<fp::RdkitMorganConfig, ChemError> {
        let radius = match self.radius {
            0 => fp::RdkitMorganRadius::R0,
            1 => fp::RdkitMorganRadius::R1,
            2 => fp::RdkitMorganRadius::R2,
            3 => fp::RdkitMorganRadius::R3,
            r => return Err(ChemError::Fingerprint(format!("radius {r} not supported: expected 0, 1, 2 or 3"))),
        };
        let fp_size = match self.n_bits {
            128 => fp::RdkitMorganFpSize::B128,
            256 => fp::RdkitMorganFpSize::B256,
            512 => fp::RdkitMorganFpSize::B512,
            1024 => fp::RdkitMorganFpSize::B1024,
            2048 => fp::RdkitMorganFpSize::B2048,
            n => {
                return Err(ChemError::Fingerprint(format!(
                    "{n} bits not supported: expected 128, 256, 512, 1024 or 2048"
                )))
            }
        };
        Ok(fp::RdkitMorganConfig { radius, fp_size, include_chirality: false })
    }
}

/// A folded Morgan fingerprint with per-bit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    n_bits: usize,
    /// Sorted (bit, count) pairs; every listed bit is on.
    counts: Vec<(u32, u32)>,
}

impl Fingerprint {
    pub(crate) fn morgan(
        mol: &chematic_smiles::parser::Molecule,
        config: &FingerprintConfig,
    ) -> Result<Self, ChemError> {
        let result = fp::rdkit_morgan_fingerprint(mol, &config.to_chematic()?)
            .map_err(|e| ChemError::Fingerprint(e.to_string()))?;
        let mut counts: Vec<(u32, u32)> = result.folded_counts.iter().map(|(&bit, &c)| (bit as u32, c)).collect();
        counts.sort_unstable();
        Ok(Self { n_bits: config.n_bits, counts })
    }

    /// The fingerprint's width.
    pub fn n_bits(&self) -> usize {
        self.n_bits
    }
    /// Indices of the bits that are on, ascending.
    pub fn on_bits(&self) -> Vec<u32> {
        self.counts.iter().map(|&(b, _)| b).collect()
    }
    /// 0/1 vector of length `n_bits`.
    pub fn dense(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.n_bits];
        for &(b, _) in &self.counts {
            v[b as usize] = 1.0;
        }
        v
    }
    /// Count fingerprint (`GetCountFingerprint`): how many environments hit each bit.
    pub fn dense_counts(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.n_bits];
        for &(b, c) in &self.counts {
            v[b as usize] = c as f32;
        }
        v
    }
    /// Tanimoto similarity: shared on-bits over all on-bits.
    pub fn tanimoto(&self, other: &Self) -> f64 {
        let (a, b) = (self.on_bits(), other.on_bits());
        let common = a.iter().filter(|x| b.binary_search(x).is_ok()).count();
        let union = a.len() + b.len() - common;
        if union == 0 {
            1.0
        } else {
            common as f64 / union as f64
        }
    }
}
