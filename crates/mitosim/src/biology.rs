//! Where the signal lives: each MoA is a time program over the phenotype
//! axes ([`crate::AXES`]); each drug bends its MoA's program through its
//! structure; each cell follows its drug's program with its own strength and
//! timing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::BiologyConfig;
use crate::library::{Drug, DrugLibrary, CONTROL_MOA};
use crate::N_AXES;

/// The time course of one phenotype axis: a logistic rise at `onset` (in
/// units of the whole movie, 0..1) with steepness `rate` to `magnitude`,
/// optionally followed by a recovery of share `recovery` from `recovery_onset`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct AxisProgram {
    /// Time (fraction of the video) at which the response starts.
    pub onset: f64,
    /// How fast it rises once started.
    pub rate: f64,
    /// Its full size, in units of the phenotype axis.
    pub magnitude: f64,
    /// How much of it fades again (0: none, 1: all).
    pub recovery: f64,
    /// When the fading starts.
    pub recovery_onset: f64,
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl AxisProgram {
    const fn rise(onset: f64, rate: f64, magnitude: f64) -> Self {
        Self { onset, rate, magnitude, recovery: 0.0, recovery_onset: 1.0 }
    }

    /// The program's level at time `t` (0 to 1 over the video).
    pub fn level(&self, t: f64) -> f64 {
        if self.magnitude == 0.0 {
            return 0.0;
        }
        let rise = logistic((t - self.onset) * self.rate);
        let fall = 1.0 - self.recovery * logistic((t - self.recovery_onset) * self.rate);
        self.magnitude * rise * fall
    }
}

/// A MoA's (or a drug's) program over all axes.
pub type Program = [AxisProgram; N_AXES];

const FRAG: usize = 0;
const SWELL: usize = 1;
const CLUSTER: usize = 2;
const STILL: usize = 3;
const DEPOL: usize = 4;
const FUSE: usize = 5;
const APOP: usize = 6;

/// The programs that follow known biology, matched on the MoA's name. The
/// electron-transport and uncoupler programs end alike (depolarised,
/// fragmented); they differ in when and how fast, so only the dynamics
/// tell them apart.
fn known_program(moa: &str) -> Option<Program> {
    let m = moa.to_lowercase();
    let mut p = Program::default();
    let has = |k: &str| m.contains(k);
    if m == CONTROL_MOA {
        return Some(p);
    }
    if has("uncoupler") {
        p[DEPOL] = AxisProgram::rise(0.05, 25.0, 0.85);
        p[FRAG] = AxisProgram::rise(0.15, 20.0, 0.8);
        p[SWELL] = AxisProgram::rise(0.35, 14.0, 0.45);
    } else if has("complex i ") || has("complex i inhibitor") {
        p[DEPOL] = AxisProgram::rise(0.35, 10.0, 0.6);
        p[FRAG] = AxisProgram::rise(0.5, 10.0, 0.75);
        p[SWELL] = AxisProgram::rise(0.65, 10.0, 0.2);
    } else if has("complex iii") {
        p[DEPOL] = AxisProgram::rise(0.2, 12.0, 0.65);
        p[FRAG] = AxisProgram::rise(0.35, 12.0, 0.6);
        p[SWELL] = AxisProgram::rise(0.3, 10.0, 0.65);
    } else if has("atp synthase") || has("atpase inhibitor") {
        // Oligomycin hyperpolarises first (brighter), then the network breaks late.
        p[DEPOL] = AxisProgram { onset: 0.05, rate: 15.0, magnitude: -0.45, recovery: 0.6, recovery_onset: 0.7 };
        p[FRAG] = AxisProgram::rise(0.65, 10.0, 0.45);
        p[CLUSTER] = AxisProgram::rise(0.5, 8.0, 0.3);
    } else if has("destabil") || has("tubulin polymerization inhibitor") {
        p[STILL] = AxisProgram::rise(0.05, 20.0, 0.9);
        p[CLUSTER] = AxisProgram::rise(0.2, 10.0, 0.45);
        p[FRAG] = AxisProgram::rise(0.55, 8.0, 0.3);
    } else if has("stabilis") || has("stabiliz") || has("tubulin polymerization promoter") {
        p[STILL] = AxisProgram::rise(0.15, 12.0, 0.6);
        p[CLUSTER] = AxisProgram::rise(0.25, 8.0, 0.8);
        p[APOP] = AxisProgram::rise(0.75, 12.0, 0.4);
    } else if has("protein synthesis") || has("ribosom") {
        p[FUSE] = AxisProgram::rise(0.15, 10.0, 0.85);
        p[STILL] = AxisProgram::rise(0.3, 8.0, 0.25);
    } else if has("topoisomerase") {
        p[APOP] = AxisProgram::rise(0.6, 14.0, 0.7);
        p[FRAG] = AxisProgram::rise(0.55, 12.0, 0.5);
        p[CLUSTER] = AxisProgram::rise(0.5, 10.0, 0.3);
    } else {
        return None;
    }
    Some(p)
}

