//! The protocol itself: distances in blocks, ranks by counting, AP and CMC.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::EvalError;
use crate::metadata::{Metadata, NO_MOA};

/// CMC curve length reported by default (rank-1 .. rank-50).
pub const DEFAULT_MAX_RANK: usize = 50;

/// Queries per block of the similarity product: bounds memory at
/// `BLOCK x gallery x 8` bytes whatever the dataset size.
const BLOCK: usize = 256;

/// L2-normalised feature rows, row-major, f64. Every row has `dim` values and unit norm:
/// the only way in is [`Embeddings::push_row`], which checks both.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    dim: usize,
    data: Vec<f64>,
}

/// Why a feature row cannot be used for cosine distances.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// A NaN or infinite value.
    #[error("value {value} at column {column} is not finite")]
    NotFinite {
        /// Its column.
        column: usize,
        /// The value.
        value: f64,
    },
    /// All zeros: no direction.
    #[error("zero vector: cosine distance is undefined")]
    Zero,
    /// A row of another width than the others.
    #[error("{found} values where rows have {dim}")]
    Width {
        /// The width of the rows so far.
        dim: usize,
        /// The width of this row.
        found: usize,
    },
}

impl Embeddings {
    /// No rows yet, each to have `dim` values.
    pub fn empty(dim: usize) -> Self {
        Self { dim, data: Vec::new() }
    }

    /// Normalise and append one row; NaN, Inf, all-zero rows and rows of another width are refused.
    pub fn push_row(&mut self, row: &[f64]) -> Result<(), RowError> {
        if row.len() != self.dim {
            return Err(RowError::Width { dim: self.dim, found: row.len() });
        }
        if let Some(k) = row.iter().position(|v| !v.is_finite()) {
            return Err(RowError::NotFinite { column: k, value: row[k] });
        }
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(RowError::Zero);
        }
        self.data.extend(row.iter().map(|v| v / norm));
        Ok(())
    }

    /// Build from row-major data, normalising each row; errors name the row.
    pub fn from_rows(dim: usize, data: &[f64]) -> Result<Self, EvalError> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(EvalError::Input(format!("{} values are not rows of width {dim}", data.len())));
        }
        let mut e = Self { dim, data: Vec::with_capacity(data.len()) };
        for (i, row) in data.chunks(dim).enumerate() {
            e.push_row(row).map_err(|reason| EvalError::Input(format!("row {i}: {reason}")))?;
        }
        Ok(e)
    }

    /// These rows followed by `other`'s, which must have the same width.
    pub fn concat(&self, other: &Embeddings) -> Result<Embeddings, EvalError> {
        check_widths(self, other, "first", "second")?;
        let mut data = Vec::with_capacity(self.data.len() + other.data.len());
        data.extend_from_slice(&self.data);
        data.extend_from_slice(&other.data);
        Ok(Self { dim: self.dim, data })
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `i`, unit norm.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Refuses two sets of features of different widths, naming them.
pub(crate) fn check_widths(a: &Embeddings, b: &Embeddings, a_name: &str, b_name: &str) -> Result<(), EvalError> {
    if a.dim != b.dim {
        return Err(EvalError::Input(format!("{a_name} features are {}-d, {b_name} features {}-d", a.dim, b.dim)));
    }
    Ok(())
}

/// Refuses labels that do not match their features row for row.
pub(crate) fn check_labels(e: &Embeddings, m: &Metadata, what: &str) -> Result<(), EvalError> {
    if e.len() != m.len() {
        return Err(EvalError::Input(format!("{} {what} labels for {} {what} rows", m.len(), e.len())));
    }
    Ok(())
}

/// Calls `f(first_query, distances)` for consecutive blocks of queries;
/// `distances` is row-major `[block, gallery]`, `1 - cosine similarity`. The widths are
/// checked here, since the product below reads `dim` values of every row of both.
pub fn for_each_distance_block(
    query: &Embeddings,
    gallery: &Embeddings,
    mut f: impl FnMut(usize, &[f64]),
) -> Result<(), EvalError> {
    check_widths(query, gallery, "query", "gallery")?;
    let (nq, ng, d) = (query.len(), gallery.len(), query.dim);
    let mut block = vec![0.0f64; BLOCK.min(nq.max(1)) * ng];
    let threads = rayon::current_num_threads();
    for start in (0..nq).step_by(BLOCK) {
        let rows = BLOCK.min(nq - start);
        let out = &mut block[..rows * ng];
        // out[rows x ng] = Q[start..start+rows] . G^T
        // SAFETY: `out` holds rows × ng values written with row stride ng; the query rows
        // start..start+rows and all ng gallery rows exist and have `d` values each (both
        // sets share one width, checked above, and every row was pushed with that width).
        unsafe {
            molclip_cpu::gemm_f64(
                molclip_cpu::isa(),
                rows,
                ng,
                d,
                out.as_mut_ptr(),
                1,
                ng as isize,
                false,
                query.row(start).as_ptr(),
                1,
                d as isize,
                gallery.data.as_ptr(),
                d as isize,
                1,
                0.0,
                1.0,
                if threads > 1 { molclip_cpu::Parallelism::Rayon(threads) } else { molclip_cpu::Parallelism::None },
            );
        }
        for v in out.iter_mut() {
            *v = 1.0 - *v;
        }
        f(start, out);
    }
    Ok(())
}

/// mAP and CMC of one task, in percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskMetrics {
    /// Mean average precision.
    #[serde(rename = "mAP")]
    pub map: f64,
    /// CMC at rank 1.
    pub rank1: f64,
    /// CMC at rank 5.
    pub rank5: f64,
    /// CMC at rank 10.
    pub rank10: f64,
    /// Queries that kept a true match.
    pub valid_queries: usize,
    /// CMC at ranks 1..=max_rank.
    #[serde(skip)]
    pub cmc: Vec<f64>,
    /// AP (0..1) per query; `None` for skipped queries.
    #[serde(skip)]
    pub ap: Vec<Option<f64>>,
}

