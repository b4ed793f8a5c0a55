//! The dataset on disk, in the MitoReID layout (docs/method.md section 3):
//!
//! ```text
//! <out>/annotation.csv             index,drug_id,name,smiles,moa,moa_id
//! <out>/simulation.toml            every parameter and the seed
//! <out>/l1/{train,query,gallery}/<drug index>/<cell>/1.png .. T.png
//! <out>/novel/<drug index>/<replicate>-<cell>/...     held-out drugs
//! ```
//!
//! Every cell draws from its own seeded stream, so the output is byte-identical
//! whatever the number of threads. The dataset is built in a temporary folder
//! beside `out` and renamed into place when complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::biology::{CellResponse, ScreenBiology};
use molclip_core::Split;

use crate::cell::{Cell, CellMovie};
use crate::config::{FrameFormat, SimConfig};
use crate::error::SimError;
use crate::imaging::{expose, gaussian_blur, Replicate};
use crate::library::DrugLibrary;

/// One video to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellJob {
    /// The drug's id.
    pub drug: usize,
    /// The replicate (0-based).
    pub replicate: usize,
    /// `train`, `query`, `gallery` or `novel`.
    pub split: Split,
    /// The cell's number within its drug, replicate and split.
    pub cell: usize,
}

impl CellJob {
    /// Folder of the video relative to the dataset root.
    pub fn relative_dir(&self, library: &DrugLibrary) -> PathBuf {
        let drug = &library.drugs[self.drug].index;
        let cell = format!("cell{:03}", self.cell + 1);
        if self.split == Split::Novel {
            PathBuf::from(Split::Novel.name()).join(drug).join(format!("l{}-{cell}", self.replicate + 1))
        } else {
            PathBuf::from(format!("l{}", self.replicate + 1)).join(self.split.name()).join(drug).join(cell)
        }
    }

    fn seed(&self, seed: u64) -> u64 {
        let split = match self.split {
            Split::Train => 1,
            Split::Query => 2,
            Split::Gallery => 3,
            Split::Novel | Split::Unlabelled => 4,
        };
        let mut h = seed ^ 0x6365_6c6c;
        for v in [self.drug as u64, self.replicate as u64, split, self.cell as u64] {
            h = (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        }
        h
    }
}

/// Everything decided before the first pixel: drugs, programs, replicates, jobs.
pub struct DatasetPlan {
    /// The config it was planned from.
    pub config: SimConfig,
    /// The drugs.
    pub library: DrugLibrary,
    /// How they act.
    pub biology: ScreenBiology,
    /// Each replicate's microscope.
    pub replicates: Vec<Replicate>,
    /// Every cell to render, in a fixed order.
    pub jobs: Vec<CellJob>,
}

impl DatasetPlan {
    /// `base` resolves a relative drug-table path.
    pub fn new(config: SimConfig, base: &Path) -> Result<Self, SimError> {
        config.validate()?;
        let library = DrugLibrary::from_config(&config.library, config.seed, base)?;
        let biology = ScreenBiology::new(&library, &config.biology, config.seed);
        let l = &config.layout;
        let replicates = (0..l.replicates).map(|r| Replicate::draw(&config.imaging, config.seed, r)).collect();
        let mut jobs = Vec::new();
        for r in 0..l.replicates {
            for drug in &library.drugs {
                let splits: Vec<(Split, usize)> = if drug.novel {
                    vec![(Split::Novel, l.novel_cells)]
                } else {
                    vec![
                        (Split::Train, l.train_cells),
                        (Split::Query, l.query_cells),
                        (Split::Gallery, l.gallery_cells),
                    ]
                };
                for (split, n) in splits {
                    jobs.extend((0..n).map(|cell| CellJob { drug: drug.drug_id, replicate: r, split, cell }));
                }
            }
        }
        Ok(Self { config, library, biology, replicates, jobs })
    }

    /// Frames to render in all.
    pub fn frames(&self) -> usize {
        self.jobs.len() * self.config.layout.frames
    }
}

/// Render one video: `frames` images of `size * size` values in [0, 1].
pub fn render_cell_video(plan: &DatasetPlan, job: &CellJob) -> Vec<Vec<f32>> {
    let cfg = &plan.config;
    let (size, frames) = (cfg.layout.size, cfg.layout.frames);
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed(cfg.seed));
    let cell = Cell::draw(&mut rng, size, &cfg.biology);
    let response = CellResponse::draw(&mut rng, &cfg.biology);
    let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
    let cell_gain = (cfg.imaging.cell_gain_spread * normal(&mut rng)).exp();
    let replicate = &plan.replicates[job.replicate];
    let program = &plan.biology.drug_programs[job.drug];
    let mut movie = CellMovie::new(&cell, size, cfg.imaging.drift, rng.random());
    let sigma = cfg.imaging.psf_sigma * size as f64 / 64.0 * replicate.blur;
    (0..frames)
        .map(|t| {
            let time = t as f64 / (frames - 1) as f64;
            let phenotype = response.phenotype(program, time - replicate.time_offset);
            let mut image = movie.next_frame(phenotype);
            // Slight defocus, frame to frame.
            let defocus = 1.0 + 0.12 * normal(&mut rng).abs();
            gaussian_blur(&mut image, size, sigma * defocus);
            let bleach = (1.0 - cfg.imaging.bleaching).powf(time);
            expose(&mut image, replicate, cell_gain, bleach, &mut rng);
            image
        })
        .collect()
}

