//! From a dataset to batches of tensors `[B, T, C, H, W]`: videos decoded,
//! sampled and augmented in parallel on worker threads, batches built ahead
//! of the trainer (prefetch), optionally with decoded frames cached in memory.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{transform_video, AugmentConfig, VideoTransform};
use crate::error::DataError;
use crate::frames::{read_video_with, FrameOptions, Video};
use crate::index::CellVideo;
use crate::sampler::SamplerConfig;

/// Pixel normalisation after augmentation: `(x - mean) / std`
/// (`molclip data stats` measures them on the training split).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalize {
    /// Subtracted.
    pub mean: f32,
    /// Divided by.
    pub std: f32,
}

impl Default for Normalize {
    fn default() -> Self {
        Self { mean: 0.0, std: 1.0 }
    }
}

/// Everything about reading data for training and evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// How frames are read.
    pub frames: FrameOptions,
    /// How training videos are augmented.
    pub augment: AugmentConfig,
    /// How batches are drawn.
    pub sampler: SamplerConfig,
    /// Pixel normalisation.
    pub normalize: Normalize,
    /// Keep decoded (pre-augmentation) videos in memory: for small datasets.
    pub cache: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl DataConfig {
    /// Refuses values that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), DataError> {
        let a = &self.augment;
        if a.crop == 0 || a.crop > a.resize {
            return Err(DataError::config(
                "augment.crop",
                format!("{}: expected 1 <= crop <= resize ({})", a.crop, a.resize),
            ));
        }
        if !(self.normalize.std > 0.0) {
            return Err(DataError::config("normalize.std", format!("{}: must be positive", self.normalize.std)));
        }
        if self.sampler.p == 0 || self.sampler.k == 0 {
            return Err(DataError::config("sampler", "sampler.p and sampler.k must be at least 1"));
        }
        Ok(())
    }
}

/// Videos of one split (or several), ready to be read by index.
pub struct VideoDataset {
    /// The videos.
    pub cells: Vec<CellVideo>,
    config: DataConfig,
    cache: Vec<OnceLock<Arc<Video>>>,
}

/// How a batch is augmented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Random transforms, seeded by (seed, epoch, video).
    Train {
        /// The run's seed.
        seed: u64,
        /// The epoch.
        epoch: u64,
    },
    /// Centre crop, no jitter.
    Eval,
}

/// A batch: video tensor data plus the labels of each video.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Row-major `[B, T, C, H, W]`.
    pub data: Vec<f32>,
    /// `[B, T, C, H, W]`.
    pub shape: [usize; 5],
    /// Indices into the dataset.
    pub indices: Vec<usize>,
    /// Each video's drug id.
    pub drug_ids: Vec<usize>,
    /// Each video's MoA id.
    pub moa_ids: Vec<usize>,
}

impl VideoDataset {
    /// A dataset of `cells`, read as `config` says.
    pub fn new(cells: Vec<CellVideo>, config: DataConfig) -> Result<Self, DataError> {
        config.validate()?;
        let cache = (0..cells.len()).map(|_| OnceLock::new()).collect();
        Ok(Self { cells, config, cache })
    }

    /// Number of videos.
    pub fn len(&self) -> usize {
        self.cells.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
    /// How videos are read.
    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    fn video(&self, i: usize) -> Result<Arc<Video>, DataError> {
        if let Some(v) = self.cache[i].get() {
            return Ok(v.clone());
        }
        let v = Arc::new(read_video_with(&self.cells[i], &self.config.frames)?);
        if self.config.cache {
            let _ = self.cache[i].set(v.clone());
        }
        Ok(v)
    }

    /// One augmented video, `[T, 1, crop, crop]` appended to `out`.
    pub fn item(&self, i: usize, mode: Mode, out: &mut Vec<f32>) -> Result<usize, DataError> {
        let video = self.video(i)?;
        let a = &self.config.augment;
        let t = match mode {
            Mode::Train { seed, epoch } => VideoTransform::seeded(a, seed, epoch, i as u64),
            Mode::Eval => VideoTransform::centre(a),
        };
        transform_video(&video, a, &t, self.config.normalize.mean, self.config.normalize.std, out);
        Ok(video.frames.len())
    }

    /// Build one batch, its videos in parallel.
    pub fn batch(&self, indices: &[usize], mode: Mode) -> Result<Batch, DataError> {
        let items: Vec<(Vec<f32>, usize)> = indices
            .par_iter()
            .map(|&i| {
                let mut v = Vec::new();
                let t = self.item(i, mode, &mut v)?;
                Ok((v, t))
            })
            .collect::<Result<_, DataError>>()?;
        let t = items.first().map_or(0, |x| x.1);
        if let Some((pos, _)) = items.iter().enumerate().find(|(_, x)| x.1 != t) {
            return Err(DataError::invalid(
                &self.cells[indices[pos]].dir,
                format!("{} frames where the batch has {t}: set frames.frames to make videos equal", items[pos].1),
            ));
        }
        let crop = self.config.augment.crop;
        Ok(Batch {
            data: items.into_iter().flat_map(|x| x.0).collect(),
            shape: [indices.len(), t, 1, crop, crop],
            indices: indices.to_vec(),
            drug_ids: indices.iter().map(|&i| self.cells[i].drug_id).collect(),
            moa_ids: indices.iter().map(|&i| self.cells[i].moa_id).collect(),
        })
    }
}

/// Batches built ahead on a background thread, in order.
pub struct Loader {
    rx: Receiver<Result<Batch, DataError>>,
}

impl Loader {
    /// Start building `batches` (lists of dataset indices). At most
    /// `config.prefetch` batches wait for the consumer.
    pub fn start(dataset: Arc<VideoDataset>, batches: Vec<Vec<usize>>, mode: Mode) -> Self {
        let (tx, rx) = sync_channel(dataset.config.prefetch.max(1));
        std::thread::spawn(move || {
            for indices in batches {
                let batch = dataset.batch(&indices, mode);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Self { rx }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Mean and standard deviation of the pixel values of these videos (the
/// frames the loader would read, before augmentation).
pub fn pixel_stats(cells: &[CellVideo], frames: &FrameOptions) -> Result<Normalize, DataError> {
    let (sum, sq, n) = cells
        .par_iter()
        .map(|c| {
            let v = read_video_with(c, frames)?;
            let (mut s, mut q, mut n) = (0.0f64, 0.0f64, 0usize);
            for f in &v.frames {
                for &x in f {
                    s += x as f64;
                    q += (x as f64) * (x as f64);
                }
                n += f.len();
            }
            Ok::<_, DataError>((s, q, n))
        })
        .try_reduce(|| (0.0, 0.0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1, a.2 + b.2)))?;
    if n == 0 {
        return Err(DataError::config("normalize", "no pixels to measure: the split is empty"));
    }
    let mean = sum / n as f64;
    let std = (sq / n as f64 - mean * mean).max(0.0).sqrt();
    Ok(Normalize { mean: mean as f32, std: std.max(1e-6) as f32 })
}
