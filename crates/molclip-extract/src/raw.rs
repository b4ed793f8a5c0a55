//! Raw fields on disk: finding them and reading them.
//!
//! A raw folder holds replicate folders `l1`, `l2`, ... (or the fields directly, as one
//! replicate), each with the fields of that replicate in one of two forms:
//! - MitoReID's naming: one 8- or 16-bit grey TIFF per field, time point and stain,
//!   `<field>_<t>_<w1|w2|w3>.tif` (t from 1; w1 nuclear, w2 mitochondrial, w3 cytoplasmic);
//! - one OME-TIFF per field, `<field>.ome.tif`, with 3 channels (w1, w2, w3 in that order,
//!   or named so) and T time points in any DimensionOrder.
//!
//! A field's name is `<drug>-<n>` or `<drug>`: the drug is the annotation's `index`.
//! Sizes are checked from the headers before any pixel is decoded.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::error::ExtractError;

/// The stains, in the order fields hold them.
pub const STAINS: [&str; 3] = ["w1", "w2", "w3"];

/// Fields larger than this (pixels per image) are refused from their headers.
pub const MAX_FIELD_PIXELS: u64 = 8192 * 8192;
/// Fields with more samples than this (pixels x 3 stains x time points, about 2 GiB as f32)
/// are refused from their headers.
pub const MAX_FIELD_SAMPLES: u64 = 512 * 1024 * 1024;

/// Where a field's images are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldFiles {
    /// One file per time point and stain: `files[t][stain]`.
    PerImage(Vec<[PathBuf; 3]>),
    /// One OME-TIFF.
    OmeTiff(PathBuf),
}

/// One raw field of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField {
    /// `l1`, `l2`, ...
    pub replicate: String,
    /// The field's name (`3-2`).
    pub name: String,
    /// The drug's folder name (`3`): the name up to its first `-`.
    pub drug: String,
    /// Its images.
    pub files: FieldFiles,
}

impl RawField {
    /// `<replicate>/<name>`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.replicate, self.name)
    }
}

/// One field in memory: `frames[t][stain]`, row-major, in [0, 1].
#[derive(Debug, Clone)]
pub struct FieldImages {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Per time point, the three stains.
    pub frames: Vec<[Vec<f32>; 3]>,
}

/// Every field under `root`, sorted by replicate and name. Incomplete fields (a time point
/// or a stain missing) are errors that name the missing file.
pub fn discover(root: &Path) -> Result<Vec<RawField>, ExtractError> {
    let mut replicates: Vec<(String, PathBuf)> = fs::read_dir(root)
        .map_err(ExtractError::io(root))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| molclip_core::is_replicate_folder(n))
        .collect();
    if replicates.is_empty() {
        replicates.push(("l1".into(), root.to_path_buf()));
    }
    replicates.sort_by_key(|(n, _)| n[1..].parse::<u32>().unwrap_or(0));
    let mut fields = Vec::new();
    for (replicate, dir) in replicates {
        fields.extend(discover_replicate(&replicate, &dir)?);
    }
    if fields.is_empty() {
        return Err(ExtractError::invalid(
            root,
            "no raw fields: expected <field>_<t>_<w1|w2|w3>.tif files or <field>.ome.tif files, \
             in the folder or in replicate folders l1, l2, ...",
        ));
    }
    Ok(fields)
}