/// Both tasks of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Drug identification.
    pub drug: TaskMetrics,
    /// MoA recognition.
    pub moa: TaskMetrics,
}

impl Evaluation {
    /// The task scored on `identity`.
    pub fn task(&self, identity: molclip_core::Identity) -> &TaskMetrics {
        match identity {
            molclip_core::Identity::Drug => &self.drug,
            molclip_core::Identity::Moa => &self.moa,
        }
    }
}

/// Gallery items by identity, so a query's true matches are found without
/// a scan.
struct InvertedIndex {
    by_drug: Vec<Vec<u32>>,
    by_moa: Vec<Vec<u32>>,
}

impl InvertedIndex {
    fn new(g: &Metadata) -> Self {
        let group = |ids: &[u32]| {
            let n = ids.iter().filter(|&&id| id != NO_MOA).max().map_or(0, |&m| m as usize + 1);
            let mut lists = vec![Vec::new(); n];
            for (j, &id) in ids.iter().enumerate().filter(|(_, &id)| id != NO_MOA) {
                lists[id as usize].push(j as u32);
            }
            lists
        };
        Self { by_drug: group(&g.drug), by_moa: group(&g.moa) }
    }
}

/// One task's state for one query: its sorted true matches and the
/// distance buckets that place a non-match among them.
#[derive(Default)]
struct TaskRanks {
    matches: Vec<(f64, usize)>,
    /// `first_match[b]`: number of matches in distance buckets below `b`.
    first_match: Vec<u32>,
    /// `ahead[p]`: kept non-matches ranked between match p-1 and match p.
    ahead: Vec<usize>,
    lo: f64,
    scale: f64,
    buckets: usize,
}

impl TaskRanks {
    /// Sort the matches and build a monotone bucketing of [lo, hi]:
    /// d1 <= d2 implies bucket(d1) <= bucket(d2).
    fn prepare(&mut self, lo: f64, hi: f64) {
        let m = self.matches.len();
        self.matches.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.buckets = (32 * m).clamp(64, 1 << 17);
        self.lo = lo;
        self.scale = if hi > lo { self.buckets as f64 / (hi - lo) } else { 0.0 };
        self.first_match.clear();
        self.first_match.resize(self.buckets + 1, 0);
        for k in 0..m {
            let b = self.bucket(self.matches[k].0);
            self.first_match[b + 1] += 1;
        }
        for b in 0..self.buckets {
            self.first_match[b + 1] += self.first_match[b];
        }
        self.ahead.clear();
        self.ahead.resize(m + 1, 0);
    }

    #[inline(always)]
    fn bucket(&self, d: f64) -> usize {
        (((d - self.lo) * self.scale) as usize).min(self.buckets - 1)
    }

    /// Count a kept non-match at gallery index `j`, distance `d`: O(1)
    /// unless its bucket also holds a match, where (distance, index)
    /// decides exactly, as the stable sort would.
    #[inline(always)]
    fn place(&mut self, d: f64, j: usize) {
        let b = self.bucket(d);
        let (from, to) = (self.first_match[b] as usize, self.first_match[b + 1] as usize);
        let p = if from == to {
            from
        } else {
            from + self.matches[from..to].partition_point(|&(md, mj)| md < d || (md == d && mj < j))
        };
        self.ahead[p] += 1;
    }

    /// AP and first-match rank (1-based), or `None` without matches.
    fn finish(&self) -> Option<(f64, usize)> {
        let m = self.matches.len();
        if m == 0 {
            return None;
        }
        let (mut before, mut ap, mut first) = (0usize, 0.0, 0);
        for (k, count) in self.ahead.iter().take(m).enumerate() {
            before += count;
            let rank = k + 1 + before;
            if k == 0 {
                first = rank;
            }
            ap += (k + 1) as f64 / rank as f64;
        }
        Some((ap / m as f64, first))
    }
}

