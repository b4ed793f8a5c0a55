//! The protocol itself: distances in blocks, ranks by counting, AP and CMC.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::EvalError;
use crate::metadata::{Metadata, NO_MOA};

/// CMC curve length reported by default (rank-1 .. rank-50).
pub const DEFAULT_MAX_RANK: usize = 50;

/// Queries per block of the similarity product: bounds memory at
/// `BLOCK x gallery x 8` bytes whatever the dataset size.
const BLOCK: usize = 512;

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
    /// The items without a MoA, outside MoA recognition.
    no_moa: Vec<u32>,
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
        let no_moa = (0..g.moa.len()).filter(|&j| g.moa[j] == NO_MOA).map(|j| j as u32).collect();
        Self { by_drug: group(&g.drug), by_moa: group(&g.moa), no_moa }
    }
}

/// Distances are bucketed this many at a time, in a loop the compiler vectorises.
const CHUNK: usize = 256;

/// Copies of the per-interval counts of the gallery pass: consecutive items falling in one
/// interval add to different copies instead of waiting on each other's increment.
const LANES: usize = 4;

/// One query's probes, the true matches of both its tasks sorted by (distance, gallery
/// index), and the distance buckets that place any gallery item among them in O(1).
///
/// Ranks are counted, not sorted. The probes split the gallery into intervals, and one pass
/// counts every gallery item into its interval, labels unread. A task's non-matches are the
/// gallery less a short list the index gives (the query's drug for drug identification; its
/// MoA, the videos without one and its excluded videos for MoA recognition): the task counts
/// that list into the same intervals and takes it away.
struct Probes {
    /// The probes (distance, gallery index), in the order the caller pushes them until
    /// [`Probes::prepare`] sorts them.
    sorted: Vec<(f64, usize)>,
    /// Where the sort puts them.
    spare: Vec<(f64, usize)>,
    /// `slot[b]`: number of probes in buckets below `b`, with [`HOLDS_PROBE`] set when
    /// bucket `b` holds a probe itself.
    slot: Vec<u32>,
    /// `all[k * LANES + lane]`: gallery items after exactly k probes, counted in [`LANES`]
    /// copies.
    all: Vec<u32>,
    /// `not_drug[k]`, `not_moa[k]`: of those, the items that are not non-matches of the
    /// task.
    not_drug: Vec<u32>,
    not_moa: Vec<u32>,
    lo: f64,
    scale: f64,
    top: f64,
    /// The buckets of the chunk of distances being counted.
    buckets: [i32; CHUNK],
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            sorted: Vec::new(),
            spare: Vec::new(),
            slot: Vec::new(),
            all: Vec::new(),
            not_drug: Vec::new(),
            not_moa: Vec::new(),
            lo: 0.0,
            scale: 0.0,
            top: 0.0,
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

/// The flag of a bucket that holds a probe in [`Probes::slot`].
const HOLDS_PROBE: u32 = 1 << 31;

/// The number of `probes` ranked before the item (d, j) in bucket `b`: O(1) unless the
/// bucket also holds probes, where (distance, index) decides exactly, as the stable sort
/// would.
#[inline(always)]
fn probes_before(slot: &[u32], probes: &[(f64, usize)], b: i32, d: f64, j: usize) -> usize {
    let s = slot[b as usize];
    if s & HOLDS_PROBE == 0 {
        s as usize
    } else {
        let (from, to) = ((s & !HOLDS_PROBE) as usize, (slot[b as usize + 1] & !HOLDS_PROBE) as usize);
        let precedes = |&(pd, pj): &(f64, usize)| pd < d || (pd == d && pj < j);
        // Most such buckets hold one probe.
        if to == from + 1 {
            from + precedes(&probes[from]) as usize
        } else {
            from + probes[from..to].partition_point(precedes)
        }
    }
}

impl Probes {
    /// Bucket distances monotonically (d1 <= d2 implies bucket(d1) <= bucket(d2)) so that
    /// the probes' range [lo, hi] gets `32 m` buckets, everything below it bucket 0 and
    /// everything well above it the top one; sort the probes by (distance, index). With 32
    /// per probe rather than 16 or 8, fewer items share a bucket with a probe, the one case
    /// that branches, and the pass ran faster in spite of the larger table.
    fn prepare(&mut self) {
        let m = self.sorted.len();
        for counts in [&mut self.not_drug, &mut self.not_moa] {
            counts.clear();
            counts.resize(m + 1, 0);
        }
        self.all.clear();
        self.all.resize(LANES * (m + 1), 0);
        let (lo, hi) =
            self.sorted.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(d, _)| (lo.min(d), hi.max(d)));
        let inner = (32 * m).clamp(16, 1 << 16);
        let scale = inner as f64 / (hi - lo);
        let scale = if scale.is_finite() { scale } else { 0.0 };
        // hi lands in bucket inner + 1 at most (rounding aside); the top bucket holds no probe.
        let top = inner + 3;
        (self.lo, self.scale, self.top) = (lo, scale, top as f64);
        // A counting sort by bucket: slot[b + 1] counts bucket b's probes, and the scan
        // makes slot[b] the count below b, where bucket b's probes go.
        self.slot.clear();
        self.slot.resize(top + 2, 0);
        let at = |d: f64| bucket(d, lo, scale, top as f64) as usize;
        for &(d, _) in &self.sorted {
            self.slot[at(d) + 1] += 1;
        }
        let mut below = 0;
        for s in self.slot.iter_mut() {
            below += *s;
            *s = below;
        }
        self.spare.clear();
        self.spare.resize(m, (0.0, 0));
        for &(d, j) in &self.sorted {
            let b = at(d);
            self.spare[self.slot[b] as usize] = (d, j);
            self.slot[b] += 1;
        }
        // Each slot[b] moved on to the count below b + 1: shift them back.
        self.slot.copy_within(0..top + 1, 1);
        self.slot[0] = 0;
        // Buckets keep the order of distances, so only probes sharing a bucket can be out of
        // order: one insertion pass sorts them by (distance, index), as the stable sort ranks.
        let sorted = &mut self.spare;
        for k in 1..m {
            let x = sorted[k];
            let mut i = k;
            while i > 0 && (sorted[i - 1].0, sorted[i - 1].1) > (x.0, x.1) {
                sorted[i] = sorted[i - 1];
                i -= 1;
            }
            sorted[i] = x;
        }
        std::mem::swap(&mut self.sorted, &mut self.spare);
        for &(d, _) in &self.sorted {
            self.slot[at(d)] |= HOLDS_PROBE;
        }
    }

