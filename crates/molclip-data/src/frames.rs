//! Decoding a cell's frames into a video in [0, 1]: PNG/JPEG/TIFF files (8- or
//! 16-bit, grey or RGB) or a multi-page TIFF / OME-TIFF stack; T frames sampled
//! from however many there are; the channels the config names (grey or
//! luminance, RGB, or a list of channel indices), stored planar.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::index::{CellVideo, FrameSource};

/// `frames` images of `channels * height * width` (planar: one row-major plane per
/// channel), values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Channels per frame.
    pub channels: usize,
    /// Bits per sample of the source: 8, or 16 for anything deeper.
    pub depth: SampleDepth,
    /// The frames, in time order.
    pub frames: Vec<Vec<f32>>,
}

impl Video {
    /// The same size, channels and depth, without frames.
    pub fn clone_header(&self) -> Self {
        Self { width: self.width, height: self.height, channels: self.channels, depth: self.depth, frames: Vec::new() }
    }
}

/// How finely the source quantised its samples: what a cache needs to keep them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SampleDepth {
    /// 8-bit samples.
    Eight,
    /// 16-bit samples (or float, kept to 16 bits).
    Sixteen,
}

/// Which channels of the frames the model sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Channels {
    /// `"grey"` (grey images as they are, colour ones as luminance) or `"rgb"`.
    Named(NamedChannels),
    /// Channel indices (0-based), in the order the model sees them: `[0, 1]`.
    Pick(Vec<usize>),
}

/// The named channel sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedChannels {
    /// One channel: grey, or the luminance of colour images.
    Grey,
    /// Red, green and blue (a grey image gives three equal channels). MitoReID's
    /// published frames merge three stains this way.
    Rgb,
}

impl Default for Channels {
    fn default() -> Self {
        Channels::Named(NamedChannels::Grey)
    }
}

impl Channels {
    /// Channels per frame.
    pub fn count(&self) -> usize {
        match self {
            Channels::Named(NamedChannels::Grey) => 1,
            Channels::Named(NamedChannels::Rgb) => 3,
            Channels::Pick(list) => list.len(),
        }
    }

    /// Refuses an empty or repeated list, naming the field.
    pub fn validate(&self) -> Result<(), DataError> {
        if let Channels::Pick(list) = self {
            if list.is_empty() {
                return Err(DataError::config("frames.channels", "an empty list: name at least one channel"));
            }
            if (1..list.len()).any(|i| list[..i].contains(&list[i])) {
                return Err(DataError::config("frames.channels", format!("{list:?} names a channel twice")));
            }
        }
        Ok(())
    }

