//! Decoding a cell's frames into one single-channel video in [0, 1]:
//! PNG/JPEG/TIFF files (8- or 16-bit, grey or RGB) or a multi-page TIFF /
//! OME-TIFF stack; T frames sampled from however many there are; one
//! channel selected (or luminance).

use std::io::BufReader;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::index::{CellVideo, FrameSource};

/// `frames` images of `height * width`, row-major, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// The frames, in time order.
    pub frames: Vec<Vec<f32>>,
}

/// What to do with a video that has fewer frames than asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShortVideoPolicy {
    /// Refuse it, naming the cell.
    #[default]
    Error,
    /// Hold the last frame.
    RepeatLast,
    /// Start again from the first frame.
    Loop,
}

/// How frames are read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrameOptions {
    /// Frames per video (MitoReID: 16). Longer videos are sampled uniformly;
    /// 0 keeps every frame.
    pub frames: usize,
    /// What to do with videos shorter than `frames`.
    pub short: ShortVideoPolicy,
    /// Channel to read from multi-channel images (0-based); `None` reads
    /// grey images as they are and RGB as luminance.
    pub channel: Option<usize>,
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_pixels: u64,
}

impl Default for FrameOptions {
    fn default() -> Self {
        Self { frames: 16, short: ShortVideoPolicy::Error, channel: None, max_pixels: 64 * 1024 * 1024 }
    }
}

impl FrameOptions {
    /// Every frame, luminance: what inspection reads.
    pub fn all_frames() -> Self {
        Self { frames: 0, ..Self::default() }
    }
}

/// Why a video cannot give the frames asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameCountError {
    /// The video has no frames at all.
    #[error("no frames")]
    Empty,
    /// Fewer frames than asked for, and the policy refuses short videos.
    #[error("{found} frames, {needed} needed (set `short` to repeat-last or loop to accept short videos)")]
    TooShort {
        /// Frames the video has.
        found: usize,
        /// Frames asked for.
        needed: usize,
    },
}

/// Which of `n` frames to read for a `t`-frame video: uniform over the
/// video when `n >= t`, else per `policy`.
pub fn sample_indices(n: usize, t: usize, policy: ShortVideoPolicy) -> Result<Vec<usize>, FrameCountError> {
    if n == 0 {
        return Err(FrameCountError::Empty);
    }
    if t == 0 || t == n {
        return Ok((0..n).collect());
    }
    if n > t {
        // Evenly spaced, first and last included.
        return Ok((0..t).map(|i| if t == 1 { 0 } else { (i * (n - 1) + (t - 1) / 2) / (t - 1) }).collect());
    }
    match policy {
        ShortVideoPolicy::Error => Err(FrameCountError::TooShort { found: n, needed: t }),
        ShortVideoPolicy::RepeatLast => Ok((0..t).map(|i| i.min(n - 1)).collect()),
        ShortVideoPolicy::Loop => Ok((0..t).map(|i| i % n).collect()),
    }
}

/// Every frame of a cell, luminance.
pub fn read_video(cell: &CellVideo) -> Result<Video, DataError> {
    read_video_with(cell, &FrameOptions::all_frames())
}

/// A cell's frames as `options` say: sampled, one channel, limited in size.
pub fn read_video_with(cell: &CellVideo, options: &FrameOptions) -> Result<Video, DataError> {
    let picks = sample_indices(cell.n_frames, options.frames, options.short)
        .map_err(|e| DataError::invalid(&cell.dir, e.to_string()))?;
    let frames = match &cell.source {
        FrameSource::Files(files) => {
            picks.iter().map(|&i| read_image(&files[i], options)).collect::<Result<Vec<_>, _>>()?
        }
        FrameSource::Stack(path) => read_stack(path, &picks, options)?,
    };
    Ok(Video { width: cell.width as usize, height: cell.height as usize, frames })
}

fn check_size(path: &Path, w: u32, h: u32, options: &FrameOptions) -> Result<(), DataError> {
    if w as u64 * h as u64 > options.max_pixels {
        return Err(DataError::invalid(
            path,
            format!("{w}x{h} pixels exceeds the limit of {} (max_pixels)", options.max_pixels),
        ));
    }
    Ok(())
}

fn read_image(path: &Path, options: &FrameOptions) -> Result<Vec<f32>, DataError> {
    // One read from disk; the header is checked in memory before decoding.
    let bytes = std::fs::read(path).map_err(DataError::io(path))?;
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| DataError::invalid(path, format!("unreadable image: {e}")))
    };
    let (w, h) = reader()?.into_dimensions().map_err(|e| DataError::invalid(path, format!("unreadable image: {e}")))?;
    check_size(path, w, h, options)?;
    let img = reader()?.decode().map_err(|e| DataError::invalid(path, format!("cannot decode: {e}")))?;
    let channels = img.color().channel_count() as usize;
    match (options.channel, img) {
        (None, image::DynamicImage::ImageLuma8(g)) => Ok(g.into_raw().into_iter().map(|v| v as f32 / 255.0).collect()),
        (None, img) => Ok(img.to_luma32f().into_raw()),
        (Some(c), _) if c >= channels => {
            Err(DataError::invalid(path, format!("channel {c} asked for, the image has {channels}")))
        }
        (Some(_), img) if channels == 1 => Ok(img.to_luma32f().into_raw()),
        (Some(c), img) => Ok(img.to_rgba32f().into_raw().chunks_exact(4).map(|p| p[c]).collect()),
    }
}

/// How the pages of a TIFF stack map to time points and channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackLayout {
    /// Page width.
    pub width: u32,
    /// Page height.
    pub height: u32,
    /// Pages in the file.
    pub pages: usize,
    /// Time points.
    pub frames: usize,
    /// Channels.
    pub channels: usize,
    /// OME `DimensionOrder` puts C before T (XYCZT, XYZCT, XYCTZ).
    channel_major: bool,
}

