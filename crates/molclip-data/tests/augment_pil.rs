//! MitoReID's extra augmentations against PIL, which MitoReID runs them with: `python3`
//! applies PIL to the same 8-bit frame, and its output is the oracle.
//! - `RandomResize` then `RandomFlip` then `RandomCrop`: PIL resizes the frame (bilinear,
//!   antialiased when it shrinks), flips it and crops it, past the frame's edges where it
//!   has shrunk below the crop: within one grey level.
//! - `GaussianBlur(radius)`: PIL's box blurs against molclip's Gaussian of that sigma: within
//!   two grey levels away from the edges, which the two pad differently.

mod common;

use molclip_data::augment::{transform_video, AugmentConfig, VideoTransform};
use molclip_data::{SampleDepth, Video};

const SIDE: usize = 64;

/// An 8-bit frame with stripes, a gradient and a disc with a hard edge.
fn test_frame() -> Vec<u8> {
    let mut px = Vec::with_capacity(SIDE * SIDE);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let stripes = if (x / 3 + y / 4) % 2 == 0 { 50.0 } else { 0.0 };
            let gradient = 100.0 * x as f64 / SIDE as f64;
            let (dx, dy) = (x as f64 - 38.0, y as f64 - 26.0);
            let disc = if dx * dx + dy * dy < 144.0 { 90.0 } else { 0.0 };
            px.push((stripes + gradient + disc).min(255.0) as u8);
        }
    }
    px
}

/// What PIL makes of the test frame with `ops` (Python statements on `img`).
fn pil(ops: &str) -> Vec<u8> {
    common::pil(&test_frame(), SIDE, SIDE, ops)
}

/// molclip's transform of the test frame (already at the resized side), in grey levels.
fn ours(config: &AugmentConfig, t: &VideoTransform) -> Vec<f32> {
    let frame = test_frame().iter().map(|&v| v as f32 / 255.0).collect();
    let video = Video { width: SIDE, height: SIDE, channels: 1, depth: SampleDepth::Eight, frames: vec![frame] };
    let mut out = Vec::new();
    transform_video(&video, config, t, &[0.0], &[1.0], &mut out);
    out.iter().map(|v| v * 255.0).collect()
}

/// The largest difference, in grey levels.
fn worst(a: &[f32], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, &b)| (a.round() - b as f32).abs()).fold(0.0, f32::max)
}

#[test]
fn rescaling_flipping_and_cropping_match_pil_within_one_grey_level() {
    let crop = 48;
    let config = AugmentConfig { resize: SIDE, crop, ..AugmentConfig::default() };
    // Rescaled to 76 (x 1.19) and 70, crops away from the rescaled frame's edges.
    for (scaled, x0, y0, hflip, vflip) in [(76, 14, 9, false, false), (76, 3, 20, true, false), (70, 11, 5, true, true)]
    {
        let t = VideoTransform { scaled, x0, y0, hflip, vflip, ..VideoTransform::centre(&config) };
        let mut ops = format!("img = img.resize(({scaled}, {scaled}), Image.BILINEAR)\n");
        if hflip {
            ops += "img = img.transpose(Image.FLIP_LEFT_RIGHT)\n";
        }
        if vflip {
            ops += "img = img.transpose(Image.FLIP_TOP_BOTTOM)\n";
        }
        ops += &format!("img = img.crop(({x0}, {y0}, {}, {}))", x0 + crop as i64, y0 + crop as i64);
        let w = worst(&ours(&config, &t), &pil(&ops));
        assert!(w <= 1.0, "scaled to {scaled}, crop at ({x0}, {y0}), flips {hflip} {vflip}: {w} grey levels from PIL");
    }
}

#[test]
fn the_blur_matches_pils_gaussian_blur_within_two_grey_levels_inside_the_frame() {
    let config = AugmentConfig { resize: SIDE, crop: SIDE, blur_rate: 1.0, ..AugmentConfig::default() };
    for sigma in [1.0f32, 2.0, 3.0] {
        let t = VideoTransform { blur_sigma: sigma, blur_seed: 1, ..VideoTransform::centre(&config) };
        let theirs = pil(&format!("img = img.filter(ImageFilter.GaussianBlur({sigma}))"));
        let o = ours(&config, &t);
        // Away from the edges (10 px, over 3 sigma), where PIL's box blurs pad otherwise.
        let inside = |i: &usize| (10..SIDE - 10).contains(&(i % SIDE)) && (10..SIDE - 10).contains(&(i / SIDE));
        let w = (0..SIDE * SIDE).filter(inside).map(|i| (o[i].round() - theirs[i] as f32).abs()).fold(0.0, f32::max);
        assert!(w <= 2.0, "sigma {sigma}: {w} grey levels from PIL inside the frame");
        let mean = o.iter().zip(&theirs).map(|(a, &b)| (a.round() - b as f32).abs()).sum::<f32>() / o.len() as f32;
        assert!(mean < 0.6, "sigma {sigma}: {mean} grey levels from PIL on average");
    }
}
