//! From a dataset to batches of tensors `[B, T, C, H, W]`: videos decoded,
//! sampled, resized and augmented in parallel on worker threads, batches built
//! ahead of the trainer (prefetch), optionally with the resized frames cached in
//! memory (u8 or u16, under a budget).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{transform_video, AugmentConfig, VideoTransform};
use crate::error::DataError;
use crate::frames::{read_video_with, sample_indices, FrameCountError, FrameOptions, Video};
use crate::index::CellVideo;
use crate::resize::{resize_video, ResizedVideo};
use crate::sampler::SamplerConfig;

/// Pixel normalisation after augmentation, per channel: `(x - mean[c]) / std[c]`
/// (`molclip data stats` measures them on the training split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalize {
    /// Subtracted: one value for every channel, or one per channel.
    pub mean: PerChannel,
    /// Divided by: one value for every channel, or one per channel.
    pub std: PerChannel,
}

impl Default for Normalize {
    fn default() -> Self {
        Self { mean: PerChannel(vec![0.0]), std: PerChannel(vec![1.0]) }
    }
}

/// One value for every channel (`0.5`), or one per channel (`[0.023, 0.060, 0.015]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerChannel(pub Vec<f32>);

impl Serialize for PerChannel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_f32(*one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PerChannel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(f32),
            Many(Vec<f32>),
        }
        Ok(PerChannel(match OneOrMany::deserialize(d)? {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }))
    }
}

/// Everything about reading data for training and evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Keep the resized (pre-augmentation) videos in memory, at their source's depth (u8
    /// or u16), up to `cache_mb`; beyond it, videos are read from disk every time.
    pub cache: bool,
    /// The cache's budget in MiB (a 16-frame RGB video at 128 × 128 takes 0.75 MiB in u8).
    pub cache_mb: usize,
    /// Batches prepared ahead of the consumer (the trainer) on a background thread, so that
    /// reading and augmenting overlap the training step; 0 builds each batch when the step
    /// asks for it.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            frames: FrameOptions::default(),
            augment: AugmentConfig::default(),
            sampler: SamplerConfig::default(),
            normalize: Normalize::default(),
            cache: false,
            cache_mb: 4096,
            prefetch: 0,
        }
    }
}

impl DataConfig {
    /// Refuses values that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), DataError> {
        if let Some((field, problem)) = self.augment.invalid() {
            return Err(DataError::config(format!("augment.{field}"), problem));
        }
        self.frames.channels.validate()?;
        let channels = self.frames.channels.count();
        for (field, values) in [("normalize.mean", &self.normalize.mean), ("normalize.std", &self.normalize.std)] {
            if values.0.len() != 1 && values.0.len() != channels {
                return Err(DataError::config(
                    field,
                    format!(
                        "{} values for {channels} channel(s) (frames.channels): give one, or one per channel",
                        values.0.len()
                    ),
                ));
            }
        }
        if let Some(bad) = self.normalize.std.0.iter().find(|s| !(**s > 0.0)) {
            return Err(DataError::config("normalize.std", format!("{bad}: must be positive")));
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
    cache: Vec<OnceLock<Arc<ResizedVideo>>>,
    /// Bytes the cache holds (or has promised to slots being filled).
    cached_bytes: AtomicUsize,
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
    /// Each video's MoA id in the MoA task.
    pub moa_ids: Vec<Option<usize>>,
}

impl VideoDataset {
    /// A dataset of `cells`, read as `config` says.
    pub fn new(cells: Vec<CellVideo>, config: DataConfig) -> Result<Self, DataError> {
        config.validate()?;
        let cache = (0..cells.len()).map(|_| OnceLock::new()).collect();
        Ok(Self { cells, config, cache, cached_bytes: AtomicUsize::new(0) })
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

    /// Bytes the cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes.load(Ordering::Relaxed)
    }

    fn video(&self, i: usize) -> Result<Arc<ResizedVideo>, DataError> {
        if let Some(v) = self.cache[i].get() {
            return Ok(v.clone());
        }
        let decoded = read_video_with(&self.cells[i], &self.config.frames)?;
        let v = Arc::new(resize_video(&decoded, self.config.augment.resize));
        if self.config.cache {
            let budget = self.config.cache_mb.saturating_mul(1 << 20);
            let bytes = v.bytes();
            let reserved = self
                .cached_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used + bytes <= budget).then_some(used + bytes)
                })
                .is_ok();
            if reserved && self.cache[i].set(v.clone()).is_err() {
                // Another thread filled the slot first: give the reservation back.
                self.cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
        Ok(v)
    }

    /// One augmented video, `[T, C, crop, crop]` appended to `out`.
    pub fn item(&self, i: usize, mode: Mode, out: &mut Vec<f32>) -> Result<usize, DataError> {
        let a = &self.config.augment;
        let t = match mode {
            Mode::Train { seed, epoch } => VideoTransform::seeded(a, seed, epoch, i as u64),
            Mode::Eval => VideoTransform::centre(a),
        };
        Ok(model_input(&*self.video(i)?, &self.config, &t, out))
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
        let (data, t) =
            stack(items).map_err(|e| DataError::invalid(&self.cells[indices[e.position]].dir, e.to_string()))?;
        let crop = self.config.augment.crop;
        Ok(Batch {
            data,
            shape: [indices.len(), t, self.config.frames.channels.count(), crop, crop],
            indices: indices.to_vec(),
            drug_ids: indices.iter().map(|&i| self.cells[i].drug_id).collect(),
            moa_ids: indices.iter().map(|&i| self.cells[i].moa_id).collect(),
        })
    }
}

