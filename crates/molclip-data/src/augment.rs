//! MitoReID's video augmentation: resize to 128, random rotation, rescaling and flips, a
//! random 112 crop, a rare Gaussian blur, brightness and contrast jitter; centre crop at
//! test. One spatial transform per video, applied to every frame, so motion between frames
//! is preserved (only the blur picks frames). Rotation, flips and crop are composed into a
//! single bilinear resampling of the resized frame (of the rescaled one, when rescaled).

use image::{ImageBuffer, Luma};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::frames::Video;
use crate::resize::{resize_plane, ResizeFilter};

/// Random transforms of training videos (the same for every frame of a video, but for the
/// blur's choice of frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Side the frame is resized to before cropping.
    pub resize: usize,
    /// Side of the crop the model sees.
    pub crop: usize,
    /// Random rotation up to this many degrees (0: none), counter-clockwise as PIL's
    /// `rotate` turns a positive angle.
    pub max_rotation: f32,
    /// The lowest angle drawn, in degrees: -`max_rotation` when not set (either way);
    /// MitoReID's `RandomRotate`: 0, one way only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rotation: Option<f32>,
    /// Angles drawn as whole numbers of degrees (MitoReID's `randint`), not from the
    /// continuous range.
    pub whole_degrees: bool,
    /// Share of the videos rotated (MitoReID's `RandomRotate`: half); the others are not.
    pub rotation_rate: f32,
    /// What the corners a rotation uncovers hold: black, or each frame's darkest value
    /// (MitoReID's `RandomRotate`).
    pub rotation_fill: RotationFill,
    /// Rescale the resized frame by a factor drawn from [1 - r, 1 + r] before the crop
    /// (MitoReID's `RandomResize`: 0.2); 0: never. A frame rescaled below the crop leaves a
    /// black border, as PIL's crop past an edge does.
    pub rescale: f32,
    /// Share of the videos rescaled (MitoReID: half).
    pub rescale_rate: f32,
    /// The rescaling's filter: bilinear, as every other resize, or bicubic (MitoReID's
    /// `RandomResize` leaves PIL's default, bicubic).
    pub rescale_filter: ResizeFilter,
    /// Flip left-right at random.
    pub hflip: bool,
    /// Flip top-bottom at random.
    pub vflip: bool,
    /// The crop's offset is drawn from this centred share of the room around it: 1 from
    /// anywhere, 0.5 from a quarter to three quarters of it (MitoReID's `RandomCrop`), 0
    /// always the centre.
    pub crop_range: f32,
    /// Share of the frames blurred (MitoReID's `GaussianBlur`: 1 in 100), each drawn on its
    /// own; 0: never.
    pub blur_rate: f32,
    /// The blur's Gaussian sigma in pixels of the crop, drawn per video from [low, high]
    /// (MitoReID's radius: 1 to 3).
    pub blur_sigma: [f32; 2],
    /// Brightness factor drawn from [1 - b, 1 + b].
    pub brightness: f32,
    /// Contrast factor drawn from [1 - c, 1 + c].
    pub contrast: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            resize: 128,
            crop: 112,
            max_rotation: 180.0,
            min_rotation: None,
            whole_degrees: false,
            rotation_rate: 1.0,
            rotation_fill: RotationFill::Black,
            rescale: 0.0,
            rescale_rate: 1.0,
            rescale_filter: ResizeFilter::Bilinear,
            hflip: true,
            vflip: true,
            crop_range: 1.0,
            blur_rate: 0.0,
            blur_sigma: [1.0, 3.0],
            brightness: 0.2,
            contrast: 0.2,
        }
    }
}

/// What the corners a rotation uncovers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationFill {
    /// Zero.
    Black,
    /// The frame's darkest value, over all its channels (PIL's `rotate(fillcolor=min)`).
    Darkest,
}

impl AugmentConfig {
    /// The rotation's range in degrees, lowest and highest: from `min_rotation` (or
    /// -`max_rotation` when not set) to `max_rotation`.
    pub fn rotation_range(&self) -> (f32, f32) {
        (self.min_rotation.unwrap_or(-self.max_rotation), self.max_rotation)
    }

