//! Raw fields of view (`simulate --raw`): what the microscope records before anyone crops
//! a cell. Each field holds many cells of one drug in three stains (w1 nuclear, w2
//! mitochondrial, w3 cytoplasmic); cells drift and jitter, a few touch, divide, die or
//! walk out of the field; the whole field gets the imaging model (PSF, stage drift,
//! bleaching, Poisson-Gaussian noise). Ground truth comes with it: a label mask per frame
//! whose labels are track ids, and every track's life.
//!
//! ```text
//! <out>/annotation.csv, simulation.toml
//! <out>/l1/<drug>-<k>_<t>_<w1|w2|w3>.tif        (format mitoreid; t from 1)
//! <out>/l1/<drug>-<k>.ome.tif                   (format ome-tiff: T x 3 pages)
//! <out>/ground_truth/l1/<drug>-<k>.masks.tif    T pages of 16-bit labels (0: background)
//! <out>/ground_truth/tracks.csv                 replicate,field,track,first,last,parent,fate
//! ```
//!
//! A field is named as MitoReID names its raw fields: the drug's folder name, `-`, the
//! field's number (`3-2`: drug 3, second field).

use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::biology::CellResponse;
use crate::cell::{Cell, CellMovie};
use crate::config::RawFormat;
use crate::error::SimError;
use crate::imaging::{expose, gaussian_blur};
use crate::writer::{publish, write_annotation, write_simulation_toml, DatasetPlan};

/// The stains of a raw field, in file order: `w1` nuclear, `w2` mitochondrial, `w3` cytoplasmic.
pub const STAINS: [&str; 3] = ["w1", "w2", "w3"];

/// One field to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldJob {
    /// The drug's id.
    pub drug: usize,
    /// The replicate (0-based).
    pub replicate: usize,
    /// The field's number within its drug and replicate (0-based).
    pub field: usize,
}

impl FieldJob {
    /// `<drug index>-<field number>`, as MitoReID names raw fields.
    pub fn name(&self, plan: &DatasetPlan) -> String {
        format!("{}-{}", plan.library.drugs[self.drug].index, self.field + 1)
    }

    fn seed(&self, seed: u64) -> u64 {
        let mut h = seed ^ 0x0066_6965_6c64;
        for v in [self.drug as u64, self.replicate as u64, self.field as u64] {
            h = (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(31) ^ 0x9e37_79b9_7f4a_7c15;
        }
        h
    }
}

/// Every field of a raw screen: each training drug (novel drugs are held out of raw
/// screens), each replicate, `raw.fields` fields each.
pub fn field_jobs(plan: &DatasetPlan) -> Vec<FieldJob> {
    let mut jobs = Vec::new();
    for replicate in 0..plan.config.layout.replicates {
        for drug in plan.library.training_drugs() {
            jobs.extend((0..plan.config.raw.fields).map(|field| FieldJob { drug: drug.drug_id, replicate, field }));
        }
    }
    jobs
}

/// How a ground-truth track ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Still in the field at the last frame.
    Stays,
    /// Split into two daughter tracks.
    Divides,
    /// Detached and vanished.
    Dies,
    /// Walked out of the field.
    Leaves,
}

impl Fate {
    /// The name written to `tracks.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stays => "stays",
            Self::Divides => "divides",
            Self::Dies => "dies",
            Self::Leaves => "leaves",
        }
    }
}

/// One cell's life in a field, as the masks show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackTruth {
    /// The cell's label in the masks (from 1).
    pub id: u16,
    /// First and last frame with at least one pixel of it (0-based); `None` if it never
    /// showed (a daughter born outside the field).
    pub frames: Option<(usize, usize)>,
    /// The mother track of a daughter.
    pub parent: Option<u16>,
    /// How it ends.
    pub fate: Fate,
}

/// One rendered field: three stains of `frames` 16-bit images, and the ground truth.
#[derive(Debug, Clone)]
pub struct RawField {
    /// Field side in pixels.
    pub size: usize,
    /// `stains[s][t]`: stain `s` (w1, w2, w3) at frame `t`, row-major.
    pub stains: [Vec<Vec<u16>>; 3],
    /// Label mask per frame (track ids, 0 for background).
    pub masks: Vec<Vec<u16>>,
    /// Every track.
    pub tracks: Vec<TrackTruth>,
}