/// A video whose frame count differs from the rest of its batch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{frames} frames where the batch has {batch}: set data.frames.frames to make videos equal")]
pub struct UnequalFrames {
    /// Its position in the batch.
    pub position: usize,
    /// Its frame count.
    pub frames: usize,
    /// The batch's (its first video's).
    pub batch: usize,
}

/// Videos (each its `[T, C, H, W]` values and T) stacked into one batch buffer, allocated
/// once at its exact size (a collect from a flattening iterator would grow it by doubling,
/// to up to twice that); returns it and T.
pub fn stack(items: Vec<(Vec<f32>, usize)>) -> Result<(Vec<f32>, usize), UnequalFrames> {
    let batch = items.first().map_or(0, |x| x.1);
    if let Some(position) = items.iter().position(|x| x.1 != batch) {
        return Err(UnequalFrames { position, frames: items[position].1, batch });
    }
    let mut data = Vec::with_capacity(items.iter().map(|x| x.0.len()).sum());
    for (item, _) in items {
        data.extend_from_slice(&item);
    }
    Ok((data, batch))
}

/// A resized video transformed by `t` and normalised, `[T, C, crop, crop]` appended to `out`;
/// returns its frame count.
fn model_input(video: &ResizedVideo, config: &DataConfig, t: &VideoTransform, out: &mut Vec<f32>) -> usize {
    let video = video.to_video();
    let n = &config.normalize;
    transform_video(&video, &config.augment, t, &n.mean.0, &n.std.0, out);
    video.frames.len()
}

/// The evaluation input of a video already in memory (every frame, the channels the model
/// sees): what [`VideoDataset::item`] makes of the same video read from disk in
/// [`Mode::Eval`]. Frames sampled as `config.frames` says, resized and quantised to the
/// video's depth, centre-cropped and normalised; `[T, C, crop, crop]` appended to `out`.
/// Returns its frame count.
pub fn eval_input(video: &Video, config: &DataConfig, out: &mut Vec<f32>) -> Result<usize, FrameCountError> {
    let picks = sample_indices(video.frames.len(), config.frames.frames, config.frames.short)?;
    let sampled = Video { frames: picks.iter().map(|&i| video.frames[i].clone()).collect(), ..video.clone_header() };
    let resized = resize_video(&sampled, config.augment.resize);
    Ok(model_input(&resized, config, &VideoTransform::centre(&config.augment), out))
}

/// Batches in order: built ahead on a background thread (`config.prefetch` ≥ 1), or each
/// on the consumer's thread when it asks for it (`prefetch = 0`).
pub struct Loader {
    source: Source,
}

enum Source {
    Ahead(Receiver<Result<Batch, DataError>>),
    Inline { dataset: Arc<VideoDataset>, batches: std::vec::IntoIter<Vec<usize>>, mode: Mode, failed: bool },
}

impl Loader {
    /// Start building `batches` (lists of dataset indices). At most
    /// `config.prefetch` batches wait for the consumer, besides the one being built; none
    /// is built ahead with `prefetch = 0`. The first error ends the batches.
    pub fn start(dataset: Arc<VideoDataset>, batches: Vec<Vec<usize>>, mode: Mode) -> Self {
        let prefetch = dataset.config.prefetch;
        if prefetch == 0 {
            return Self { source: Source::Inline { dataset, batches: batches.into_iter(), mode, failed: false } };
        }
        let (tx, rx) = sync_channel(prefetch);
        std::thread::spawn(move || {
            for indices in batches {
                let batch = dataset.batch(&indices, mode);
                let failed = batch.is_err();
                // A consumer that stopped early has dropped the receiver: stop too.
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Self { source: Source::Ahead(rx) }
    }

    /// Whether batches are built ahead of the consumer (`prefetch` ≥ 1).
    pub fn builds_ahead(&self) -> bool {
        matches!(self.source, Source::Ahead(_))
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Ahead(rx) => rx.recv().ok(),
            Source::Inline { failed: true, .. } => None,
            Source::Inline { dataset, batches, mode, failed } => {
                let batch = dataset.batch(&batches.next()?, *mode);
                *failed = batch.is_err();
                Some(batch)
            }
        }
    }
}

/// Mean and standard deviation of the pixel values of these videos, per channel (the
/// frames the loader would read, resized, before augmentation).
pub fn pixel_stats(cells: &[CellVideo], frames: &FrameOptions, resize: usize) -> Result<Normalize, DataError> {
    let channels = frames.channels.count();
    // Per channel: sum, sum of squares, count.
    let zero = || vec![(0.0f64, 0.0f64, 0usize); channels];
    let sums = cells
        .par_iter()
        .map(|c| {
            let v = resize_video(&read_video_with(c, frames)?, resize).to_video();
            let mut acc = zero();
            let plane = v.width * v.height;
            for f in &v.frames {
                for (k, p) in f.chunks_exact(plane.max(1)).enumerate() {
                    let a = &mut acc[k % channels];
                    for &x in p {
                        a.0 += x as f64;
                        a.1 += (x as f64) * (x as f64);
                    }
                    a.2 += p.len();
                }
            }
            Ok::<_, DataError>(acc)
        })
        .try_reduce(zero, |a, b| Ok(a.iter().zip(&b).map(|(x, y)| (x.0 + y.0, x.1 + y.1, x.2 + y.2)).collect()))?;
    if sums.iter().any(|s| s.2 == 0) {
        return Err(DataError::config("normalize", "no pixels to measure: the split is empty"));
    }
    let (mut mean, mut std) = (Vec::new(), Vec::new());
    for (s, q, n) in sums {
        let m = s / n as f64;
        mean.push(m as f32);
        std.push((q / n as f64 - m * m).max(0.0).sqrt().max(1e-6) as f32);
    }
    Ok(Normalize { mean: PerChannel(mean), std: PerChannel(std) })
}
