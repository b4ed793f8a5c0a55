//! The dataset index: every cell video of a MitoReID-layout folder, with
//! its replicate, split, drug and MoA, validated. A scan reports every
//! problem it finds, not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::annotation::Annotation;
use crate::error::DataError;
use molclip_core::Split;

/// The natural compounds' folder in a replicate (`l1/nc`).
pub const NATURAL_COMPOUNDS: &str = "nc";

/// File extensions read as frames.
pub const FRAME_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

/// Something wrong with the dataset, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub path: PathBuf,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

fn problem(path: &Path, message: impl Into<String>) -> Problem {
    Problem { path: path.into(), message: message.into() }
}

/// Progress of a long scan: the number of cells once known, then one tick per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The number of cells, once known.
    Total(usize),
    /// One cell done.
    Cell,
}

/// A progress callback that ignores everything.
pub fn no_progress(_: Progress) {}

/// How a cell's frames are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameSource {
    /// One image per time point, in time order.
    Files(Vec<PathBuf>),
    /// One multi-page TIFF, a page per time point.
    Stack(PathBuf),
}

/// One single-cell video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellVideo {
    /// The cell's folder (or stack file).
    pub dir: PathBuf,
    /// `l1`, `l2`, ... (for `novel/`, read from a `l<N>-` cell-name prefix when there is one).
    pub replicate: String,
    /// Which part of the dataset the video is in.
    pub split: Split,
    /// Drug folder name, suffix included.
    pub drug_folder: String,
    /// The drug's dense id (the annotation's).
    pub drug_id: usize,
    /// Its MoA's id in the MoA task; `None` when the MoA is unknown or the drug is not
    /// chosen for the MoA task (`moa_choose`): the video then serves drug identification only.
    pub moa_id: Option<usize>,
    /// Where its frames are.
    pub source: FrameSource,
    /// Frames in the video.
    pub n_frames: usize,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
}

/// What scanning a cell finds: its frames, how many, width and height.
type ScannedCell = (FrameSource, usize, u32, u32);

impl CellVideo {
    fn new(
        dir: PathBuf,
        replicate: String,
        split: Split,
        drug_folder: String,
        (drug_id, moa_id): (usize, Option<usize>),
        scanned: ScannedCell,
    ) -> Self {
        let (source, n_frames, width, height) = scanned;
        Self { dir, replicate, split, drug_folder, drug_id, moa_id, source, n_frames, width, height }
    }
}

impl CellVideo {
    /// The number of the video's replicate (`l2` is 2; 0 when the name has no number).
    pub fn replicate_number(&self) -> u32 {
        self.replicate.trim_start_matches('l').parse().unwrap_or(0)
    }
}

/// A validated dataset.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    /// The dataset's folder (or the manifest's).
    pub root: PathBuf,
    /// The drug table.
    pub annotation: Annotation,
    /// Every video, in scan order.
    pub cells: Vec<CellVideo>,
    /// Drug folders left out because the annotation has no row for them (MitoReID skips
    /// them too).
    pub unannotated: Vec<Unannotated>,
    /// Natural-compound folders (`lN/nc/`): not in the drug table, never trained on; give
    /// one to `predict --videos`.
    pub natural_compounds: Vec<NaturalCompounds>,
}

/// A drug folder without a row in the annotation, and how many cell folders it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unannotated {
    /// The drug folder.
    pub path: PathBuf,
    /// Cell folders in it.
    pub cells: usize,
}

/// One replicate's `nc/` folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NaturalCompounds {
    /// The folder (`l1/nc`).
    pub path: PathBuf,
    /// Compound folders in it.
    pub compounds: usize,
    /// Cell folders in them.
    pub cells: usize,
}

/// Why videos are left out of a task, as MitoReID leaves them out: reported by `inspect`
/// and `train`, refused with `--strict`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Skip {
    /// A drug folder the annotation has no row for: left out of everything.
    NoAnnotationRow {
        /// The folder.
        path: PathBuf,
        /// Its cell folders.
        cells: usize,
    },
    /// A drug whose MoA is `unknown` or blank: drug identification only.
    UnknownMoa {
        /// The drug's `index`.
        drug: String,
        /// Its videos.
        cells: usize,
    },
}

