//! A picture of the dynamics: one row per MoA, chosen frames of one cell,
//! labelled with the MoA and the frame numbers. In colour where the frames are
//! (RGB, each channel stretched on its own), every cell resized to one size (the
//! published crops vary per cell).

use std::collections::BTreeMap;
use std::path::Path;

use font8x8::UnicodeFonts;
use image::ImageEncoder;

use crate::error::DataError;
use crate::frames::{read_video_with, Channels, FrameOptions, NamedChannels, Video};
use crate::index::{CellVideo, DatasetIndex};
use crate::resize::{resize_plane, ResizeFilter};

const LABEL_WIDTH: usize = 8 * 30 + 8;
const HEADER: usize = 14;
const GAP: usize = 4;
/// The largest side a cell is drawn at (before the zoom of small frames).
const MAX_SIDE: usize = 128;

/// Every frame, in colour (grey frames as three equal channels).
fn read_rgb(cell: &CellVideo) -> Result<Video, DataError> {
    let options = FrameOptions { frames: 0, channels: Channels::Named(NamedChannels::Rgb), ..FrameOptions::default() };
    read_video_with(cell, &options)
}

/// Writes `text` in an 8 x 8 pixel font at (`x0`, `y0`) on an RGB canvas (`[r, g, b]` per
/// pixel, row-major, `width` wide); what falls outside is clipped.
pub fn draw_text(canvas: &mut [[u8; 3]], width: usize, x0: usize, y0: usize, text: &str, colour: [u8; 3]) {
    for (k, ch) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else { continue };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let (x, y) = (x0 + k * 8 + col, y0 + row);
                    if x < width && y * width + x < canvas.len() {
                        canvas[y * width + x] = colour;
                    }
                }
            }
        }
    }
}

/// 1-based frame numbers to show for a `t`-frame video: 1, 4, 8, 12, 16 at
/// T = 16, spread the same way otherwise.
pub fn montage_frames(t: usize) -> Vec<usize> {
    if t == 16 {
        return vec![1, 4, 8, 12, 16];
    }
    let mut v: Vec<usize> = (0..5).map(|k| 1 + (k * (t - 1) + 2) / 4).collect();
    v.dedup();
    v
}

/// Per MoA, the train cell (among the first few) that changes most between
/// its first and last frame, so a weak responder does not stand for its MoA.
fn pick_cells(index: &DatasetIndex) -> Result<Vec<(usize, Video)>, DataError> {
    let mut by_moa: BTreeMap<usize, Vec<&CellVideo>> = BTreeMap::new();
    for c in index.split(molclip_core::Split::Train) {
        if let Some(moa) = c.moa_id {
            by_moa.entry(moa).or_default().push(c);
        }
    }
    let mut rows = Vec::new();
    for (moa, cells) in by_moa {
        let mut best: Option<(f64, Video)> = None;
        for cell in cells.iter().step_by((cells.len() / 8).max(1)).take(8) {
            let video = read_rgb(cell)?;
            let norm = |f: &[f32]| -> Vec<f32> {
                let m = f.iter().sum::<f32>() / f.len() as f32;
                f.iter().map(|v| v / m.max(1e-6)).collect()
            };
            let (first, last) = (norm(&video.frames[0]), norm(video.frames.last().unwrap()));
            let change: f64 = first.iter().zip(&last).map(|(a, b)| (a - b).abs() as f64).sum();
            if best.as_ref().is_none_or(|(c, _)| change > *c) {
                best = Some((change, video));
            }
        }
        if let Some((_, v)) = best {
            rows.push((moa, v));
        }
    }
    Ok(rows)
}

/// Write the montage PNG.
pub fn write_montage(index: &DatasetIndex, out: &Path) -> Result<(), DataError> {
    let png = montage_png(index)?;
    std::fs::write(out, png).map_err(|e| DataError::invalid(out, format!("cannot write montage: {e}")))
}

/// The montage as PNG bytes.
pub fn montage_png(index: &DatasetIndex) -> Result<Vec<u8>, DataError> {
    let rows = pick_cells(index)?;
    if rows.is_empty() {
        return Err(DataError::invalid(&index.root, "no train cells to draw"));
    }
    let t = rows.iter().map(|r| r.1.frames.len()).min().unwrap_or(0);
    let shown = montage_frames(t);
    // One size for every cell: the largest, at most MAX_SIDE.
    let side = rows.iter().map(|r| r.1.width.max(r.1.height)).max().unwrap_or(1).min(MAX_SIDE);
    let zoom = if side <= 64 { 2 } else { 1 };
    let (tw, th) = (side * zoom, side * zoom);
    let width = LABEL_WIDTH + shown.len() * (tw + GAP);
    let height = HEADER + rows.len() * (th + GAP);
    let mut canvas = vec![[24u8; 3]; width * height];
    for (k, f) in shown.iter().enumerate() {
        draw_text(&mut canvas, width, LABEL_WIDTH + k * (tw + GAP), 3, &format!("t={f}"), [230; 3]);
    }
    for (r, (moa, video)) in rows.iter().enumerate() {
        let y0 = HEADER + r * (th + GAP);
        let mut label = index.annotation.moa_name(*moa);
        label.truncate(30);
        draw_text(&mut canvas, width, 4, y0 + th / 2 - 4, &label, [230; 3]);
        let plane = video.width * video.height;
        for c in 0..3 {
            // One contrast per channel for the whole video, so dimming and bleaching show.
            let mut all: Vec<f32> = video.frames.iter().flat_map(|f| &f[c * plane..(c + 1) * plane]).copied().collect();
            all.sort_by(f32::total_cmp);
            let lo = all[all.len() / 100];
            let hi = all[all.len() * 998 / 1000].max(lo + 1e-6);
            for (k, &f) in shown.iter().enumerate() {
                let frame = resize_plane(
                    &video.frames[f - 1][c * plane..(c + 1) * plane],
                    video.width,
                    video.height,
                    side,
                    ResizeFilter::Bilinear,
                );
                let x0 = LABEL_WIDTH + k * (tw + GAP);
                for y in 0..th {
                    for x in 0..tw {
                        let v = (frame[(y / zoom) * side + x / zoom] - lo) / (hi - lo);
                        canvas[(y0 + y) * width + x0 + x][c] = (v.clamp(0.0, 1.0) * 255.0) as u8;
                    }
                }
            }
        }
    }
    let bytes: Vec<u8> = canvas.into_iter().flatten().collect();
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&bytes, width as u32, height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| DataError::invalid(&index.root, format!("cannot encode the montage: {e}")))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    #[test]
    fn montage_frames_spread_over_the_video() {
        assert_eq!(super::montage_frames(16), vec![1, 4, 8, 12, 16]);
        assert_eq!(super::montage_frames(5), vec![1, 2, 3, 4, 5]);
        assert_eq!(super::montage_frames(2), vec![1, 2]);
        assert_eq!(*super::montage_frames(40).last().unwrap(), 40);
    }
}
