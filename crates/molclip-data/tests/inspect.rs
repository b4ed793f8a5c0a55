//! `inspect` on simulated datasets and on datasets broken on purpose: every
//! problem is reported, each naming its path.

use std::path::{Path, PathBuf};

use mitosim::{generate, DatasetPlan, FrameFormat, SimConfig};
use molclip_data::{read_video, DataError, DatasetIndex};

fn tiny(dir: &Path, format: FrameFormat) -> PathBuf {
    let mut c = SimConfig::preset("tiny").unwrap();
    c.seed = 3;
    c.layout.format = format;
    let out = dir.join("tiny");
    generate(&DatasetPlan::new(c, Path::new(".")).unwrap(), &out, false, &|| {}).unwrap();
    out
}

fn problems(root: &Path) -> Vec<String> {
    match DatasetIndex::scan(root) {
        Ok(_) => panic!("{} should be invalid", root.display()),
        Err(DataError::Problems(ps)) => ps.iter().map(|p| p.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn a_simulated_dataset_is_valid_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    let index = DatasetIndex::scan(&root).unwrap();
    index.verify_frames().unwrap();
    // (11 drugs x (2 + 1 + 1) cells + 5 novel drugs x 1 cell) x 3 replicates.
    assert_eq!(index.cells.len(), (11 * 4 + 5) * 3);
    let counts = index.counts();
    let l1_train = counts.iter().find(|c| c.replicate == "l1" && c.split == molclip_data::Split::Train).unwrap();
    assert_eq!((l1_train.drugs, l1_train.moas, l1_train.cells, l1_train.frames), (11, 6, 22, 22 * 16));
    let novel: Vec<_> = counts.iter().filter(|c| c.split == molclip_data::Split::Novel).collect();
    assert_eq!(novel.len(), 3);
    let video = read_video(&index.cells[0]).unwrap();
    assert_eq!((video.frames.len(), video.width, video.height), (16, 64, 64));
    assert!(video.frames.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn tiff_stacks_decode_to_the_same_videos_as_pngs_up_to_bit_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let png = DatasetIndex::scan(&tiny(&tmp.path().join("a"), FrameFormat::Png)).unwrap();
    let tif = DatasetIndex::scan(&tiny(&tmp.path().join("b"), FrameFormat::Tiff)).unwrap();
    assert_eq!(png.cells.len(), tif.cells.len());
    let (a, b) = (read_video(&png.cells[5]).unwrap(), read_video(&tif.cells[5]).unwrap());
    assert_eq!(a.frames.len(), b.frames.len());
    for (fa, fb) in a.frames.iter().zip(&b.frames) {
        for (x, y) in fa.iter().zip(fb) {
            assert!((x - y).abs() <= 0.5 / 255.0 + 1e-6, "{x} vs {y}");
        }
    }
}

#[test]
fn every_kind_of_damage_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    // A missing frame.
    std::fs::remove_file(root.join("l1/train/1/cell001/7.png")).unwrap();
    // A non-numeric frame name.
    std::fs::rename(root.join("l1/train/1/cell002/3.png"), root.join("l1/train/1/cell002/three.png")).unwrap();
    // A frame of another size.
    image::GrayImage::new(32, 32).save(root.join("l2/query/2/cell001/5.png")).unwrap();
    // A drug folder without an annotation row.
    std::fs::create_dir_all(root.join("l3/gallery/999/cell001")).unwrap();
    image::GrayImage::new(64, 64).save(root.join("l3/gallery/999/cell001/1.png")).unwrap();
    // An empty split.
    let q = root.join("l3/query");
    std::fs::remove_dir_all(&q).unwrap();
    std::fs::create_dir_all(&q).unwrap();
    // A truncated (corrupt) image.
    let f = root.join("l2/train/0/cell001/2.png");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();

    let mut found = problems(&root);
    // Headers were fine; decoding every frame finds the truncated one.
    std::fs::remove_dir_all(root.join("l3")).unwrap();
    std::fs::remove_dir_all(root.join("l1")).unwrap();
    std::fs::copy(root.join("l2/query/2/cell001/4.png"), root.join("l2/query/2/cell001/5.png")).unwrap();
    let index = DatasetIndex::scan(&root).unwrap();
    match index.verify_frames() {
        Err(DataError::Problems(ps)) => found.extend(ps.iter().map(|p| p.to_string())),
        other => panic!("truncated frame not found: {other:?}"),
    }
    let text = found.join("\n");
    let has = |path: &str, what: &str| found.iter().any(|p| p.contains(path) && p.contains(what));
    assert!(has("l1/train/1/cell001", "missing frame(s) 7 of 1..16"), "{text}");
    assert!(has("three.png", "not a number"), "{text}");
    assert!(has("l2/query/2/cell001/5.png", "32x32"), "{text}");
    // A drug folder without a row is skipped (as MitoReID skips it), not a problem.
    assert!(!has("l3/gallery/999", ""), "{text}");
    assert!(has("l3/query", "empty split"), "{text}");
    assert!(has("l2/train/0/cell001/2.png", "unreadable") || has("l2/train/0/cell001/2.png", "decode"), "{text}");
}

#[test]
fn folders_without_a_row_are_skipped_and_reported_and_strict_refuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    let before = DatasetIndex::scan(&root).unwrap().cells.len();
    for cell in ["cell001", "cell002"] {
        std::fs::create_dir_all(root.join("l3/gallery/999").join(cell)).unwrap();
        image::GrayImage::new(64, 64).save(root.join("l3/gallery/999").join(cell).join("1.png")).unwrap();
    }
    let index = DatasetIndex::scan(&root).unwrap();
    assert_eq!(index.cells.len(), before);
    assert_eq!(index.unannotated.len(), 1);
    assert!(index.unannotated[0].path.ends_with("l3/gallery/999") && index.unannotated[0].cells == 2);
    let skips = index.skips();
    assert!(skips.iter().any(|s| s.to_string().contains("999") && s.to_string().contains("2 cell(s)")), "{skips:?}");
    let e = index.strict().unwrap_err().to_string();
    assert!(e.contains("l3/gallery/999") && e.contains("--strict"), "{e}");
}

#[test]
fn missing_annotation_and_missing_columns_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    std::fs::write(root.join("annotation.csv"), "index,name\n0,DMSO\n").unwrap();
    let e = DatasetIndex::scan(&root).unwrap_err().to_string();
    assert!(e.contains("annotation.csv") && e.contains("moa_id"), "{e}");
    std::fs::remove_file(root.join("annotation.csv")).unwrap();
    let e = DatasetIndex::scan(&root).unwrap_err().to_string();
    assert!(e.contains("annotation.csv") && e.contains("missing"), "{e}");
}

