//! Re-identification evaluation, exactly as MitoReID scores it
//! (docs/method.md section 4), for both tasks: drug identification (identity =
//! drug) and MoA recognition (identity = MoA).
//!
//! For each query the gallery is ranked by `1 - cosine similarity`
//! (ascending, ties in gallery order), gallery items of the same replicate
//! *and* the same drug as the query are removed, and queries left without a
//! true match are skipped. AP is the mean precision at each true match; CMC
//! rank-k is the share of queries whose first true match is within the top k.
//!
//! The N x N distance matrix is never materialised or sorted: similarities
//! come in blocks of queries from a matrix product, and each query's ranks
//! are counted (how many gallery items outrank each true match), which gives
//! the same numbers as the full stable sort.

mod error;
pub mod metadata;
pub mod novel;
pub mod npy;
pub mod reid;
pub mod set;
pub mod synthetic;

pub use error::EvalError;
pub use metadata::{EmbeddingSet, Features, LabelColumns, Metadata, NO_MOA};
pub use novel::{novel_moa_votes, novel_retrieval, query_moa_votes, NovelReport};
pub use reid::{evaluate, evaluate_profiled, Embeddings, Evaluation, Profile, RowError, TaskMetrics, DEFAULT_MAX_RANK};
pub use set::{NamedPrediction, NovelSection, SetEvaluation};
