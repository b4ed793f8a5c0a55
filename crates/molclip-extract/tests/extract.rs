//! Extraction end to end on a tiny simulated raw screen, checked against its ground truth.

use std::path::Path;

use mitosim::{DatasetPlan, RawFormat, SimConfig};
use molclip_extract::score::{read_label_stack, score_field, Score};
use molclip_extract::{discover, extract, extract_field, ExtractConfig, ExtractOptions, SplitPolicy};

fn raw_screen(dir: &Path, format: RawFormat) -> std::path::PathBuf {
    let mut c = SimConfig::preset("tiny").unwrap();
    c.library.max_moas = 2;
    c.layout.replicates = 1;
    c.layout.frames = 8;
    c.raw.field_size = 256;
    c.raw.cells = [8, 12];
    c.raw.format = format;
    let plan = DatasetPlan::new(c, Path::new(".")).unwrap();
    let raw = dir.join(format!("raw-{format:?}"));
    mitosim::generate_raw(&plan, &raw, false, &|| {}).unwrap();
    raw
}

fn options(split: SplitPolicy) -> ExtractOptions {
    ExtractOptions { split, seed: 1, qc: None, overwrite: false, annotation: None, masks: None }
}

#[test]
fn a_tiny_raw_screen_is_extracted_as_its_ground_truth_says() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_screen(dir.path(), RawFormat::Mitoreid);
    let cfg = ExtractConfig::default();
    let fields = discover(&raw).unwrap();
    assert_eq!(fields.len(), 5, "{fields:?}");

    // Detection and tracking against the ground truth.
    let mut score = Score::default();
    for f in &fields {
        let x = extract_field(f, &cfg, None).unwrap();
        let truth =
            read_label_stack(&raw.join("ground_truth").join(&f.replicate).join(format!("{}.masks.tif", f.name)))
                .unwrap();
        score.add(&score_field(&truth, &x.track_labels()));
    }
    assert!(score.whole_tracks >= 30, "{score:?}");
    assert!(score.f1() >= 0.9, "detection F1 {:.3}: {score:?}", score.f1());
    assert!(score.seg() >= 0.8, "SEG {:.3}: {score:?}", score.seg());
    assert!(score.tracks_recovered() >= 0.85, "tracks recovered {:.3}: {score:?}", score.tracks_recovered());

    // The dataset: what inspect and train read, one video per whole track.
    let out = dir.path().join("cells");
    let qc = dir.path().join("qc");
    let report = extract(
        &raw,
        &fields,
        &out,
        &cfg,
        &ExtractOptions { qc: Some(qc.clone()), ..options(SplitPolicy::Random) },
        &|| {},
    )
    .unwrap();
    let index = molclip_data::DatasetIndex::open(&out).unwrap();
    let videos: usize = report.videos.iter().sum();
    assert_eq!(index.cells.len(), videos);
    assert!(index.cells.iter().all(|c| c.n_frames == 8));
    assert!(report.videos[1] >= 5 && report.videos[2] >= 5, "{:?}", report.videos);
    index.verify_frames().unwrap();
    assert_eq!(std::fs::read_dir(&qc).unwrap().count(), fields.len());

    // Ground-truth masks give exactly the whole tracks.
    let truth_out = dir.path().join("truth-cells");
    let o = ExtractOptions { masks: Some(raw.join("ground_truth")), ..options(SplitPolicy::Train) };
    let truth = extract(&raw, &fields, &truth_out, &cfg, &o, &|| {}).unwrap();
    assert_eq!(truth.videos, [score.whole_tracks, 0, 0, 0]);

    // --force replaces an extraction, never a folder of someone else's.
    let again = extract(&raw, &fields, &out, &cfg, &options(SplitPolicy::Train), &|| {}).unwrap_err().to_string();
    assert!(again.contains("--force"), "{again}");
    extract(&raw, &fields, &out, &cfg, &ExtractOptions { overwrite: true, ..options(SplitPolicy::Train) }, &|| {})
        .unwrap();
    let foreign = dir.path().join("mine");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep").unwrap();
    let refused = extract(
        &raw,
        &fields,
        &foreign,
        &cfg,
        &ExtractOptions { overwrite: true, ..options(SplitPolicy::Train) },
        &|| {},
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("not an extracted dataset molclip wrote"), "{refused}");
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "keep");
}

#[test]
fn ome_tiff_fields_extract_as_the_same_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (raw_screen(dir.path(), RawFormat::Mitoreid), raw_screen(dir.path(), RawFormat::OmeTiff));
    let (fa, fb) = (discover(&a).unwrap(), discover(&b).unwrap());
    assert_eq!(fa.iter().map(|f| &f.name).collect::<Vec<_>>(), fb.iter().map(|f| &f.name).collect::<Vec<_>>());
    let cfg = ExtractConfig::default();
    let (xa, xb) = (extract_field(&fa[0], &cfg, None).unwrap(), extract_field(&fb[0], &cfg, None).unwrap());
    assert_eq!(xa.track_labels(), xb.track_labels());
}

#[test]
fn a_field_with_a_missing_image_or_no_annotation_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_screen(dir.path(), RawFormat::Mitoreid);
    std::fs::remove_file(raw.join("annotation.csv")).unwrap();
    let fields = discover(&raw).unwrap();
    let err =
        extract(&raw, &fields, &dir.path().join("o"), &ExtractConfig::default(), &options(SplitPolicy::Random), &|| {})
            .unwrap_err()
            .to_string();
    assert!(err.contains("annotation"), "{err}");
    let field = fields[0].name.clone();
    std::fs::remove_file(raw.join("l1").join(format!("{field}_3_w3.tif"))).unwrap();
    let err = discover(&raw).unwrap_err().to_string();
    assert!(err.contains(&format!("{field}_3_w3.tif")), "{err}");
    assert!(!dir.path().join("o").exists());
}
