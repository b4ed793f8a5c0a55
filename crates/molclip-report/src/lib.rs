//! The report of one or several molclip runs: a self-contained HTML page with the results
//! table, training and CMC curves, the embedding map, the MoA confusion matrix, the
//! temporal attention and a montage of example videos. Plain data in, HTML out: this
//! crate knows nothing of models, so the CLI gathers the numbers and hands them over.

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
    pub map: f64,
    pub rank1: f64,
    pub rank5: f64,
    pub rank10: f64,
    /// CMC at ranks 1, 2, ...
    pub cmc: Vec<f64>,
}

/// One step of a training log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CurvePoint {
    pub step: f64,
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
    pub points: Vec<plots::MapPoint>,
}

/// Rows: true MoA; columns: predicted MoA; counts of query videos.
#[derive(Clone, Debug, Default)]
pub struct Confusion {
    pub counts: Vec<Vec<usize>>,
    /// How the prediction was made, for the caption.
    pub method: String,
}

/// Mean temporal pooling weight per MoA (rows) and encoder time step (columns).
#[derive(Clone, Debug, Default)]
pub struct Attention {
    /// The frames each time step covers, e.g. `1-4`.
    pub steps: Vec<String>,
    pub weights: Vec<Vec<f64>>,
}

/// How the held-out (novel) drugs' MoAs were named.
#[derive(Clone, Debug, Default)]
pub struct NovelResult {
    pub drugs: usize,
    /// Percent of novel drugs whose videos' nearest gallery videos vote for the right MoA.
    pub video_vote: f64,
    /// Zero-shot from the structure alone (MolCLIP): top-1 and top-3 percent, and chance.
    pub zero_shot: Option<[f64; 4]>,
}

/// Everything the report shows about one run.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// The run's name (its folder) and kind (`molclip`, `video-only`, `single-frame`).
    pub name: String,
    pub kind: String,
    pub drug: TaskResult,
    pub moa: TaskResult,
    pub curves: Vec<CurvePoint>,
    pub map: Option<EmbeddingMap>,
    pub confusion: Option<Confusion>,
    pub attention: Option<Attention>,
    pub novel: Option<NovelResult>,
    pub train_seconds: Option<f64>,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub title: String,
    /// Lines about the dataset and the settings, shown under the title.
    pub summary: Vec<String>,
    /// MoA names, indexed by the categories of maps, confusion and attention rows.
    pub moas: Vec<String>,
    pub runs: Vec<RunResult>,
    /// A PNG montage of example videos per MoA.
    pub montage_png: Option<Vec<u8>>,
}

/// Writes the report atomically (write, then rename).
pub fn write(report: &Report, path: &std::path::Path) -> Result<(), ReportError> {
    let html = render(report)?;
    let tmp = path.with_extension("html.tmp");
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source| ReportError::Io { path: p, source }
    };
    std::fs::write(&tmp, html).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
