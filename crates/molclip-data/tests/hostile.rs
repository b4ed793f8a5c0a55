//! Hostile frames: files built to exhaust memory or to pass for valid. Each is refused from
//! its header or size, before anything large is decoded, with a message naming the file and
//! the limit (issue: resources bounded by the caps in `[data.frames]`).

use std::path::{Path, PathBuf};

use mitosim::{generate, DatasetPlan, SimConfig};
use molclip_data::frames::{stack_layout, FrameOptions};
use molclip_data::index::FrameSource;
use molclip_data::{read_video_with, verify_video, DataError, DatasetIndex};

fn tiny(dir: &Path) -> PathBuf {
    let mut c = SimConfig::preset("tiny").unwrap();
    c.seed = 11;
    let out = dir.join("tiny");
    generate(&DatasetPlan::new(c, Path::new(".")).unwrap(), &out, false, &|| {}).unwrap();
    out
}

fn frame_files(index: &DatasetIndex, cell: usize) -> Vec<PathBuf> {
    match &index.cells[cell].source {
        FrameSource::Files(files) => files.clone(),
        FrameSource::Stack(_) => panic!("the simulator writes frame files"),
    }
}

/// A little-endian TIFF of `pages` grey 8-bit `w` x `h` pages that all point at one strip.
fn shared_strip_tiff(path: &Path, pages: usize, w: u32, h: u32) {
    let strip = vec![7u8; (w * h) as usize];
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    let strip_at = 8u32;
    out.extend_from_slice(&strip);
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, w),        // ImageWidth
        (257, 4, h),        // ImageLength
        (258, 3, 8),        // BitsPerSample
        (259, 3, 1),        // Compression: none
        (262, 3, 1),        // Photometric: black is zero
        (273, 4, strip_at), // StripOffsets
        (277, 3, 1),        // SamplesPerPixel
        (278, 4, h),        // RowsPerStrip
        (279, 4, w * h),    // StripByteCounts
    ];
    // The header's first-IFD offset, then each IFD's next-IFD offset.
    let mut link = 4usize;
    for _ in 0..pages {
        if out.len() % 2 == 1 {
            out.push(0);
        }
        let at = out.len() as u32;
        out[link..link + 4].copy_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, value) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        link = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn huge_frames_in_a_small_file_are_refused_per_cell_before_decoding() {
    // 16 frames of 8000 x 8000: a few MB on disk, 1.02 G samples decoded.
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny(tmp.path());
    let index = DatasetIndex::scan(&data).unwrap();
    let big = tmp.path().join("big.png");
    image::GrayImage::new(8000, 8000).save(&big).unwrap();
    for f in frame_files(&index, 0) {
        std::fs::remove_file(&f).unwrap();
        std::fs::hard_link(&big, &f).unwrap();
    }
    let index = DatasetIndex::scan(&data).unwrap();
    let cell = &index.cells[0];
    assert_eq!((cell.width, cell.height), (8000, 8000));
    for e in [
        verify_video(cell, &FrameOptions::default()).unwrap_err(),
        read_video_with(cell, &FrameOptions::default()).unwrap_err(),
    ] {
        let text = e.to_string();
        assert!(matches!(&e, DataError::Invalid { path, .. } if *path == cell.dir), "{text}");
        assert!(text.contains("exceeds the limit of 268435456 (max_cell_samples)"), "{text}");
    }
    let e = index.verify_frames().unwrap_err().to_string();
    assert!(e.contains("max_cell_samples"), "{e}");
    // Raised, the cap lets the frames through: the refusal was the cap, not the files.
    let loose = FrameOptions { max_cell_samples: 2 << 30, frames: 1, ..FrameOptions::default() };
    assert_eq!(read_video_with(cell, &loose).unwrap().frames.len(), 1);
}

#[test]
fn trailing_bytes_and_oversized_files_are_reported_without_reading_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny(tmp.path());
    let index = DatasetIndex::scan(&data).unwrap();
    let files = frame_files(&index, 0);
    let opts = FrameOptions::default();
    // A few bytes after IEND.
    let mut bytes = std::fs::read(&files[2]).unwrap();
    bytes.extend_from_slice(b"appended");
    std::fs::write(&files[2], &bytes).unwrap();
    let e = verify_video(&index.cells[0], &opts).unwrap_err();
    assert!(
        matches!(&e, DataError::Invalid { path, reason } if *path == files[2]
        && reason.contains("8 bytes after the PNG's end")),
        "{e}"
    );
    // 3 GB after the end (sparse): refused by its size, not read.
    let f = std::fs::OpenOptions::new().write(true).open(&files[2]).unwrap();
    f.set_len(3 << 30).unwrap();
    let e = verify_video(&index.cells[0], &opts).unwrap_err().to_string();
    assert!(e.contains("3072 MiB on disk exceeds the limit of 2048 MiB (max_file_mb)"), "{e}");
    // A JPEG cut short of its end marker.
    let cell = &index.cells[1];
    let jpeg = frame_files(&index, 1)[0].with_extension("jpg");
    let img = image::open(&frame_files(&index, 1)[0]).unwrap();
    img.save(&jpeg).unwrap();
    let whole = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &whole[..whole.len() - 2]).unwrap();
    let mut files = frame_files(&index, 1);
    std::fs::remove_file(&files[0]).unwrap();
    files[0] = jpeg.clone();
    let cell = molclip_data::CellVideo { source: FrameSource::Files(files), ..cell.clone() };
    let e = verify_video(&cell, &opts).unwrap_err().to_string();
    assert!(e.contains("1.jpg") && e.contains("end-of-image marker"), "{e}");
    std::fs::write(&jpeg, &whole).unwrap();
    verify_video(&cell, &opts).unwrap();
}

#[test]
fn stacks_with_endless_pages_stop_at_the_caps_while_their_headers_are_walked() {
    let tmp = tempfile::tempdir().unwrap();
    // 20,000 pages of one pixel: over max_frames (10,000).
    let many = tmp.path().join("many.tif");
    shared_strip_tiff(&many, 20_000, 1, 1);
    let e = stack_layout(&many).unwrap_err().to_string();
    assert!(e.contains("more than 10000 pages: the limit is 10000 (max_frames)"), "{e}");
    // 2,000 pages of 2048 x 2048 sharing one 4 MiB strip: 8.4 G samples.
    let shared = tmp.path().join("shared.tif");
    shared_strip_tiff(&shared, 2_000, 2048, 2048);
    let e = stack_layout(&shared).unwrap_err().to_string();
    assert!(e.contains("65 pages of 2048x2048 and more") && e.contains("(max_cell_samples)"), "{e}");
    // The same file within the caps reads, so the walk itself is sound.
    let few = tmp.path().join("few.tif");
    shared_strip_tiff(&few, 3, 64, 64);
    let layout = stack_layout(&few).unwrap();
    assert_eq!((layout.pages, layout.width, layout.height), (3, 64, 64));
}
