//! The metadata CSV beside an embedding file: one row per embedding row,
//! with columns `set` (`query`, `gallery`, `novel` or `train`), `replicate`,
//! `drug` and `moa` (empty outside the MoA task). Train rows are ignored; novel rows
//! are queries for naming the MoA of drugs never trained on.

use std::collections::HashMap;
use std::path::Path;

use molclip_core::Split;

use crate::error::EvalError;
use crate::npy::Matrix;
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
        let (c_set, c_rep, c_drug, c_moa) = (col("set")?, col("replicate")?, col("drug")?, col("moa")?);
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| err(format!("line {}: {e}", i + 2)))?;
            let get = |c: usize| record.get(c).unwrap_or("").trim().to_string();
            rows.push((get(c_set), get(c_rep), get(c_drug), get(c_moa)));
        }
        if rows.len() != features.rows {
            return Err(err(format!(
                "{} metadata rows but {} embedding rows: they must match, in the same order",
                rows.len(),
                features.rows
            )));
        }
        let mut set = Self {
            query: (Embeddings::empty(features.cols), Metadata::default()),
            gallery: (Embeddings::empty(features.cols), Metadata::default()),
            novel: (Embeddings::empty(features.cols), Metadata::default()),
            replicates: Names::default(),
            drugs: Names::default(),
            moas: Names::default(),
        };
        for (i, (role, rep, drug, moa)) in rows.iter().enumerate() {
            let line = i + 2;
            let split = Split::parse_among(role, &Split::LABELLED).map_err(|e| err(format!("line {line}: {e}")))?;
            if split == Split::Train {
                continue;
            }
            if drug.is_empty() {
                return Err(err(format!("line {line}: empty drug")));
            }
            let moa = if moa.is_empty() { NO_MOA } else { set.moas.id(moa) };
            let ids = (set.replicates.id(rep), set.drugs.id(drug), moa);
            let (emb, meta) = match split {
                Split::Query => &mut set.query,
                Split::Gallery => &mut set.gallery,
                _ => &mut set.novel,
            };
            emb.push_row(&features.data[i * features.cols..(i + 1) * features.cols])
                .map_err(|reason| EvalError::Input(format!("embedding row {i} (metadata line {line}): {reason}")))?;
            meta.push(ids.0, ids.1, ids.2);
        }
        if set.query.1.is_empty() {
            return Err(err("no query rows (set = query)".into()));
        }
        if set.gallery.1.is_empty() {
            return Err(err("no gallery rows (set = gallery)".into()));
        }
        Ok(set)
    }
}
