//! The data pipeline on simulated datasets and hand-made fixtures: xlsx
//! annotations, 16-bit TIFF and OME-TIFF stacks, manifests, frame sampling,
//! augmentation, PK batches, determinism, limits.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mitosim::{generate, DatasetPlan, SimConfig};
use molclip_data::frames::{Channels, FrameOptions, SampleDepth, ShortVideoPolicy};
use molclip_data::loader::{pixel_stats, DataConfig, Loader, Mode, VideoDataset};
use molclip_data::sampler::{sequential_batches, PkSampler, SamplerConfig};
use molclip_data::{read_video_with, DataError, DatasetIndex};

fn tiny(dir: &Path, frames: usize) -> PathBuf {
    let mut c = SimConfig::preset("tiny").unwrap();
    c.seed = 5;
    c.layout.frames = frames;
    let out = dir.join("tiny");
    generate(&DatasetPlan::new(c, Path::new(".")).unwrap(), &out, false, &|| {}).unwrap();
    out
}

fn write_stack(path: &Path, pages: &[Vec<u16>], side: u32, description: Option<&str>) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = tiff::encoder::TiffEncoder::new(BufWriter::new(file)).unwrap();
    for (k, page) in pages.iter().enumerate() {
        let mut img = enc.new_image::<tiff::encoder::colortype::Gray16>(side, side).unwrap();
        if k == 0 {
            if let Some(d) = description {
                img.encoder().write_tag(tiff::tags::Tag::ImageDescription, d).unwrap();
            }
        }
        img.write_data(page).unwrap();
    }
}

#[test]
fn xlsx_annotation_reads_like_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 16);
    let csv = std::fs::read_to_string(root.join("annotation.csv")).unwrap();
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("FDA-list").unwrap();
    for (r, line) in csv.lines().enumerate() {
        let mut rdr = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
        let rec = rdr.records().next().unwrap().unwrap();
        for (c, cell) in rec.iter().enumerate() {
            // Ids as numbers, as a spreadsheet would hold them.
            match cell.parse::<f64>() {
                Ok(v) if r > 0 && (c == 0 || c == 1 || c == 5) => sheet.write_number(r as u32, c as u16, v).unwrap(),
                _ => sheet.write_string(r as u32, c as u16, cell).unwrap(),
            };
        }
    }
    book.save(root.join("annotation.xlsx")).unwrap();
    let from_csv = DatasetIndex::scan(&root).unwrap();
    std::fs::remove_file(root.join("annotation.csv")).unwrap();
    let from_xlsx = DatasetIndex::scan(&root).unwrap();
    assert_eq!(from_csv.annotation.drugs, from_xlsx.annotation.drugs);
    assert_eq!(from_csv.cells, from_xlsx.cells);

    // A workbook without the sheet says which sheets it has.
    let mut book = rust_xlsxwriter::Workbook::new();
    book.add_worksheet().set_name("Sheet1").unwrap();
    book.save(root.join("annotation.xlsx")).unwrap();
    let e = DatasetIndex::scan(&root).unwrap_err().to_string();
    assert!(e.contains("FDA-list") && e.contains("Sheet1"), "{e}");
}

