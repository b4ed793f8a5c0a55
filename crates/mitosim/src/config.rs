//! Every parameter of a simulated dataset. A preset is just a config; the
//! `simulation.toml` written beside a dataset is this struct, seed included,
//! and regenerates it bit for bit.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// The whole simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Fixes every random choice: drugs, programs, cells, noise.
    pub seed: u64,
    /// The drugs and MoAs of the screen.
    pub library: LibraryConfig,
    /// Folders, splits, frame counts and sizes.
    pub layout: LayoutConfig,
    /// How drugs act on the cells.
    pub biology: BiologyConfig,
    /// The microscope: PSF, noise, bleaching, drift.
    pub imaging: ImagingConfig,
    /// Whole fields of view, for `simulate --raw`.
    pub raw: RawConfig,
}

/// Raw time-lapse fields of view (`simulate --raw`): many cells of one drug per field, in
/// three stains, as the microscope writes them, with ground-truth masks and tracks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Field side in pixels.
    pub field_size: usize,
    /// Cells in a field at the first frame, [min, max].
    pub cells: [usize; 2],
    /// Fields per drug and replicate.
    pub fields: usize,
    /// The canvas a cell is drawn on, pixels (a cell spans about 0.7 of it).
    pub cell_size: usize,
    /// Closest distance between two cells' centres at the first frame, in cell sizes
    /// (below 1, some cells touch).
    pub spacing: f64,
    /// Directed motion, pixels per frame (each cell its own direction).
    pub speed: f64,
    /// Random motion, pixels per frame (a random walk's sigma).
    pub jitter: f64,
    /// Share of cells that divide during the video.
    pub divide: f64,
    /// Share of cells that die (detach and vanish) during the video.
    pub die: f64,
    /// Share of cells that walk out of the field.
    pub leave: f64,
    /// Peak brightness of the nuclear stain (w1) and of the cytoplasmic stain (w3), as a
    /// fraction of full scale.
    pub stain_levels: [f64; 2],
    /// `mitoreid` (one 16-bit TIFF per field, time point and stain:
    /// `<field>_<t>_<w1|w2|w3>.tif`) or `ome-tiff` (one OME-TIFF per field).
    pub format: RawFormat,
}

/// How raw fields are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawFormat {
    /// MitoReID's naming: `<field>_<t>_<w1|w2|w3>.tif`, 16-bit grey.
    Mitoreid,
    /// One `<field>.ome.tif` per field: T x 3 16-bit pages, OME-XML in the first page.
    OmeTiff,
}

impl std::str::FromStr for RawFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mitoreid" => Ok(Self::Mitoreid),
            "ome-tiff" => Ok(Self::OmeTiff),
            other => Err(format!("unknown raw format {other:?}: expected mitoreid or ome-tiff")),
        }
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            field_size: 512,
            cells: [15, 40],
            fields: 1,
            cell_size: 64,
            spacing: 0.8,
            speed: 0.4,
            jitter: 0.5,
            divide: 0.04,
            die: 0.03,
            leave: 0.04,
            stain_levels: [0.45, 0.2],
            format: RawFormat::Mitoreid,
        }
    }
}

/// Which drugs, and how many of each MoA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibraryConfig {
    /// A TSV/CSV with columns `name, moa, smiles`; empty for the built-in library.
    pub table: Option<PathBuf>,
    /// Keep only MoAs with at least this many drugs (before the caps below).
    pub min_drugs_per_moa: usize,
    /// Keep the MoAs with the most drugs, at most this many (0: all). The
    /// DMSO control is always added on top.
    pub max_moas: usize,
    /// At most this many drugs per MoA, chosen by the seed (0: all).
    pub drugs_per_moa: usize,
    /// Drugs per MoA held out of training and written to `novel/`.
    pub novel_drugs_per_moa: usize,
}

/// How many cells, frames and pixels, and how they are split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayoutConfig {
    /// Replicate experiments `l1`, `l2`, ...
    pub replicates: usize,
    /// Cells per drug per replicate in each split.
    pub train_cells: usize,
    /// Cells per drug and replicate in the query split.
    pub query_cells: usize,
    /// Cells per drug and replicate in the gallery split.
    pub gallery_cells: usize,
    /// Cells per novel drug per replicate (all written to `novel/`).
    pub novel_cells: usize,
    /// Time points per video (MitoReID: 16).
    pub frames: usize,
    /// Crop side in pixels.
    pub size: usize,
    /// How frames are written (`png` or `tiff`).
    pub format: FrameFormat,
}