/// A cell's plan: who it is, where it goes, when it lives.
struct Actor {
    cell: Cell,
    canvas: usize,
    response: CellResponse,
    gain: f64,
    nucleus_gain: f64,
    movie_seed: u64,
    /// Canvas centre at each frame of its life, from `born`.
    path: Vec<[f64; 2]>,
    born: usize,
    fate: Fate,
    parent: Option<u16>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Plans every cell of a field (initial cells and daughters) before the first pixel.
fn plan_actors(plan: &DatasetPlan, rng: &mut ChaCha8Rng) -> Vec<Actor> {
    let cfg = &plan.config;
    let raw = &cfg.raw;
    let (side, frames, s) = (raw.field_size as f64, cfg.layout.frames, raw.cell_size);
    let n = rng.random_range(raw.cells[0]..=raw.cells[1]);
    // Positions: uniform, at least `spacing` cell sizes apart where room allows.
    let margin = 0.3 * s as f64;
    let mut centres: Vec<[f64; 2]> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut best = ([0.0; 2], f64::MIN);
        for _ in 0..200 {
            let p = [rng.random_range(margin..side - margin), rng.random_range(margin..side - margin)];
            let gap =
                centres.iter().map(|c| ((c[0] - p[0]).powi(2) + (c[1] - p[1]).powi(2)).sqrt()).fold(f64::MAX, f64::min);
            if gap > best.1 {
                best = (p, gap);
            }
            if gap >= raw.spacing * s as f64 {
                break;
            }
        }
        centres.push(best.0);
    }
    let mut actors = Vec::new();
    let walk = |rng: &mut ChaCha8Rng, start: [f64; 2], velocity: [f64; 2], len: usize| -> Vec<[f64; 2]> {
        let mut p = start;
        let mut path = Vec::with_capacity(len);
        for _ in 0..len {
            path.push(p);
            p = [p[0] + velocity[0] + raw.jitter * normal(rng), p[1] + velocity[1] + raw.jitter * normal(rng)];
        }
        path
    };
    for centre in centres {
        let cell = Cell::draw(rng, s, &cfg.biology);
        let response = CellResponse::draw(rng, &cfg.biology);
        let gain = (cfg.imaging.cell_gain_spread * normal(rng)).exp();
        let nucleus_gain = (0.2 * normal(rng)).exp();
        let movie_seed = rng.random();
        let u: f64 = rng.random();
        let fate = if u < raw.divide {
            Fate::Divides
        } else if u < raw.divide + raw.die {
            Fate::Dies
        } else if u < raw.divide + raw.die + raw.leave {
            Fate::Leaves
        } else {
            Fate::Stays
        };
        let heading = rng.random_range(0.0..std::f64::consts::TAU);
        let mut velocity = [raw.speed * heading.cos(), raw.speed * heading.sin()];
        let mut life = frames;
        if fate == Fate::Leaves {
            // Towards the nearest edge, fast enough to be out by two thirds of the video.
            let edges = [
                (centre[0], [-1.0, 0.0]),
                (side - centre[0], [1.0, 0.0]),
                (centre[1], [0.0, -1.0]),
                (side - centre[1], [0.0, 1.0]),
            ];
            let (d, dir) = edges.into_iter().fold((f64::MAX, [0.0; 2]), |a, e| if e.0 < a.0 { e } else { a });
            let speed = (d + s as f64) / (0.66 * frames as f64);
            velocity = [dir[0] * speed, dir[1] * speed];
        } else if matches!(fate, Fate::Divides | Fate::Dies) {
            life = rng.random_range(2..frames.max(3) - 1);
        }
        let path = walk(rng, centre, velocity, life);
        // A label is an index in `actors` + 1: the mother goes before her daughters.
        let id = actors.len() as u16 + 1;
        let mut daughters = Vec::new();
        if fate == Fate::Divides {
            let end = *path.last().expect("a life of at least 2 frames");
            let axis = rng.random_range(0.0..std::f64::consts::TAU);
            let daughter = ((0.8 * s as f64) as usize).max(16);
            for sign in [-1.0, 1.0] {
                let (c, sn) = (axis.cos() * sign, axis.sin() * sign);
                let start = [end[0] + 0.2 * s as f64 * c, end[1] + 0.2 * s as f64 * sn];
                let apart = [velocity[0] + 0.8 * c, velocity[1] + 0.8 * sn];
                let cell = Cell::draw(rng, daughter, &cfg.biology);
                let movie_seed = rng.random();
                let path = walk(rng, start, apart, frames - life);
                daughters.push(Actor {
                    cell,
                    canvas: daughter,
                    response,
                    gain,
                    nucleus_gain,
                    movie_seed,
                    path,
                    born: life,
                    fate: Fate::Stays,
                    parent: Some(id),
                });
            }
        }
        actors.push(Actor {
            cell,
            canvas: s,
            response,
            gain,
            nucleus_gain,
            movie_seed,
            path,
            born: 0,
            fate,
            parent: None,
        });
        actors.extend(daughters);
    }
    actors
}