    /// The number of probes ranked before the gallery item `j` at distance `d`.
    #[inline(always)]
    fn before(&self, d: f64, j: usize) -> usize {
        probes_before(&self.slot, &self.sorted, bucket(d, self.lo, self.scale, self.top), d, j)
    }

    /// Count every gallery item, of similarities `sim`, into its interval, while the next
    /// query's similarities, `next`, come into the cache.
    #[inline(always)]
    fn count_gallery(&mut self, sim: &[f64], next: &[f64]) {
        let (lo, scale, top) = (self.lo, self.scale, self.top);
        let mut next = next.chunks(CHUNK);
        for (c, sim) in sim.chunks(CHUNK).enumerate() {
            molclip_cpu::prefetch(next.next().unwrap_or_default());
            // Vectorised: every item gets its bucket.
            for (b, &s) in self.buckets.iter_mut().zip(sim) {
                *b = bucket(distance(s), lo, scale, top);
            }
            let (slot, probes, buckets) = (&self.slot[..], &self.sorted[..], &self.buckets[..sim.len()]);
            let all = &mut self.all[..];
            let first = c * CHUNK;
            let interval = |k: usize, b: i32| probes_before(slot, probes, b, distance(sim[k]), first + k);
            // Item k counts in lane k % LANES, unrolled so that each lane is a constant offset.
            let mut quads = buckets.chunks_exact(LANES);
            for (q, quad) in quads.by_ref().enumerate() {
                for (lane, &b) in quad.iter().enumerate() {
                    all[interval(q * LANES + lane, b) * LANES + lane] += 1;
                }
            }
            let done = buckets.len() - quads.remainder().len();
            for (lane, &b) in quads.remainder().iter().enumerate() {
                all[interval(done + lane, b) * LANES + lane] += 1;
            }
        }
    }

    /// AP and first true match's rank (1-based) of both tasks, or `None` for a task without
    /// probes; `is_drug` and `is_moa` say whose probe each is.
    fn finish(&self, is_drug: impl Fn(usize) -> bool, is_moa: impl Fn(usize) -> bool) -> (QueryResult, QueryResult) {
        let (mut drug, mut moa) = (TaskRanks::default(), TaskRanks::default());
        let mut all = 0usize;
        for (k, &(_, j)) in self.sorted.iter().enumerate() {
            all += self.all[k * LANES..(k + 1) * LANES].iter().map(|&c| c as usize).sum::<usize>();
            drug.pass(all, self.not_drug[k], is_drug(j));
            moa.pass(all, self.not_moa[k], is_moa(j));
        }
        (drug.result(), moa.result())
    }
}