/// How frames are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameFormat {
    /// One 8-bit PNG per frame: `1.png .. T.png`.
    Png,
    /// One 16-bit multi-page TIFF stack per cell: `stack.tif`.
    Tiff,
}

impl std::str::FromStr for FrameFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "png" => Ok(Self::Png),
            "tiff" | "tif" => Ok(Self::Tiff),
            other => Err(format!("unknown frame format {other:?}: expected png or tiff")),
        }
    }
}

/// Where the biological signal lives, and how uneven cells are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BiologyConfig {
    /// How much of a drug's deviation from its MoA program comes from its
    /// structure (fixed random projection of its Morgan fingerprint) rather
    /// than from pure noise. 0: the molecule says nothing beyond its MoA.
    pub structure_coupling: f64,
    /// Size of the drug-specific deviation from the MoA program.
    pub drug_effect_scale: f64,
    /// Share of MoAs without a known biology whose programs are weak, close to
    /// the DMSO control.
    pub weak_moa_fraction: f64,
    /// Share of cells that barely respond.
    pub weak_responder_fraction: f64,
    /// Standard deviation of a cell's response timing, in units of the movie.
    pub timing_jitter: f64,
    /// Mitochondrial filaments per cell, range.
    pub filaments: [usize; 2],
}

/// The microscope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagingConfig {
    /// Gaussian point-spread function sigma, in pixels at 64 x 64.
    pub psf_sigma: f64,
    /// Background level as a fraction of full scale, range over replicates.
    pub background: [f64; 2],
    /// Photons per unit of signal (Poisson part of the noise), range over replicates.
    pub photons: [f64; 2],
    /// Read noise sigma as a fraction of full scale, range over replicates.
    pub read_noise: [f64; 2],
    /// Fraction of signal lost to photobleaching by the last frame.
    pub bleaching: f64,
    /// Stage drift per frame, pixels (random walk sigma).
    pub drift: f64,
    /// Per-cell dye loading spread (log-normal sigma): why brightness
    /// alone cannot name a MoA.
    pub cell_gain_spread: f64,
    /// Replicate gain spread (log-normal sigma).
    pub replicate_gain_spread: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::preset("demo").expect("demo preset exists")
    }
}

impl Default for LibraryConfig {
    fn default() -> Self {
        Self { table: None, min_drugs_per_moa: 1, max_moas: 11, drugs_per_moa: 5, novel_drugs_per_moa: 1 }
    }
}

impl LibraryConfig {
    /// The 38 largest MoAs (more than 5 drugs each, as in MitoReID) of the
    /// launched-drug table, at most `drugs_per_moa` drugs each (0: all).
    fn launched_drugs(drugs_per_moa: usize) -> Self {
        Self {
            table: Some(LAUNCHED_DRUGS.into()),
            min_drugs_per_moa: 6,
            max_moas: 38,
            drugs_per_moa,
            novel_drugs_per_moa: 1,
        }
    }
}

impl LayoutConfig {
    fn set_cells(&mut self, train: usize, query: usize, gallery: usize, novel: usize) {
        (self.train_cells, self.query_cells, self.gallery_cells, self.novel_cells) = (train, query, gallery, novel);
    }
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            replicates: 3,
            train_cells: 6,
            query_cells: 2,
            gallery_cells: 2,
            novel_cells: 2,
            frames: 16,
            size: 64,
            format: FrameFormat::Png,
        }
    }
}

impl Default for BiologyConfig {
    fn default() -> Self {
        Self {
            structure_coupling: 0.7,
            drug_effect_scale: 1.0,
            weak_moa_fraction: 0.3,
            weak_responder_fraction: 0.25,
            timing_jitter: 0.08,
            filaments: [14, 30],
        }
    }
}

impl Default for ImagingConfig {
    fn default() -> Self {
        Self {
            psf_sigma: 0.9,
            background: [0.03, 0.08],
            photons: [150.0, 300.0],
            read_noise: [0.008, 0.02],
            bleaching: 0.25,
            drift: 0.35,
            cell_gain_spread: 0.45,
            replicate_gain_spread: 0.15,
        }
    }
}

/// The presets' names.
pub const PRESETS: [&str; 4] = ["tiny", "demo", "bench", "mito"];