/// Renders one field.
pub fn render_field(plan: &DatasetPlan, job: &FieldJob) -> RawField {
    let cfg = &plan.config;
    let (raw, frames) = (&cfg.raw, cfg.layout.frames);
    let side = raw.field_size;
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed(cfg.seed));
    let actors = plan_actors(plan, &mut rng);
    let mut noise = ChaCha8Rng::seed_from_u64(rng.random());
    let mut movies: Vec<CellMovie> =
        actors.iter().map(|a| CellMovie::new(&a.cell, a.canvas, cfg.imaging.drift, a.movie_seed)).collect();
    let replicate = &plan.replicates[job.replicate];
    let program = &plan.biology.drug_programs[job.drug];
    let sigma = cfg.imaging.psf_sigma * replicate.blur;
    let [nucleus_level, cytoplasm_level] = raw.stain_levels.map(|v| v as f32);
    let mut stage = [0.0f64; 2];
    let mut out =
        RawField { size: side, stains: Default::default(), masks: Vec::with_capacity(frames), tracks: Vec::new() };
    let mut seen: Vec<Option<(usize, usize)>> = vec![None; actors.len()];
    for t in 0..frames {
        let time = t as f64 / (frames - 1) as f64;
        let mut planes = [vec![0.0f32; side * side], vec![0.0f32; side * side], vec![0.0f32; side * side]];
        let mut mask = vec![0u16; side * side];
        let mut nearest = vec![f32::INFINITY; side * side];
        for (k, (actor, movie)) in actors.iter().zip(&mut movies).enumerate() {
            let Some(&centre) = t.checked_sub(actor.born).and_then(|i| actor.path.get(i)) else { continue };
            let phenotype = actor.response.phenotype(program, time - replicate.time_offset);
            let cell = movie.next_stains(phenotype);
            let half = actor.canvas as f64 / 2.0;
            let (x0, y0) =
                ((centre[0] + stage[0] - half).round() as isize, (centre[1] + stage[1] - half).round() as isize);
            let (gain, nucleus) = (actor.gain as f32, nucleus_level * actor.nucleus_gain as f32);
            for cy in 0..actor.canvas {
                let fy = y0 + cy as isize;
                if fy < 0 || fy >= side as isize {
                    continue;
                }
                for cx in 0..actor.canvas {
                    let fx = x0 + cx as isize;
                    if fx < 0 || fx >= side as isize {
                        continue;
                    }
                    let (c, f) = (cy * actor.canvas + cx, fy as usize * side + fx as usize);
                    planes[0][f] += nucleus * cell.nucleus[c];
                    planes[1][f] += gain * cell.mito[c];
                    planes[2][f] += cytoplasm_level * cell.cytoplasm[c];
                    if cell.extent[c] < 1.0 && cell.extent[c] < nearest[f] {
                        nearest[f] = cell.extent[c];
                        mask[f] = k as u16 + 1;
                    }
                }
            }
        }
        // A cell is in the frame where the mask keeps a pixel of it (a more central
        // neighbour may have taken all of them).
        let mut shown = vec![false; actors.len()];
        for &label in mask.iter().filter(|&&l| l > 0) {
            shown[label as usize - 1] = true;
        }
        for (k, _) in shown.iter().enumerate().filter(|(_, &s)| s) {
            seen[k] = Some(seen[k].map_or((t, t), |(first, _)| (first, t)));
        }
        let bleach = (1.0 - cfg.imaging.bleaching).powf(time);
        for (s, mut plane) in planes.into_iter().enumerate() {
            gaussian_blur(&mut plane, side, sigma);
            expose(&mut plane, replicate, 1.0, bleach, &mut noise);
            out.stains[s].push(plane.iter().map(|v| (v * 65535.0).round() as u16).collect());
        }
        out.masks.push(mask);
        // The stage drifts between frames: every cell moves with it.
        stage[0] += cfg.imaging.drift * normal(&mut noise);
        stage[1] += cfg.imaging.drift * normal(&mut noise);
    }
    // A cell overlapped by a more central neighbour can lose pixels in a frame; its life is
    // still from its first to its last frame in the masks.
    out.tracks = actors
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let fate = match (a.fate, seen[k]) {
                (Fate::Stays, Some((_, last))) if last + 1 < frames => Fate::Leaves,
                (fate, _) => fate,
            };
            TrackTruth { id: k as u16 + 1, frames: seen[k], parent: a.parent, fate }
        })
        .collect();
    out
}