    /// Plane `c` of this selection from an image of `available` interleaved channels
    /// (`samples`, `available` per pixel); grey images serve any selection of channel 0 or
    /// RGB.
    fn plane(&self, c: usize, samples: &[f32], available: usize, path: &Path) -> Result<Vec<f32>, DataError> {
        let pixels = samples.chunks_exact(available);
        match self {
            Channels::Named(NamedChannels::Grey) if available >= 3 => {
                Ok(pixels.map(|p| 0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2]).collect())
            }
            Channels::Named(_) if available < 3 => Ok(pixels.map(|p| p[0]).collect()),
            Channels::Named(_) => Ok(pixels.map(|p| p[c]).collect()),
            Channels::Pick(list) => {
                let k = list[c];
                if k >= available && !(available == 1 && k == 0) {
                    return Err(DataError::invalid(
                        path,
                        format!("channel {k} asked for (frames.channels), the image has {available}"),
                    ));
                }
                Ok(pixels.map(|p| p[k.min(available - 1)]).collect())
            }
        }
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrameOptions {
    /// Frames per video (MitoReID: 16). Longer videos are sampled uniformly;
    /// 0 keeps every frame.
    pub frames: usize,
    /// What to do with videos shorter than `frames`.
    pub short: ShortVideoPolicy,
    /// The channels the model sees: `"grey"` (default: grey as it is, colour as
    /// luminance), `"rgb"`, or a list of channel indices.
    pub channels: Channels,
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Cells with more samples (frames x height x width x channels kept, every frame of the
    /// cell counted) are refused from their headers, before any frame is decoded.
    pub max_cell_samples: u64,
    /// Cells with more frames (files, or pages of a stack) are refused before decoding.
    pub max_frames: usize,
    /// Frame files and stacks larger than this (MiB on disk) are refused before reading.
    pub max_file_mb: u64,
}

impl Default for FrameOptions {
    fn default() -> Self {
        Self {
            frames: 16,
            short: ShortVideoPolicy::Error,
            channels: Channels::default(),
            max_pixels: 64 * 1024 * 1024,
            max_cell_samples: 256 * 1024 * 1024,
            max_frames: 10_000,
            max_file_mb: 2048,
        }
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

/// A cell's frames as `options` say: sampled, the channels asked for, limited in size.
pub fn read_video_with(cell: &CellVideo, options: &FrameOptions) -> Result<Video, DataError> {
    check_cell(cell, options)?;
    let picks = sample_indices(cell.n_frames, options.frames, options.short)
        .map_err(|e| DataError::invalid(&cell.dir, e.to_string()))?;
    let (frames, depth) = match &cell.source {
        FrameSource::Files(files) => {
            let read = picks.iter().map(|&i| read_image(&files[i], options)).collect::<Result<Vec<_>, _>>()?;
            let depth = read.iter().map(|f| f.1).max().unwrap_or(SampleDepth::Eight);
            (read.into_iter().map(|f| f.0).collect(), depth)
        }
        FrameSource::Stack(path) => read_stack(path, &picks, options)?,
    };
    let (width, height, channels) = (cell.width as usize, cell.height as usize, options.channels.count());
    Ok(Video { width, height, channels, depth, frames })
}

/// Refuses a cell whose frames, as its index read them from the headers, exceed the caps.
pub fn check_cell(cell: &CellVideo, options: &FrameOptions) -> Result<(), DataError> {
    if cell.n_frames > options.max_frames {
        return Err(DataError::invalid(
            &cell.dir,
            format!("{} frames exceeds the limit of {} (max_frames)", cell.n_frames, options.max_frames),
        ));
    }
    let samples = (cell.n_frames as u64)
        .saturating_mul(cell.width as u64 * cell.height as u64)
        .saturating_mul(options.channels.count() as u64);
    if samples > options.max_cell_samples {
        return Err(DataError::invalid(
            &cell.dir,
            format!(
                "{} frames of {}x{} x {} channel(s) = {samples} samples exceeds the limit of {} (max_cell_samples)",
                cell.n_frames,
                cell.width,
                cell.height,
                options.channels.count(),
                options.max_cell_samples
            ),
        ));
    }
    Ok(())
}

/// Decodes every frame of a cell, one at a time (memory: one frame), and checks that there
/// are as many as the index counted: what `inspect` and `train`'s check do.
pub fn verify_video(cell: &CellVideo, options: &FrameOptions) -> Result<(), DataError> {
    check_cell(cell, options)?;
    let decoded = match &cell.source {
        FrameSource::Files(files) => {
            for file in files {
                read_image(file, options)?;
            }
            files.len()
        }
        FrameSource::Stack(path) => {
            let layout = stack_layout_checked(path, options)?;
            let mut pages = 0;
            let count = &mut |_, _, _| {
                pages += 1;
                Ok(())
            };
            visit_stack(path, layout.pages, &|_| true, count, options)?;
            pages / layout.channels
        }
    };
    if decoded != cell.n_frames {
        return Err(DataError::invalid(&cell.dir, format!("{decoded} frames decoded, {} expected", cell.n_frames)));
    }
    Ok(())
}

/// Opens a frame file or stack, refusing one larger than `max_file_mb`.
fn open_checked(path: &Path, options: &FrameOptions) -> Result<File, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    let len = file.metadata().map_err(DataError::io(path))?.len();
    if len > options.max_file_mb.saturating_mul(1 << 20) {
        return Err(DataError::invalid(
            path,
            format!("{} MiB on disk exceeds the limit of {} MiB (max_file_mb)", len >> 20, options.max_file_mb),
        ));
    }
    Ok(file)
}

/// Bytes after the image's end (PNG: the IEND chunk; JPEG: the end-of-image marker), as a
/// reason, or `None` where the file ends where the image does.
fn trailing_data(file: &mut File, format: image::ImageFormat) -> std::io::Result<Option<String>> {
    let len = file.metadata()?.len();
    match format {
        image::ImageFormat::Png => {
            // The usual case in one read: the file ends with an empty IEND chunk.
            const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
            if len >= 12 {
                let mut tail = [0u8; 12];
                file.seek(SeekFrom::End(-12))?;
                file.read_exact(&mut tail)?;
                if tail == IEND {
                    return Ok(None);
                }
            }
            // Otherwise find it: chunks from the 8-byte signature on are length (4), type (4),
            // data, CRC (4).
            let mut at = 8u64;
            while at + 12 <= len {
                let mut head = [0u8; 8];
                file.seek(SeekFrom::Start(at))?;
                file.read_exact(&mut head)?;
                let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
                at += 12 + length;
                if &head[4..] == b"IEND" {
                    return Ok((at < len).then(|| format!("{} bytes after the PNG's end (IEND chunk)", len - at)));
                }
            }
            Ok(None)
        }
        image::ImageFormat::Jpeg if len >= 2 => {
            let mut tail = [0u8; 2];
            file.seek(SeekFrom::End(-2))?;
            file.read_exact(&mut tail)?;
            Ok((tail != [0xFF, 0xD9]).then(|| {
                "the file does not end with the JPEG end-of-image marker (FF D9): data after the image, \
                 or a truncated file"
                    .to_string()
            }))
        }
        _ => Ok(None),
    }
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

/// One frame, planar, and the depth of its samples.
fn read_image(path: &Path, options: &FrameOptions) -> Result<(Vec<f32>, SampleDepth), DataError> {
    // The file's size and the image's header are checked before anything is decoded.
    let mut file = open_checked(path, options)?;
    let unreadable = |e: &dyn std::fmt::Display| DataError::invalid(path, format!("unreadable image: {e}"));
    let reader =
        image::ImageReader::new(BufReader::new(&mut file)).with_guessed_format().map_err(|e| unreadable(&e))?;
    let format = reader.format();
    let decoder = reader.into_decoder().map_err(|e| unreadable(&e))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    check_size(path, w, h, options)?;
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| DataError::invalid(path, format!("cannot decode: {e}")))?;
    if let Some(reason) =
        format.map(|f| trailing_data(&mut file, f)).transpose().map_err(DataError::io(path))?.flatten()
    {
        return Err(DataError::invalid(path, reason));
    }
    let color = img.color();
    let depth =
        if color.bytes_per_pixel() / color.channel_count() > 1 { SampleDepth::Sixteen } else { SampleDepth::Eight };
    let (samples, available) = match img {
        image::DynamicImage::ImageLuma8(g) => (g.into_raw().into_iter().map(|v| v as f32 / 255.0).collect(), 1),
        image::DynamicImage::ImageRgb8(g) => (g.into_raw().into_iter().map(|v| v as f32 / 255.0).collect(), 3),
        img if color.channel_count() <= 2 => (img.to_luma32f().into_raw(), 1),
        img if color.channel_count() == 3 => (img.to_rgb32f().into_raw(), 3),
        img => (img.to_rgba32f().into_raw(), 4),
    };
    let mut frame = Vec::with_capacity(samples.len() / available * options.channels.count());
    for c in 0..options.channels.count() {
        frame.extend(options.channels.plane(c, &samples, available, path)?);
    }
    Ok((frame, depth))
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
    /// The page (from 0) that holds time point `t` of channel `c`.
    pub fn page(&self, t: usize, c: usize) -> usize {
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

/// Read a stack's page count and, for OME-TIFF, its time and channel sizes, with the
/// default limits.
pub fn stack_layout(path: &Path) -> Result<StackLayout, DataError> {
    stack_layout_with(path, &FrameOptions::default())
}

/// A TIFF decoder whose buffers are bounded by `options`' pixel cap.
fn tiff_decoder(file: File, options: &FrameOptions) -> tiff::TiffResult<tiff::decoder::Decoder<BufReader<File>>> {
    let mut limits = tiff::decoder::Limits::default();
    // A page of max_pixels RGBA f32 samples, at most.
    let page_bytes = usize::try_from(options.max_pixels.saturating_mul(16)).unwrap_or(usize::MAX);
    limits.decoding_buffer_size = page_bytes;
    limits.intermediate_buffer_size = page_bytes;
    Ok(tiff::decoder::Decoder::new(BufReader::new(file))?.with_limits(limits))
}

/// [`stack_layout`] under `options`' caps: the walk over the pages stops, with an error, as
/// soon as the stack has more pages than `max_frames` or more pixels than `max_cell_samples`.
pub fn stack_layout_with(path: &Path, options: &FrameOptions) -> Result<StackLayout, DataError> {
    let bad = |reason: String| DataError::invalid(path, reason);
    let file = open_checked(path, options)?;
    let mut decoder = tiff_decoder(file, options).map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions().map_err(|e| bad(e.to_string()))?;
    let description = decoder.get_tag_ascii_string(tiff::tags::Tag::ImageDescription).ok();
    let mut pages = 1;
    while decoder.more_images() {
        if pages >= options.max_frames {
            return Err(bad(format!("more than {} pages: the limit is {} (max_frames)", pages, options.max_frames)));
        }
        let pixels = (pages as u64 + 1).saturating_mul(w as u64 * h as u64);
        if pixels > options.max_cell_samples {
            return Err(bad(format!(
                "{} pages of {w}x{h} and more: {pixels} samples exceeds the limit of {} (max_cell_samples)",
                pages + 1,
                options.max_cell_samples
            )));
        }
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

/// [`stack_layout_with`], and its pages within `max_pixels`: what decoding a stack needs.
fn stack_layout_checked(path: &Path, options: &FrameOptions) -> Result<StackLayout, DataError> {
    let layout = stack_layout_with(path, options)?;
    check_size(path, layout.width, layout.height, options)?;
    Ok(layout)
}

/// Decodes the pages of a stack that `wanted` selects, in page order, one at a time, and
/// hands each to `page` with its samples (interleaved) and channels per pixel. Returns the
/// depth of the samples seen.
fn visit_stack(
    path: &Path,
    pages: usize,
    wanted: &dyn Fn(usize) -> bool,
    page: &mut dyn FnMut(usize, Vec<f32>, usize) -> Result<(), DataError>,
    options: &FrameOptions,
) -> Result<SampleDepth, DataError> {
    let err = |e: tiff::TiffError| DataError::invalid(path, format!("cannot decode TIFF: {e}"));
    let mut decoder = tiff_decoder(open_checked(path, options)?, options).map_err(err)?;
    let mut depth = SampleDepth::Eight;
    let last = (0..pages).rev().find(|&p| wanted(p)).unwrap_or(0);
    for p in 0..=last {
        if p > 0 {
            decoder.next_image().map_err(err)?;
        }
        if !wanted(p) {
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
            tiff::decoder::DecodingResult::U16(v) => {
                depth = SampleDepth::Sixteen;
                v.iter().map(|&x| x as f32 / 65535.0).collect()
            }
            tiff::decoder::DecodingResult::F32(v) => {
                depth = SampleDepth::Sixteen;
                v
            }
            _ => {
                return Err(DataError::invalid(
                    path,
                    "unsupported TIFF sample format: expected 8- or 16-bit integers or f32",
                ))
            }
        };
        page(p, values, channels)?;
    }
    Ok(depth)
}

/// The frames `picks` of a stack, planar, and the depth of its samples. An OME-TIFF with
/// several channels keeps one per page; otherwise a page holds a grey or RGB frame.
fn read_stack(path: &Path, picks: &[usize], options: &FrameOptions) -> Result<(Vec<Vec<f32>>, SampleDepth), DataError> {
    let layout = stack_layout_checked(path, options)?;
    let by_page = layout.channels > 1;
    // Per output frame and channel: the page, and the channel within the page's samples.
    let count = options.channels.count();
    let page_channels: Vec<usize> = if by_page {
        let list: Vec<usize> = match &options.channels {
            Channels::Named(NamedChannels::Grey) => vec![0],
            Channels::Named(NamedChannels::Rgb) => vec![0, 1, 2],
            Channels::Pick(list) => list.clone(),
        };
        if let Some(&c) = list.iter().find(|&&c| c >= layout.channels) {
            return Err(DataError::invalid(
                path,
                format!("channel {c} asked for (frames.channels), the stack has {}", layout.channels),
            ));
        }
        list
    } else {
        vec![0; count]
    };
    let wanted: Vec<usize> = picks
        .iter()
        .flat_map(|&t| page_channels.iter().map(move |&c| if by_page { layout.page(t, c) } else { t }))
        .collect();
    let mut pages: Vec<Option<(Vec<f32>, usize)>> = vec![None; layout.pages];
    let depth = visit_stack(
        path,
        layout.pages,
        &|p| wanted.contains(&p),
        &mut |p, values, channels| {
            pages[p] = Some((values, channels));
            Ok(())
        },
        options,
    )?;
    let mut frames = Vec::with_capacity(picks.len());
    for group in wanted.chunks(count) {
        let mut frame = Vec::new();
        for (c, &p) in group.iter().enumerate() {
            let (values, available) = pages[p].as_ref().expect("page decoded");
            if by_page {
                // One channel per page: the page (its first sample per pixel) is the plane.
                frame.extend(values.iter().step_by(*available).copied());
            } else {
                frame.extend(options.channels.plane(c, values, *available, path)?);
            }
        }
        frames.push(frame);
    }
    Ok((frames, depth))
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
