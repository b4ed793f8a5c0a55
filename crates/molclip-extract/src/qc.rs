//! Quality control: an overlay per field of the first and last frames, side by side, with
//! every cell's outline and its track's number: green for tracks that became videos, red
//! for those dropped (too short).

use std::path::Path;

use crate::error::ExtractError;
use crate::raw::FieldImages;
use crate::segment::Segmentation;
use crate::track::Track;

/// The 99.5th percentile of `values` (the display's white point).
fn white_point(values: &[f32]) -> f32 {
    let mut sample: Vec<f32> = values.iter().step_by(7).copied().collect();
    if sample.is_empty() {
        return 1.0;
    }
    let k = (sample.len() as f64 * 0.995) as usize;
    let k = k.min(sample.len() - 1);
    let (_, v, _) = sample.select_nth_unstable_by(k, f32::total_cmp);
    v.max(1e-6)
}

/// The overlay PNG of a field.
pub fn overlay_png(
    images: &FieldImages,
    frames: &[Segmentation],
    tracks: &[Track],
    kept: &[bool],
) -> Result<Vec<u8>, image::ImageError> {
    let (w, h) = (images.width, images.height);
    let last = images.frames.len() - 1;
    let gap = 8;
    let width = 2 * w + gap;
    let mut canvas = vec![[0u8; 3]; width * h];
    for (panel, t) in [0, last].into_iter().enumerate() {
        let x_off = panel * (w + gap);
        let stains = &images.frames[t];
        let white: Vec<f32> = stains.iter().map(|s| white_point(s)).collect();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                // R = w3, G = w2, B = w1, dimmed so that outlines stand out.
                let px = [2, 1, 0].map(|s| ((stains[s][i] / white[s]).min(1.0) * 200.0) as u8);
                canvas[y * width + x_off + x] = px;
            }
        }
        let labels = &frames[t].labels;
        // Which track, and whether kept, owns each label of this frame.
        let mut owner = vec![None; frames[t].cells.len() + 1];
        for (k, tr) in tracks.iter().enumerate() {
            if let Some(&(_, l)) = tr.detections.iter().find(|d| d.0 == t) {
                owner[l as usize] = Some(k);
            }
        }
        let colour = |k: Option<usize>| match k {
            Some(k) if kept[k] => [60, 255, 60],
            _ => [255, 60, 60],
        };
        for y in 0..h {
            for x in 0..w {
                let l = labels[y * w + x];
                if l == 0 {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || labels[y * w + x - 1] != l
                    || labels[y * w + x + 1] != l
                    || labels[(y - 1) * w + x] != l
                    || labels[(y + 1) * w + x] != l;
                if edge {
                    canvas[y * width + x_off + x] = colour(owner[l as usize]);
                }
            }
        }
        for cell in &frames[t].cells {
            let k = owner[cell.label as usize];
            let text = k.map_or("?".to_string(), |k| k.to_string());
            let x = (cell.centroid[0] as usize + x_off).saturating_sub(4 * text.len());
            let y = (cell.centroid[1] as usize).saturating_sub(4);
            molclip_data::montage::draw_text(&mut canvas, width, x, y, &text, [255, 255, 255]);
        }
        molclip_data::montage::draw_text(&mut canvas, width, x_off + 4, 4, &format!("t={}", t + 1), [255, 255, 0]);
    }
    let raw: Vec<u8> = canvas.into_iter().flatten().collect();
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        &raw,
        width as u32,
        h as u32,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Writes the overlay of a field to `path`, atomically.
pub fn write_overlay(
    path: &Path,
    images: &FieldImages,
    frames: &[Segmentation],
    tracks: &[Track],
    kept: &[bool],
) -> Result<(), ExtractError> {
    let bytes = overlay_png(images, frames, tracks, kept)
        .map_err(|e| ExtractError::invalid(path, format!("cannot encode the overlay: {e}")))?;
    molclip_core::write_atomic(path, &bytes)?;
    Ok(())
}