/// What a raw generation run did.
#[derive(Debug, Clone)]
pub struct RawReport {
    /// Fields written.
    pub fields: usize,
    /// Ground-truth tracks in all.
    pub tracks: usize,
    /// Tracks present in every frame.
    pub whole_tracks: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Staging folders of interrupted runs that were removed.
    pub removed_staging: Vec<std::path::PathBuf>,
}

/// Writes the raw screen of `plan` to `out` (see the module's layout), `progress` called
/// once per field. The same safety as [`generate`](crate::generate): built beside `out`,
/// renamed into place, `overwrite` replaces only what this crate wrote.
pub fn generate_raw(
    plan: &DatasetPlan,
    out: &Path,
    overwrite: bool,
    progress: &(dyn Fn() + Sync),
) -> Result<RawReport, SimError> {
    let start = std::time::Instant::now();
    let jobs = field_jobs(plan);
    let frames = plan.config.layout.frames;
    let mut counts = (0, 0);
    let removed_staging = publish(out, overwrite, &mut |staging| {
        let rows = jobs
            .par_iter()
            .map(|job| -> Result<(String, usize, usize), SimError> {
                let field = render_field(plan, job);
                let rep = format!("l{}", job.replicate + 1);
                let name = job.name(plan);
                let dir = staging.join(&rep);
                let truth = staging.join("ground_truth").join(&rep);
                for d in [&dir, &truth] {
                    fs::create_dir_all(d).map_err(SimError::io(d))?;
                }
                write_field(&dir, &name, &field, plan.config.raw.format)?;
                let masks = truth.join(format!("{name}.masks.tif"));
                write_stack(&masks, field.size, &field.masks.iter().map(Vec::as_slice).collect::<Vec<_>>(), None)?;
                progress();
                let mut rows = String::new();
                for tr in &field.tracks {
                    let (first, last) = tr
                        .frames
                        .map_or((String::new(), String::new()), |(f, l)| ((f + 1).to_string(), (l + 1).to_string()));
                    let parent = tr.parent.map_or(String::new(), |p| p.to_string());
                    rows.push_str(&format!("{rep},{name},{},{first},{last},{parent},{}\n", tr.id, tr.fate.name()));
                }
                let whole = field.tracks.iter().filter(|tr| tr.frames == Some((0, frames - 1))).count();
                Ok((rows, field.tracks.len(), whole))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut csv = String::from("replicate,field,track,first,last,parent,fate\n");
        for (rows, tracks, whole) in &rows {
            csv.push_str(rows);
            counts.0 += tracks;
            counts.1 += whole;
        }
        let path = staging.join("ground_truth").join("tracks.csv");
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(SimError::io(parent))?;
        }
        fs::write(&path, csv).map_err(SimError::io(&path))?;
        write_annotation(&staging.join("annotation.csv"), &plan.library)?;
        write_simulation_toml(plan, staging)
    })?;
    Ok(RawReport {
        fields: jobs.len(),
        tracks: counts.0,
        whole_tracks: counts.1,
        seconds: start.elapsed().as_secs_f64(),
        removed_staging,
    })
}

fn write_field(dir: &Path, name: &str, field: &RawField, format: RawFormat) -> Result<(), SimError> {
    let frames = field.masks.len();
    match format {
        RawFormat::Mitoreid => {
            for t in 0..frames {
                for (s, stain) in STAINS.iter().enumerate() {
                    let path = dir.join(format!("{name}_{}_{stain}.tif", t + 1));
                    write_stack(&path, field.size, &[&field.stains[s][t]], None)?;
                }
            }
            Ok(())
        }
        RawFormat::OmeTiff => {
            let path = dir.join(format!("{name}.ome.tif"));
            // Channel fastest, then time: DimensionOrder XYCZT.
            let pages: Vec<&[u16]> = (0..frames)
                .flat_map(|t| (0..3).map(move |s| (t, s)))
                .map(|(t, s)| field.stains[s][t].as_slice())
                .collect();
            let xml = molclip_core::ome::ome_xml(name, field.size, field.size, &STAINS, frames);
            write_stack(&path, field.size, &pages, Some(&xml))
        }
    }
}

/// A multi-page 16-bit grey TIFF, written in one call.
fn write_stack(path: &Path, size: usize, pages: &[&[u16]], description: Option<&str>) -> Result<(), SimError> {
    let bytes = molclip_core::ome::gray16_stack(size, size, pages, description)
        .map_err(|e| SimError::Encode { path: path.into(), reason: e.to_string() })?;
    fs::write(path, bytes).map_err(SimError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;

    fn small() -> DatasetPlan {
        let mut c = SimConfig::preset("tiny").unwrap();
        c.layout.frames = 6;
        c.raw.field_size = 192;
        c.raw.cells = [8, 8];
        c.raw.divide = 0.3;
        c.raw.die = 0.2;
        DatasetPlan::new(c, Path::new(".")).unwrap()
    }

    #[test]
    fn masks_agree_with_the_tracks_and_the_stains() {
        let plan = small();
        let job = field_jobs(&plan)[1];
        let field = render_field(&plan, &job);
        assert_eq!(field.masks.len(), 6);
        assert!(field.stains.iter().all(|s| s.len() == 6 && s.iter().all(|f| f.len() == 192 * 192)));
        // Every label in a mask is a track alive at that frame.
        for (t, mask) in field.masks.iter().enumerate() {
            for &label in mask.iter().filter(|&&l| l > 0) {
                let (first, last) = field.tracks[label as usize - 1].frames.unwrap();
                assert!((first..=last).contains(&t), "track {label} at frame {t}");
            }
        }
        // Daughters are born the frame after their mother's last, and start no earlier.
        for tr in field.tracks.iter().filter(|t| t.parent.is_some()) {
            let mother = &field.tracks[tr.parent.unwrap() as usize - 1];
            assert_eq!(mother.fate, Fate::Divides);
            if let (Some((m_first, m_last)), Some((d_first, _))) = (mother.frames, tr.frames) {
                assert!(d_first > m_last && m_first == 0, "{mother:?} {tr:?}");
            }
        }
        // Nuclei are bright in w1 where the masks are, and dark far from any cell.
        let (inside, outside): (Vec<f64>, Vec<f64>) = (0..192 * 192).fold((vec![], vec![]), |(mut i, mut o), p| {
            let v = field.stains[0][0][p] as f64;
            if field.masks[0][p] > 0 {
                i.push(v)
            } else {
                o.push(v)
            }
            (i, o)
        });
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&inside) > 1.5 * mean(&outside), "{} vs {}", mean(&inside), mean(&outside));
    }

    #[test]
    fn fields_are_deterministic_and_differ_between_jobs() {
        let plan = small();
        let jobs = field_jobs(&plan);
        let a = render_field(&plan, &jobs[0]);
        let b = render_field(&plan, &jobs[0]);
        assert_eq!((a.stains, a.masks), (b.stains.clone(), b.masks.clone()));
        assert_ne!(render_field(&plan, &jobs[2]).masks, b.masks);
    }
}