/// A program drawn from the seed for a MoA without known mitochondrial
/// biology: one to three axes, some weak (close to the control), some
/// transient.
fn random_program(rng: &mut ChaCha8Rng, weak: bool) -> Program {
    let mut p = Program::default();
    let n_axes = rng.random_range(1..=3);
    for _ in 0..n_axes {
        let axis = rng.random_range(0..N_AXES);
        let magnitude = if weak { rng.random_range(0.05..0.25) } else { rng.random_range(0.3..0.85) };
        let sign = if axis == DEPOL && rng.random_bool(0.25) { -0.6 } else { 1.0 };
        let onset = rng.random_range(0.0..0.75);
        let transient = rng.random_bool(0.3);
        p[axis] = AxisProgram {
            onset,
            rate: rng.random_range(6.0..22.0),
            magnitude: sign * magnitude,
            recovery: if transient { rng.random_range(0.5..0.9) } else { 0.0 },
            recovery_onset: if transient { (onset + rng.random_range(0.2..0.5)).min(0.95) } else { 1.0 },
        };
    }
    p
}

/// Every MoA's program and every drug's variation of it.
#[derive(Debug, Clone)]
pub struct ScreenBiology {
    /// Each MoA's program on each phenotype axis.
    pub moa_programs: Vec<Program>,
    /// Each drug's own deviation from its MoA's program.
    pub drug_programs: Vec<Program>,
}

/// Components of the structure-derived drug effect vector.
const EFFECT_DIMS: usize = 2 + N_AXES;

impl ScreenBiology {
    /// The screen's biology: MoA programs and per-drug deviations, drawn from `seed`.
    pub fn new(library: &DrugLibrary, config: &BiologyConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0062_696f_6c6f_6779);
        let moa_programs: Vec<Program> = library
            .moas
            .iter()
            .map(|moa| {
                let weak = rng.random_bool(config.weak_moa_fraction);
                let drawn = random_program(&mut rng, weak);
                known_program(moa).unwrap_or(drawn)
            })
            .collect();
        let projection = StructureProjection::new(seed, library.drugs.first().map_or(2048, |d| d.fingerprint.len()));
        let drug_programs = library
            .drugs
            .iter()
            .map(|drug| {
                let effect = projection.effect(drug, config.structure_coupling, seed);
                modulate(&moa_programs[drug.moa_id], &effect, config.drug_effect_scale, drug.moa == CONTROL_MOA)
            })
            .collect();
        Self { moa_programs, drug_programs }
    }
}

/// A fixed Gaussian random projection of the fingerprint: similar
/// structures get similar effects.
struct StructureProjection {
    weights: Vec<[f64; EFFECT_DIMS]>,
}

