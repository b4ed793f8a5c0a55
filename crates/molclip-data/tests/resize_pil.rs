//! The resize the augmentation starts from matches PIL's `BILINEAR` resize (what MitoReID's
//! `Scale(128)` calls), and the bicubic rescaling PIL's `BICUBIC` (what its `RandomResize`
//! gets by default), antialiasing included, within one grey level: PIL itself, run by
//! `python3` on the same 8-bit image, is the oracle.

mod common;

use molclip_data::resize::{resize_plane, resize_video, ResizeFilter};
use molclip_data::{SampleDepth, Video};

/// A 8-bit test image with detail finer than the output's pixels: fine stripes, a gradient,
/// a bright disc with a hard edge.
fn test_image(w: usize, h: usize) -> Vec<u8> {
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let stripes = if (x / 2 + y / 3) % 2 == 0 { 60.0 } else { 0.0 };
            let gradient = 120.0 * x as f64 / w as f64;
            let (dx, dy) = (x as f64 - 0.6 * w as f64, y as f64 - 0.4 * h as f64);
            let disc = if dx * dx + dy * dy < (0.2 * w as f64).powi(2) { 70.0 } else { 0.0 };
            px.push((stripes + gradient + disc).min(255.0) as u8);
        }
    }
    px
}

/// `pixels` resized by PIL to `side` x `side`.
fn pil_resize(pixels: &[u8], w: usize, h: usize, side: usize) -> Vec<u8> {
    common::pil(pixels, w, h, &format!("img = img.resize(({side}, {side}), Image.BILINEAR)"))
}

/// The largest difference between values in [0, 1] and 8-bit PIL output, in grey levels.
fn worst(ours: &[f32], theirs: &[u8]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, &b)| ((a * 255.0).round() - b as f32).abs()).fold(0.0f32, f32::max)
}

#[test]
fn downscaling_matches_pils_bilinear_within_one_grey_level() {
    for (w, h, side) in [(512, 512, 128), (301, 301, 128), (97, 83, 32), (64, 64, 46), (40, 40, 56)] {
        let pixels = test_image(w, h);
        let video = Video {
            width: w,
            height: h,
            channels: 1,
            depth: SampleDepth::Eight,
            frames: vec![pixels.iter().map(|&v| v as f32 / 255.0).collect()],
        };
        let ours = resize_video(&video, side).to_video();
        let theirs = pil_resize(&pixels, w, h, side);
        let off = worst(&ours.frames[0], &theirs);
        assert!(off <= 1.0, "{w}x{h} -> {side}: {off} grey levels from PIL");
    }
}

#[test]
fn bicubic_matches_pils_bicubic_within_one_grey_level_overshoot_clamped() {
    // Up and down by MitoReID's factors (0.8 to 1.2 of 128), and an odd shrink.
    for (side, to) in [(128, 153), (128, 103), (64, 70), (97, 40)] {
        let pixels = test_image(side, side);
        let plane: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
        let ours = resize_plane(&plane, side, side, to, ResizeFilter::Bicubic);
        assert!(ours.iter().all(|v| (0.0..=1.0).contains(v)), "{side} -> {to}: a value outside [0, 1]");
        let theirs = common::pil(&pixels, side, side, &format!("img = img.resize(({to}, {to}), Image.BICUBIC)"));
        let off = worst(&ours, &theirs);
        assert!(off <= 1.0, "{side} -> {to}: {off} grey levels from PIL's bicubic");
        // And the filter matters: the bilinear one is further off at the stripes' edges.
        let bilinear = resize_plane(&plane, side, side, to, ResizeFilter::Bilinear);
        let off = worst(&bilinear, &theirs);
        assert!(
            off > 2.0,
            "{side} -> {to}: bilinear within {off} grey levels of bicubic: the test cannot tell them apart"
        );
    }
}