/// One task's walk along the sorted probes, in [`Probes::finish`].
#[derive(Default)]
struct TaskRanks {
    /// The task's probes passed so far.
    matches: usize,
    /// Gallery items counted so far that are not the task's non-matches.
    not: usize,
    /// The sum of precisions at each true match.
    precisions: f64,
    /// The rank of the first true match.
    first: usize,
}

impl TaskRanks {
    /// Probe k: `all` items up to and including its interval, `not` of them in the task's
    /// list, and whether the probe is one of the task's true matches.
    #[inline(always)]
    fn pass(&mut self, all: usize, not: u32, is_match: bool) {
        self.not += not as usize;
        if is_match {
            self.matches += 1;
            // The probe itself is in the task's list, so `all - not` counts the non-matches
            // ranked before it.
            let rank = self.matches + all - self.not;
            if self.matches == 1 {
                self.first = rank;
            }
            self.precisions += self.matches as f64 / rank as f64;
        }
    }

    /// AP and first-match rank, or `None` without matches.
    fn result(&self) -> QueryResult {
        (self.matches > 0).then(|| (self.precisions / self.matches as f64, self.first))
    }
}

/// One task's result for one query: its AP and the rank of its first true match, or
/// `None` when it has no true match left.
type QueryResult = Option<(f64, usize)>;

/// Drug and MoA results of query `i`, from its similarities to the gallery, in one pass
/// over the gallery for both tasks (see [`Probes`]); the next query's, `next`, are
/// prefetched meanwhile.
#[inline(always)]
fn rank_query(
    sim: &[f64],
    next: &[f64],
    q: (u32, u32, u32),
    g: &Metadata,
    index: &InvertedIndex,
    p: &mut Probes,
) -> (QueryResult, QueryResult) {
    let (q_rep, q_drug, q_moa) = q;
    // The query's own replicate of its drug: neither a true match nor a non-match.
    let excluded = |j: usize| g.replicate[j] == q_rep && g.drug[j] == q_drug;
    let is_drug = |j: usize| g.drug[j] == q_drug;
    let is_moa = |j: usize| q_moa != NO_MOA && g.moa[j] == q_moa;
    let no_items: &[u32] = &[];
    let drug_items = index.by_drug.get(q_drug as usize).map_or(no_items, Vec::as_slice);
    let moa_items =
        if q_moa == NO_MOA { no_items } else { index.by_moa.get(q_moa as usize).map_or(no_items, Vec::as_slice) };
    let item = |&j: &u32| (distance(sim[j as usize]), j as usize);
    p.sorted.clear();
    p.sorted.extend(moa_items.iter().map(item).filter(|&(_, j)| !excluded(j)));
    p.sorted.extend(drug_items.iter().map(item).filter(|&(_, j)| !excluded(j) && !is_moa(j)));
    if p.sorted.is_empty() {
        return (None, None);
    }
    p.prepare();
    p.count_gallery(sim, next);
    // Not a drug non-match: the query's drug, its excluded videos included.
    for (d, j) in drug_items.iter().map(item) {
        let k = p.before(d, j);
        p.not_drug[k] += 1;
    }
    if !moa_items.is_empty() {
        // Not a MoA non-match: the query's MoA, the videos without one, and the excluded
        // videos that are neither.
        let odd_excluded = drug_items.iter().filter(|&&j| {
            let j = j as usize;
            excluded(j) && g.moa[j] != q_moa && g.moa[j] != NO_MOA
        });
        for (d, j) in moa_items.iter().chain(&index.no_moa).chain(odd_excluded).map(item) {
            let k = p.before(d, j);
            p.not_moa[k] += 1;
        }
    }
    p.finish(is_drug, is_moa)
}

/// [`rank_query`] as one piece of work for [`molclip_cpu::vectorize`].
struct RankQuery<'a> {
    sim: &'a [f64],
    next: &'a [f64],
    labels: (u32, u32, u32),
    g: &'a Metadata,
    index: &'a InvertedIndex,
    probes: &'a mut Probes,
}

impl molclip_cpu::Vectorized for RankQuery<'_> {
    type Output = (QueryResult, QueryResult);
    #[inline(always)]
    fn run(self) -> Self::Output {
        rank_query(self.sim, self.next, self.labels, self.g, self.index, self.probes)
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
        let block: &[f64] = block;
        let rows: Vec<(QueryResult, QueryResult)> = block
            .par_chunks(ng)
            .enumerate()
            .map_init(Probes::default, |probes, (r, sim)| {
                let i = start + r;
                let labels = (q.replicate[i], q.drug[i], q.moa[i]);
                let next = block.get((r + 1) * ng..(r + 2) * ng).unwrap_or_default();
                molclip_cpu::vectorize(isa, RankQuery { sim, next, labels, g, index: &index, probes })
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
