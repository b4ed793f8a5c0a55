//! The drug table of a dataset: `annotation.csv` with at least `index`
//! (the drug folder name), `drug_id` and `moa_id`; `name`, `smiles` and
//! `moa` when present.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::DataError;

/// One drug's row of the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrugRecord {
    /// The drug folder's name.
    pub index: String,
    /// The drug's dense id.
    pub drug_id: usize,
    /// Its MoA's dense id.
    pub moa_id: usize,
    /// The drug's name, when given.
    pub name: Option<String>,
    /// Its SMILES, when given.
    pub smiles: Option<String>,
    /// Its MoA's name, when given.
    pub moa: Option<String>,
}

/// Drugs by folder name.
#[derive(Debug, Clone, Default)]
pub struct Annotation {
    /// Rows by `index`.
    pub drugs: BTreeMap<String, DrugRecord>,
}

/// The sheet MitoReID's `annotation.xlsx` keeps its drugs in.
pub const XLSX_SHEET: &str = "FDA-list";

impl Annotation {
    /// `annotation.csv` in `dir`, or else `annotation.xlsx` (sheet `FDA-list`).
    pub fn read_dir(dir: &Path) -> Result<Self, DataError> {
        let (csv, xlsx) = (dir.join("annotation.csv"), dir.join("annotation.xlsx"));
        if csv.exists() {
            Self::read_csv(&csv)
        } else if xlsx.exists() {
            Self::read_xlsx(&xlsx)
        } else {
            Err(DataError::invalid(&csv, "missing: every dataset needs annotation.csv (or annotation.xlsx, sheet FDA-list) with columns index, drug_id, moa_id"))
        }
    }

    /// `annotation.csv`: columns `index`, `drug_id`, `moa_id`, and optionally `name`, `smiles`, `moa`.
    pub fn read_csv(path: &Path) -> Result<Self, DataError> {
        let mut reader = csv::Reader::from_path(path).map_err(|e| DataError::invalid(path, e.to_string()))?;
        let headers: Vec<String> =
            reader.headers().map_err(|e| DataError::invalid(path, e.to_string()))?.iter().map(str::to_string).collect();
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| DataError::invalid(path, format!("line {}: {e}", i + 2)))?;
            rows.push(record.iter().map(str::to_string).collect());
        }
        Self::from_rows(path, &headers, rows)
    }

    /// MitoReID's spreadsheet form: sheet `FDA-list`, header in the first row.
    pub fn read_xlsx(path: &Path) -> Result<Self, DataError> {
        use calamine::Reader;
        let mut book = calamine::open_workbook_auto(path)
            .map_err(|e| DataError::invalid(path, format!("cannot open workbook: {e}")))?;
        let range = book.worksheet_range(XLSX_SHEET).map_err(|e| {
            DataError::invalid(
                path,
                format!("no sheet {XLSX_SHEET:?} ({e}); sheets: {}", book.sheet_names().join(", ")),
            )
        })?;
        let mut rows = range.rows().map(|r| r.iter().map(cell_text).collect::<Vec<String>>());
        let headers = rows.next().ok_or_else(|| DataError::invalid(path, format!("sheet {XLSX_SHEET:?} is empty")))?;
        Self::from_rows(path, &headers, rows.collect())
    }

    fn from_rows(path: &Path, headers: &[String], rows: Vec<Vec<String>>) -> Result<Self, DataError> {
        let headers: Vec<String> = headers.iter().map(|h| h.trim().to_lowercase()).collect();
        let col = |name: &str| headers.iter().position(|h| h == name);
        let need = |name: &str| {
            col(name).ok_or_else(|| {
                DataError::invalid(
                    path,
                    format!(
                        "no `{name}` column (expected at least index, drug_id, moa_id; found {})",
                        headers.join(", ")
                    ),
                )
            })
        };
        let (c_index, c_drug, c_moa) = (need("index")?, need("drug_id")?, need("moa_id")?);
        let (c_name, c_smiles, c_moa_name) = (col("name"), col("smiles"), col("moa"));
        let mut drugs = BTreeMap::new();
        for (row, record) in rows.iter().enumerate() {
            let line = row + 2;
            if record.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            let get = |c: usize| record.get(c).map_or("", |s| s.trim()).to_string();
            let int = |c: usize, what: &str| {
                get(c).parse::<usize>().map_err(|_| {
                    DataError::invalid(path, format!("line {line}: {what} {:?} is not a non-negative integer", get(c)))
                })
            };
            let opt = |c: Option<usize>| c.map(get).filter(|s| !s.is_empty());
            let rec = DrugRecord {
                index: get(c_index),
                drug_id: int(c_drug, "drug_id")?,
                moa_id: int(c_moa, "moa_id")?,
                name: opt(c_name),
                smiles: opt(c_smiles),
                moa: opt(c_moa_name),
            };
            if rec.index.is_empty() {
                return Err(DataError::invalid(path, format!("line {line}: empty index")));
            }
            if drugs.insert(rec.index.clone(), rec).is_some() {
                return Err(DataError::invalid(path, format!("line {line}: index {:?} appears twice", get(c_index))));
            }
        }
        Ok(Self { drugs })
    }

    /// The record for a drug folder; the part after `-` is a suffix (`12-a` is drug `12`).
    pub fn lookup(&self, folder: &str) -> Option<&DrugRecord> {
        self.drugs.get(folder).or_else(|| self.drugs.get(drug_key(folder)))
    }

    /// The SMILES of a drug folder's drug, when the annotation has one.
    pub fn smiles(&self, folder: &str) -> Option<&str> {
        self.lookup(folder).and_then(|r| r.smiles.as_deref()).filter(|s| !s.is_empty())
    }

    /// A drug folder's drug name from the annotation, or else the folder name.
    pub fn drug_name(&self, folder: &str) -> String {
        self.lookup(folder).and_then(|r| r.name.clone()).unwrap_or_else(|| folder.to_string())
    }

    /// MoA name for an id (falls back to the id itself).
    pub fn moa_name(&self, moa_id: usize) -> String {
        self.drugs
            .values()
            .find(|d| d.moa_id == moa_id)
            .and_then(|d| d.moa.clone())
            .unwrap_or_else(|| format!("moa {moa_id}"))
    }
}

/// Spreadsheet cells as text; whole-number floats lose their `.0` so ids match folder names.
fn cell_text(cell: &calamine::Data) -> String {
    match cell {
        calamine::Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        other => other.to_string(),
    }
}

/// The drug id part of a folder name: everything before the first `-`.
pub fn drug_key(folder: &str) -> &str {
    folder.split('-').next().unwrap_or(folder)
}
