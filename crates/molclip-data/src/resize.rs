//! The first step of the augmentation, done once per video: every frame resized to the
//! square side the random transforms start from, antialiased as PIL's `BILINEAR` resize is
//! (a triangle filter widened by the downscale factor, `image`'s `Triangle`), and kept at
//! the source's depth (u8 or u16): what the decoded-frame cache holds.

use image::{imageops, ImageBuffer, Luma};

use crate::frames::{SampleDepth, Video};

/// A video's frames resized to `side × side`, quantised to its source's depth, planar
/// `[T][C][side][side]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizedVideo {
    /// The side of every frame.
    pub side: usize,
    /// Channels per frame.
    pub channels: usize,
    /// Frames.
    pub frames: usize,
    samples: Samples,
}

#[derive(Debug, Clone, PartialEq)]
enum Samples {
    Eight(Vec<u8>),
    Sixteen(Vec<u16>),
}

impl ResizedVideo {
    /// Bytes the samples take (their allocation, not only their length).
    pub fn bytes(&self) -> usize {
        match &self.samples {
            Samples::Eight(v) => v.capacity(),
            Samples::Sixteen(v) => 2 * v.capacity(),
        }
    }

    /// Back to values in [0, 1], as the augmentation reads them.
    pub fn to_video(&self) -> Video {
        let n = self.channels * self.side * self.side;
        let (depth, values): (SampleDepth, Vec<f32>) = match &self.samples {
            Samples::Eight(v) => (SampleDepth::Eight, v.iter().map(|&x| x as f32 / 255.0).collect()),
            Samples::Sixteen(v) => (SampleDepth::Sixteen, v.iter().map(|&x| x as f32 / 65535.0).collect()),
        };
        Video {
            width: self.side,
            height: self.side,
            channels: self.channels,
            depth,
            frames: values.chunks_exact(n.max(1)).map(<[f32]>::to_vec).collect(),
        }
    }
}

/// One plane resized to `side × side` (PIL's bilinear with antialiasing when shrinking).
pub fn resize_plane(plane: &[f32], width: usize, height: usize, side: usize) -> Vec<f32> {
    if width == side && height == side {
        return plane.to_vec();
    }
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(width as u32, height as u32, plane.to_vec()).expect("plane of width x height");
    imageops::resize(&img, side as u32, side as u32, imageops::FilterType::Triangle).into_raw()
}

/// Every frame and channel of `video` resized to `side × side` and quantised to its depth.
/// The samples are allocated at their exact size: a cache of them holds what it counts.
pub fn resize_video(video: &Video, side: usize) -> ResizedVideo {
    let plane = video.width * video.height;
    let planes = || video.frames.iter().flat_map(|f| f.chunks_exact(plane.max(1)));
    let total = video.frames.len() * video.channels * side * side;
    fn quantised<T>(total: usize, planes: impl Iterator<Item = Vec<f32>>, q: impl Fn(f32) -> T) -> Vec<T> {
        let mut out = Vec::with_capacity(total);
        for p in planes {
            out.extend(p.into_iter().map(|x| q(x.clamp(0.0, 1.0))));
        }
        out
    }
    let resized = planes().map(|p| resize_plane(p, video.width, video.height, side));
    let samples = match video.depth {
        SampleDepth::Eight => Samples::Eight(quantised(total, resized, |x| (x * 255.0).round() as u8)),
        SampleDepth::Sixteen => Samples::Sixteen(quantised(total, resized, |x| (x * 65535.0).round() as u16)),
    };
    ResizedVideo { side, channels: video.channels, frames: video.frames.len(), samples }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(depth: SampleDepth, channels: usize) -> Video {
        let (w, h) = (24, 24);
        let frame: Vec<f32> = (0..channels * w * h).map(|i| ((i * 37) % 256) as f32 / 255.0).collect();
        Video { width: w, height: h, channels, depth, frames: vec![frame; 2] }
    }

    #[test]
    fn resizing_keeps_the_layout_and_the_depth() {
        let v = video(SampleDepth::Eight, 3);
        let r = resize_video(&v, 12);
        assert_eq!((r.side, r.channels, r.frames, r.bytes()), (12, 3, 2, 2 * 3 * 144));
        let back = r.to_video();
        assert_eq!((back.width, back.channels, back.frames.len(), back.frames[0].len()), (12, 3, 2, 3 * 144));
        assert_eq!(resize_video(&video(SampleDepth::Sixteen, 1), 12).bytes(), 2 * 2 * 144);
        // Same size: exact, up to the source's own quantisation.
        let same = resize_video(&v, 24).to_video();
        assert!(same.frames[0].iter().zip(&v.frames[0]).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn a_flat_field_stays_flat_and_a_fine_pattern_is_averaged_not_aliased() {
        let flat = vec![0.25f32; 64 * 64];
        assert!(resize_plane(&flat, 64, 64, 16).iter().all(|&x| (x - 0.25).abs() < 1e-5));
        // A one-pixel checkerboard shrunk by 4 is grey everywhere with antialiasing; point
        // sampling would give all black or all white.
        let checker: Vec<f32> = (0..64 * 64).map(|i| ((i % 64 + i / 64) % 2) as f32).collect();
        let out = resize_plane(&checker, 64, 64, 16);
        assert!(out[16 * 4 + 4..16 * 12].iter().all(|&x| (x - 0.5).abs() < 0.05), "{out:?}");
    }
}
