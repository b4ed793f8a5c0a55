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
    for_each_similarity_block(query, gallery, |start, block| {
        for v in block.iter_mut() {
            *v = distance(*v);
        }
        f(start, block)
    })
}

/// The cosine distance of a cosine similarity; every distance of the protocol is this.
#[inline(always)]
fn distance(similarity: f64) -> f64 {
    1.0 - similarity
}

/// As [`for_each_distance_block`], with the cosine similarities themselves: evaluation takes
/// their [`distance`] as it reads them, instead of a pass over the block to write them.
fn for_each_similarity_block(
    query: &Embeddings,
    gallery: &Embeddings,
    mut f: impl FnMut(usize, &mut [f64]),
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

/// Distances are bucketed this many at a time, in a loop the compiler vectorises.
const CHUNK: usize = 256;

/// Copies of each task's `ahead` counts: consecutive non-matches falling in one interval
/// add to different copies instead of waiting on each other's increment.
const LANES: usize = 4;

/// One task's state for one query: its sorted true matches and the
/// distance buckets that place a non-match among them.
struct TaskRanks {
    /// The true matches (distance, gallery index), sorted in [`TaskRanks::prepare`].
    matches: Vec<(f64, usize)>,
    /// Where the sort puts them.
    sorted: Vec<(f64, usize)>,
    /// `slot[b]`: number of matches in buckets below `b`, with [`HOLDS_MATCH`] set when
    /// bucket `b` holds a match itself.
    slot: Vec<u32>,
    /// `ahead[p * LANES + lane]`: kept non-matches ranked between match p-1 and match p,
    /// counted in [`LANES`] copies.
    ahead: Vec<u32>,
    lo: f64,
    scale: f64,
    top: f64,
    /// The bucket of items outside the task (matches, excluded, other labels): its slot
    /// counts them past the last interval, in `ahead[(m + 1) * LANES + lane]`, never read.
    skip: i32,
    /// The buckets of the chunk of distances being placed.
    buckets: [i32; CHUNK],
}

impl Default for TaskRanks {
    fn default() -> Self {
        Self {
            matches: Vec::new(),
            sorted: Vec::new(),
            slot: Vec::new(),
            ahead: Vec::new(),
            lo: 0.0,
            scale: 0.0,
            top: 0.0,
            skip: 0,
            buckets: [0; CHUNK],
        }
    }
}

/// Bucket `floor((d - lo) scale + 1)`, clamped to [0, top]: monotone in `d`.
#[inline(always)]
fn bucket(d: f64, lo: f64, scale: f64, top: f64) -> i32 {
    // `max` returns 0 for NaN as well; both bounds keep the order of distances.
    let x = ((d - lo) * scale + 1.0).max(0.0).min(top);
    // SAFETY: x is a number in [0, top], and top <= 2^16 + 3 fits an i32.
    unsafe { x.to_int_unchecked::<i32>() }
}

/// The flag of a bucket that holds a match in [`TaskRanks::slot`].
const HOLDS_MATCH: u32 = 1 << 31;

impl TaskRanks {
    /// Bucket distances monotonically (d1 <= d2 implies bucket(d1) <= bucket(d2)) so that
    /// the matches' range [lo, hi] gets `16 m` buckets, everything below it bucket 0 and
    /// everything well above it the top one; sort the matches by (distance, index).
    fn prepare(&mut self) {
        let m = self.matches.len();
        self.ahead.clear();
        self.ahead.resize(LANES * (m + 2), 0);
        if m == 0 {
            return;
        }
        let (lo, hi) =
            self.matches.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(d, _)| (lo.min(d), hi.max(d)));
        let inner = (16 * m).clamp(16, 1 << 16);
        let scale = inner as f64 / (hi - lo);
        let scale = if scale.is_finite() { scale } else { 0.0 };
        // hi lands in bucket inner + 1 at most (rounding aside); the top bucket holds no match.
        let top = inner + 3;
        (self.lo, self.scale, self.top, self.skip) = (lo, scale, top as f64, top as i32 + 1);
        // A counting sort by bucket: slot[b + 1] counts bucket b's matches, and the scan
        // makes slot[b] the count below b, where bucket b's matches go.
        self.slot.clear();
        self.slot.resize(top + 2, 0);
        let at = |d: f64| bucket(d, lo, scale, top as f64) as usize;
        for &(d, _) in &self.matches {
            self.slot[at(d) + 1] += 1;
        }
        let mut below = 0;
        for s in self.slot.iter_mut() {
            below += *s;
            *s = below;
        }
        self.sorted.clear();
        self.sorted.resize(m, (0.0, 0));
        for &(d, j) in &self.matches {
            let b = at(d);
            self.sorted[self.slot[b] as usize] = (d, j);
            self.slot[b] += 1;
        }
        // Each slot[b] moved on to the count below b + 1: shift them back.
        self.slot.copy_within(0..top + 1, 1);
        self.slot[0] = 0;
        // Buckets keep the order of distances, so only matches sharing a bucket can be out of
        // order: one insertion pass sorts them by (distance, index), as the stable sort ranks.
        for k in 1..m {
            let x = self.sorted[k];
            let mut i = k;
            while i > 0 && (self.sorted[i - 1].0, self.sorted[i - 1].1) > (x.0, x.1) {
                self.sorted[i] = self.sorted[i - 1];
                i -= 1;
            }
            self.sorted[i] = x;
        }
        std::mem::swap(&mut self.matches, &mut self.sorted);
        for &(d, _) in &self.matches {
            self.slot[at(d)] |= HOLDS_MATCH;
        }
        self.slot[top + 1] = m as u32 + 1;
    }

    /// Count the kept non-matches of a chunk of at most [`CHUNK`] distances, the first at
    /// gallery index `first`: `non_match[k]` says which are. A non-match is placed in O(1)
    /// unless its bucket also holds a match, where (distance, index) decides exactly, as the
    /// stable sort would.
    #[inline(always)]
    fn place_chunk(&mut self, dist: &[f64], non_match: &[bool], first: usize) {
        let (lo, scale, top, skip) = (self.lo, self.scale, self.top, self.skip);
        // Vectorised: every item gets its bucket, items outside the task the skipped one.
        for ((b, &d), &keep) in self.buckets.iter_mut().zip(dist).zip(non_match) {
            *b = if keep { bucket(d, lo, scale, top) } else { skip };
        }
        let (slot, matches, buckets) = (&self.slot[..], &self.matches[..], &self.buckets[..dist.len()]);
        let ahead = &mut self.ahead[..];
        // The interval of item `k` in bucket `b`.
        let interval = |k: usize, b: i32| {
            let s = slot[b as usize];
            if s & HOLDS_MATCH == 0 {
                s as usize
            } else {
                let (d, j) = (dist[k], first + k);
                let (from, to) = ((s & !HOLDS_MATCH) as usize, (slot[b as usize + 1] & !HOLDS_MATCH) as usize);
                from + matches[from..to].partition_point(|&(md, mj)| md < d || (md == d && mj < j))
            }
        };
        // Item k counts in lane k % LANES, unrolled so that each lane is a constant offset.
        let mut quads = buckets.chunks_exact(LANES);
        for (q, quad) in quads.by_ref().enumerate() {
            for (lane, &b) in quad.iter().enumerate() {
                ahead[interval(q * LANES + lane, b) * LANES + lane] += 1;
            }
        }
        let done = buckets.len() - quads.remainder().len();
        for (lane, &b) in quads.remainder().iter().enumerate() {
            ahead[interval(done + lane, b) * LANES + lane] += 1;
        }
    }

    /// AP and first-match rank (1-based), or `None` without matches.
    fn finish(&self) -> Option<(f64, usize)> {
        let m = self.matches.len();
        if m == 0 {
            return None;
        }
        let (mut before, mut ap, mut first) = (0usize, 0.0, 0);
        for k in 0..m {
            before += self.ahead[k * LANES..(k + 1) * LANES].iter().map(|&c| c as usize).sum::<usize>();
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
struct Scratch {
    drug: TaskRanks,
    moa: TaskRanks,
    /// The distances of the chunk being placed.
    dist: [f64; CHUNK],
    /// Which of its items are non-matches of each task.
    non_drug: [bool; CHUNK],
    non_moa: [bool; CHUNK],
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            drug: TaskRanks::default(),
            moa: TaskRanks::default(),
            dist: [0.0; CHUNK],
            non_drug: [false; CHUNK],
            non_moa: [false; CHUNK],
        }
    }
}

/// One task's result for one query: its AP and the rank of its first true match, or
/// `None` when it has no true match left.
type QueryResult = Option<(f64, usize)>;

/// Drug and MoA results of query `i`, from its distances to the gallery.
///
/// Ranks are counted, not sorted: a task's sorted true matches split the
/// gallery into m + 1 intervals, and each kept non-match is dropped into its
/// interval, in one pass over the gallery for both tasks, a chunk at a time.
#[inline(always)]
fn rank_query(
    sim: &[f64],
    q: (u32, u32, u32),
    g: &Metadata,
    index: &InvertedIndex,
    s: &mut Scratch,
) -> (QueryResult, QueryResult) {
    let (q_rep, q_drug, q_moa) = q;
    let excluded = |j: usize| g.replicate[j] == q_rep && g.drug[j] == q_drug;
    let no_items: &[u32] = &[];
    for (task, list) in [
        (&mut s.drug, index.by_drug.get(q_drug as usize).map_or(no_items, Vec::as_slice)),
        (&mut s.moa, index.by_moa.get(q_moa as usize).map_or(no_items, Vec::as_slice)),
    ] {
        task.matches.clear();
        task.matches.extend(list.iter().map(|&j| j as usize).filter(|&j| !excluded(j)).map(|j| (distance(sim[j]), j)));
        task.prepare();
    }
    let (has_drug, has_moa) = (!s.drug.matches.is_empty(), !s.moa.matches.is_empty());
    let labels = g.replicate.chunks(CHUNK).zip(g.drug.chunks(CHUNK)).zip(g.moa.chunks(CHUNK));
    for (c, (sim, ((rep, drug), moa))) in sim.chunks(CHUNK).zip(labels).enumerate() {
        let d = &mut s.dist[..sim.len()];
        for (d, &sim) in d.iter_mut().zip(sim) {
            *d = distance(sim);
        }
        let items = s.non_drug.iter_mut().zip(s.non_moa.iter_mut()).zip(rep).zip(drug).zip(moa);
        for ((((non_drug, non_moa), &rep), &drug), &moa) in items {
            // Excluded items are of the query's drug: neither matches nor non-matches here.
            *non_drug = drug != q_drug;
            *non_moa = moa != q_moa && moa != NO_MOA && !(drug == q_drug && rep == q_rep);
        }
        let d = &s.dist[..sim.len()];
        if has_drug {
            s.drug.place_chunk(d, &s.non_drug, c * CHUNK);
        }
        if has_moa {
            s.moa.place_chunk(d, &s.non_moa, c * CHUNK);
        }
    }
    (s.drug.finish(), s.moa.finish())
}

/// [`rank_query`] as one piece of work for [`molclip_cpu::vectorize`].
struct RankQuery<'a> {
    sim: &'a [f64],
    labels: (u32, u32, u32),
    g: &'a Metadata,
    index: &'a InvertedIndex,
    scratch: &'a mut Scratch,
}

