//! MitoReID's video augmentation: resize to 128, random rotation and flips,
//! random 112 crop, brightness and contrast jitter; centre crop at test.
//! One spatial transform per video, applied to every frame, so motion
//! between frames is preserved. Resize, rotation, flip and crop are
//! composed into a single bilinear resampling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::frames::Video;

/// Random transforms of training videos (the same for every frame of a video).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Side the frame is resized to before cropping.
    pub resize: usize,
    /// Side of the crop the model sees.
    pub crop: usize,
    /// Random rotation up to this many degrees either way (0: none).
    pub max_rotation: f32,
    /// Flip left-right at random.
    pub hflip: bool,
    /// Flip top-bottom at random.
    pub vflip: bool,
    /// Brightness factor drawn from [1 - b, 1 + b].
    pub brightness: f32,
    /// Contrast factor drawn from [1 - c, 1 + c].
    pub contrast: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { resize: 128, crop: 112, max_rotation: 180.0, hflip: true, vflip: true, brightness: 0.2, contrast: 0.2 }
    }
}

/// One video's draw of the random transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoTransform {
    /// Rotation.
    pub angle_degrees: f32,
    /// Left-right flip.
    pub hflip: bool,
    /// Top-bottom flip.
    pub vflip: bool,
    /// Crop origin in the resized frame.
    pub x0: usize,
    /// Crop's top row.
    pub y0: usize,
    /// Added brightness.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
}

impl VideoTransform {
    /// Test time: centre crop, nothing random.
    pub fn centre(config: &AugmentConfig) -> Self {
        let off = config.resize.saturating_sub(config.crop) / 2;
        Self { angle_degrees: 0.0, hflip: false, vflip: false, x0: off, y0: off, brightness: 1.0, contrast: 1.0 }
    }

    /// A random transform, as `config` allows.
    pub fn random(config: &AugmentConfig, rng: &mut ChaCha8Rng) -> Self {
        let slack = config.resize.saturating_sub(config.crop);
        let factor = |rng: &mut ChaCha8Rng, j: f32| if j > 0.0 { rng.random_range(1.0 - j..=1.0 + j) } else { 1.0 };
        Self {
            angle_degrees: if config.max_rotation > 0.0 {
                rng.random_range(-config.max_rotation..=config.max_rotation)
            } else {
                0.0
            },
            hflip: config.hflip && rng.random_bool(0.5),
            vflip: config.vflip && rng.random_bool(0.5),
            x0: rng.random_range(0..=slack),
            y0: rng.random_range(0..=slack),
            brightness: factor(rng, config.brightness),
            contrast: factor(rng, config.contrast),
        }
    }

    /// Seeded per (seed, epoch, video), so a batch is the same whatever the
    /// thread that builds it.
    pub fn seeded(config: &AugmentConfig, seed: u64, epoch: u64, video: u64) -> Self {
        let mix = seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ video.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        Self::random(config, &mut ChaCha8Rng::seed_from_u64(mix))
    }
}

/// Per output pixel: four source indices and bilinear weights (weights of
/// taps outside the frame are zero: the rotated corners are black).
struct Resampler {
    taps: Vec<([u32; 4], [f32; 4])>,
}

impl Resampler {
    fn new(width: usize, height: usize, config: &AugmentConfig, t: &VideoTransform) -> Self {
        let (r, crop) = (config.resize as f32, config.crop);
        let c = r / 2.0;
        let (sin, cos) = (-t.angle_degrees.to_radians()).sin_cos();
        let (sx, sy) = (width as f32 / r, height as f32 / r);
        let mut taps = Vec::with_capacity(crop * crop);
        for v in 0..crop {
            for u in 0..crop {
                // Output pixel centre in the resized frame, flipped, rotated back.
                let mut x = (u + t.x0) as f32 + 0.5;
                let mut y = (v + t.y0) as f32 + 0.5;
                if t.hflip {
                    x = r - x;
                }
                if t.vflip {
                    y = r - y;
                }
                let (dx, dy) = (x - c, y - c);
                let (xr, yr) = (c + cos * dx - sin * dy, c + sin * dx + cos * dy);
                // Back to source pixel coordinates (centres at +0.5).
                let (fx, fy) = (xr * sx - 0.5, yr * sy - 0.5);
                let (x0, y0) = (fx.floor(), fy.floor());
                let (ax, ay) = (fx - x0, fy - y0);
                let mut idx = [0u32; 4];
                let mut w = [0.0f32; 4];
                for (k, (ox, oy, wk)) in
                    [(0, 0, (1.0 - ax) * (1.0 - ay)), (1, 0, ax * (1.0 - ay)), (0, 1, (1.0 - ax) * ay), (1, 1, ax * ay)]
                        .into_iter()
                        .enumerate()
                {
                    let (xi, yi) = (x0 as i64 + ox, y0 as i64 + oy);
                    if xi >= 0 && yi >= 0 && (xi as usize) < width && (yi as usize) < height {
                        idx[k] = (yi as usize * width + xi as usize) as u32;
                        w[k] = wk;
                    }
                }
                taps.push((idx, w));
            }
        }
        Self { taps }
    }

    fn apply(&self, frame: &[f32], out: &mut [f32]) {
        for (o, (idx, w)) in out.iter_mut().zip(&self.taps) {
            *o = w[0] * frame[idx[0] as usize]
                + w[1] * frame[idx[1] as usize]
                + w[2] * frame[idx[2] as usize]
                + w[3] * frame[idx[3] as usize];
        }
    }
}

