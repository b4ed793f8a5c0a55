//! `molclip chem featurize`: a SMILES table in, one JSON record per row out,
//! in the schema of `rdkit_oracle.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::ChemError;
use crate::fingerprint::FingerprintConfig;
use crate::graph::{AtomFeatures, BondFeatures};
use crate::molecule::{FragmentPolicy, Molecule};

/// One data row of a SMILES table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmilesRow {
    /// 1-based line number in the file, for error messages.
    pub line: usize,
    /// The `name` column, or `row<line>` when the table has none.
    pub name: String,
    /// The SMILES.
    pub smiles: String,
    /// Every column of the row by header name (including `name` and `smiles`).
    pub fields: BTreeMap<String, String>,
}

/// Read a TSV or CSV table with a `smiles` column (and `name`, if present).
/// The delimiter is a tab when the header has one, a comma otherwise; lines
/// starting with `#` are comments.
pub fn read_smiles_table(path: &Path) -> Result<Vec<SmilesRow>, ChemError> {
    let err = |reason: String| ChemError::Table { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count();
        err(format!("line {line}: not UTF-8 text (byte {valid}); save the table as UTF-8"))
    })?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with('#') && !l.trim().is_empty());
    let (_, header_line) =
        lines.next().ok_or_else(|| err("no header row: expected a table with a `smiles` column".into()))?;
    let delimiter = if header_line.contains('\t') { '\t' } else { ',' };
    let split = |line: &str| -> Result<Vec<String>, String> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter as u8)
            .has_headers(false)
            .quoting(delimiter == ',')
            .from_reader(line.as_bytes());
        match reader.records().next() {
            Some(Ok(r)) => Ok(r.iter().map(|s| s.trim().to_string()).collect()),
            Some(Err(e)) => Err(e.to_string()),
            None => Ok(Vec::new()),
        }
    };
    let header: Vec<String> = split(header_line).map_err(err)?.into_iter().map(|h| h.to_lowercase()).collect();
    let smiles_col = header
        .iter()
        .position(|h| h == "smiles")
        .ok_or_else(|| err(format!("no `smiles` column in the header (found: {})", header.join(", "))))?;
    let name_col = header.iter().position(|h| h == "name");
    let mut rows = Vec::new();
    for (idx, line) in lines {
        let line_no = idx + 1;
        let cells = split(line).map_err(|e| err(format!("line {line_no}: {e}")))?;
        if cells.len() != header.len() {
            return Err(err(format!(
                "line {line_no}: {} fields, expected {} as in the header",
                cells.len(),
                header.len()
            )));
        }
        let name = name_col.map(|c| cells[c].clone()).unwrap_or_else(|| format!("row{line_no}"));
        rows.push(SmilesRow {
            line: line_no,
            name,
            smiles: cells[smiles_col].clone(),
            fields: header.iter().cloned().zip(cells).collect(),
        });
    }
    Ok(rows)
}

/// Options of `chem featurize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeaturizeOptions {
    /// The Morgan fingerprint's radius and width.
    pub fingerprint: FingerprintConfig,
    /// Which fragments of a mixture are featurised.
    pub fragments: FragmentPolicy,
}

/// One output line: the featurised molecule, or why it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FeatureRecord {
    /// A molecule, featurised.
    Ok {
        /// The row's name.
        name: String,
        /// The SMILES as given.
        smiles: String,
        /// RDKit-style canonical SMILES of the featurised fragment(s).
        canonical: String,
        /// Heavy atoms.
        num_atoms: usize,
        /// Bonds.
        num_bonds: usize,
        /// Fragments in the input, before the fragment policy.
        num_fragments: usize,
        /// `largest` or `whole`.
        fragment_policy: &'static str,
        /// Per-atom features (OGB order).
        atoms: Vec<AtomFeatures>,
        /// Per-bond features (OGB order).
        bonds: Vec<BondFeatures>,
        /// Serialised as `morgan{radius}_{n_bits}` (see [`FeatureRecord::to_json`]).
        #[serde(skip)]
        morgan_key: String,
        /// The fingerprint's on-bits.
        #[serde(skip)]
        morgan: Vec<u32>,
    },
    /// A row that failed.
    Err {
        /// The row's name.
        name: String,
        /// The SMILES as given.
        smiles: String,
        /// Why it failed.
        error: String,
    },
}

impl FeatureRecord {
    /// Whether this row failed.
    pub fn is_err(&self) -> bool {
        matches!(self, Self::Err { .. })
    }

    /// One JSON object; the fingerprint's key names its radius and width
    /// (`morgan2_2048` by default, as in the oracle).
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("records serialise");
        if let Self::Ok { morgan_key, morgan, .. } = self {
            value[morgan_key.as_str()] = serde_json::json!(morgan);
        }
        value
    }
}

/// Featurise one SMILES; failures become an error record, never a panic.
pub fn featurize_smiles(name: &str, smiles: &str, options: &FeaturizeOptions) -> FeatureRecord {
    let result =
        Molecule::parse_with(smiles, options.fragments).and_then(|mol| Ok((mol.morgan(&options.fingerprint)?, mol)));
    match result {
        Ok((fp, mol)) => FeatureRecord::Ok {
            name: name.into(),
            smiles: smiles.into(),
            canonical: mol.canonical_smiles().into(),
            num_atoms: mol.graph().atoms.len(),
            num_bonds: mol.graph().bonds.len(),
            num_fragments: mol.input_fragments(),
            fragment_policy: mol.fragment_policy().name(),
            atoms: mol.graph().atoms.clone(),
            bonds: mol.graph().bonds.clone(),
            morgan_key: format!("morgan{}_{}", options.fingerprint.radius, options.fingerprint.n_bits),
            morgan: fp.on_bits(),
        },
        Err(e) => FeatureRecord::Err { name: name.into(), smiles: smiles.into(), error: e.to_string() },
    }
}

/// Featurise many rows in parallel, keeping their order.
pub fn featurize_rows(rows: &[SmilesRow], options: &FeaturizeOptions) -> Vec<FeatureRecord> {
    rows.par_iter().map(|r| featurize_smiles(&r.name, &r.smiles, options)).collect()
}

/// Rows featurised at a time by [`featurize_to`]: what bounds its memory.
const CHUNK: usize = 1024;

/// Featurises `rows` in parallel, a chunk at a time, writing one JSON line per row to `out`
/// in row order; `failed` sees each row that failed. Memory is bounded by the chunk, not by
/// the table. Returns the number of failed rows.
pub fn featurize_to(
    rows: &[SmilesRow],
    options: &FeaturizeOptions,
    out: &mut dyn std::io::Write,
    failed: &mut dyn FnMut(&SmilesRow, &str),
) -> std::io::Result<usize> {
    let mut failures = 0;
    for chunk in rows.chunks(CHUNK) {
        let lines: Vec<(String, Option<String>)> = chunk
            .par_iter()
            .map(|r| {
                let record = featurize_smiles(&r.name, &r.smiles, options);
                let error = match &record {
                    FeatureRecord::Err { error, .. } => Some(error.clone()),
                    FeatureRecord::Ok { .. } => None,
                };
                (record.to_json().to_string(), error)
            })
            .collect();
        for (row, (line, error)) in chunk.iter().zip(lines) {
            if let Some(error) = error {
                failures += 1;
                failed(row, &error);
            }
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(failures)
}
