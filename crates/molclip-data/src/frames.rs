//! Decoding a cell's frames into one grey video in [0, 1]: 8- or 16-bit,
//! grey or RGB (luminance), PNG/JPEG/TIFF files or a multi-page TIFF.

use std::io::BufReader;
use std::path::Path;

use crate::error::DataError;
use crate::index::{CellVideo, FrameSource};

/// `frames` images of `height * width`, row-major, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<f32>>,
}

/// Refuse images larger than this many pixels before allocating them.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

pub fn read_video(cell: &CellVideo) -> Result<Video, DataError> {
    let frames = match &cell.source {
        FrameSource::Files(files) => files.iter().map(|f| read_image(f)).collect::<Result<Vec<_>, _>>()?,
        FrameSource::Stack(path) => read_stack(path)?,
    };
    let (width, height) = (cell.width as usize, cell.height as usize);
    Ok(Video { width, height, frames })
}

fn read_image(path: &Path) -> Result<Vec<f32>, DataError> {
    let (w, h) = image::image_dimensions(path).map_err(|e| DataError::invalid(path, format!("unreadable image: {e}")))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DataError::invalid(path, format!("{w}x{h} pixels exceeds the limit of {MAX_PIXELS}")));
    }
    let img = image::open(path).map_err(|e| DataError::invalid(path, format!("cannot decode: {e}")))?;
    Ok(img.to_luma32f().into_raw())
}

/// Pages, width and height of a TIFF stack (first page's size).
pub fn tiff_pages(path: &Path) -> Result<(usize, u32, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut decoder = tiff::decoder::Decoder::new(BufReader::new(file)).map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions().map_err(|e| e.to_string())?;
    let mut pages = 1;
    while decoder.more_images() {
        decoder.next_image().map_err(|e| e.to_string())?;
        let dims = decoder.dimensions().map_err(|e| e.to_string())?;
        if dims != (w, h) {
            return Err(format!("page {} is {}x{}, page 1 is {w}x{h}", pages + 1, dims.0, dims.1));
        }
        pages += 1;
    }
    Ok((pages, w, h))
}

fn read_stack(path: &Path) -> Result<Vec<Vec<f32>>, DataError> {
    let err = |e: tiff::TiffError| DataError::invalid(path, format!("cannot decode TIFF: {e}"));
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut decoder = tiff::decoder::Decoder::new(BufReader::new(file)).map_err(err)?;
    let mut frames = Vec::new();
    loop {
        let (w, h) = decoder.dimensions().map_err(err)?;
        if w as u64 * h as u64 > MAX_PIXELS {
            return Err(DataError::invalid(path, format!("{w}x{h} pixels exceeds the limit of {MAX_PIXELS}")));
        }
        let channels = match decoder.colortype().map_err(err)? {
            tiff::ColorType::Gray(_) => 1,
            tiff::ColorType::RGB(_) => 3,
            other => return Err(DataError::invalid(path, format!("unsupported TIFF colour type {other:?}: expected grey or RGB"))),
        };
        let values: Vec<f32> = match decoder.read_image().map_err(err)? {
            tiff::decoder::DecodingResult::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
            tiff::decoder::DecodingResult::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
            tiff::decoder::DecodingResult::F32(v) => v,
            _ => return Err(DataError::invalid(path, "unsupported TIFF sample format: expected 8- or 16-bit integers or f32")),
        };
        frames.push(if channels == 3 {
            values.chunks_exact(3).map(|p| 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2]).collect()
        } else {
            values
        });
        if !decoder.more_images() {
            break;
        }
        decoder.next_image().map_err(err)?;
    }
    Ok(frames)
}