fn discover_replicate(replicate: &str, dir: &Path) -> Result<Vec<RawField>, ExtractError> {
    // field -> time point -> stain -> file
    let mut images: BTreeMap<String, BTreeMap<usize, [Option<PathBuf>; 3]>> = BTreeMap::new();
    let mut fields = Vec::new();
    let mut entries: Vec<PathBuf> =
        fs::read_dir(dir).map_err(ExtractError::io(dir))?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.is_file()) {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let lower = file.to_ascii_lowercase();
        if let Some(name) = lower.strip_suffix(".ome.tif").or_else(|| lower.strip_suffix(".ome.tiff")) {
            let name = file[..name.len()].to_string();
            fields.push(RawField {
                replicate: replicate.into(),
                drug: drug_of(&name),
                name,
                files: FieldFiles::OmeTiff(path),
            });
            continue;
        }
        let Some(stem) = lower.strip_suffix(".tif").or_else(|| lower.strip_suffix(".tiff")) else { continue };
        let stem = &file[..stem.len()];
        // <field>_<t>_<w>: the field's name may itself hold underscores.
        let mut parts = stem.rsplitn(3, '_');
        let (Some(stain), Some(t), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Some(s), Ok(t)) = (STAINS.iter().position(|w| w.eq_ignore_ascii_case(stain)), t.parse::<usize>()) else {
            continue;
        };
        if t == 0 {
            return Err(ExtractError::invalid(&path, "time point 0: time points count from 1"));
        }
        images.entry(name.to_string()).or_default().entry(t).or_default()[s] = Some(path);
    }
    for (name, times) in images {
        let last = *times.keys().next_back().expect("a field has a time point");
        let mut files = Vec::with_capacity(last);
        for t in 1..=last {
            let stains = times.get(&t);
            let missing = |s: usize| dir.join(format!("{name}_{t}_{}.tif", STAINS[s]));
            let get = |s: usize| {
                stains.and_then(|st| st[s].clone()).ok_or_else(|| {
                    ExtractError::invalid(missing(s), format!("missing: field {name} has time points up to {last}"))
                })
            };
            files.push([get(0)?, get(1)?, get(2)?]);
        }
        fields.push(RawField {
            replicate: replicate.into(),
            drug: drug_of(&name),
            name,
            files: FieldFiles::PerImage(files),
        });
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fields)
}

fn drug_of(field: &str) -> String {
    field.split('-').next().unwrap_or(field).to_string()
}

fn decoder(path: &Path) -> Result<tiff::decoder::Decoder<BufReader<fs::File>>, ExtractError> {
    let file = fs::File::open(path).map_err(ExtractError::io(path))?;
    tiff::decoder::Decoder::new(BufReader::new(file))
        .map_err(|e| ExtractError::invalid(path, format!("not a readable TIFF: {e}")))
}

/// Decodes the current page of `decoder` as grey samples in [0, 1], checking its size
/// against `expected` (or setting it) before decoding.
fn read_page(
    decoder: &mut tiff::decoder::Decoder<BufReader<fs::File>>,
    path: &Path,
    expected: &mut Option<(usize, usize)>,
) -> Result<Vec<f32>, ExtractError> {
    let bad = |reason: String| ExtractError::invalid(path, reason);
    let (w, h) = decoder.dimensions().map_err(|e| bad(e.to_string()))?;
    let (w, h) = (w as usize, h as usize);
    if (w * h) as u64 > MAX_FIELD_PIXELS {
        return Err(bad(format!("{w}x{h}: more than {MAX_FIELD_PIXELS} pixels per image, the limit")));
    }
    match expected {
        Some(size) if *size != (w, h) => {
            return Err(bad(format!("{w}x{h}, where the field's other images are {}x{}", size.0, size.1)))
        }
        _ => *expected = Some((w, h)),
    }
    match decoder.colortype().map_err(|e| bad(e.to_string()))? {
        tiff::ColorType::Gray(8 | 16) => {}
        other => return Err(bad(format!("colour type {other:?}: expected 8- or 16-bit grey images"))),
    }
    Ok(match decoder.read_image().map_err(|e| bad(format!("cannot decode: {e}")))? {
        tiff::decoder::DecodingResult::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
        tiff::decoder::DecodingResult::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
        _ => return Err(bad("expected 8- or 16-bit grey samples".into())),
    })
}

fn check_samples(path: &Path, size: (usize, usize), frames: usize) -> Result<(), ExtractError> {
    let samples = (size.0 * size.1) as u64 * 3 * frames as u64;
    if samples > MAX_FIELD_SAMPLES {
        return Err(ExtractError::invalid(
            path,
            format!(
                "{frames} time points of 3 x {}x{}: {samples} samples, more than the limit of {MAX_FIELD_SAMPLES}",
                size.0, size.1
            ),
        ));
    }
    Ok(())
}