#[test]
fn tiff_and_ome_tiff_stacks_through_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 16);
    let side = 8u32;
    let page = |v: u16| vec![v; (side * side) as usize];
    // Plain 16-bit stack: 4 time points.
    write_stack(&root.join("plain.tif"), &(0..4).map(|t| page(1000 * t + 1000)).collect::<Vec<_>>(), side, None);
    // OME-TIFF, 2 channels x 3 time points, DimensionOrder XYCZT: pages t0c0 t0c1 t1c0 ...
    let ome = r#"<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="8" SizeY="8" SizeZ="1" SizeC="2" SizeT="3"/></Image></OME>"#;
    let pages: Vec<Vec<u16>> = (0..3).flat_map(|t| [page(100 * t + 10), page(100 * t + 20)]).collect();
    write_stack(&root.join("cell.ome.tif"), &pages, side, Some(ome));
    std::fs::write(
        root.join("manifest.csv"),
        "path,drug,replicate,split\nplain.tif,1,l1,train\ncell.ome.tif,2,l2,query\nl1/train/0/cell001,0,l1,gallery\n",
    )
    .unwrap();
    let index = DatasetIndex::open(&root.join("manifest.csv")).unwrap();
    assert_eq!(index.cells.len(), 3);
    assert_eq!((index.cells[0].n_frames, index.cells[1].n_frames, index.cells[2].n_frames), (4, 3, 16));
    let opts = |channels| FrameOptions { frames: 0, channels, ..FrameOptions::default() };
    let plain = read_video_with(&index.cells[0], &opts(Channels::default())).unwrap();
    assert!((plain.frames[2][0] - 3000.0 / 65535.0).abs() < 1e-7);
    assert_eq!((plain.channels, plain.depth), (1, SampleDepth::Sixteen));
    let c1 = read_video_with(&index.cells[1], &opts(Channels::Pick(vec![1]))).unwrap();
    let c0 = read_video_with(&index.cells[1], &opts(Channels::Pick(vec![0]))).unwrap();
    let level = |v: &molclip_data::Video| v.frames.iter().map(|f| (f[0] * 65535.0).round() as u32).collect::<Vec<_>>();
    assert_eq!(level(&c0), vec![10, 110, 210]);
    assert_eq!(level(&c1), vec![20, 120, 220]);
    // Both channels, the second first: planar, in the order asked for.
    let both = read_video_with(&index.cells[1], &opts(Channels::Pick(vec![1, 0]))).unwrap();
    let n = (side * side) as usize;
    assert_eq!(both.channels, 2);
    assert_eq!(both.frames[1].len(), 2 * n);
    assert_eq!(((both.frames[1][0] * 65535.0).round(), (both.frames[1][n] * 65535.0).round()), (120.0, 110.0));
    let e = read_video_with(&index.cells[1], &opts(Channels::Pick(vec![2]))).unwrap_err().to_string();
    assert!(e.contains("channel 2"), "{e}");

    // Every bad row is reported with its line.
    std::fs::write(
        root.join("bad.csv"),
        "path,drug,replicate,split\nnope.tif,1,l1,train\nplain.tif,999,l1,train\nplain.tif,1,l1,validation\n",
    )
    .unwrap();
    let e = DatasetIndex::open(&root.join("bad.csv")).unwrap_err().to_string();
    assert!(e.contains("nope.tif") && e.contains("does not exist"), "{e}");
    assert!(e.contains("bad.csv:3") && e.contains("\"999\""), "{e}");
    assert!(e.contains("bad.csv:4") && e.contains("validation"), "{e}");
}

#[test]
fn long_videos_are_sampled_uniformly_and_short_ones_follow_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 20);
    let index = DatasetIndex::scan(&root).unwrap();
    let cell = &index.cells[0];
    let all = read_video_with(cell, &FrameOptions { frames: 0, ..FrameOptions::default() }).unwrap();
    let sampled = read_video_with(cell, &FrameOptions::default()).unwrap();
    assert_eq!((all.frames.len(), sampled.frames.len()), (20, 16));
    assert_eq!(sampled.frames[0], all.frames[0]);
    assert_eq!(sampled.frames[15], all.frames[19]);
    let short = FrameOptions { frames: 24, ..FrameOptions::default() };
    let e = read_video_with(cell, &short).unwrap_err().to_string();
    assert!(e.contains(&cell.dir.display().to_string()) && e.contains("20 frames, 24 needed"), "{e}");
    let looped = read_video_with(cell, &FrameOptions { short: ShortVideoPolicy::Loop, ..short }).unwrap();
    assert_eq!(looped.frames[20], all.frames[0]);
}

fn train_dataset(root: &Path, cache: bool) -> Arc<VideoDataset> {
    let index = DatasetIndex::scan(root).unwrap();
    let cells: Vec<_> = index.split(molclip_data::Split::Train).cloned().collect();
    let config = DataConfig { cache, prefetch: 2, ..DataConfig::default() };
    Arc::new(VideoDataset::new(cells, config).unwrap())
}