#[test]
fn suffixed_drug_folders_resolve_to_their_drug() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    std::fs::rename(root.join("l1/train/1"), root.join("l1/train/1-a")).unwrap();
    let index = DatasetIndex::scan(&root).unwrap();
    let cell = index.cells.iter().find(|c| c.drug_folder == "1-a").unwrap();
    assert_eq!(cell.drug_id, 1);
}

#[test]
fn difficulty_and_montage_run_on_a_simulated_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    let index = DatasetIndex::scan(&root).unwrap();
    let d = molclip_data::difficulty::difficulty(&index).unwrap();
    assert_eq!(d.moas, 6);
    for acc in [d.last_frame_histogram, d.brightness_trajectory, d.texture_shape_trajectory] {
        assert!((0.0..=100.0).contains(&acc));
    }
    let png = tmp.path().join("montage.png");
    molclip_data::montage::write_montage(&index, &png).unwrap();
    let img = image::open(&png).unwrap();
    // Six MoA rows of 2x-zoomed 64-pixel frames.
    assert!(img.height() as usize >= 6 * 128);
}

#[test]
fn scans_report_progress_per_cell() {
    use molclip_data::index::Progress;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny(tmp.path(), FrameFormat::Png);
    let (total, ticks) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let progress = |p: Progress| match p {
        Progress::Total(n) => total.store(n, Ordering::SeqCst),
        Progress::Cell => {
            ticks.fetch_add(1, Ordering::SeqCst);
        }
    };
    let index = DatasetIndex::scan_with_progress(&root, &progress).unwrap();
    assert_eq!(total.load(Ordering::SeqCst), index.cells.len());
    assert_eq!(ticks.load(Ordering::SeqCst), index.cells.len());
    ticks.store(0, Ordering::SeqCst);
    index.verify_frames_with_progress(&molclip_data::FrameOptions::default(), &progress).unwrap();
    assert_eq!(ticks.load(Ordering::SeqCst), index.cells.len());
}
