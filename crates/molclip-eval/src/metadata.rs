//! The metadata CSV beside an embedding file: one row per embedding row,
//! with columns `set` (`query`, `gallery`, `novel` or `train`), `replicate`,
//! `drug` and `moa` (empty outside the MoA task). Train rows are ignored; novel rows
//! are queries for naming the MoA of drugs never trained on.

use std::collections::HashMap;
use std::path::Path;

use molclip_core::Split;

use crate::error::EvalError;
use crate::npy::{Matrix, Values};
use crate::reid::Embeddings;

/// The MoA id of a row outside the MoA task (an empty `moa` in the metadata CSV: a drug
/// whose MoA is unknown, or one not chosen for the MoA task). Such rows take part in drug
/// identification only: they are neither queries nor gallery items of MoA recognition, and
/// they do not vote on a MoA.
pub const NO_MOA: u32 = u32::MAX;

/// Labels of a set of videos, as ids into shared name tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Each row's replicate id.
    pub replicate: Vec<u32>,
    /// Each row's drug id.
    pub drug: Vec<u32>,
    /// Each row's MoA id; [`NO_MOA`] outside the MoA task.
    pub moa: Vec<u32>,
}

impl Metadata {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.drug.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.drug.is_empty()
    }
    fn push(&mut self, replicate: u32, drug: u32, moa: u32) {
        self.replicate.push(replicate);
        self.drug.push(drug);
        self.moa.push(moa);
    }
}

/// Interns names to dense ids.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Names by id.
    pub names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Names {
    /// The id of `name`, given a new one if it has none.
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        id
    }
}

/// Embeddings split by role, with their labels and the name tables.
#[derive(Debug, Clone)]
pub struct EmbeddingSet {
    /// Query rows and their labels.
    pub query: (Embeddings, Metadata),
    /// Gallery rows and their labels.
    pub gallery: (Embeddings, Metadata),
    /// Novel rows and their labels.
    pub novel: (Embeddings, Metadata),
    /// Replicate names by id.
    pub replicates: Names,
    /// Drug names by id.
    pub drugs: Names,
    /// MoA names by id.
    pub moas: Names,
}

/// A feature matrix as the caller holds it: row-major `[rows, cols]`, float32 or float64,
/// borrowed (each row is read once, into the evaluator's normalised copy).
#[derive(Debug, Clone, Copy)]
pub enum Features<'a> {
    /// float32 values.
    F32(&'a [f32]),
    /// float64 values.
    F64(&'a [f64]),
}

impl Features<'_> {
    fn len(&self) -> usize {
        match self {
            Features::F32(v) => v.len(),
            Features::F64(v) => v.len(),
        }
    }

    /// Row `i` of width `cols`, widened into `buf` when it is float32.
    fn row<'b>(&'b self, i: usize, cols: usize, buf: &'b mut Vec<f64>) -> &'b [f64] {
        match self {
            Features::F64(v) => &v[i * cols..(i + 1) * cols],
            Features::F32(v) => {
                buf.clear();
                buf.extend(v[i * cols..(i + 1) * cols].iter().map(|&x| x as f64));
                buf
            }
        }
    }
}

/// The label columns of an embedding matrix, one entry per row: `set` (query, gallery,
/// novel or train), `replicate`, `drug` and `moa` (empty outside the MoA task).
#[derive(Debug, Clone, Copy)]
pub struct LabelColumns<'a, S: AsRef<str>> {
    /// Each row's role.
    pub set: &'a [S],
    /// Each row's replicate.
    pub replicate: &'a [S],
    /// Each row's drug.
    pub drug: &'a [S],
    /// Each row's MoA, empty outside the MoA task.
    pub moa: &'a [S],
}