/// What a generation run did.
#[derive(Debug, Clone)]
pub struct GenerationReport {
    /// Cells written.
    pub cells: usize,
    /// Frames written.
    pub frames: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Drugs in the dataset.
    pub drugs: usize,
    /// MoAs in the dataset.
    pub moas: usize,
    /// Staging folders of interrupted runs that were removed.
    pub removed_staging: Vec<PathBuf>,
}

/// Write the dataset to `out`. `progress` is called once per finished cell.
/// An existing non-empty `out` is an error unless `overwrite`.
pub fn generate(
    plan: &DatasetPlan,
    out: &Path,
    overwrite: bool,
    progress: &(dyn Fn() + Sync),
) -> Result<GenerationReport, SimError> {
    let start = Instant::now();
    let removed_staging = publish(out, overwrite, &mut |staging| write_staging(plan, staging, progress))?;
    Ok(GenerationReport {
        cells: plan.jobs.len(),
        frames: plan.frames(),
        seconds: start.elapsed().as_secs_f64(),
        drugs: plan.library.drugs.len(),
        moas: plan.library.moas.len(),
        removed_staging,
    })
}

/// The first line of every `simulation.toml` this crate writes: what marks a folder as a
/// dataset that `--force` may replace.
const MARKER: &str = "# Written by mitosim";

/// Builds a simulated folder with `write` in a staging folder beside `out` and renames it
/// into place ([`molclip_core::publish_dir`]): `overwrite` replaces only a folder this crate
/// wrote. Returns the staging folders of interrupted runs that were removed.
pub(crate) fn publish(
    out: &Path,
    overwrite: bool,
    write: &mut dyn FnMut(&Path) -> Result<(), SimError>,
) -> Result<Vec<PathBuf>, SimError> {
    let names = |name: &str| {
        matches!(name, "annotation.csv" | "simulation.toml" | "novel" | "ground_truth")
            || molclip_core::is_replicate_folder(name)
    };
    let owner = molclip_core::Ownership {
        marker_file: "simulation.toml",
        marker: MARKER,
        names: &names,
        what: "a simulated dataset",
    };
    molclip_core::publish_dir(out, overwrite, &owner, write, &|e: SimError, from, to| e.moved(from, to))
}

/// Writes every video, the annotation and `simulation.toml` into `staging`.
fn write_staging(plan: &DatasetPlan, staging: &Path, progress: &(dyn Fn() + Sync)) -> Result<(), SimError> {
    plan.jobs.par_iter().try_for_each(|job| -> Result<(), SimError> {
        let dir = staging.join(job.relative_dir(&plan.library));
        fs::create_dir_all(&dir).map_err(SimError::io(&dir))?;
        let video = render_cell_video(plan, job);
        write_video(&dir, &video, plan.config.layout.size, plan.config.layout.format)?;
        progress();
        Ok(())
    })?;
    write_annotation(&staging.join("annotation.csv"), &plan.library)?;
    write_simulation_toml(plan, staging)
}

/// `simulation.toml`, marked as ours: the config that regenerates the folder.
pub(crate) fn write_simulation_toml(plan: &DatasetPlan, staging: &Path) -> Result<(), SimError> {
    let toml = format!(
        "{MARKER} {}. `molclip simulate --config simulation.toml` regenerates this dataset bit for bit.\n{}",
        env!("CARGO_PKG_VERSION"),
        plan.config.to_toml()
    );
    let path = staging.join("simulation.toml");
    fs::write(&path, toml).map_err(SimError::io(&path))
}

fn write_video(dir: &Path, video: &[Vec<f32>], size: usize, format: FrameFormat) -> Result<(), SimError> {
    let side = size as u32;
    // Frames are encoded in memory and written with one call that reports every error (a
    // full disk included), rather than through a buffer whose last flush happens on drop.
    let write = |path: &Path, bytes: &[u8]| fs::write(path, bytes).map_err(SimError::io(path));
    match format {
        FrameFormat::Png => {
            for (t, frame) in video.iter().enumerate() {
                let path = dir.join(format!("{}.png", t + 1));
                let pixels: Vec<u8> = frame.iter().map(|v| (v * 255.0).round() as u8).collect();
                let mut bytes = Vec::new();
                let encoder = image::codecs::png::PngEncoder::new_with_quality(
                    &mut bytes,
                    image::codecs::png::CompressionType::Fast,
                    image::codecs::png::FilterType::Adaptive,
                );
                image::ImageEncoder::write_image(encoder, &pixels, side, side, image::ExtendedColorType::L8)
                    .map_err(|e| SimError::Encode { path: path.clone(), reason: e.to_string() })?;
                write(&path, &bytes)?;
            }
        }
        FrameFormat::Tiff => {
            let path = dir.join("stack.tif");
            let pages: Vec<Vec<u16>> =
                video.iter().map(|frame| frame.iter().map(|v| (v * 65535.0).round() as u16).collect()).collect();
            let pages: Vec<&[u16]> = pages.iter().map(Vec::as_slice).collect();
            let bytes = molclip_core::ome::gray16_stack(size, size, &pages, None)
                .map_err(|e| SimError::Encode { path: path.clone(), reason: e.to_string() })?;
            write(&path, &bytes)?;
        }
    }
    Ok(())
}

pub(crate) fn write_annotation(path: &Path, library: &DrugLibrary) -> Result<(), SimError> {
    let csv_err = |e: csv::Error| SimError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    w.write_record(["index", "drug_id", "name", "smiles", "moa", "moa_id"]).map_err(csv_err)?;
    for d in &library.drugs {
        w.write_record([d.index.as_str(), &d.drug_id.to_string(), &d.name, &d.smiles, &d.moa, &d.moa_id.to_string()])
            .map_err(csv_err)?;
    }
    w.flush().map_err(SimError::io(path))?;
    Ok(())
}
