//! Every parameter of extraction, with its default, in one TOML file
//! (`molclip extract --config`): sections `[segment]`, `[track]` and `[crop]`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ExtractError;

/// Segmentation, tracking and cropping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractConfig {
    /// Nuclei from w1, then cells by seeded watershed on w2 + w3.
    pub segment: SegmentConfig,
    /// Linking cells from frame to frame.
    pub track: TrackConfig,
    /// Which tracks become videos, and how they are cut out and written.
    pub crop: CropConfig,
}

/// Nuclei: smoothing, Otsu's threshold, distance-transform seeds; cells: seeded watershed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentConfig {
    /// Gaussian sigma (pixels) smoothing w1 before thresholding nuclei.
    pub nucleus_sigma: f32,
    /// Multiplies Otsu's threshold of smoothed w1 (above 1: stricter).
    pub nucleus_threshold: f32,
    /// Nuclei smaller than this (pixels) are debris.
    pub min_nucleus_area: usize,
    /// Seeds are maxima of the nuclei's distance transform over a square of this
    /// half-width (pixels): two nuclei closer than this merge.
    pub seed_radius: usize,
    /// Seeds lower than this distance to the nucleus edge (pixels) are noise.
    pub min_seed_depth: f32,
    /// Gaussian sigma (pixels) smoothing the cell image (w2, w3 weighted) before
    /// thresholding and flooding.
    pub cell_sigma: f32,
    /// Weights of w2 and w3 in the cell image.
    pub cell_weights: [f32; 2],
    /// Multiplies Otsu's threshold of the smoothed cell image.
    pub cell_threshold: f32,
    /// Cells smaller than this (pixels) are dropped.
    pub min_cell_area: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            nucleus_sigma: 2.0,
            nucleus_threshold: 1.0,
            min_nucleus_area: 30,
            seed_radius: 7,
            min_seed_depth: 2.0,
            cell_sigma: 1.5,
            cell_weights: [0.3, 1.0],
            cell_threshold: 0.6,
            min_cell_area: 150,
        }
    }
}

/// Frame-to-frame assignment (the Hungarian method) on overlap and centroid distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackConfig {
    /// Centroids further apart than this (pixels) are never the same cell.
    pub max_distance: f64,
    /// A track may miss this many frames and be picked up again.
    pub max_gap: usize,
}

impl Default for TrackConfig {
    fn default() -> Self {
        Self { max_distance: 25.0, max_gap: 1 }
    }
}

/// How crops are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropFormat {
    /// `1.jpg .. T.jpg`: 8-bit RGB JPEG, R = w3, G = w2, B = w1, as MitoReID writes them.
    Jpeg,
    /// `stack.tif`: a 16-bit OME-TIFF of T x 3 pages (w1, w2, w3), nothing lost.
    Tiff,
}

impl std::str::FromStr for CropFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jpeg" => Ok(Self::Jpeg),
            "tiff" => Ok(Self::Tiff),
            other => Err(format!("unknown crop format {other:?}: expected jpeg or tiff")),
        }
    }
}

/// Which tracks become videos, and their crops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CropConfig {
    /// Tracks spanning fewer frames are dropped; 0: every frame of the field (MitoReID).
    pub min_frames: usize,
    /// Side of the square crop: the cell's largest extent over the track times this.
    pub margin: f64,
    /// Crops are at least this many pixels wide.
    pub min_size: usize,
    /// And at most this many (MitoReID: 512).
    pub max_size: usize,
    /// `jpeg` or `tiff`.
    pub format: CropFormat,
    /// JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
}

impl Default for CropConfig {
    fn default() -> Self {
        Self { min_frames: 0, margin: 1.15, min_size: 32, max_size: 512, format: CropFormat::Jpeg, jpeg_quality: 95 }
    }
}

impl ExtractConfig {
    /// Reads a config file; unknown fields and bad values are errors naming the field.
    pub fn from_toml_file(path: &Path) -> Result<Self, ExtractError> {
        let text = std::fs::read_to_string(path).map_err(ExtractError::io(path))?;
        Self::from_toml_str(&text, path)
    }

    /// A config from TOML text; `source` names it in errors.
    pub fn from_toml_str(text: &str, source: &Path) -> Result<Self, ExtractError> {
        let config: Self =
            toml::from_str(text).map_err(|e| ExtractError::Invalid { path: source.into(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, every field written.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Checks every field that could make extraction meaningless.
    pub fn validate(&self) -> Result<(), ExtractError> {
        let s = &self.segment;
        for (field, v) in [("segment.nucleus_sigma", s.nucleus_sigma), ("segment.cell_sigma", s.cell_sigma)] {
            if !(v > 0.0 && v <= 20.0) {
                return Err(ExtractError::config(field, format!("{v}: expected a sigma in (0, 20] pixels")));
            }
        }
        for (field, v) in
            [("segment.nucleus_threshold", s.nucleus_threshold), ("segment.cell_threshold", s.cell_threshold)]
        {
            if !(v > 0.0 && v.is_finite()) {
                return Err(ExtractError::config(field, format!("{v}: expected a positive factor")));
            }
        }
        if !s.cell_weights.iter().all(|w| *w >= 0.0 && w.is_finite()) || s.cell_weights.iter().sum::<f32>() <= 0.0 {
            return Err(ExtractError::config(
                "segment.cell_weights",
                format!("{:?}: expected two weights >= 0, not both 0", s.cell_weights),
            ));
        }
        if s.seed_radius == 0 || s.seed_radius > 100 {
            return Err(ExtractError::config(
                "segment.seed_radius",
                format!("{}: expected 1 to 100 pixels", s.seed_radius),
            ));
        }
        if !(s.min_seed_depth >= 0.0) {
            return Err(ExtractError::config("segment.min_seed_depth", format!("{}: expected >= 0", s.min_seed_depth)));
        }
        if !(self.track.max_distance > 0.0) {
            return Err(ExtractError::config(
                "track.max_distance",
                format!("{}: expected a positive distance", self.track.max_distance),
            ));
        }
        let c = &self.crop;
        if !(c.margin >= 1.0 && c.margin <= 4.0) {
            return Err(ExtractError::config("crop.margin", format!("{}: expected 1 to 4", c.margin)));
        }
        if c.min_size < 8 || c.min_size > c.max_size || c.max_size > 4096 {
            return Err(ExtractError::config(
                "crop.min_size",
                format!("[{}, {}]: expected 8 <= min_size <= max_size <= 4096", c.min_size, c.max_size),
            ));
        }
        if !(1..=100).contains(&c.jpeg_quality) {
            return Err(ExtractError::config("crop.jpeg_quality", format!("{}: expected 1 to 100", c.jpeg_quality)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/extract.toml");
        assert_eq!(ExtractConfig::from_toml_file(&path).unwrap(), ExtractConfig::default());
    }

    #[test]
    fn defaults_round_trip_and_bad_values_name_their_field() {
        let c = ExtractConfig::default();
        c.validate().unwrap();
        assert_eq!(toml::from_str::<ExtractConfig>(&c.to_toml()).unwrap(), c);
        let err = |text: &str| {
            let c: Result<ExtractConfig, _> = toml::from_str(text);
            match c {
                Ok(c) => c.validate().unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert!(err("[segment]\nnucleus_sigma = 0").contains("segment.nucleus_sigma"));
        assert!(err("[crop]\nmax_size = 4").contains("crop.min_size"));
        assert!(err("[track]\nmax_distance = -1").contains("track.max_distance"));
        assert!(err("[track]\nmax_dist = 3").contains("max_dist"));
    }
}