impl EmbeddingSet {
    /// Pair an embedding matrix with its metadata CSV, checking every row.
    pub fn from_files(features: &Matrix, metadata: &Path) -> Result<Self, EvalError> {
        let err = |reason: String| EvalError::file(metadata, reason);
        let mut reader = csv::Reader::from_path(metadata).map_err(|e| err(e.to_string()))?;
        let headers: Vec<String> =
            reader.headers().map_err(|e| err(e.to_string()))?.iter().map(|h| h.trim().to_string()).collect();
        let col = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                err(format!(
                    "missing column `{name}` (expected set, replicate, drug, moa; found {})",
                    headers.join(", ")
                ))
            })
        };
        let cols = [col("set")?, col("replicate")?, col("drug")?, col("moa")?];
        let mut columns: [Vec<String>; 4] = Default::default();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| err(format!("line {}: {e}", i + 2)))?;
            for (column, &c) in columns.iter_mut().zip(&cols) {
                column.push(record.get(c).unwrap_or("").trim().to_string());
            }
        }
        let [set, replicate, drug, moa] = &columns;
        let labels = LabelColumns { set, replicate, drug, moa };
        // Rows are the file's lines (its header is line 1).
        let at = |row: Option<usize>, reason: String| match row {
            Some(i) => err(format!("line {}: {reason}", i + 2)),
            None => err(reason),
        };
        let values = match &features.data {
            Values::F32(v) => Features::F32(v),
            Values::F64(v) => Features::F64(v),
        };
        Self::build(values, features.cols, &labels, &at)
    }

    /// Pair a row-major `[rows, cols]` feature matrix with its label columns, checking every
    /// row; errors name the row (0-based) and what was expected.
    pub fn from_columns<S: AsRef<str>>(
        features: Features<'_>,
        cols: usize,
        labels: &LabelColumns<'_, S>,
    ) -> Result<Self, EvalError> {
        let at = |row: Option<usize>, reason: String| match row {
            Some(i) => EvalError::Input(format!("metadata row {i}: {reason}")),
            None => EvalError::Input(format!("metadata: {reason}")),
        };
        Self::build(features, cols, labels, &at)
    }

    /// Both constructors: `at` makes an error about a row (or the whole table).
    fn build<S: AsRef<str>>(
        features: Features<'_>,
        cols: usize,
        labels: &LabelColumns<'_, S>,
        at: &dyn Fn(Option<usize>, String) -> EvalError,
    ) -> Result<Self, EvalError> {
        let n = labels.set.len();
        for (name, len) in
            [("replicate", labels.replicate.len()), ("drug", labels.drug.len()), ("moa", labels.moa.len())]
        {
            if len != n {
                return Err(at(
                    None,
                    format!("{n} values in `set` but {len} in `{name}`: every column has one per row"),
                ));
            }
        }
        if cols == 0 || features.len() != n * cols {
            let rows = features.len().checked_div(cols).unwrap_or(0);
            return Err(at(
                None,
                format!(
                    "{n} metadata rows but {rows} embedding rows of {cols} values: they must match, in the same order"
                ),
            ));
        }
        let mut set = Self {
            query: (Embeddings::empty(cols), Metadata::default()),
            gallery: (Embeddings::empty(cols), Metadata::default()),
            novel: (Embeddings::empty(cols), Metadata::default()),
            replicates: Names::default(),
            drugs: Names::default(),
            moas: Names::default(),
        };
        let mut buf = Vec::with_capacity(cols);
        for i in 0..n {
            let (role, rep, drug, moa) = (
                labels.set[i].as_ref().trim(),
                labels.replicate[i].as_ref().trim(),
                labels.drug[i].as_ref().trim(),
                labels.moa[i].as_ref().trim(),
            );
            let split = Split::parse_among(role, &Split::LABELLED).map_err(|e| at(Some(i), e.to_string()))?;
            if split == Split::Train {
                continue;
            }
            if drug.is_empty() {
                return Err(at(Some(i), "empty drug".into()));
            }
            let moa = if moa.is_empty() { NO_MOA } else { set.moas.id(moa) };
            let ids = (set.replicates.id(rep), set.drugs.id(drug), moa);
            let (emb, meta) = match split {
                Split::Query => &mut set.query,
                Split::Gallery => &mut set.gallery,
                _ => &mut set.novel,
            };
            emb.push_row(features.row(i, cols, &mut buf))
                .map_err(|reason| at(Some(i), format!("embedding row {i}: {reason}")))?;
            meta.push(ids.0, ids.1, ids.2);
        }
        if set.query.1.is_empty() {
            return Err(at(None, "no query rows (set = query)".into()));
        }
        if set.gallery.1.is_empty() {
            return Err(at(None, "no gallery rows (set = gallery)".into()));
        }
        Ok(set)
    }
}