impl Skip {
    /// What is skipped, and why, without the folder.
    fn reason(&self) -> String {
        match self {
            Skip::NoAnnotationRow { cells, .. } => format!("no row in the annotation; its {cells} cell(s) are skipped"),
            Skip::UnknownMoa { drug, cells } => {
                format!("drug {drug:?}: MoA unknown or blank; its {cells} video(s) serve drug identification only")
            }
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NoAnnotationRow { path, .. } => write!(f, "{}: {}", path.display(), self.reason()),
            Skip::UnknownMoa { .. } => f.write_str(&self.reason()),
        }
    }
}

/// Counts for one replicate and split.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SplitCounts {
    /// The replicate (`l1`, ...).
    pub replicate: String,
    /// The split.
    pub split: Split,
    /// Drugs with videos there.
    pub drugs: usize,
    /// MoAs with videos there.
    pub moas: usize,
    /// Videos.
    pub cells: usize,
    /// Frames.
    pub frames: usize,
}

fn sorted_dirs(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(DataError::io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl DatasetIndex {
    /// Scan and validate `root`. Every problem found is returned together.
    pub fn scan(root: &Path) -> Result<Self, DataError> {
        Self::scan_with_progress(root, &no_progress)
    }

    /// [`DatasetIndex::scan`], reporting progress to `progress`.
    pub fn scan_with_progress(root: &Path, progress: &(dyn Fn(Progress) + Sync)) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::invalid(root, "not a directory: expected a dataset in the MitoReID layout (annotation.csv, l1/train/<drug>/<cell>/1.png ...)"));
        }
        let annotation = Annotation::read_dir(root)?;

        let mut replicates: Vec<(usize, PathBuf)> = sorted_dirs(root)?
            .into_iter()
            .filter_map(|p| {
                let name = file_name(&p);
                name.strip_prefix('l').and_then(|n| n.parse::<usize>().ok()).map(|n| (n, p))
            })
            .collect();
        replicates.sort();
        let mut problems = Vec::new();
        let mut natural_compounds = Vec::new();
        if replicates.is_empty() {
            problems.push(problem(root, "no replicate folders: expected l1, l2, ..."));
        }
        // (replicate, split, drug folder, cell dir)
        let mut cell_dirs: Vec<(String, Split, String, PathBuf)> = Vec::new();
        for (_, rep) in &replicates {
            let rep_name = file_name(rep);
            let nc = rep.join(NATURAL_COMPOUNDS);
            if nc.is_dir() {
                let compounds = sorted_dirs(&nc)?;
                let mut cells = 0;
                for c in &compounds {
                    cells += sorted_dirs(c)?.len();
                }
                natural_compounds.push(NaturalCompounds { path: nc, compounds: compounds.len(), cells });
            }
            for split in Split::REPLICATE {
                let split_dir = rep.join(split.name());
                if !split_dir.is_dir() {
                    problems.push(problem(&split_dir, "missing split folder"));
                    continue;
                }
                let before = cell_dirs.len();
                for drug in sorted_dirs(&split_dir)? {
                    for cell in sorted_dirs(&drug)? {
                        cell_dirs.push((rep_name.clone(), split, file_name(&drug), cell));
                    }
                }
                if cell_dirs.len() == before {
                    problems.push(problem(&split_dir, "empty split: no <drug>/<cell> folders"));
                }
            }
        }
        let novel = root.join(Split::Novel.name());
        if novel.is_dir() {
            for drug in sorted_dirs(&novel)? {
                for cell in sorted_dirs(&drug)? {
                    let name = file_name(&cell);
                    let rep = name.split('-').next().filter(|p| p.starts_with('l') && p[1..].parse::<usize>().is_ok());
                    cell_dirs.push((rep.unwrap_or("").into(), Split::Novel, file_name(&drug), cell));
                }
            }
        }
        // Drug folders without a row are skipped, as MitoReID skips them: one entry per folder.
        let mut unannotated: BTreeMap<PathBuf, usize> = BTreeMap::new();
        cell_dirs.retain(|(_, split, drug_folder, dir)| {
            let known = annotation.lookup_in(*split, drug_folder).is_some();
            if !known {
                *unannotated.entry(dir.parent().unwrap_or(dir).to_path_buf()).or_default() += 1;
            }
            known
        });
        let unannotated = unannotated.into_iter().map(|(path, cells)| Unannotated { path, cells }).collect();
        progress(Progress::Total(cell_dirs.len()));
        let results: Vec<Result<CellVideo, Vec<Problem>>> = cell_dirs
            .into_par_iter()
            .map(|(replicate, split, drug_folder, dir)| {
                progress(Progress::Cell);
                let record = annotation.lookup_in(split, &drug_folder).expect("kept above");
                let frames = scan_cell(&dir)?;
                Ok(CellVideo::new(dir, replicate, split, drug_folder, (record.drug_id, record.moa_task_id()), frames))
            })
            .collect();
        let mut cells = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(c) => cells.push(c),
                Err(ps) => problems.extend(ps),
            }
        }
        if problems.is_empty() {
            Ok(Self { root: root.into(), annotation, cells, unannotated, natural_compounds })
        } else {
            Err(DataError::Problems(problems))
        }
    }

    /// Videos without labels, to be named: `<dir>/<drug>/<cell>/` (numbered frames or one
    /// stack per cell). Drugs are the folder names; ids and MoAs are unknown (0), the split is
    /// `unlabelled`.
    pub fn unlabelled(dir: &Path) -> Result<Vec<CellVideo>, DataError> {
        if !dir.is_dir() {
            return Err(DataError::invalid(dir, "not a directory: expected <drug>/<cell>/ folders of frames"));
        }
        let mut cells = Vec::new();
        let mut problems = Vec::new();
        for drug in sorted_dirs(dir)? {
            let cell_dirs = sorted_dirs(&drug)?;
            if cell_dirs.is_empty() {
                problems.push(problem(&drug, "no <cell> folders in this drug folder"));
            }
            for cell in cell_dirs {
                match scan_cell(&cell) {
                    Ok(frames) => cells.push(CellVideo::new(
                        cell,
                        String::new(),
                        Split::Unlabelled,
                        file_name(&drug),
                        (0, None),
                        frames,
                    )),
                    Err(ps) => problems.extend(ps),
                }
            }
        }
        if cells.is_empty() && problems.is_empty() {
            problems.push(problem(dir, "no <drug>/<cell>/ folders"));
        }
        if problems.is_empty() {
            Ok(cells)
        } else {
            Err(DataError::Problems(problems))
        }
    }

    /// A dataset in another layout, listed by a manifest CSV with columns
    /// `path, drug, replicate, split`: `path` (relative to the manifest) is a
    /// folder of numbered frames or one multi-page TIFF / OME-TIFF per cell;
    /// `drug` is an annotation `index`. The annotation sits beside the manifest.
    pub fn from_manifest(manifest: &Path) -> Result<Self, DataError> {
        let base = manifest.parent().unwrap_or(Path::new("."));
        let annotation = Annotation::read_dir(base)?;
        let mut reader = csv::Reader::from_path(manifest).map_err(|e| DataError::invalid(manifest, e.to_string()))?;
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| DataError::invalid(manifest, e.to_string()))?
            .iter()
            .map(|h| h.trim().to_lowercase())
            .collect();
        let col = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                DataError::invalid(
                    manifest,
                    format!("no `{name}` column (expected path, drug, replicate, split; found {})", headers.join(", ")),
                )
            })
        };
        let (c_path, c_drug, c_rep, c_split) = (col("path")?, col("drug")?, col("replicate")?, col("split")?);
        let mut problems = Vec::new();
        let mut cells = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let at = PathBuf::from(format!("{}:{line}", manifest.display()));
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    problems.push(problem(&at, e.to_string()));
                    continue;
                }
            };
            let get = |c: usize| record.get(c).unwrap_or("").trim().to_string();
            let (path, drug, replicate) = (base.join(get(c_path)), get(c_drug), get(c_rep));
            let split =
                match Split::parse_among(&get(c_split), &[Split::Train, Split::Query, Split::Gallery, Split::Novel]) {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(problem(&at, e.to_string()));
                        continue;
                    }
                };
            let Some(record) = annotation.lookup_in(split, &drug) else {
                problems.push(problem(&at, format!("drug {drug:?} has no row in the annotation")));
                continue;
            };
            let scanned = if path.is_dir() {
                scan_cell(&path)
            } else if path.is_file() {
                crate::frames::stack_layout(&path)
                    .map(|l| (FrameSource::Stack(path.clone()), l.frames, l.width, l.height))
                    .map_err(|e| stack_problem(&path, e))
            } else {
                Err(vec![problem(&path, format!("listed at {} but does not exist", at.display()))])
            };
            match scanned {
                Ok(frames) => {
                    let ids = (record.drug_id, record.moa_task_id());
                    cells.push(CellVideo::new(path, replicate, split, drug, ids, frames))
                }
                Err(ps) => problems.extend(ps),
            }
        }
        if cells.is_empty() && problems.is_empty() {
            problems.push(problem(manifest, "no rows: the manifest lists no cells"));
        }
        if problems.is_empty() {
            Ok(Self { root: base.into(), annotation, cells, unannotated: Vec::new(), natural_compounds: Vec::new() })
        } else {
            Err(DataError::Problems(problems))
        }
    }

    /// A dataset folder in the MitoReID layout, or a manifest CSV file.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        Self::open_with_progress(path, &no_progress)
    }

    /// [`DatasetIndex::open`], reporting progress to `progress`.
    pub fn open_with_progress(path: &Path, progress: &(dyn Fn(Progress) + Sync)) -> Result<Self, DataError> {
        if path.is_file() {
            Self::from_manifest(path)
        } else {
            Self::scan_with_progress(path, progress)
        }
    }

    /// Videos, drugs, MoAs and frames per replicate and split.
    pub fn counts(&self) -> Vec<SplitCounts> {
        let mut groups: BTreeMap<(String, Split), Vec<&CellVideo>> = BTreeMap::new();
        for c in &self.cells {
            groups.entry((c.replicate.clone(), c.split)).or_default().push(c);
        }
        groups
            .into_iter()
            .map(|((replicate, split), cells)| SplitCounts {
                drugs: cells.iter().map(|c| c.drug_id).collect::<BTreeSet<_>>().len(),
                moas: cells.iter().filter_map(|c| c.moa_id).collect::<BTreeSet<_>>().len(),
                frames: cells.iter().map(|c| c.n_frames).sum(),
                cells: cells.len(),
                replicate,
                split,
            })
            .collect()
    }

    /// Decode every frame of every cell (in parallel, one frame at a time per cell) under the
    /// default limits, reporting each corrupt, truncated or oversized file. `scan` reads headers
    /// only.
    pub fn verify_frames(&self) -> Result<(), DataError> {
        self.verify_frames_with_progress(&crate::frames::FrameOptions::default(), &no_progress)
    }

    /// [`DatasetIndex::verify_frames`] under `options`' limits and channels (its frame count
    /// is ignored: every frame is decoded), reporting progress to `progress`.
    pub fn verify_frames_with_progress(
        &self,
        options: &crate::frames::FrameOptions,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), DataError> {
        progress(Progress::Total(self.cells.len()));
        let problems: Vec<Problem> = self
            .cells
            .par_iter()
            .inspect(|_| progress(Progress::Cell))
            .flat_map_iter(|cell| match crate::frames::verify_video(cell, options) {
                Ok(()) => vec![],
                Err(DataError::Invalid { path, reason }) => vec![Problem { path, message: reason }],
                Err(e) => vec![problem(&cell.dir, e.to_string())],
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DataError::Problems(problems))
        }
    }

    /// What MitoReID's selection rules leave out: drug folders without a row, and drugs
    /// (with videos outside `novel/`) whose MoA is unknown.
    pub fn skips(&self) -> Vec<Skip> {
        let mut skips: Vec<Skip> =
            self.unannotated.iter().map(|u| Skip::NoAnnotationRow { path: u.path.clone(), cells: u.cells }).collect();
        let mut unknown: BTreeMap<&str, usize> = BTreeMap::new();
        for c in self.cells.iter().filter(|c| c.split != Split::Novel) {
            if let Some(r) = self.annotation.lookup_in(c.split, &c.drug_folder).filter(|r| r.moa_id.is_none()) {
                *unknown.entry(r.index.as_str()).or_default() += 1;
            }
        }
        skips.extend(unknown.into_iter().map(|(drug, cells)| Skip::UnknownMoa { drug: drug.into(), cells }));
        skips
    }

    /// `--strict`: every skip as a problem.
    pub fn strict(&self) -> Result<(), DataError> {
        let skips = self.skips();
        if skips.is_empty() {
            return Ok(());
        }
        let problems = skips
            .iter()
            .map(|s| Problem {
                path: match s {
                    Skip::NoAnnotationRow { path, .. } => path.clone(),
                    Skip::UnknownMoa { .. } => self.root.clone(),
                },
                message: format!("{} (refused by --strict)", s.reason()),
            })
            .collect();
        Err(DataError::Problems(problems))
    }

    /// What identifies the dataset's content without reading its frames: the SHA-256 of its
    /// annotation (as read), its `simulation.toml` if it has one, and every video's path,
    /// split, frame count and size. A run records it so that `--resume` refuses a dataset
    /// that changed under it.
    pub fn fingerprint(&self) -> String {
        let mut d = molclip_core::Digest::new();
        d.field(self.annotation.to_csv());
        if let Ok(sim) = std::fs::read(self.root.join("simulation.toml")) {
            d.field(sim);
        }
        for c in &self.cells {
            let rel = c.dir.strip_prefix(&self.root).unwrap_or(&c.dir);
            d.field(rel.to_string_lossy().as_bytes()).field(c.split.name());
            d.update((c.n_frames as u64).to_le_bytes()).update(c.width.to_le_bytes()).update(c.height.to_le_bytes());
        }
        d.hex()
    }

    /// The videos of one split, in index order.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &CellVideo> + '_ {
        self.cells.iter().filter(move |c| c.split == split)
    }
}