    /// The field (under `augment.`) and what is wrong with it, for a value that cannot work.
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        if self.crop == 0 || self.crop > self.resize {
            return Some(("crop", format!("{}: expected 1 <= crop <= resize ({})", self.crop, self.resize)));
        }
        let shares = [
            ("rotation_rate", self.rotation_rate),
            ("rescale_rate", self.rescale_rate),
            ("crop_range", self.crop_range),
            ("blur_rate", self.blur_rate),
        ];
        if let Some((field, v)) = shares.into_iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Some((field, format!("{v}: expected a share, from 0 to 1")));
        }
        let (low, high) = self.rotation_range();
        if self.max_rotation > 0.0 && !(low.is_finite() && low <= high) {
            return Some(("min_rotation", format!("{low}: expected min_rotation <= max_rotation ({high})")));
        }
        if self.max_rotation > 0.0 && self.whole_degrees && low.ceil() > high.floor() {
            return Some((
                "whole_degrees",
                format!("no whole number of degrees from {low} to {high}: widen the range or set it false"),
            ));
        }
        if !(0.0..1.0).contains(&self.rescale) {
            return Some((
                "rescale",
                format!("{}: expected 0 <= rescale < 1 (factors from 1 - r to 1 + r)", self.rescale),
            ));
        }
        let [low, high] = self.blur_sigma;
        if self.blur_rate > 0.0 && !(low > 0.0 && low <= high && high.is_finite()) {
            return Some(("blur_sigma", format!("[{low}, {high}]: expected [low, high] with 0 < low <= high")));
        }
        None
    }
}

/// One video's draw of the random transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoTransform {
    /// Rotation in degrees, counter-clockwise on screen for a positive angle, as PIL's
    /// `rotate` turns.
    pub angle_degrees: f32,
    /// Left-right flip.
    pub hflip: bool,
    /// Top-bottom flip.
    pub vflip: bool,
    /// Side of the rescaled frame the crop is cut from (`resize` where not rescaled).
    pub scaled: usize,
    /// Crop origin in the rescaled frame: negative where that frame is smaller than the
    /// crop (the crop then holds black beyond its edges).
    pub x0: i64,
    /// Crop's top row.
    pub y0: i64,
    /// Added brightness.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
    /// The blur's sigma, for the frames it blurs (0: none).
    pub blur_sigma: f32,
    /// Seeds the choice of the frames blurred, each with probability `blur_rate`.
    pub blur_seed: u64,
}

impl VideoTransform {
    /// Test time: centre crop, nothing random.
    pub fn centre(config: &AugmentConfig) -> Self {
        let off = (config.resize.saturating_sub(config.crop) / 2) as i64;
        Self {
            angle_degrees: 0.0,
            hflip: false,
            vflip: false,
            scaled: config.resize,
            x0: off,
            y0: off,
            brightness: 1.0,
            contrast: 1.0,
            blur_sigma: 0.0,
            blur_seed: 0,
        }
    }

