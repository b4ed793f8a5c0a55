//! molclip-extract: from raw time-lapse fields of view to single-cell videos in the
//! MitoReID layout, as MitoReID's own pipeline made its crops (segment, track, crop,
//! merge three stains), with every parameter in one config.
//!
//! The tree reads like the pipeline:
//! - [`raw`]: finding fields (MitoReID's `<field>_<t>_<w1|w2|w3>.tif`, or OME-TIFF) and
//!   reading them, sizes checked from headers;
//! - [`segment`]: nuclei from w1, then cells by seeded watershed on w2 + w3;
//! - [`track`]: frame-to-frame assignment by the Hungarian method;
//! - [`crop`]: square crops through time, written as JPEG or 16-bit TIFF;
//! - [`qc`]: an overlay per field to check the above by eye;
//! - [`score`]: the same measured against ground truth (F1, SEG, whole tracks);
//! - [`config`]: every parameter, with documented defaults.

pub mod config;
pub mod crop;
mod error;
pub mod qc;
pub mod raw;
pub mod score;
pub mod segment;
pub mod track;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub use config::{CropConfig, CropFormat, ExtractConfig, SegmentConfig, TrackConfig};
pub use error::ExtractError;
pub use raw::{discover, read_field, FieldImages, RawField};
pub use segment::Segmentation;
pub use track::Track;

use molclip_core::Split;

/// Which split the videos of a field go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPolicy {
    /// MitoReID's: per field, a seeded random 80% to `train`, the rest alternately to
    /// `query` and `gallery` (at least one each when a field gives 3 videos or more).
    Random,
    /// Everything to `train` (a screen to train on, or to embed whole).
    Train,
    /// Everything to `novel/<field>/` (drugs held out of training).
    Novel,
}

impl std::str::FromStr for SplitPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Self::Random),
            "train" => Ok(Self::Train),
            "novel" => Ok(Self::Novel),
            other => Err(format!("unknown split policy {other:?}: expected random, train or novel")),
        }
    }
}

/// How `extract` runs, beyond the config.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Where videos go.
    pub split: SplitPolicy,
    /// Seeds the random split.
    pub seed: u64,
    /// Writes an overlay PNG per field into this folder.
    pub qc: Option<PathBuf>,
    /// Replace an earlier extraction at the output.
    pub overwrite: bool,
    /// The drug table (`annotation.csv` or `.xlsx`); default: the raw folder's.
    pub annotation: Option<PathBuf>,
    /// Label masks to use instead of segmenting and tracking: `<replicate>/<field>.masks.tif`,
    /// one page per frame, labels = track ids (as `simulate --raw` writes its ground truth).
    pub masks: Option<PathBuf>,
}

/// One field, extracted.
#[derive(Debug, Clone)]
pub struct FieldExtraction {
    /// Its images.
    pub images: FieldImages,
    /// Each frame's cells.
    pub frames: Vec<Segmentation>,
    /// The tracks.
    pub tracks: Vec<Track>,
    /// Per track: long enough to become a video.
    pub kept: Vec<bool>,
}

impl FieldExtraction {
    /// Marks the tracks long enough to become videos (`crop.min_frames`; 0: every frame).
    fn new(images: FieldImages, frames: Vec<Segmentation>, tracks: Vec<Track>, crop: &CropConfig) -> Self {
        let need = if crop.min_frames == 0 { frames.len() } else { crop.min_frames.min(frames.len()) };
        let kept = tracks.iter().map(|tr| tr.span() >= need).collect();
        Self { images, frames, tracks, kept }
    }

    /// Per frame, a label image whose labels are track numbers + 1: what [`score`] compares
    /// with ground truth.
    pub fn track_labels(&self) -> Vec<Vec<u32>> {
        // Per frame, cell label -> track number + 1.
        let mut owner: Vec<Vec<u32>> = self.frames.iter().map(|f| vec![0; f.cells.len() + 1]).collect();
        for (k, tr) in self.tracks.iter().enumerate() {
            for &(t, l) in &tr.detections {
                owner[t][l as usize] = k as u32 + 1;
            }
        }
        self.frames.iter().zip(&owner).map(|(f, o)| f.labels.iter().map(|&l| o[l as usize]).collect()).collect()
    }
}

/// Segments and tracks the cells of one field read into memory.
pub fn extract_images(images: FieldImages, cfg: &ExtractConfig) -> FieldExtraction {
    // Frames in parallel too: fields are few and uneven, frames many.
    let frames: Vec<Segmentation> =
        images.frames.par_iter().map(|f| segment::segment(f, images.width, images.height, &cfg.segment)).collect();
    let tracks = track::track(&frames, &cfg.track);
    FieldExtraction::new(images, frames, tracks, &cfg.crop)
}

