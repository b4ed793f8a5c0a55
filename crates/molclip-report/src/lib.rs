//! The report of one or several molclip runs: a self-contained HTML page with the results
//! table, training and CMC curves, the embedding map, the MoA confusion matrix, the
//! temporal attention and a montage of example videos. Plain data in, HTML out: this
//! crate knows nothing of models, so the CLI gathers the numbers and hands them over.

/// What can go wrong drawing or writing a report.
pub mod error;
mod html;
pub mod plots;
pub mod tsne;

pub use error::ReportError;
pub use html::render;
pub use tsne::{tsne, TsneConfig};

/// mAP and CMC of one task, in percent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskResult {
    /// Mean average precision.
    pub map: f64,
    /// CMC at rank 1.
    pub rank1: f64,
    /// CMC at rank 5.
    pub rank5: f64,
    /// CMC at rank 10.
    pub rank10: f64,
    /// CMC at ranks 1, 2, ...
    pub cmc: Vec<f64>,
}

/// One step of a training log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CurvePoint {
    /// Global step.
    pub step: f64,
    /// Total loss.
    pub loss: f64,
    /// Each weighted loss term (clip, triplet, ce, centre).
    pub terms: Vec<(String, f64)>,
    /// Validation mAP (drug, MoA) after this step, when validated.
    pub validation: Option<(f64, f64)>,
}

/// Embeddings placed on a plane: videos (and, for MolCLIP, molecules), by MoA.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingMap {
    /// What the points are embeddings of (the space), for the caption.
    pub space: String,
    /// The points, in map coordinates.
    pub points: Vec<plots::MapPoint>,
}

/// Rows: true MoA; columns: predicted MoA; counts of query videos.
#[derive(Clone, Debug, Default)]
pub struct Confusion {
    /// Counts, `[true][predicted]`.
    pub counts: Vec<Vec<usize>>,
    /// How the prediction was made, for the caption.
    pub method: String,
}

/// Mean temporal pooling weight per MoA (rows) and encoder time step (columns).
#[derive(Clone, Debug, Default)]
pub struct Attention {
    /// The frames each time step covers, e.g. `1-4`.
    pub steps: Vec<String>,
    /// `[MoA][time step]`.
    pub weights: Vec<Vec<f64>>,
}

/// How the held-out (novel) drugs' MoAs were named.
#[derive(Clone, Debug, Default)]
pub struct NovelResult {
    /// Novel drugs.
    pub drugs: usize,
    /// Percent of novel drugs whose videos' nearest gallery videos vote for the right MoA
    /// (`None` when no novel drug's MoA is known).
    pub video_vote: Option<f64>,
    /// Zero-shot from the structure alone (MolCLIP): top-1 and top-3 percent, and chance.
    pub zero_shot: Option<[f64; 4]>,
}

/// Everything the report shows about one run.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// The run's name (its folder) and kind (`molclip`, `video-only`, `single-frame`).
    pub name: String,
    /// What it trained (`molclip`, `video-only`, `single-frame`).
    pub kind: String,
    /// Drug identification.
    pub drug: TaskResult,
    /// MoA recognition.
    pub moa: TaskResult,
    /// The training log.
    pub curves: Vec<CurvePoint>,
    /// The embedding map.
    pub map: Option<EmbeddingMap>,
    /// The query videos' MoA confusion.
    pub confusion: Option<Confusion>,
    /// Temporal attention per MoA.
    pub attention: Option<Attention>,
    /// The novel drugs.
    pub novel: Option<NovelResult>,
    /// Training time.
    pub train_seconds: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The page's title.
    pub title: String,
    /// Lines about the dataset and the settings, shown under the title.
    pub summary: Vec<String>,
    /// MoA names, indexed by the categories of maps, confusion and attention rows.
    pub moas: Vec<String>,
    /// The runs, in table order.
    pub runs: Vec<RunResult>,
    /// A PNG montage of example videos per MoA.
    pub montage_png: Option<Vec<u8>>,
}

/// Writes the report atomically (a temporary file beside it, then a rename).
pub fn write(report: &Report, path: &std::path::Path) -> Result<(), ReportError> {
    let html = render(report)?;
    Ok(molclip_core::write_atomic(path, html.as_bytes())?)
}