#[test]
fn loader_yields_pk_batches_of_tensors_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 16);
    let ds = train_dataset(&root, true);
    let drugs: Vec<usize> = ds.cells.iter().map(|c| c.drug_id).collect();
    let reps: Vec<usize> = ds.cells.iter().map(|c| c.replicate[1..].parse::<usize>().unwrap()).collect();
    let sampler = PkSampler::new(&drugs, &reps, SamplerConfig { p: 3, k: 4, balance_replicates: true }, 11).unwrap();
    let batches = sampler.epoch(0);
    assert!(!batches.is_empty());
    let mode = Mode::Train { seed: 1, epoch: 0 };
    let run = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| batches.iter().map(|b| ds.batch(b, mode).unwrap().data).collect())
    };
    let one = run(1);
    assert_eq!(one.len(), batches.len());
    assert_eq!(one, run(3), "thread count changed the batches");
    // The prefetching loader hands out the same batches, in order.
    let ahead = Loader::start(ds.clone(), batches.clone(), mode);
    assert!(ahead.builds_ahead());
    let loaded: Vec<Vec<f32>> = ahead.map(|b| b.unwrap().data).collect();
    assert_eq!(loaded, one);
    // So does one that builds each batch when asked (prefetch = 0).
    let inline = DataConfig { prefetch: 0, ..ds.config().clone() };
    let inline = Arc::new(VideoDataset::new(ds.cells.clone(), inline).unwrap());
    let asked = Loader::start(inline, batches.clone(), mode);
    assert!(!asked.builds_ahead());
    let built: Vec<Vec<f32>> = asked.map(|b| b.unwrap().data).collect();
    assert_eq!(built, one);
    let b = ds.batch(&batches[0], Mode::Train { seed: 1, epoch: 0 }).unwrap();
    assert_eq!(b.shape, [12, 16, 1, 112, 112]);
    assert_eq!(b.data.len(), 12 * 16 * 112 * 112);
    assert!(b.drug_ids.chunks(4).all(|c| c.iter().all(|&d| d == c[0])));
    // Another epoch draws other transforms; evaluation is fixed.
    assert_ne!(ds.batch(&batches[0], Mode::Train { seed: 1, epoch: 1 }).unwrap().data, b.data);
    let e1 = ds.batch(&[0, 1], Mode::Eval).unwrap().data;
    assert_eq!(e1, ds.batch(&[0, 1], Mode::Eval).unwrap().data);
    // Sequential batches cover the split once.
    let seq: usize =
        Loader::start(ds.clone(), sequential_batches(ds.len(), 5), Mode::Eval).map(|b| b.unwrap().indices.len()).sum();
    assert_eq!(seq, ds.len());
}

#[test]
fn pixel_statistics_match_a_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 16);
    let ds = train_dataset(&root, false);
    // Resized to their own size: the values as read.
    let stats = pixel_stats(&ds.cells[..6], &FrameOptions::default(), ds.cells[0].width as usize).unwrap();
    let values: Vec<f64> = ds.cells[..6]
        .iter()
        .flat_map(|c| read_video_with(c, &FrameOptions::default()).unwrap().frames.concat())
        .map(|v| v as f64)
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    assert!(
        (stats.mean.0[0] as f64 - mean).abs() < 1e-6 && (stats.std.0[0] as f64 - std).abs() < 1e-5,
        "{stats:?} vs {mean} {std}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn oversized_and_corrupt_frames_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), 16);
    let index = DatasetIndex::scan(&root).unwrap();
    let cell = index.cells[0].clone();
    let molclip_data::index::FrameSource::Files(files) = &cell.source else { panic!() };
    // A PNG whose header claims 100000 x 100000 pixels: refused before decoding.
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(chunk);
        png.extend_from_slice(&crc32(chunk).to_be_bytes());
    }
    std::fs::write(&files[3], &png).unwrap();
    let e = read_video_with(&cell, &FrameOptions::default()).unwrap_err().to_string();
    assert!(e.contains("4.png") && e.contains("exceeds the limit"), "{e}");
    // A truncated frame names itself.
    let good = std::fs::read(&files[5]).unwrap();
    std::fs::write(&files[3], &good[..good.len() / 2]).unwrap();
    let e = read_video_with(&cell, &FrameOptions::default()).unwrap_err();
    assert!(matches!(&e, DataError::Invalid { path, .. } if path.ends_with("4.png")), "{e}");
    // The limit is configurable.
    let tight = FrameOptions { max_pixels: 100, ..FrameOptions::default() };
    let e = read_video_with(&index.cells[1], &tight).unwrap_err().to_string();
    assert!(e.contains("exceeds the limit of 100"), "{e}");
}