impl molclip_cpu::Vectorized for RankQuery<'_> {
    type Output = (QueryResult, QueryResult);
    #[inline(always)]
    fn run(self) -> Self::Output {
        rank_query(self.sim, self.labels, self.g, self.index, self.scratch)
    }
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
    evaluate_profiled(query, q, gallery, g, max_rank).map(|(e, _)| e)
}

/// Where the time of an evaluation went: the similarity products, and the ranking that
/// follows each block of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// The matrix products (seconds).
    pub products: f64,
    /// Ranking and AP (seconds).
    pub ranking: f64,
}

/// [`evaluate`], with where its time went.
pub fn evaluate_profiled(
    query: &Embeddings,
    q: &Metadata,
    gallery: &Embeddings,
    g: &Metadata,
    max_rank: usize,
) -> Result<(Evaluation, Profile), EvalError> {
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
    let isa = molclip_cpu::isa();
    let (started, mut ranking) = (std::time::Instant::now(), std::time::Duration::ZERO);
    for_each_similarity_block(query, gallery, |start, block| {
        let ranked = std::time::Instant::now();
        let rows: Vec<(QueryResult, QueryResult)> = block
            .par_chunks(ng)
            .enumerate()
            .map_init(Scratch::default, |scratch, (r, sim)| {
                let i = start + r;
                let labels = (q.replicate[i], q.drug[i], q.moa[i]);
                molclip_cpu::vectorize(isa, RankQuery { sim, labels, g, index: &index, scratch })
            })
            .collect();
        for (r, (d, m)) in rows.into_iter().enumerate() {
            drug[start + r] = d;
            moa[start + r] = m;
        }
        ranking += ranked.elapsed();
    })?;
    let profile = Profile { products: (started.elapsed() - ranking).as_secs_f64(), ranking: ranking.as_secs_f64() };
    Ok((Evaluation { drug: summarise(drug, max_rank, "drug")?, moa: summarise(moa, max_rank, "MoA")? }, profile))
}