/// Per-thread buffers, reused between queries.
#[derive(Default)]
struct Scratch {
    drug: TaskRanks,
    moa: TaskRanks,
}

/// One task's result for one query: its AP and the rank of its first true match, or
/// `None` when it has no true match left.
type QueryResult = Option<(f64, usize)>;

/// Drug and MoA results of query `i`, from its distances to the gallery.
///
/// Ranks are counted, not sorted: a task's sorted true matches split the
/// gallery into m + 1 intervals, and each kept non-match is dropped into its
/// interval, all in one pass over the gallery for both tasks.
fn rank_query(
    dist: &[f64],
    q: (u32, u32, u32),
    g: &Metadata,
    index: &InvertedIndex,
    s: &mut Scratch,
) -> (QueryResult, QueryResult) {
    let (q_rep, q_drug, q_moa) = q;
    let excluded = |j: usize| g.replicate[j] == q_rep && g.drug[j] == q_drug;
    let (lo, hi) = dist.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    let no_items: &[u32] = &[];
    for (task, list) in [
        (&mut s.drug, index.by_drug.get(q_drug as usize).map_or(no_items, Vec::as_slice)),
        (&mut s.moa, index.by_moa.get(q_moa as usize).map_or(no_items, Vec::as_slice)),
    ] {
        task.matches.clear();
        task.matches.extend(list.iter().map(|&j| j as usize).filter(|&j| !excluded(j)).map(|j| (dist[j], j)));
        task.prepare(lo, hi);
    }
    let (has_drug, has_moa) = (!s.drug.matches.is_empty(), !s.moa.matches.is_empty());
    for (j, &d) in dist.iter().enumerate() {
        if excluded(j) {
            continue;
        }
        if has_drug && g.drug[j] != q_drug {
            s.drug.place(d, j);
        }
        if has_moa && g.moa[j] != q_moa && g.moa[j] != NO_MOA {
            s.moa.place(d, j);
        }
    }
    (s.drug.finish(), s.moa.finish())
}

fn summarise(
    results: Vec<Option<(f64, usize)>>,
    max_rank: usize,
    task: &'static str,
) -> Result<TaskMetrics, EvalError> {
    let valid: Vec<(f64, usize)> = results.iter().flatten().copied().collect();
    if valid.is_empty() {
        return Err(EvalError::NoValidQuery { task });
    }
    let n = valid.len() as f64;
    let mut cmc = vec![0.0; max_rank];
    for &(_, first) in &valid {
        for c in cmc.iter_mut().skip(first - 1) {
            *c += 1.0;
        }
    }
    let cmc: Vec<f64> = cmc.iter().map(|c| 100.0 * c / n).collect();
    let at = |k: usize| cmc.get(k - 1).copied().unwrap_or(f64::NAN);
    Ok(TaskMetrics {
        map: 100.0 * valid.iter().map(|v| v.0).sum::<f64>() / n,
        rank1: at(1),
        rank5: at(5),
        rank10: at(10),
        valid_queries: valid.len(),
        ap: results.iter().map(|r| r.map(|v| v.0)).collect(),
        cmc,
    })
}

/// Evaluate drug identification and MoA recognition in one pass over the
/// distances. `max_rank` (at least 10) sets the CMC curve length.
pub fn evaluate(
    query: &Embeddings,
    q: &Metadata,
    gallery: &Embeddings,
    g: &Metadata,
    max_rank: usize,
) -> Result<Evaluation, EvalError> {
    if query.is_empty() || gallery.is_empty() {
        return Err(EvalError::Input(format!(
            "empty {}: need at least one query and one gallery video",
            if query.is_empty() { "query set" } else { "gallery" }
        )));
    }
    if q.len() != query.len() || g.len() != gallery.len() {
        return Err(EvalError::Input("metadata and embeddings differ in length".into()));
    }
    let max_rank = max_rank.max(10);
    let mut drug = vec![None; q.len()];
    let mut moa = vec![None; q.len()];
    let ng = gallery.len();
    let index = InvertedIndex::new(g);
    for_each_distance_block(query, gallery, |start, block| {
        let rows: Vec<(QueryResult, QueryResult)> = block
            .par_chunks(ng)
            .enumerate()
            .map_init(Scratch::default, |scratch, (r, dist)| {
                let i = start + r;
                rank_query(dist, (q.replicate[i], q.drug[i], q.moa[i]), g, &index, scratch)
            })
            .collect();
        for (r, (d, m)) in rows.into_iter().enumerate() {
            drug[start + r] = d;
            moa[start + r] = m;
        }
    })?;
    Ok(Evaluation { drug: summarise(drug, max_rank, "drug")?, moa: summarise(moa, max_rank, "MoA")? })
}