/// Where the benchmark presets find their drug table (relative to the repository root).
pub const LAUNCHED_DRUGS: &str = "../shared/data/launched_drugs.tsv";

impl SimConfig {
    /// A named preset:
    /// - `tiny`: 5 MoAs + DMSO, 3 drugs each, 64 x 64, a few cells (tests);
    /// - `demo`: 11 MoAs + DMSO, 5 drugs each, 64 x 64;
    /// - `bench`: the 38 largest MoAs of the launched-drug table, 5 drugs each, 112 x 112;
    /// - `mito`: MitoReID scale: 38 MoAs, every drug (about 1,000), 112 x 112.
    pub fn preset(name: &str) -> Result<Self, SimError> {
        let mut c = Self {
            seed: 0,
            library: LibraryConfig::default(),
            layout: LayoutConfig::default(),
            biology: BiologyConfig::default(),
            imaging: ImagingConfig::default(),
            raw: RawConfig::default(),
        };
        match name {
            "demo" => {}
            "tiny" => {
                c.library.max_moas = 5;
                c.library.drugs_per_moa = 3;
                c.layout.set_cells(2, 1, 1, 1);
            }
            "bench" => {
                c.library = LibraryConfig::launched_drugs(5);
                c.layout.size = 112;
                c.layout.set_cells(4, 2, 2, 2);
            }
            "mito" => {
                c.library = LibraryConfig::launched_drugs(0);
                c.layout.size = 112;
                // ~1,000 drugs x 3 replicates x 12 cells: about 35k videos.
                c.layout.set_cells(8, 2, 2, 3);
            }
            other => return Err(SimError::UnknownPreset(other.into())),
        }
        Ok(c)
    }