    /// A random transform, as `config` allows. A feature that is off draws nothing, so the
    /// draws of the others do not depend on it.
    pub fn random(config: &AugmentConfig, rng: &mut ChaCha8Rng) -> Self {
        let factor = |rng: &mut ChaCha8Rng, j: f32| if j > 0.0 { rng.random_range(1.0 - j..=1.0 + j) } else { 1.0 };
        let chosen = |rng: &mut ChaCha8Rng, rate: f32| rate >= 1.0 || (rate > 0.0 && rng.random_bool(f64::from(rate)));
        let angle_degrees = if config.max_rotation > 0.0 && chosen(rng, config.rotation_rate) {
            // Uniform on [low, high], drawn as minus a draw on [-high, -low]: the turns the
            // seeds gave before angles turned counter-clockwise (when they were the mirror).
            let (low, high) = config.rotation_range();
            if config.whole_degrees {
                -(rng.random_range(-high.floor() as i64..=-low.ceil() as i64) as f32)
            } else {
                -rng.random_range(-high..=-low)
            }
        } else {
            0.0
        };
        let hflip = config.hflip && rng.random_bool(0.5);
        let vflip = config.vflip && rng.random_bool(0.5);
        let scaled = if config.rescale > 0.0 && chosen(rng, config.rescale_rate) {
            // PIL's `int(size * factor)`.
            ((config.resize as f32 * factor(rng, config.rescale)) as usize).max(1)
        } else {
            config.resize
        };
        // The offset's range: the centred `crop_range` share of the room around the crop.
        let room = scaled as f32 - config.crop as f32;
        let ends = [0.5 - config.crop_range / 2.0, 0.5 + config.crop_range / 2.0].map(|f| (room * f).round() as i64);
        let (low, high) = (ends[0].min(ends[1]), ends[0].max(ends[1]));
        let offset = |rng: &mut ChaCha8Rng| low + rng.random_range(0..=(high - low) as usize) as i64;
        let (x0, y0) = (offset(rng), offset(rng));
        let brightness = factor(rng, config.brightness);
        let contrast = factor(rng, config.contrast);
        let (blur_sigma, blur_seed) = if config.blur_rate > 0.0 {
            (rng.random_range(config.blur_sigma[0]..=config.blur_sigma[1]), rng.random())
        } else {
            (0.0, 0)
        };
        Self { angle_degrees, hflip, vflip, scaled, x0, y0, brightness, contrast, blur_sigma, blur_seed }
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
    /// Per output pixel inside the frame, the weight its taps lose outside the rotated
    /// source: what the rotation fill gets (0 past the frame's edge, which stays black).
    gaps: Vec<f32>,
}

/// The square of the transformed frame a resampling fills: the crop, or the crop with a
/// margin for the blur.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Its top-left pixel in the rescaled frame.
    x0: i64,
    y0: i64,
    /// Its side.
    side: usize,
    /// Past the frame's edge: its nearest edge pixel (what a blur of the whole frame pads
    /// with), or black (what a crop pads with).
    extend_edges: bool,
}

impl Window {
    /// The transform's crop.
    fn crop(side: usize, t: &VideoTransform) -> Self {
        Self { x0: t.x0, y0: t.y0, side, extend_edges: false }
    }

    /// The crop widened by `margin` on every side, the frame's edges extended.
    fn around(crop: Window, margin: usize) -> Self {
        let m = margin as i64;
        Self { x0: crop.x0 - m, y0: crop.y0 - m, side: crop.side + 2 * margin, extend_edges: true }
    }
}

impl Resampler {
    /// For `width` x `height` planes shown as a `side` x `side` frame, over `window`.
    fn new(width: usize, height: usize, side: usize, window: Window, t: &VideoTransform) -> Self {
        let r = side as f32;
        let c = r / 2.0;
        let (sin, cos) = t.angle_degrees.to_radians().sin_cos();
        let (sx, sy) = (width as f32 / r, height as f32 / r);
        let n = window.side;
        let mut taps = Vec::with_capacity(n * n);
        let mut gaps = Vec::with_capacity(n * n);
        for v in 0..n {
            for u in 0..n {
                // Output pixel centre in the frame, flipped, rotated back.
                let mut x = (u as i64 + window.x0) as f32 + 0.5;
                let mut y = (v as i64 + window.y0) as f32 + 0.5;
                if window.extend_edges {
                    (x, y) = (x.clamp(0.5, r - 0.5), y.clamp(0.5, r - 0.5));
                }
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
                // Past the frame's edge (a frame rescaled below the crop), black whatever the
                // rotation brings there: PIL rotates within the frame, then pads the crop.
                let inside = (0.0..r).contains(&x) && (0.0..r).contains(&y);
                if !inside {
                    w = [0.0; 4];
                }
                let gap = 1.0 - w.iter().sum::<f32>();
                gaps.push(if inside && gap > 1e-6 { gap } else { 0.0 });
                taps.push((idx, w));
            }
        }
        Self { taps, gaps }
    }