/// Cells and tracks from label masks made elsewhere (a ground truth, or another
/// segmenter), one per frame, whose labels are track ids (the Cell Tracking Challenge's
/// convention): no segmentation, no tracking.
pub fn extract_with_masks(images: FieldImages, masks: Vec<Vec<u32>>, cfg: &ExtractConfig) -> FieldExtraction {
    let frames: Vec<Segmentation> =
        masks.into_iter().map(|m| segment::measure(m, images.width, images.height, 1)).collect();
    let mut by_id: std::collections::BTreeMap<u32, Vec<(usize, u32)>> = Default::default();
    for (t, f) in frames.iter().enumerate() {
        for c in &f.cells {
            by_id.entry(c.source).or_default().push((t, c.label));
        }
    }
    let tracks: Vec<Track> = by_id.into_values().map(|detections| Track { detections }).collect();
    FieldExtraction::new(images, frames, tracks, &cfg.crop)
}

/// Reads one field, then segments and tracks its cells, or with `masks` (a folder of
/// `<replicate>/<field>.masks.tif`), takes them from there.
pub fn extract_field(
    field: &RawField,
    cfg: &ExtractConfig,
    masks: Option<&Path>,
) -> Result<FieldExtraction, ExtractError> {
    let images = read_field(field)?;
    let Some(dir) = masks else { return Ok(extract_images(images, cfg)) };
    let path = dir.join(&field.replicate).join(format!("{}.masks.tif", field.name));
    let labels = score::read_label_stack(&path)?;
    if labels.len() != images.frames.len() || labels.iter().any(|l| l.len() != images.width * images.height) {
        return Err(ExtractError::invalid(
            &path,
            format!(
                "{} masks, expected {} of {}x{} (one per frame of the field)",
                labels.len(),
                images.frames.len(),
                images.width,
                images.height
            ),
        ));
    }
    Ok(extract_with_masks(images, labels, cfg))
}

/// What an extraction did.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Fields read.
    pub fields: usize,
    /// Frames segmented.
    pub frames: usize,
    /// Tracks found.
    pub tracks: usize,
    /// Videos written per split: train, query, gallery, novel.
    pub videos: [usize; 4],
    /// Fields whose drug has no annotation row (their videos are written; readers skip them).
    pub unannotated: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Staging folders of interrupted runs that were removed.
    pub removed_staging: Vec<PathBuf>,
}

/// The first line of the `extract.toml` written beside every extracted dataset.
const MARKER: &str = "# Written by molclip extract";

fn field_seed(seed: u64, field: &RawField) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in field.replicate.bytes().chain([b'/']).chain(field.name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The split of each of `n` videos of a field.
fn splits(n: usize, policy: SplitPolicy, seed: u64) -> Vec<Split> {
    match policy {
        SplitPolicy::Train => vec![Split::Train; n],
        SplitPolicy::Novel => vec![Split::Novel; n],
        SplitPolicy::Random => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            let mut test = n - (0.8 * n as f64).round() as usize;
            if n >= 3 {
                test = test.max(2);
            }
            let mut out = vec![Split::Train; n];
            for (k, &i) in order.iter().take(test).enumerate() {
                out[i] = if k % 2 == 0 { Split::Query } else { Split::Gallery };
            }
            out
        }
    }
}

/// The annotation file to copy: the one given, or the raw folder's.
fn annotation_source(raw: &Path, given: Option<&Path>) -> Result<PathBuf, ExtractError> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    ["annotation.xlsx", "annotation.csv"].iter().map(|n| raw.join(n)).find(|p| p.is_file()).ok_or_else(|| {
        ExtractError::invalid(
            raw,
            "no annotation.xlsx or annotation.csv: extract needs the drug table \
             (index, name, moa, ...; pass --annotation FILE)",
        )
    })
}

