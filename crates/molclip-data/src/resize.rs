//! The first step of the augmentation, done once per video: every frame resized to the
//! square side the random transforms start from, antialiased as PIL's `BILINEAR` resize is
//! (a triangle filter widened by the downscale factor), and kept at the source's depth (u8
//! or u16): what the decoded-frame cache holds. The resampling is `fast_image_resize`'s
//! convolution, Pillow's algorithm, with the SIMD level of molclip's kernels.

use std::cell::RefCell;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32;
use fast_image_resize::{CpuExtensions, FilterType, ResizeAlg, ResizeOptions, Resizer};
use molclip_cpu::Isa;
use serde::{Deserialize, Serialize};

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

/// The filter of a resize, as PIL names them. Both are antialiased when they shrink (their
/// support widened by the factor), as PIL's `resize` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// PIL's `BILINEAR`: a triangle filter.
    #[default]
    Bilinear,
    /// PIL's `BICUBIC` (its `resize`'s default since Pillow 7): the cubic convolution with
    /// a = -0.5 (Catmull-Rom). It overshoots at edges; values are clamped to [0, 1], as PIL
    /// clamps to its depth's range.
    Bicubic,
}

impl ResizeFilter {
    fn algorithm(self) -> ResizeAlg {
        ResizeAlg::Convolution(match self {
            ResizeFilter::Bilinear => FilterType::Bilinear,
            ResizeFilter::Bicubic => FilterType::CatmullRom,
        })
    }
}

/// The SIMD level of `fast_image_resize` that matches molclip's `isa` (which `MOLCLIP_CPU`
/// caps): AVX2 for AVX2 and AVX-512 (it has no wider one for float32), none for scalar. A
/// level gives the same values on every CPU that runs it.
fn extensions(isa: Isa) -> CpuExtensions {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
        return CpuExtensions::Avx2;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return CpuExtensions::Neon;
    }
    let _ = isa;
    CpuExtensions::None
}

thread_local! {
    /// One resizer per thread: it keeps its scratch buffers between planes.
    static RESIZER: RefCell<Resizer> = RefCell::new({
        let mut resizer = Resizer::new();
        let ext = extensions(molclip_cpu::isa());
        if ext.is_supported() {
            // SAFETY: `set_cpu_extensions` is unsafe only because a level the CPU lacks would
            // run instructions it cannot; `is_supported` has just checked this CPU has it.
            unsafe { resizer.set_cpu_extensions(ext) };
        }
        resizer
    });
}

/// One plane of values in [0, 1] resized to `side × side` with `filter` (antialiased when
/// shrinking, as PIL's resize is), in [0, 1]. Bicubic resizes rows first, clamps, then
/// columns, as PIL does through its 8-bit intermediate image: the rows' overshoot is cut
/// before the columns see it.
pub fn resize_plane(plane: &[f32], width: usize, height: usize, side: usize, filter: ResizeFilter) -> Vec<f32> {
    match filter {
        _ if width == side && height == side => plane.to_vec(),
        ResizeFilter::Bilinear => resize_rect(plane, [width, height], [side, side], filter),
        ResizeFilter::Bicubic => {
            let rows = resize_rect(plane, [width, height], [side, height], filter);
            resize_rect(&rows, [side, height], [side, side], filter)
        }
    }
}

/// `plane` (`from` = [width, height]) resized to `to`, clamped to [0, 1] where the filter
/// overshoots.
fn resize_rect(plane: &[f32], from: [usize; 2], to: [usize; 2], filter: ResizeFilter) -> Vec<f32> {
    if from == to {
        return plane.to_vec();
    }
    let mut out = vec![0.0f32; to[0] * to[1]];
    let src = TypedImageRef::<F32>::new(from[0] as u32, from[1] as u32, bytemuck::cast_slice(plane))
        .expect("a plane of width x height values");
    let mut dst = TypedImage::<F32>::from_pixels_slice(to[0] as u32, to[1] as u32, bytemuck::cast_slice_mut(&mut out))
        .expect("a destination of the size asked for");
    RESIZER
        .with_borrow_mut(|r| r.resize_typed(&src, &mut dst, &ResizeOptions::new().resize_alg(filter.algorithm())))
        .expect("a resize between two non-empty planes of one pixel type");
    if filter == ResizeFilter::Bicubic {
        out.iter_mut().for_each(|x| *x = x.clamp(0.0, 1.0));
    }
    out
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
    let resized = planes().map(|p| resize_plane(p, video.width, video.height, side, ResizeFilter::Bilinear));
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
        assert!(resize_plane(&flat, 64, 64, 16, ResizeFilter::Bilinear).iter().all(|&x| (x - 0.25).abs() < 1e-5));
        // A one-pixel checkerboard shrunk by 4 is grey everywhere with antialiasing; point
        // sampling would give all black or all white.
        let checker: Vec<f32> = (0..64 * 64).map(|i| ((i % 64 + i / 64) % 2) as f32).collect();
        let out = resize_plane(&checker, 64, 64, 16, ResizeFilter::Bilinear);
        assert!(out[16 * 4 + 4..16 * 12].iter().all(|&x| (x - 0.5).abs() < 0.05), "{out:?}");
    }
}
