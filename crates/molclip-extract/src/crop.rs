//! Square crops of a tracked cell through time, written as MitoReID writes them.

use std::path::Path;

use crate::config::{CropConfig, CropFormat};
use crate::error::ExtractError;
use crate::raw::FieldImages;
use crate::segment::Segmentation;
use crate::track::Track;

/// A square window on a field; it may reach past the field's edges (padded with 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left edge.
    pub x0: isize,
    /// Top edge.
    pub y0: isize,
    /// Side in pixels.
    pub side: usize,
}

/// The window of a track: centred on its mean centroid, as wide as the cell's largest
/// extent over the track times `margin`, within `[min_size, max_size]`.
pub fn crop_box(track: &Track, frames: &[Segmentation], cfg: &CropConfig) -> CropBox {
    let cells = track.detections.iter().map(|&(t, l)| &frames[t].cells[l as usize - 1]);
    let n = track.detections.len() as f64;
    let (mut cx, mut cy, mut extent) = (0.0, 0.0, 0usize);
    for c in cells {
        cx += c.centroid[0] / n;
        cy += c.centroid[1] / n;
        extent = extent.max(c.bbox[2] - c.bbox[0]).max(c.bbox[3] - c.bbox[1]);
    }
    let side = ((extent as f64 * cfg.margin).ceil() as usize).clamp(cfg.min_size, cfg.max_size);
    // The pixel centre of the box is the centroid: x0 + side / 2 - 0.5 = cx.
    let corner = |c: f64| (c + 0.5 - side as f64 / 2.0).round() as isize;
    CropBox { x0: corner(cx), y0: corner(cy), side }
}

/// The window of one image, zero outside the image.
pub fn cut(image: &[f32], width: usize, height: usize, b: &CropBox) -> Vec<f32> {
    let mut out = vec![0.0f32; b.side * b.side];
    for r in 0..b.side {
        let y = b.y0 + r as isize;
        if y < 0 || y >= height as isize {
            continue;
        }
        for c in 0..b.side {
            let x = b.x0 + c as isize;
            if x >= 0 && x < width as isize {
                out[r * b.side + c] = image[y as usize * width + x as usize];
            }
        }
    }
    out
}

/// Writes frames `frames` of the window `b` into `dir`: `1.jpg ..` (RGB: R = w3, G = w2,
/// B = w1) or `stack.tif` (16-bit OME-TIFF, channels w3, w2, w1, so that `rgb` reads both
/// formats the same way).
pub fn write_video(
    dir: &Path,
    images: &FieldImages,
    frames: std::ops::RangeInclusive<usize>,
    b: &CropBox,
    cfg: &CropConfig,
) -> Result<(), ExtractError> {
    std::fs::create_dir_all(dir).map_err(ExtractError::io(dir))?;
    let (w, h) = (images.width, images.height);
    let encode_err = |path: &Path, e: String| ExtractError::invalid(path, format!("cannot encode: {e}"));
    match cfg.format {
        CropFormat::Jpeg => {
            for (k, t) in frames.enumerate() {
                let planes: Vec<Vec<f32>> = [2, 1, 0].iter().map(|&s| cut(&images.frames[t][s], w, h, b)).collect();
                let rgb: Vec<u8> = (0..b.side * b.side)
                    .flat_map(|i| planes.iter().map(move |p| (p[i] * 255.0).round().clamp(0.0, 255.0) as u8))
                    .collect();
                let path = dir.join(format!("{}.jpg", k + 1));
                let mut bytes = Vec::new();
                let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, cfg.jpeg_quality);
                image::ImageEncoder::write_image(
                    encoder,
                    &rgb,
                    b.side as u32,
                    b.side as u32,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| encode_err(&path, e.to_string()))?;
                std::fs::write(&path, bytes).map_err(ExtractError::io(&path))?;
            }
        }
        CropFormat::Tiff => {
            let count = frames.clone().count();
            let pages: Vec<Vec<u16>> = frames
                .flat_map(|t| [2, 1, 0].map(|s| (t, s)))
                .map(|(t, s)| {
                    cut(&images.frames[t][s], w, h, b)
                        .iter()
                        .map(|v| (v * 65535.0).round().clamp(0.0, 65535.0) as u16)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u16]> = pages.iter().map(Vec::as_slice).collect();
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let xml = molclip_core::ome::ome_xml(&name, b.side, b.side, &["w3", "w2", "w1"], count);
            let path = dir.join("stack.tif");
            let bytes = molclip_core::ome::gray16_stack(b.side, b.side, &refs, Some(&xml))
                .map_err(|e| encode_err(&path, e.to_string()))?;
            std::fs::write(&path, bytes).map_err(ExtractError::io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::measure;

    #[test]
    fn boxes_centre_on_the_track_and_pad_at_the_edges() {
        // A 4 x 4 cell whose corner is at (1, 1), then at (3, 1): mean centroid (3.5, 2.5).
        let frame = |x0: usize| {
            let mut labels = vec![0u32; 10 * 10];
            for y in 1..5 {
                for x in x0..x0 + 4 {
                    labels[y * 10 + x] = 1;
                }
            }
            measure(labels, 10, 10, 1)
        };
        let frames = vec![frame(1), frame(3)];
        let track = Track { detections: vec![(0, 1), (1, 1)] };
        let cfg = CropConfig { margin: 1.5, min_size: 2, ..CropConfig::default() };
        let b = crop_box(&track, &frames, &cfg);
        assert_eq!(b, CropBox { x0: 1, y0: 0, side: 6 });
        let image: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let corner = cut(&image, 10, 10, &CropBox { x0: -1, y0: -1, side: 3 });
        assert_eq!(corner, vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 10.0, 11.0]);
    }
}