/// Apply one transform to every frame and channel and normalise: `[T, C, crop, crop]`
/// values `(x - mean[c]) / std[c]` after brightness and contrast (`mean` and `std` hold one
/// value per channel, or one for all).
pub fn transform_video(
    video: &Video,
    config: &AugmentConfig,
    t: &VideoTransform,
    mean: &[f32],
    std: &[f32],
    out: &mut Vec<f32>,
) {
    let resampler = Resampler::new(video.width, video.height, config, t);
    let n = config.crop * config.crop;
    let plane = video.width * video.height;
    let start = out.len();
    out.resize(start + video.frames.len() * video.channels * n, 0.0);
    let planes = video.frames.iter().flat_map(|f| f.chunks_exact(plane));
    for (frame, o) in planes.zip(out[start..].chunks_exact_mut(n)) {
        resampler.apply(frame, o);
    }
    let frames = &mut out[start..];
    if t.brightness != 1.0 || t.contrast != 1.0 {
        // Contrast about the video's mean grey, as ColorJitter does per image.
        let grey = frames.iter().sum::<f32>() / frames.len().max(1) as f32 * t.brightness;
        for x in frames.iter_mut() {
            *x = (((*x * t.brightness) - grey) * t.contrast + grey).clamp(0.0, 1.0);
        }
    }
    let per_channel = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
    for (k, plane) in frames.chunks_exact_mut(n).enumerate() {
        let c = k % video.channels.max(1);
        let (m, inv) = (per_channel(mean, c), 1.0 / per_channel(std, c));
        for x in plane.iter_mut() {
            *x = (*x - m) * inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(w: usize, h: usize, t: usize) -> Video {
        Video {
            width: w,
            height: h,
            channels: 1,
            depth: crate::frames::SampleDepth::Eight,
            frames: (0..t).map(|k| (0..w * h).map(|i| ((i + k) % 7) as f32 / 7.0).collect()).collect(),
        }
    }

    #[test]
    fn identity_transform_is_exact() {
        let cfg = AugmentConfig { resize: 8, crop: 8, ..AugmentConfig::default() };
        let v = video(8, 8, 3);
        let mut out = Vec::new();
        transform_video(&v, &cfg, &VideoTransform::centre(&cfg), &[0.0], &[1.0], &mut out);
        let flat: Vec<f32> = v.frames.concat();
        for (a, b) in out.iter().zip(&flat) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn flips_rotations_and_crops_move_pixels_where_expected() {
        let cfg = AugmentConfig { resize: 4, crop: 4, ..AugmentConfig::default() };
        let mut v = Video { frames: vec![vec![0.0; 16]], ..video(4, 4, 1) };
        v.frames[0][1] = 1.0; // row 0, column 1
        let run = |t: VideoTransform| {
            let mut out = Vec::new();
            transform_video(&v, &cfg, &t, &[0.0], &[1.0], &mut out);
            out.iter().position(|&x| (x - 1.0).abs() < 1e-5)
        };
        let base = VideoTransform::centre(&cfg);
        assert_eq!(run(VideoTransform { hflip: true, ..base }), Some(2));
        assert_eq!(run(VideoTransform { vflip: true, ..base }), Some(3 * 4 + 1));
        // +90 degrees turns the frame clockwise on screen (y down): (row 0, col 1) -> (row 1, col 3).
        assert_eq!(run(VideoTransform { angle_degrees: 90.0, ..base }), Some(4 + 3));
        assert_eq!(run(VideoTransform { angle_degrees: -90.0, ..base }), Some(2 * 4));
        // A crop offset shifts the content.
        let cfg2 = AugmentConfig { resize: 4, crop: 2, ..cfg.clone() };
        let mut out = Vec::new();
        transform_video(
            &v,
            &cfg2,
            &VideoTransform { x0: 1, y0: 0, ..VideoTransform::centre(&cfg2) },
            &[0.0],
            &[1.0],
            &mut out,
        );
        assert_eq!(out[0], 1.0);
    }

    #[test]
    fn every_frame_gets_the_same_spatial_transform() {
        let cfg = AugmentConfig { resize: 20, crop: 16, ..AugmentConfig::default() };
        let same = Video { frames: vec![(0..256).map(|i| (i % 13) as f32 / 13.0).collect(); 4], ..video(16, 16, 1) };
        let t = VideoTransform::seeded(&cfg, 1, 0, 5);
        let mut out = Vec::new();
        transform_video(&same, &cfg, &t, &[0.5], &[0.25], &mut out);
        let n = 16 * 16;
        for k in 1..4 {
            assert_eq!(out[..n], out[k * n..(k + 1) * n]);
        }
        // Seeded: the same draw again, a different video a different draw.
        assert_eq!(t, VideoTransform::seeded(&cfg, 1, 0, 5));
        assert_ne!(t, VideoTransform::seeded(&cfg, 1, 0, 6));
        assert_ne!(t, VideoTransform::seeded(&cfg, 1, 1, 5));
    }

    #[test]
    fn brightness_and_contrast_and_normalisation() {
        let cfg = AugmentConfig { resize: 2, crop: 2, ..AugmentConfig::default() };
        let v = Video { frames: vec![vec![0.2, 0.4, 0.6, 0.8]], ..video(2, 2, 1) };
        let t = VideoTransform { brightness: 0.5, contrast: 2.0, ..VideoTransform::centre(&cfg) };
        let mut out = Vec::new();
        transform_video(&v, &cfg, &t, &[0.1], &[0.5], &mut out);
        // x*0.5 -> 0.1 0.2 0.3 0.4, mean 0.25, contrast 2 -> -0.05 0.15 0.35 0.55 -> clamp 0 ... then (x-0.1)/0.5.
        let expected = [0.0f32, 0.15, 0.35, 0.55].map(|x| (x - 0.1) / 0.5);
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }
}