/// A stack that cannot be read, as a problem of the scan.
fn stack_problem(path: &Path, e: DataError) -> Vec<Problem> {
    let reason = match e {
        DataError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    };
    vec![problem(path, format!("not a readable TIFF stack: {reason}"))]
}

/// Frames of one cell folder: numbered images `1..T` or one TIFF stack.
fn scan_cell(dir: &Path) -> Result<ScannedCell, Vec<Problem>> {
    let entries = std::fs::read_dir(dir).map_err(|e| vec![problem(dir, format!("cannot read: {e}"))])?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension().is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    let max_frames = crate::frames::FrameOptions::default().max_frames;
    if files.len() > max_frames {
        return Err(vec![problem(dir, format!("{} frame files: the limit is {max_frames} (max_frames)", files.len()))]);
    }
    if files.is_empty() {
        return Err(vec![problem(dir, "no frames: expected 1.png .. T.png (or jpg/tif), or one multi-page TIFF")]);
    }
    let mut problems = Vec::new();
    let mut numbered: Vec<(usize, PathBuf)> = Vec::new();
    for f in &files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match stem.parse::<usize>() {
            Ok(n) => numbered.push((n, f.clone())),
            Err(_) if files.len() == 1 => {}
            Err(_) => problems.push(problem(f, "frame name is not a number: expected 1, 2, ... T")),
        }
    }
    if files.len() == 1 && numbered.is_empty() {
        // A single non-numbered TIFF: a stack.
        let path = files.remove(0);
        return match crate::frames::stack_layout(&path) {
            Ok(l) => Ok((FrameSource::Stack(path), l.frames, l.width, l.height)),
            Err(e) => Err(stack_problem(&path, e)),
        };
    }
    numbered.sort_by_key(|(n, _)| *n);
    for w in numbered.windows(2) {
        if w[0].0 == w[1].0 {
            problems.push(problem(&w[1].1, format!("frame {} appears twice", w[0].0)));
        }
    }
    let n = numbered.last().map_or(0, |(n, _)| *n);
    let present: BTreeSet<usize> = numbered.iter().map(|(n, _)| *n).collect();
    let missing: Vec<String> = (1..=n).filter(|i| !present.contains(i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        problems.push(problem(dir, format!("missing frame(s) {} of 1..{n}", missing.join(", "))));
    }
    if present.contains(&0) {
        problems.push(problem(dir, "frame 0: frames are numbered from 1"));
    }
    let mut size = None;
    for (_, f) in &numbered {
        match image::image_dimensions(f) {
            Ok(dims) => match size {
                None => size = Some(dims),
                Some(first) if first != dims => problems.push(problem(
                    f,
                    format!("frame is {}x{}, but the cell's first frame is {}x{}", dims.0, dims.1, first.0, first.1),
                )),
                _ => {}
            },
            Err(e) => problems.push(problem(f, format!("unreadable image: {e}"))),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (w, h) = size.unwrap_or((0, 0));
    Ok((FrameSource::Files(numbered.into_iter().map(|(_, p)| p).collect()), n, w, h))
}