/// Reads a field into memory.
pub fn read_field(field: &RawField) -> Result<FieldImages, ExtractError> {
    let mut size = None;
    let frames = match &field.files {
        FieldFiles::PerImage(files) => {
            let mut frames = Vec::with_capacity(files.len());
            for (t, stains) in files.iter().enumerate() {
                let mut planes: [Vec<f32>; 3] = Default::default();
                for (s, path) in stains.iter().enumerate() {
                    planes[s] = read_page(&mut decoder(path)?, path, &mut size)?;
                    if t == 0 && s == 0 {
                        check_samples(path, size.expect("set by the first page"), files.len())?;
                    }
                }
                frames.push(planes);
            }
            frames
        }
        FieldFiles::OmeTiff(path) => {
            let layout = molclip_data::frames::stack_layout(path)?;
            if layout.channels != 3 {
                return Err(ExtractError::invalid(
                    path,
                    format!("{} channels: a raw field has 3 (w1, w2, w3)", layout.channels),
                ));
            }
            check_samples(path, (layout.width as usize, layout.height as usize), layout.frames)?;
            let mut pages: Vec<Option<Vec<f32>>> = vec![None; layout.pages];
            let mut decoder = decoder(path)?;
            for (p, page) in pages.iter_mut().enumerate() {
                if p > 0 {
                    decoder.next_image().map_err(|e| ExtractError::invalid(path, e.to_string()))?;
                }
                *page = Some(read_page(&mut decoder, path, &mut size)?);
            }
            (0..layout.frames)
                .map(|t| std::array::from_fn(|c| pages[layout.page(t, c)].take().expect("each page read once")))
                .collect()
        }
    };
    let (width, height) = size.unwrap_or((0, 0));
    Ok(FieldImages { width, height, frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_gray16(path: &Path, w: usize, h: usize, value: u16) {
        let page = vec![value; w * h];
        fs::write(path, molclip_core::ome::gray16_stack(w, h, &[&page], None).unwrap()).unwrap();
    }

    #[test]
    fn fields_are_found_by_name_and_a_missing_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("l1");
        fs::create_dir(&l1).unwrap();
        for t in 1..=2 {
            for (s, w) in STAINS.iter().enumerate() {
                write_gray16(&l1.join(format!("3-2_{t}_{w}.tif")), 8, 6, (1000 * (t + s)) as u16);
            }
        }
        let fields = discover(dir.path()).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(
            (fields[0].name.as_str(), fields[0].drug.as_str(), fields[0].replicate.as_str()),
            ("3-2", "3", "l1")
        );
        let images = read_field(&fields[0]).unwrap();
        assert_eq!((images.width, images.height, images.frames.len()), (8, 6, 2));
        assert_eq!(images.frames[1][2][0], 4000.0 / 65535.0);
        fs::remove_file(l1.join("3-2_1_w2.tif")).unwrap();
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("3-2_1_w2.tif") && err.contains("missing"), "{err}");
    }

    #[test]
    fn ome_tiff_pages_map_to_time_points_and_stains() {
        let dir = tempfile::tempdir().unwrap();
        let pages: Vec<Vec<u16>> = (0..6).map(|p| vec![p as u16 * 100; 4 * 4]).collect();
        let refs: Vec<&[u16]> = pages.iter().map(Vec::as_slice).collect();
        let xml = molclip_core::ome::ome_xml("7-1", 4, 4, &STAINS, 2);
        let bytes = molclip_core::ome::gray16_stack(4, 4, &refs, Some(&xml)).unwrap();
        fs::write(dir.path().join("7-1.ome.tif"), bytes).unwrap();
        let fields = discover(dir.path()).unwrap();
        assert_eq!((fields[0].name.as_str(), fields[0].drug.as_str()), ("7-1", "7"));
        let images = read_field(&fields[0]).unwrap();
        // XYCZT: page = t * 3 + c.
        assert_eq!(images.frames[1][0][0], 300.0 / 65535.0);
        assert_eq!(images.frames[0][2][0], 200.0 / 65535.0);
    }
}
