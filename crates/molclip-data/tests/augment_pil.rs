//! MitoReID's extra augmentations against PIL, which MitoReID runs them with: `python3`
//! applies PIL to the same 8-bit frame, and its output is the oracle.
//! - `RandomResize` then `RandomFlip` then `RandomCrop`: PIL resizes the frame (bilinear,
//!   antialiased when it shrinks), flips it and crops it, past the frame's edges where it
//!   has shrunk below the crop: within one grey level.
//! - `GaussianBlur(radius)`: PIL's box blurs against molclip's Gaussian of that sigma: within
//!   two grey levels away from the edges, which the two pad differently.

mod common;

use molclip_data::augment::{transform_video, AugmentConfig, RotationFill, VideoTransform};
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
    worst_where(a, b, |_| true)
}

/// The largest difference, in grey levels, over the pixels `keep` takes (by index).
fn worst_where(a: &[f32], b: &[u8], keep: impl Fn(usize) -> bool) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|&(i, _)| keep(i))
        .map(|(_, (a, &b))| (a.round() - b as f32).abs())
        .fold(0.0, f32::max)
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
        let inside = |i: usize| (10..SIDE - 10).contains(&(i % SIDE)) && (10..SIDE - 10).contains(&(i / SIDE));
        let w = worst_where(&o, &theirs, inside);
        assert!(w <= 2.0, "sigma {sigma}: {w} grey levels from PIL inside the frame");
        let mean = o.iter().zip(&theirs).map(|(a, &b)| (a.round() - b as f32).abs()).sum::<f32>() / o.len() as f32;
        assert!(mean < 0.6, "sigma {sigma}: {mean} grey levels from PIL on average");
    }
}

#[test]
fn rotation_turns_as_pils_rotate_with_its_darkest_fill_within_one_grey_level_off_the_edges() {
    // MitoReID's RandomRotate: `img.rotate(angle, resample=BILINEAR, fillcolor=min)` with a
    // whole number of degrees from 0 to 90, counter-clockwise.
    let config =
        AugmentConfig { resize: SIDE, crop: SIDE, rotation_fill: RotationFill::Darkest, ..AugmentConfig::default() };
    let darkest = *test_frame().iter().min().unwrap();
    for angle in [17.0f32, 30.0, 90.0] {
        let t = VideoTransform { angle_degrees: angle, ..VideoTransform::centre(&config) };
        let theirs = pil(&format!("img = img.rotate({angle}, resample=Image.BILINEAR, fillcolor={darkest})"));
        let o = ours(&config, &t);
        // Off the rotated frame's edges, where a pixel mixes frame and fill and the two round
        // the fraction of the frame it covers differently.
        let (c, (sin, cos)) = (SIDE as f32 / 2.0, angle.to_radians().sin_cos());
        let off_edge = |i: usize| {
            let (x, y) = ((i % SIDE) as f32 + 0.5 - c, (i / SIDE) as f32 + 0.5 - c);
            let (u, v) = (cos * x - sin * y, sin * x + cos * y);
            (u.abs().max(v.abs()) - c).abs() > 1.5
        };
        let w = worst_where(&o, &theirs, off_edge);
        assert!(w <= 1.0, "{angle} degrees: {w} grey levels from PIL");
        // Turning the other way is far off: the test tells the directions apart.
        let wrong = ours(&config, &VideoTransform { angle_degrees: -angle, ..t });
        let w = worst(&wrong, &theirs);
        assert!(w > 20.0, "{angle} degrees: the opposite turn is within {w} grey levels of PIL");
    }
}

#[test]
fn the_blur_is_of_the_whole_frame_before_the_crop_as_mitoreids() {
    // MitoReID blurs the frame, then crops it: inside the frame, the crop's own edges hold
    // what the frame's blur puts there (blurring the crop alone would pad them with its
    // edge pixels). Crops at the frame's corner, in its middle, and past its edge below.
    let crop = 40;
    let config = AugmentConfig { resize: SIDE, crop, blur_rate: 1.0, ..AugmentConfig::default() };
    for (x0, y0, scaled) in [(2i64, 3i64, SIDE), (12, 10, SIDE), (-6, -4, 52)] {
        let sigma = 2.0;
        let t = VideoTransform { x0, y0, scaled, blur_sigma: sigma, blur_seed: 1, ..VideoTransform::centre(&config) };
        let mut ops = String::new();
        if scaled != SIDE {
            ops += &format!("img = img.resize(({scaled}, {scaled}), Image.BILINEAR)\n");
        }
        ops += &format!(
            "img = img.filter(ImageFilter.GaussianBlur({sigma}))\nimg = img.crop(({x0}, {y0}, {}, {}))",
            x0 + crop as i64,
            y0 + crop as i64
        );
        let theirs = pil(&ops);
        let o = ours(&config, &t);
        // Within 2 grey levels off the frame's edges (where PIL's box blurs pad otherwise),
        // and black past them, exactly.
        let side = scaled as i64;
        for (i, (a, &b)) in o.iter().zip(&theirs).enumerate() {
            let (x, y) = (i as i64 % crop as i64 + x0, i as i64 / crop as i64 + y0);
            if !(0..side).contains(&x) || !(0..side).contains(&y) {
                assert_eq!((*a, b), (0.0, 0), "({x0}, {y0}) pixel ({x}, {y}) past the frame's edge");
            } else if (7..side - 7).contains(&x) && (7..side - 7).contains(&y) {
                assert!((a.round() - b as f32).abs() <= 2.0, "({x0}, {y0}) pixel ({x}, {y}): {a} against PIL's {b}");
            }
        }
    }
}