    /// `fill`: what the corners a rotation uncovers hold.
    fn apply(&self, frame: &[f32], fill: f32, out: &mut [f32]) {
        for (o, (idx, w)) in out.iter_mut().zip(&self.taps) {
            *o = w[0] * frame[idx[0] as usize]
                + w[1] * frame[idx[1] as usize]
                + w[2] * frame[idx[2] as usize]
                + w[3] * frame[idx[3] as usize];
        }
        if fill != 0.0 {
            for (o, gap) in out.iter_mut().zip(&self.gaps) {
                *o += gap * fill;
            }
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
    let n = config.crop * config.crop;
    let plane = video.width * video.height;
    let start = out.len();
    out.resize(start + video.frames.len() * video.channels * n, 0.0);
    let planes = video.frames.iter().flat_map(|f| f.chunks_exact(plane));
    // Rescaled: each plane is resized again first with the rescaling's filter, antialiased as
    // PIL's resize is (a rotation commutes with it), then rotated, flipped and cropped in the
    // one resampling.
    let rescaled = t.scaled != config.resize;
    let (width, height, side) =
        if rescaled { (t.scaled, t.scaled, t.scaled) } else { (video.width, video.height, config.resize) };
    let crop = Window::crop(config.crop, t);
    let resampler = Resampler::new(width, height, side, crop, t);
    // The frames blurred, each on its own draw. MitoReID blurs the whole frame before the
    // crop: a blurred frame is resampled over the crop and a margin of the kernel's radius,
    // the frame's edges extended as the blur of the whole frame extends them, blurred, and
    // cropped, black past the frame's edge.
    let blurring = t.blur_sigma > 0.0 && config.blur_rate > 0.0;
    let mut pick = ChaCha8Rng::seed_from_u64(t.blur_seed);
    let blurred: Vec<bool> =
        (0..video.frames.len()).map(|_| blurring && pick.random_bool(f64::from(config.blur_rate.min(1.0)))).collect();
    let margin = blur_radius(t.blur_sigma);
    let widened = Window::around(crop, margin);
    let wide = blurred.contains(&true).then(|| Resampler::new(width, height, side, widened, t));
    let mut scratch = Vec::new();
    // Each frame's rotation fill (MitoReID takes the darkest value before it rescales).
    let fills: Vec<f32> = video
        .frames
        .iter()
        .map(|f| match config.rotation_fill {
            RotationFill::Darkest if t.angle_degrees != 0.0 => f.iter().copied().fold(f32::INFINITY, f32::min),
            _ => 0.0,
        })
        .collect();
    let channels = video.channels.max(1);
    let in_frame = |p: i64| (0..side as i64).contains(&p);
    for (k, (frame, o)) in planes.zip(out[start..].chunks_exact_mut(n)).enumerate() {
        let fill = fills[k / channels];
        let scaled;
        let source = if rescaled {
            scaled = resize_plane(frame, video.width, video.height, t.scaled, config.rescale_filter);
            &scaled[..]
        } else {
            frame
        };
        match &wide {
            Some(wide) if blurred[k / channels] => {
                let w = widened.side;
                scratch.resize(w * w, 0.0);
                wide.apply(source, fill, &mut scratch);
                blur(&mut scratch, w, t.blur_sigma);
                for (v, row) in o.chunks_exact_mut(config.crop).enumerate() {
                    let y_in = in_frame(v as i64 + t.y0);
                    for (u, x) in row.iter_mut().enumerate() {
                        let inside = y_in && in_frame(u as i64 + t.x0);
                        *x = if inside { scratch[(v + margin) * w + u + margin] } else { 0.0 };
                    }
                }
            }
            _ => resampler.apply(source, fill, o),
        }
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

/// A `side` x `side` plane blurred in place by a Gaussian of standard deviation `sigma`, its
/// kernel cut at 3 sigma, edges extended (`imageproc`'s separable filter): what PIL's
/// `GaussianBlur(radius = sigma)` approximates with box blurs.
fn blur(plane: &mut [f32], side: usize, sigma: f32) {
    let Some(image) = ImageBuffer::<Luma<f32>, Vec<f32>>::from_raw(side as u32, side as u32, plane.to_vec()) else {
        return;
    };
    let radius = blur_radius(sigma) as i32;
    let mut kernel: Vec<f32> = (-radius..=radius).map(|x| (-0.5 * (x as f32 / sigma).powi(2)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|w| *w /= total);
    plane.copy_from_slice(imageproc::filter::separable_filter_equal(&image, &kernel).as_raw());
}

/// The blur's kernel radius in pixels: 3 sigma, rounded up (0 for no blur).
fn blur_radius(sigma: f32) -> usize {
    (3.0 * sigma.max(0.0)).ceil() as usize
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
        // +90 degrees turns the frame counter-clockwise on screen (y down), as PIL's rotate:
        // (row 0, col 1) -> (row 2, col 0).
        assert_eq!(run(VideoTransform { angle_degrees: 90.0, ..base }), Some(2 * 4));
        assert_eq!(run(VideoTransform { angle_degrees: -90.0, ..base }), Some(4 + 3));
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

    /// `VideoTransform` with the defaults for the features a config leaves off.
    fn drawn(
        angle_degrees: f32,
        hflip: bool,
        vflip: bool,
        x0: i64,
        y0: i64,
        brightness: f32,
        contrast: f32,
    ) -> VideoTransform {
        VideoTransform {
            angle_degrees,
            hflip,
            vflip,
            scaled: 128,
            x0,
            y0,
            brightness,
            contrast,
            blur_sigma: 0.0,
            blur_seed: 0,
        }
    }

    #[test]
    fn configs_without_the_mitoreid_extras_draw_what_they_drew_before_them() {
        // Drawn by the code before rotation_rate, rescale, crop_range and blur existed: a
        // feature left off draws nothing, so seeds give the same videos as before. That code
        // turned clockwise: its angles are negated here, the same turns.
        let mito = AugmentConfig {
            max_rotation: 90.0,
            vflip: false,
            brightness: 0.0,
            contrast: 0.0,
            ..AugmentConfig::default()
        };
        let cases = [
            (AugmentConfig::default(), (7, 3, 11), drawn(-109.19025, false, false, 15, 0, 0.8128341, 0.80168027)),
            (AugmentConfig::default(), (0, 0, 5), drawn(105.59205, true, false, 16, 14, 1.1071923, 1.1220553)),
            (AugmentConfig::default(), (0, 0, 8), drawn(-65.30145, true, true, 3, 6, 1.1794882, 1.183647)),
            (mito.clone(), (1, 2, 3), drawn(-15.469673, false, false, 5, 16, 1.0, 1.0)),
            (mito, (0, 0, 5), drawn(52.796024, true, false, 7, 15, 1.0, 1.0)),
        ];
        for (config, (seed, epoch, video), expected) in cases {
            assert_eq!(VideoTransform::seeded(&config, seed, epoch, video), expected);
        }
    }

    /// A frame whose values are their column (`rows: false`) or row index, over 8.
    fn ramp(side: usize, rows: bool) -> Video {
        let values = (0..side * side).map(|i| if rows { i / side } else { i % side } as f32 / 8.0).collect();
        Video { frames: vec![values], ..video(side, side, 1) }
    }

    #[test]
    fn rescaling_moves_pixels_where_the_geometry_says() {
        // Resized side r = 8. Output pixel u of a crop at x0 in the frame rescaled to side S
        // samples the resized frame at (u + x0 + 0.5) r / S - 0.5 (pixel indices), which
        // the resizing and bilinear sampling of a ramp return away from its edges (exactly
        // when enlarging; within 0.02 px when shrinking, where the antialiasing filter's taps
        // are not centred); flipped, at (S - u - x0 - 0.5) r / S - 0.5.
        let check = |scaled: usize, crop: usize, x0: i64, hflip: bool, vflip: bool| {
            let cfg = AugmentConfig { resize: 8, crop, ..AugmentConfig::default() };
            let t = VideoTransform { scaled, x0, y0: x0, hflip, vflip, ..VideoTransform::centre(&cfg) };
            for (rows, flip) in [(false, hflip), (true, vflip)] {
                let mut out = Vec::new();
                transform_video(&ramp(8, rows), &cfg, &t, &[0.0], &[1.0], &mut out);
                for v in 0..crop {
                    for u in 0..crop {
                        let along = if rows { v } else { u } as f32;
                        let centre = along + x0 as f32 + 0.5;
                        let at = if flip { scaled as f32 - centre } else { centre };
                        let expected = (at * 8.0 / scaled as f32 - 0.5) / 8.0;
                        let got = out[v * crop + u];
                        let tolerance = if scaled < 8 { 0.02 / 8.0 } else { 1e-5 };
                        assert!(
                            (got - expected).abs() < tolerance,
                            "S {scaled} x0 {x0} flip {flip}: {got} at ({u}, {v}), expected {expected}"
                        );
                    }
                }
            }
        };
        check(16, 8, 4, false, false); // twice the size, the centre crop
        check(16, 8, 3, true, false);
        check(6, 4, 1, false, true); // three quarters
        check(8, 6, 1, false, false); // not rescaled: as before
    }

    #[test]
    fn a_frame_rescaled_below_the_crop_leaves_a_black_border() {
        // Side 8 rescaled to 4 under a centred 8 x 8 crop (x0 = y0 = -2): the frame covers
        // the middle 4 x 4 output pixels, the rest is black.
        let cfg = AugmentConfig { resize: 8, crop: 8, ..AugmentConfig::default() };
        let ones = Video { frames: vec![vec![1.0; 64]], ..video(8, 8, 1) };
        let t = VideoTransform { scaled: 4, x0: -2, y0: -2, ..VideoTransform::centre(&cfg) };
        let mut out = Vec::new();
        transform_video(&ones, &cfg, &t, &[0.0], &[1.0], &mut out);
        for (i, &x) in out.iter().enumerate() {
            let inside = (2..6).contains(&(i % 8)) && (2..6).contains(&(i / 8));
            assert_eq!(x, if inside { 1.0 } else { 0.0 }, "pixel ({}, {})", i % 8, i / 8);
        }
    }

    #[test]
    fn mitoreids_draws_rotate_and_rescale_half_the_videos_and_crop_near_the_centre() {
        let cfg = AugmentConfig {
            max_rotation: 90.0,
            rotation_rate: 0.5,
            rescale: 0.2,
            rescale_rate: 0.5,
            crop_range: 0.5,
            ..AugmentConfig::default()
        };
        let draws: Vec<VideoTransform> = (0..4000).map(|v| VideoTransform::seeded(&cfg, 3, 1, v)).collect();
        let share = |f: &dyn Fn(&VideoTransform) -> bool| draws.iter().filter(|t| f(t)).count() as f64 / 4000.0;
        assert!((share(&|t| t.angle_degrees != 0.0) - 0.5).abs() < 0.03);
        assert!((share(&|t| t.scaled != 128) - 0.5).abs() < 0.03);
        // PIL's int(128 * f) for f in [0.8, 1.2], both ends reached.
        let sides = draws.iter().map(|t| t.scaled);
        assert_eq!((sides.clone().min(), sides.max()), (Some(102), Some(153)));
        for t in &draws {
            // The offset stays within the middle half of the room, which is negative below 112.
            let room = t.scaled as f32 - 112.0;
            let (a, b) = ((room * 0.25).round() as i64, (room * 0.75).round() as i64);
            for x in [t.x0, t.y0] {
                assert!((a.min(b)..=a.max(b)).contains(&x), "{t:?}");
            }
        }
        // At 128: from 4 to 12, both ends reached.
        let at_128: Vec<i64> = draws.iter().filter(|t| t.scaled == 128).map(|t| t.x0).collect();
        assert_eq!((at_128.iter().min(), at_128.iter().max()), (Some(&4), Some(&12)));
        // crop_range 0: always the centre.
        let centred = AugmentConfig { crop_range: 0.0, ..AugmentConfig::default() };
        assert!((0..100).all(|v| VideoTransform::seeded(&centred, 0, 0, v).x0 == 8));
    }

    #[test]
    fn mitoreids_angles_are_whole_degrees_from_0_to_90_each_about_as_often() {
        let cfg =
            AugmentConfig { min_rotation: Some(0.0), max_rotation: 90.0, whole_degrees: true, ..Default::default() };
        let mut counts = [0usize; 91];
        for v in 0..9100 {
            let a = VideoTransform::seeded(&cfg, 5, 0, v).angle_degrees;
            assert!(a.fract() == 0.0 && (0.0..=90.0).contains(&a), "{a}");
            counts[a as usize] += 1;
        }
        // 100 expected per angle, both ends included.
        assert!(counts.iter().all(|&c| (55..=150).contains(&c)), "{counts:?}");
        // A continuous range from 0 to 90: one way only, not whole.
        let one_way = AugmentConfig { whole_degrees: false, ..cfg.clone() };
        let angles: Vec<f32> = (0..1000).map(|v| VideoTransform::seeded(&one_way, 5, 0, v).angle_degrees).collect();
        assert!(angles.iter().all(|a| (0.0..=90.0).contains(a)) && angles.iter().any(|a| a.fract() != 0.0));
        let mean = angles.iter().sum::<f32>() / 1000.0;
        assert!((mean - 45.0).abs() < 3.0, "{mean}");
    }

    #[test]
    fn the_blur_keeps_the_mean_and_spreads_a_point_by_sigma() {
        for sigma in [1.0f32, 2.0, 3.0] {
            let side = 41;
            let mut plane = vec![0.0f32; side * side];
            plane[20 * side + 20] = 1.0;
            blur(&mut plane, side, sigma);
            let total: f32 = plane.iter().sum();
            assert!((total - 1.0).abs() < 1e-4, "sigma {sigma}: sum {total}");
            let moment = |p: u32| -> f32 {
                plane.iter().enumerate().map(|(i, w)| w * ((i % side) as f32 - 20.0).powi(p as i32)).sum::<f32>()
            };
            // Centred, and spread as a Gaussian of that sigma (PIL's blur comes within 1 %).
            assert!(moment(1).abs() < 1e-3, "sigma {sigma}: off centre by {}", moment(1));
            let ratio = moment(2) / (sigma * sigma);
            assert!((0.98..1.01).contains(&ratio), "sigma {sigma}: variance {} of {}", moment(2), sigma * sigma);
        }
    }

    #[test]
    fn the_blur_picks_frames_at_its_rate_the_same_way_every_time() {
        let mut cfg = AugmentConfig { resize: 16, crop: 16, blur_rate: 0.25, ..AugmentConfig::default() };
        let mut frame = vec![0.0f32; 256];
        frame[8 * 16 + 8] = 1.0;
        let v = Video { frames: vec![frame.clone(); 400], ..video(16, 16, 1) };
        let t = VideoTransform { blur_sigma: 2.0, blur_seed: 9, ..VideoTransform::centre(&cfg) };
        let blurred = |cfg: &AugmentConfig| {
            let mut out = Vec::new();
            transform_video(&v, cfg, &t, &[0.0], &[1.0], &mut out);
            out.chunks_exact(256).map(|f| f != frame.as_slice()).collect::<Vec<bool>>()
        };
        let picks = blurred(&cfg);
        let share = picks.iter().filter(|&&b| b).count() as f64 / 400.0;
        assert!((share - 0.25).abs() < 0.06, "{share}");
        assert_eq!(picks, blurred(&cfg));
        cfg.blur_rate = 0.0;
        assert!(blurred(&cfg).iter().all(|&b| !b));
    }

    #[test]
    fn values_that_cannot_work_are_refused_naming_the_field() {
        let bad = |c: AugmentConfig| c.invalid().map(|(field, _)| field);
        let base = AugmentConfig::default();
        assert_eq!(bad(base.clone()), None);
        assert_eq!(bad(AugmentConfig { crop: 129, ..base.clone() }), Some("crop"));
        assert_eq!(bad(AugmentConfig { rotation_rate: 1.5, ..base.clone() }), Some("rotation_rate"));
        assert_eq!(bad(AugmentConfig { crop_range: -0.1, ..base.clone() }), Some("crop_range"));
        assert_eq!(bad(AugmentConfig { rescale: 1.0, ..base.clone() }), Some("rescale"));
        assert_eq!(bad(AugmentConfig { blur_rate: 0.1, blur_sigma: [2.0, 1.0], ..base.clone() }), Some("blur_sigma"));
        assert_eq!(
            bad(AugmentConfig { min_rotation: Some(91.0), max_rotation: 90.0, ..base.clone() }),
            Some("min_rotation")
        );
        let no_whole =
            AugmentConfig { min_rotation: Some(0.2), max_rotation: 0.8, whole_degrees: true, ..base.clone() };
        assert_eq!(bad(no_whole), Some("whole_degrees"));
        assert_eq!(
            bad(AugmentConfig { min_rotation: Some(0.0), max_rotation: 90.0, whole_degrees: true, ..base.clone() }),
            None
        );
        assert_eq!(bad(AugmentConfig { blur_rate: f32::NAN, ..base }), Some("blur_rate"));
    }

    #[test]
    fn a_rotation_uncovers_black_or_the_frames_darkest_value_and_the_crop_past_the_edge_stays_black() {
        // Two channels, flat at 0.3 and 0.5: the darkest value of the frame is 0.3.
        let flat = Video { channels: 2, frames: vec![[vec![0.3f32; 64], vec![0.5; 64]].concat()], ..video(8, 8, 1) };
        let run = |fill: RotationFill, t: VideoTransform| {
            let cfg = AugmentConfig { resize: 8, crop: 8, rotation_fill: fill, ..AugmentConfig::default() };
            let mut out = Vec::new();
            transform_video(&flat, &cfg, &t, &[0.0], &[1.0], &mut out);
            out
        };
        let cfg = AugmentConfig { resize: 8, crop: 8, ..AugmentConfig::default() };
        let turned = VideoTransform { angle_degrees: 45.0, ..VideoTransform::centre(&cfg) };
        // Black: the corner pixels of both channels are uncovered.
        let black = run(RotationFill::Black, turned);
        assert_eq!((black[0], black[64]), (0.0, 0.0));
        // Darkest: uncovered parts hold 0.3 in both channels, so the first channel is flat.
        let darkest = run(RotationFill::Darkest, turned);
        assert!(darkest[..64].iter().all(|&x| (x - 0.3).abs() < 1e-5), "{:?}", &darkest[..64]);
        assert!((darkest[64] - 0.3).abs() < 1e-5 && (darkest[64 + 3 * 8 + 4] - 0.5).abs() < 1e-5);
        // Rescaled to 4 under the 8 x 8 crop: past the rescaled frame's edge PIL's crop pads
        // black, whatever the rotation's fill.
        let small = run(RotationFill::Darkest, VideoTransform { scaled: 4, x0: -2, y0: -2, ..turned });
        for (i, &x) in small[..64].iter().enumerate() {
            let inside = (2..6).contains(&(i % 8)) && (2..6).contains(&(i / 8));
            assert!(if inside { (x - 0.3).abs() < 1e-5 } else { x == 0.0 }, "pixel ({}, {}): {x}", i % 8, i / 8);
        }
        // Not rotated: nothing is uncovered, the same to the bit as black.
        let straight = VideoTransform::centre(&cfg);
        assert_eq!(run(RotationFill::Darkest, straight), run(RotationFill::Black, straight));
    }
}