    /// Read a config file; unknown fields and bad values are errors naming the field.
    pub fn from_toml_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(SimError::io(path))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            SimError::Parse { reason, .. } => SimError::Parse { path: path.into(), reason },
            other => other,
        })
    }

    /// A config from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, SimError> {
        let config: Self =
            toml::from_str(text).map_err(|e| SimError::Parse { path: "<config>".into(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML (what `simulation.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Check every field that could make a dataset meaningless.
    pub fn validate(&self) -> Result<(), SimError> {
        let l = &self.layout;
        if l.frames < 2 {
            return Err(SimError::config("layout.frames", format!("{} frames: a video needs at least 2", l.frames)));
        }
        if l.size < 16 {
            return Err(SimError::config("layout.size", format!("{} pixels: crops must be at least 16 x 16", l.size)));
        }
        if l.size > 1024 {
            return Err(SimError::config("layout.size", format!("{} pixels: at most 1024", l.size)));
        }
        if l.replicates == 0 || l.replicates > 9 {
            return Err(SimError::config("layout.replicates", format!("{}: expected 1 to 9", l.replicates)));
        }
        for (field, n) in [
            ("layout.train_cells", l.train_cells),
            ("layout.query_cells", l.query_cells),
            ("layout.gallery_cells", l.gallery_cells),
        ] {
            if n == 0 {
                return Err(SimError::config(field, "0 cells: every split needs at least one cell per drug"));
            }
        }
        if self.library.drugs_per_moa == 1 && self.library.novel_drugs_per_moa >= 1 {
            return Err(SimError::config(
                "library.novel_drugs_per_moa",
                "holding out a drug leaves no training drug when drugs_per_moa = 1",
            ));
        }
        let b = &self.biology;
        if !(0.0..=1.0).contains(&b.structure_coupling) {
            return Err(SimError::config(
                "biology.structure_coupling",
                format!("{}: expected a value in [0, 1]", b.structure_coupling),
            ));
        }
        for (field, v) in [
            ("biology.weak_moa_fraction", b.weak_moa_fraction),
            ("biology.weak_responder_fraction", b.weak_responder_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(SimError::config(field, format!("{v}: expected a value in [0, 1]")));
            }
        }
        if b.filaments[0] == 0 || b.filaments[0] > b.filaments[1] {
            return Err(SimError::config(
                "biology.filaments",
                format!("{:?}: expected [min, max] with 1 <= min <= max", b.filaments),
            ));
        }
        let i = &self.imaging;
        for (field, r) in
            [("imaging.background", i.background), ("imaging.photons", i.photons), ("imaging.read_noise", i.read_noise)]
        {
            if !(r[0] >= 0.0 && r[0] <= r[1]) {
                return Err(SimError::config(field, format!("{r:?}: expected [low, high] with 0 <= low <= high")));
            }
        }
        if i.photons[0] <= 0.0 {
            return Err(SimError::config("imaging.photons", "must be positive"));
        }
        if !(i.psf_sigma > 0.0) {
            return Err(SimError::config("imaging.psf_sigma", format!("{}: must be positive", i.psf_sigma)));
        }
        if !(0.0..1.0).contains(&i.bleaching) {
            return Err(SimError::config("imaging.bleaching", format!("{}: expected a value in [0, 1)", i.bleaching)));
        }
        let r = &self.raw;
        if !(64..=4096).contains(&r.field_size) {
            return Err(SimError::config("raw.field_size", format!("{} pixels: expected 64 to 4096", r.field_size)));
        }
        if !(16..=512).contains(&r.cell_size) || 2 * r.cell_size > r.field_size {
            return Err(SimError::config(
                "raw.cell_size",
                format!("{} pixels: expected 16 to 512, at most half the field", r.cell_size),
            ));
        }
        if r.cells[0] == 0 || r.cells[0] > r.cells[1] {
            return Err(SimError::config(
                "raw.cells",
                format!("{:?}: expected [min, max] with 1 <= min <= max", r.cells),
            ));
        }
        if r.fields == 0 {
            return Err(SimError::config("raw.fields", "0 fields: expected at least 1"));
        }
        for (field, v) in [("raw.divide", r.divide), ("raw.die", r.die), ("raw.leave", r.leave)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(SimError::config(field, format!("{v}: expected a share in [0, 1]")));
            }
        }
        if r.divide + r.die + r.leave > 1.0 {
            return Err(SimError::config("raw.divide", "divide + die + leave exceed 1"));
        }
        for (field, v) in [("raw.spacing", r.spacing), ("raw.speed", r.speed), ("raw.jitter", r.jitter)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(SimError::config(field, format!("{v}: expected a finite value >= 0")));
            }
        }
        if !r.stain_levels.iter().all(|v| (0.0..=1.0).contains(v)) {
            return Err(SimError::config(
                "raw.stain_levels",
                format!("{:?}: expected values in [0, 1]", r.stain_levels),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_experiment_configs_in_the_readme_parse_as_documented() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/experiments");
        let read = |name: &str| {
            let c = SimConfig::from_toml_file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            c.validate().unwrap();
            c
        };
        let strong = read("strong-structure.toml");
        assert_eq!((strong.biology.structure_coupling, strong.biology.drug_effect_scale), (1.0, 2.0));
        // Everything else is the demo preset.
        let demo = SimConfig::preset("demo").unwrap();
        assert_eq!((strong.library, strong.layout, strong.imaging), (demo.library, demo.layout, demo.imaging));
        let analogues = read("analogues.toml");
        assert_eq!((analogues.library.drugs_per_moa, analogues.library.max_moas), (12, 11));
        let l = &analogues.layout;
        assert_eq!((l.train_cells, l.query_cells, l.gallery_cells), (2, 1, 1));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "a new experiment config needs a check here");
    }

    #[test]
    fn presets_round_trip_through_toml() {
        for name in PRESETS {
            let c = SimConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(SimConfig::from_toml_str(&c.to_toml()).unwrap(), c, "{name}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |toml: &str| SimConfig::from_toml_str(toml).unwrap_err().to_string();
        assert!(err("[layout]\nframes = 1").contains("layout.frames"));
        assert!(err("[layout]\nsize = 8").contains("layout.size"));
        assert!(err("[biology]\nstructure_coupling = 1.5").contains("structure_coupling"));
        assert!(err("[layout]\ntrain_cells = 0").contains("layout.train_cells"));
        let unknown = err("[layout]\nframez = 16");
        assert!(unknown.contains("framez"), "{unknown}");
        assert!(SimConfig::preset("huge").unwrap_err().to_string().contains("tiny, demo, bench, mito"));
    }

    #[test]
    fn partial_configs_fill_in_documented_defaults() {
        let c = SimConfig::from_toml_str("seed = 9\n[layout]\nsize = 32").unwrap();
        assert_eq!(c.seed, 9);
        assert_eq!(c.layout.size, 32);
        assert_eq!(c.layout.frames, 16);
        assert_eq!(c.biology.structure_coupling, 0.7);
    }
}