/// Extracts `fields` (what [`discover`] found under `raw`: the caller discovers them, and
/// may size a progress bar by them) into a dataset at `out` (MitoReID layout:
/// `<replicate>/<split>/<field>/<field>_<n>/`, or `novel/<field>/<replicate>-<field>_<n>/`),
/// fields in parallel, `progress` called once per field. The dataset appears whole or not
/// at all; `overwrite` replaces only an earlier extraction.
pub fn extract(
    raw: &Path,
    fields: &[RawField],
    out: &Path,
    cfg: &ExtractConfig,
    options: &ExtractOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<ExtractReport, ExtractError> {
    let start = std::time::Instant::now();
    cfg.validate()?;
    let annotation = annotation_source(raw, options.annotation.as_deref())?;
    let extension = annotation.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if !matches!(extension.as_str(), "csv" | "xlsx") {
        return Err(ExtractError::invalid(&annotation, "expected an annotation .csv or .xlsx"));
    }
    if let Some(qc) = &options.qc {
        std::fs::create_dir_all(qc).map_err(ExtractError::io(qc))?;
    }
    let mut report = ExtractReport { fields: fields.len(), ..Default::default() };
    let names = |name: &str| {
        matches!(name, "annotation.csv" | "annotation.xlsx" | "extract.toml" | "novel")
            || molclip_core::is_replicate_folder(name)
    };
    let owner = molclip_core::Ownership {
        marker_file: "extract.toml",
        marker: MARKER,
        names: &names,
        what: "an extracted dataset",
    };
    let mut write = |staging: &Path| -> Result<(), ExtractError> {
        let copy = staging.join(format!("annotation.{extension}"));
        std::fs::copy(&annotation, &copy).map_err(ExtractError::io(&annotation))?;
        let table = molclip_data::Annotation::read_dir(staging)?;
        let counts = fields
            .par_iter()
            .map(|field| -> Result<(usize, usize, [usize; 4]), ExtractError> {
                let x = extract_field(field, cfg, options.masks.as_deref())?;
                let videos: Vec<usize> = (0..x.tracks.len()).filter(|&k| x.kept[k]).collect();
                let split = splits(videos.len(), options.split, field_seed(options.seed, field));
                let mut per_split = [0; 4];
                for (n, (&k, &s)) in videos.iter().zip(&split).enumerate() {
                    let tr = &x.tracks[k];
                    let dir = match s {
                        Split::Novel => staging
                            .join("novel")
                            .join(&field.name)
                            .join(format!("{}-{}_{n}", field.replicate, field.name)),
                        s => staging
                            .join(&field.replicate)
                            .join(s.name())
                            .join(&field.name)
                            .join(format!("{}_{n}", field.name)),
                    };
                    let b = crop::crop_box(tr, &x.frames, &cfg.crop);
                    crop::write_video(&dir, &x.images, tr.first()..=tr.last(), &b, &cfg.crop)?;
                    per_split[match s {
                        Split::Train => 0,
                        Split::Query => 1,
                        Split::Gallery => 2,
                        _ => 3,
                    }] += 1;
                }
                if let Some(qc) = &options.qc {
                    let path = qc.join(format!("{}_{}.png", field.replicate, field.name));
                    qc::write_overlay(&path, &x.images, &x.frames, &x.tracks, &x.kept)?;
                }
                progress();
                Ok((x.frames.len(), x.tracks.len(), per_split))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (frames, tracks, per_split) in counts {
            report.frames += frames;
            report.tracks += tracks;
            for (a, b) in report.videos.iter_mut().zip(per_split) {
                *a += b;
            }
        }
        let known = |drug: &str| table.drugs.contains_key(drug) || table.novel.contains_key(drug);
        report.unannotated = fields.iter().filter(|f| !known(&f.drug)).map(RawField::label).collect();
        let split = match options.split {
            SplitPolicy::Random => "random",
            SplitPolicy::Train => "train",
            SplitPolicy::Novel => "novel",
        };
        let masks =
            options.masks.as_ref().map_or(String::new(), |m| format!(", cells from the masks in {}", m.display()));
        let text = format!(
            "{MARKER} {} from {} (split {split}, seed {}{masks}).\n{}",
            env!("CARGO_PKG_VERSION"),
            raw.display(),
            options.seed,
            cfg.to_toml()
        );
        let path = staging.join("extract.toml");
        std::fs::write(&path, text).map_err(ExtractError::io(&path))
    };
    report.removed_staging =
        molclip_core::publish_dir(out, options.overwrite, &owner, &mut write, &|e: ExtractError, from, to| {
            e.moved(from, to)
        })?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_split_is_about_80_20_seeded_and_has_query_and_gallery() {
        let s = splits(20, SplitPolicy::Random, 3);
        let count = |x: Split| s.iter().filter(|&&v| v == x).count();
        assert_eq!((count(Split::Train), count(Split::Query), count(Split::Gallery)), (16, 2, 2));
        assert_eq!(s, splits(20, SplitPolicy::Random, 3));
        assert_ne!(s, splits(20, SplitPolicy::Random, 4));
        let small = splits(3, SplitPolicy::Random, 1);
        assert_eq!(small.iter().filter(|&&v| v == Split::Train).count(), 1);
    }
}