impl StackLayout {
    fn page(&self, t: usize, c: usize) -> usize {
        if self.channel_major {
            t * self.channels + c
        } else {
            c * self.frames + t
        }
    }
}

fn ome_attribute(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("{name}=\""))? + name.len() + 2;
    Some(xml[start..].chars().take_while(|c| *c != '"').collect())
}

/// Read a stack's page count and, for OME-TIFF, its time and channel sizes.
pub fn stack_layout(path: &Path) -> Result<StackLayout, DataError> {
    let bad = |reason: String| DataError::invalid(path, reason);
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut decoder = tiff::decoder::Decoder::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions().map_err(|e| bad(e.to_string()))?;
    let description = decoder.get_tag_ascii_string(tiff::tags::Tag::ImageDescription).ok();
    let mut pages = 1;
    while decoder.more_images() {
        decoder.next_image().map_err(|e| bad(e.to_string()))?;
        let dims = decoder.dimensions().map_err(|e| bad(e.to_string()))?;
        if dims != (w, h) {
            return Err(bad(format!("page {} is {}x{}, page 1 is {w}x{h}", pages + 1, dims.0, dims.1)));
        }
        pages += 1;
    }
    let ome = description.filter(|d| d.contains("<OME") && d.contains("<Pixels"));
    let Some(xml) = ome else {
        return Ok(StackLayout { width: w, height: h, pages, frames: pages, channels: 1, channel_major: true });
    };
    let size = |name: &str| ome_attribute(&xml, name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(1);
    let (t, c, z) = (size("SizeT"), size("SizeC"), size("SizeZ"));
    if z != 1 {
        return Err(bad(format!(
            "OME-TIFF with SizeZ = {z}: z-stacks are not supported, expected one plane per time point"
        )));
    }
    if t * c != pages {
        return Err(bad(format!("OME-TIFF says SizeT = {t} x SizeC = {c}, but the file has {pages} pages")));
    }
    let order = ome_attribute(&xml, "DimensionOrder").unwrap_or_else(|| "XYCZT".into());
    let channel_major = order.find('C') < order.find('T');
    Ok(StackLayout { width: w, height: h, pages, frames: t, channels: c, channel_major })
}

fn read_stack(path: &Path, picks: &[usize], options: &FrameOptions) -> Result<Vec<Vec<f32>>, DataError> {
    let layout = stack_layout(path)?;
    check_size(path, layout.width, layout.height, options)?;
    let channel = options.channel.unwrap_or(0);
    let by_page = layout.channels > 1;
    if by_page && channel >= layout.channels {
        return Err(DataError::invalid(
            path,
            format!("channel {channel} asked for, the stack has {}", layout.channels),
        ));
    }
    let wanted: Vec<usize> = picks.iter().map(|&t| if by_page { layout.page(t, channel) } else { t }).collect();
    let err = |e: tiff::TiffError| DataError::invalid(path, format!("cannot decode TIFF: {e}"));
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut decoder = tiff::decoder::Decoder::new(BufReader::new(file)).map_err(err)?;
    let mut pages: Vec<Option<Vec<f32>>> = vec![None; layout.pages];
    let last = wanted.iter().copied().max().unwrap_or(0);
    for (page, slot) in pages.iter_mut().enumerate().take(last + 1) {
        if page > 0 {
            decoder.next_image().map_err(err)?;
        }
        if !wanted.contains(&page) {
            continue;
        }
        let channels = match decoder.colortype().map_err(err)? {
            tiff::ColorType::Gray(_) => 1,
            tiff::ColorType::RGB(_) => 3,
            other => {
                return Err(DataError::invalid(
                    path,
                    format!("unsupported TIFF colour type {other:?}: expected grey or RGB"),
                ))
            }
        };
        let values: Vec<f32> = match decoder.read_image().map_err(err)? {
            tiff::decoder::DecodingResult::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
            tiff::decoder::DecodingResult::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
            tiff::decoder::DecodingResult::F32(v) => v,
            _ => {
                return Err(DataError::invalid(
                    path,
                    "unsupported TIFF sample format: expected 8- or 16-bit integers or f32",
                ))
            }
        };
        *slot = Some(if channels == 3 {
            match options.channel {
                Some(c) if !by_page => values.chunks_exact(3).map(|p| p[c.min(2)]).collect(),
                _ => values.chunks_exact(3).map(|p| 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2]).collect(),
            }
        } else {
            values
        });
    }
    Ok(wanted.iter().map(|&p| pages[p].clone().expect("page decoded")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_uniform_and_short_videos_follow_the_policy() {
        assert_eq!(sample_indices(16, 16, ShortVideoPolicy::Error).unwrap(), (0..16).collect::<Vec<_>>());
        assert_eq!(
            sample_indices(31, 16, ShortVideoPolicy::Error).unwrap(),
            (0..16).map(|i| 2 * i).collect::<Vec<_>>()
        );
        let s = sample_indices(100, 5, ShortVideoPolicy::Error).unwrap();
        assert_eq!((s[0], s[4]), (0, 99));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(sample_indices(10, 16, ShortVideoPolicy::Error)
            .unwrap_err()
            .to_string()
            .contains("10 frames, 16 needed"));
        assert_eq!(sample_indices(3, 5, ShortVideoPolicy::RepeatLast).unwrap(), vec![0, 1, 2, 2, 2]);
        assert_eq!(sample_indices(3, 5, ShortVideoPolicy::Loop).unwrap(), vec![0, 1, 2, 0, 1]);
        assert_eq!(sample_indices(7, 0, ShortVideoPolicy::Error).unwrap().len(), 7);
    }
}