impl StructureProjection {
    fn new(seed: u64, bits: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7072_6f6a);
        let weights = (0..bits).map(|_| std::array::from_fn(|_| StandardNormal.sample(&mut rng))).collect();
        Self { weights }
    }

    /// Unit-variance effect vector: `c * structure + sqrt(1 - c^2) * noise`.
    fn effect(&self, drug: &Drug, coupling: f64, seed: u64) -> [f64; EFFECT_DIMS] {
        let mut z = [0.0; EFFECT_DIMS];
        let on = drug.fingerprint.iter().filter(|&&b| b > 0.0).count().max(1) as f64;
        for (bit, &value) in drug.fingerprint.iter().enumerate() {
            if value > 0.0 {
                for (zk, wk) in z.iter_mut().zip(&self.weights[bit]) {
                    *zk += wk;
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ (drug.drug_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x006e_6f69_7365,
        );
        let noise_share = (1.0 - coupling * coupling).sqrt();
        std::array::from_fn(|k| {
            let e: f64 = StandardNormal.sample(&mut rng);
            coupling * z[k] / on.sqrt() + noise_share * e
        })
    }
}

/// The drug's own program: its MoA's, with potency (magnitude and onset)
/// and a small per-axis offset from the effect vector.
fn modulate(moa: &Program, effect: &[f64; EFFECT_DIMS], scale: f64, control: bool) -> Program {
    if control {
        return *moa;
    }
    let potency = (0.3 * scale * effect[0]).exp().clamp(0.5, 1.8);
    let shift = -0.07 * scale * effect[1];
    std::array::from_fn(|k| {
        let base = moa[k];
        let offset = 0.12 * scale * effect[2 + k];
        if base.magnitude == 0.0 {
            // A faint side effect on an axis the MoA does not use.
            let m = 0.6 * offset;
            if m.abs() < 0.04 {
                return AxisProgram::default();
            }
            return AxisProgram::rise(0.4 + shift, 10.0, if k == DEPOL { m } else { m.abs() });
        }
        AxisProgram {
            onset: (base.onset + shift).clamp(-0.1, 0.95),
            magnitude: (base.magnitude * potency + offset.copysign(base.magnitude)).clamp(-0.8, 1.0),
            recovery_onset: (base.recovery_onset + shift).clamp(0.0, 1.2),
            ..base
        }
    })
}

/// How one cell follows its drug's program.
#[derive(Debug, Clone, Copy)]
pub struct CellResponse {
    /// Multiplies every axis; weak responders sit near 0.
    pub strength: f64,
    /// Shifts the program in time (positive: later).
    pub delay: f64,
}

impl CellResponse {
    /// A random program, as `config` describes them.
    pub fn draw(rng: &mut ChaCha8Rng, config: &BiologyConfig) -> Self {
        let strength = if rng.random_bool(config.weak_responder_fraction) {
            rng.random_range(0.0..0.35)
        } else {
            rng.random_range(0.6..1.15)
        };
        let z: f64 = StandardNormal.sample(rng);
        let delay = config.timing_jitter * z;
        Self { strength, delay }
    }

    /// Phenotype levels at movie time `t` (0 at the first frame, 1 at the last).
    pub fn phenotype(&self, program: &Program, t: f64) -> [f64; N_AXES] {
        std::array::from_fn(|k| (self.strength * program[k].level(t - self.delay)).clamp(-1.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LibraryConfig;

    fn library() -> DrugLibrary {
        DrugLibrary::from_config(&LibraryConfig::default(), 3, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn control_does_nothing_and_uncouplers_depolarise_early() {
        let lib = library();
        let bio = ScreenBiology::new(&lib, &BiologyConfig::default(), 3);
        assert!(bio.drug_programs[0].iter().all(|a| a.level(0.5) == 0.0));
        let fccp = lib.drugs.iter().position(|d| d.name == "FCCP").unwrap();
        let rot = lib.drugs.iter().position(|d| d.name == "rotenone").unwrap();
        let p = &bio.drug_programs[fccp];
        assert!(p[DEPOL].level(0.25) > 0.4, "{:?}", p[DEPOL]);
        // Rotenone reaches a similar end state later.
        assert!(bio.drug_programs[rot][DEPOL].level(0.25) < p[DEPOL].level(0.25));
    }

    #[test]
    fn without_structure_coupling_the_effect_ignores_the_fingerprint() {
        let lib = library();
        let proj = StructureProjection::new(3, 2048);
        let mut twin = lib.drugs[3].clone();
        twin.fingerprint = lib.drugs[9].fingerprint.clone();
        assert_eq!(proj.effect(&lib.drugs[3], 0.0, 3), proj.effect(&twin, 0.0, 3));
        assert_ne!(proj.effect(&lib.drugs[3], 0.7, 3), proj.effect(&twin, 0.7, 3));
    }
}
