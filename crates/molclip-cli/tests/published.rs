//! MitoReID's published MitoDataset, as it is. A fake in the published layout is built here
//! from the layout's facts (docs/method.md section 3), with every irregularity of the real
//! archive: `annotation.xlsx` (sheets `FDA-list` and `Novel-list`, no `drug_id`, no SMILES,
//! `dmso`, MoAs `unknown` or blank, `moa_choose`), RGB JPEG frames of a size that varies per
//! cell, `<raw id>_<n>` cell folders, a `-2` well suffix, stray `.avi` files, a drug folder
//! without a row, `nc/`, and `novel/` without replicates. It is read as-is, trained on with
//! MitoReID's recipe (`configs/mitoreid.toml --epochs 1`, shrunk with `--set`), evaluated,
//! and used to name the natural compounds; then annotated with SMILES and trained on with
//! MolCLIP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn molclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molclip")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a command that must succeed; returns its stdout, and stdout with stderr.
fn ok(args: &[&str]) -> (String, String) {
    let o = molclip(args);
    assert!(o.status.success(), "molclip {}: {}", args.join(" "), text(&o));
    (String::from_utf8_lossy(&o.stdout).into_owned(), text(&o))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sorted_dirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    v.sort();
    v
}

/// One drug of the simulated dataset, as the annotation has it.
struct Drug {
    index: String,
    name: String,
    smiles: String,
    moa: String,
    moa_id: String,
}

/// What the fake holds, for the assertions.
struct Facts {
    /// Cells the dataset index must hold (every cell but the unannotated folder's).
    cells: usize,
    /// Query cells of drugs in the MoA task.
    moa_task_queries: usize,
    /// The drugs and their table rows.
    drugs: Vec<Drug>,
    /// Folder names of the novel drugs.
    novel: Vec<String>,
}

const DMSO: &str = "0";
/// A drug whose MoA is blank in the table, and one not chosen for the MoA task.
const BLANK_MOA: &str = "1";
const NOT_CHOSEN: &str = "4";

/// The cell's frames, as 8-bit RGB JPEGs of `side` x `side`: the simulated stain in green,
/// two derived stains in red and blue (three stains merged, as the published frames are).
fn write_frames(from: &Path, to: &Path, side: u32) {
    std::fs::create_dir_all(to).unwrap();
    let mut frames: Vec<PathBuf> = std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).collect();
    frames.sort();
    for f in frames {
        let grey = image::open(&f).unwrap().to_luma8();
        let rgb = image::RgbImage::from_fn(grey.width(), grey.height(), |x, y| {
            let g = grey.get_pixel(x, y)[0];
            image::Rgb([g / 2, g, 255 - g / 3 * 2])
        });
        let rgb = image::imageops::resize(&rgb, side, side, image::imageops::FilterType::Triangle);
        let stem = f.file_stem().unwrap().to_str().unwrap();
        rgb.save(to.join(format!("{stem}.jpg"))).unwrap();
    }
}

/// The published layout, from a simulated dataset `sim`.
fn build_published(sim: &Path, out: &Path) -> Facts {
    let mut reader = csv::Reader::from_path(sim.join("annotation.csv")).unwrap();
    let drugs: Vec<Drug> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            Drug {
                index: r[0].to_string(),
                name: r[2].to_string(),
                smiles: r[3].to_string(),
                moa: r[4].to_string(),
                moa_id: r[5].to_string(),
            }
        })
        .collect();
    let novel: Vec<String> =
        sorted_dirs(&sim.join("novel")).iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    let folder = |index: &str| if index == DMSO { "dmso".to_string() } else { index.to_string() };
    let in_moa_task =
        |index: &str| ![DMSO, BLANK_MOA, NOT_CHOSEN].contains(&index) && !novel.iter().any(|n| n == index);

    // annotation.xlsx: FDA-list (the screened drugs) and Novel-list.
    let mut book = rust_xlsxwriter::Workbook::new();
    let fda = book.add_worksheet().set_name("FDA-list").unwrap();
    let header = ["index", "name", "cas", "moa_id", "moa_choose", "common_moa", "moa_count", "moa_comment", "target"];
    for (c, h) in header.iter().enumerate() {
        fda.write_string(0, c as u16, *h).unwrap();
    }
    let screened = drugs.iter().enumerate().filter(|(_, d)| !novel.contains(&d.index));
    for (row, (i, d)) in (1u32..).zip(screened) {
        match d.index.as_str() {
            DMSO => fda.write_string(row, 0, "dmso").unwrap(),
            index => fda.write_number(row, 0, index.parse::<f64>().unwrap()).unwrap(),
        };
        fda.write_string(row, 1, &d.name).unwrap();
        fda.write_string(row, 2, format!("50-00-{i}")).unwrap();
        match d.index.as_str() {
            DMSO => {
                fda.write_string(row, 3, "unknown").unwrap();
            }
            BLANK_MOA => {}
            _ => {
                fda.write_number(row, 3, d.moa_id.parse::<f64>().unwrap()).unwrap();
                fda.write_string(row, 5, &d.moa).unwrap();
            }
        }
        fda.write_number(row, 4, if in_moa_task(&d.index) { 1.0 } else { 0.0 }).unwrap();
        fda.write_number(row, 6, 3.0).unwrap();
        fda.write_string(row, 8, "a target").unwrap();
    }
    let novel_sheet = book.add_worksheet().set_name("Novel-list").unwrap();
    for (c, h) in ["index", "name", "cas"].iter().enumerate() {
        novel_sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, n) in novel.iter().enumerate() {
        let d = drugs.iter().find(|d| &d.index == n).unwrap();
        novel_sheet.write_number(r as u32 + 1, 0, n.parse::<f64>().unwrap()).unwrap();
        novel_sheet.write_string(r as u32 + 1, 1, &d.name).unwrap();
        novel_sheet.write_string(r as u32 + 1, 2, format!("60-00-{r}")).unwrap();
    }
    std::fs::create_dir_all(out).unwrap();
    book.save(out.join("annotation.xlsx")).unwrap();

    // lN/{train,query,gallery}/<drug>[-k]/<raw id>_<n>/1.jpg .. 16.jpg, sizes varying per cell.
    let (mut cells, mut moa_task_queries, mut k) = (0, 0, 0u32);
    let mut side = || {
        k += 1;
        40 + (k * 7) % 33
    };
    for rep in ["l1", "l2", "l3"] {
        for split in ["train", "query", "gallery"] {
            for drug in sorted_dirs(&sim.join(rep).join(split)) {
                let index = drug.file_name().unwrap().to_str().unwrap().to_string();
                let mut name = folder(&index);
                if rep == "l2" && split == "train" && index == "5" {
                    name = "5-2".into();
                }
                let to = out.join(rep).join(split).join(&name);
                for (n, cell) in sorted_dirs(&drug).iter().enumerate() {
                    write_frames(cell, &to.join(format!("{name}_{n}")), side());
                    cells += 1;
                    moa_task_queries += usize::from(split == "query" && in_moa_task(&index));
                }
                std::fs::write(to.join(format!("{name}.avi")), b"RIFF\0\0\0\0AVI ").unwrap();
            }
        }
    }
    // A drug folder the table has no row for, and natural compounds (not in the table).
    let some_cell = sorted_dirs(&sim.join("l1/train/2"))[0].clone();
    write_frames(&some_cell, &out.join("l1/train/9999/9999_0"), 48);
    for (c, rep) in ["l1", "l2"].iter().enumerate() {
        for n in 0..2 {
            let src = &sorted_dirs(&sim.join(rep).join("gallery/5"))[0];
            write_frames(src, &out.join(rep).join("nc").join(format!("NC{c}")).join(format!("NC{c}_{n}")), 56);
        }
    }
    // novel/<drug>/<cell>/: no replicate level.
    for n in &novel {
        for (i, cell) in sorted_dirs(&sim.join("novel").join(n)).iter().enumerate() {
            write_frames(cell, &out.join("novel").join(n).join(format!("{n}_{i}")), side());
            cells += 1;
        }
    }
    Facts { cells, moa_task_queries, drugs, novel }
}

#[test]
fn the_published_layout_is_read_trained_on_evaluated_and_predicted_with() {
    let tmp = tempfile::tempdir().unwrap();
    let (sim, data) = (tmp.path().join("sim"), tmp.path().join("Mito"));
    ok(&["simulate", "--preset", "tiny", "--seed", "3", "--out", s(&sim), "--quiet"]);
    let facts = build_published(&sim, &data);

    // Read as-is; MitoReID's selection rules reported, not fatal.
    let (json, inspected) = ok(&["inspect", s(&data), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["cells"], facts.cells);
    let skipped = v["skipped"].as_array().unwrap();
    let reasons: Vec<(&str, String)> = skipped
        .iter()
        .map(|s| (s["reason"].as_str().unwrap(), s["path"].as_str().or(s["drug"].as_str()).unwrap().to_string()))
        .collect();
    assert!(reasons.iter().any(|(r, p)| *r == "no-annotation-row" && p.ends_with("l1/train/9999")), "{reasons:?}");
    let unknown: Vec<&str> = reasons.iter().filter(|r| r.0 == "unknown-moa").map(|r| r.1.as_str()).collect();
    assert_eq!(unknown, vec![BLANK_MOA, "dmso"], "{reasons:?}");
    assert_eq!(v["natural_compounds"].as_array().unwrap().len(), 2);
    assert!(inspected.contains("skipped 1 drug folder(s) without an annotation row"), "{inspected}");
    let montage = tmp.path().join("montage.png");
    let (human, _) = ok(&["inspect", s(&data), "--montage", s(&montage)]);
    // In colour, from crops of every size: the stains stay apart.
    let picture = image::open(&montage).unwrap();
    assert_eq!(picture.color(), image::ColorType::Rgb8);
    assert!(picture.to_rgb8().pixels().any(|p| p[0].abs_diff(p[1]) > 40), "the montage is in colour");
    assert!(human.contains("natural compounds") && human.contains("frame sizes from 40 to 72 px"), "{human}");
    let strict = molclip(&["inspect", s(&data), "--strict"]);
    assert!(!strict.status.success());
    assert!(text(&strict).contains("9999") && text(&strict).contains("--strict"), "{}", text(&strict));

    // MitoReID's recipe, one epoch per stage, shrunk to fit a test: RGB end to end.
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mitoreid.toml");
    let run = tmp.path().join("run");
    let shrink = [
        "--epochs",
        "1",
        "--set",
        "model.video.i3d.width=4",
        "--set",
        "data.augment.resize=32",
        "--set",
        "data.augment.crop=28",
        "--set",
        "data.sampler.p=4",
        "--set",
        "stages[0].validate_every=1",
    ];
    // Started, as MitoReID starts, from a pretrained 3D ResNet-50 in kenshohara's format (the
    // golden checkpoint is one at a sixteenth of the width, as `--set` shrinks the recipe).
    let narrow = tmp.path().join("mitoreid-narrow.toml");
    std::fs::write(&narrow, std::fs::read_to_string(&recipe).unwrap().replace("width = 64", "width = 4")).unwrap();
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../molclip/tests/golden/r3d50_kinetics_format.pth");
    let init = tmp.path().join("r3d50.safetensors");
    let (imported, _) = ok(&["weights", "import-i3d", s(&pth), "--config", s(&narrow), "--out", s(&init)]);
    assert!(imported.contains("i3d-resnet50") && imported.contains("3 input channel(s)"), "{imported}");
    let mut args =
        vec!["train", "--config", s(&recipe), "--data", s(&data), "--out", s(&run), "--init", s(&init), "--quiet"];
    args.extend(shrink);
    let (_, trained) = ok(&args);
    assert!(trained.contains("without an annotation row"), "{trained}");
    // For grey frames the stem is summed over its colours; a network of another width is
    // refused, and nothing is written.
    let grey = tmp.path().join("grey.toml");
    let grey_text = std::fs::read_to_string(&narrow).unwrap().replace("in_channels = 3", "in_channels = 1");
    std::fs::write(
        &grey,
        grey_text
            .replace("channels = \"rgb\"", "channels = \"grey\"")
            .replace("mean = [0.023, 0.060, 0.015]\nstd = [0.042, 0.128, 0.032]", "mean = 0.03\nstd = 0.08"),
    )
    .unwrap();
    let grey_init = tmp.path().join("grey.safetensors");
    let (imported, _) = ok(&["weights", "import-i3d", s(&pth), "--config", s(&grey), "--out", s(&grey_init)]);
    assert!(imported.contains("1 input channel(s)"), "{imported}");
    let wide = tmp.path().join("wide.safetensors");
    let refused = molclip(&["weights", "import-i3d", s(&pth), "--config", s(&recipe), "--out", s(&wide)]);
    assert!(!refused.status.success() && text(&refused).contains("does not fit"), "{}", text(&refused));
    assert!(!wide.exists());
    let run_toml = std::fs::read_to_string(run.join("run.toml")).unwrap();
    let recorded: toml::Table = run_toml.parse().unwrap();
    assert_eq!(recorded["init"].as_str(), Some(s(&init)));
    assert_eq!(recorded["data"]["sampler"]["p"].as_integer(), Some(4));
    assert_eq!(recorded["data"]["frames"]["channels"].as_str(), Some("rgb"));
    // MitoReID's augmentation, rescaling and blur included, is what the run trained with.
    let augment = &recorded["data"]["augment"];
    assert_eq!((augment["rescale"].as_float(), augment["blur_rate"].as_float()), (Some(0.2), Some(0.01)), "{run_toml}");
    let stages = recorded["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["epochs"].as_integer() == Some(1)), "{run_toml}");

    // Evaluated: drug identification on every annotated drug, MoA recognition on the
    // moa_choose drugs of a known MoA only.
    let scores = tmp.path().join("scores.json");
    let (_, evaluated) = ok(&["evaluate", "--run", s(&run), "--data", s(&data), "--json", s(&scores), "--quiet"]);
    let scores: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    let (drug_q, moa_q) =
        (scores["drug"]["valid_queries"].as_u64().unwrap(), scores["moa"]["valid_queries"].as_u64().unwrap());
    assert!(moa_q > 0 && moa_q as usize <= facts.moa_task_queries, "{moa_q} of {}", facts.moa_task_queries);
    assert!(drug_q > moa_q, "drug {drug_q}, MoA {moa_q}");
    // The novel drugs' MoAs are unknown in the published table: named, not scored; and without
    // replicates they cannot be retrieved.
    assert!(evaluated.contains("not scored") && evaluated.contains("novel drugs as queries: skipped"), "{evaluated}");
    let metadata = std::fs::read_to_string(run.join("embeddings.csv")).unwrap();
    assert!(metadata.starts_with("set,replicate,drug,moa,path\n"), "{metadata}");
    for line in metadata.lines().skip(1) {
        let path = line.rsplit(',').next().unwrap();
        assert!(data.join(path).is_dir(), "{line}: the path column names the cell folder");
    }

    // The natural compounds named against the gallery.
    let (named, _) = ok(&["predict", "--run", s(&run), "--videos", s(&data.join("l1/nc")), "--json", "--quiet"]);
    let named: serde_json::Value = serde_json::from_str(&named).unwrap();
    let named = named.as_array().unwrap();
    assert_eq!(
        (named.len(), named[0]["query"].as_str(), named[0]["rows"].as_u64()),
        (1, Some("NC0"), Some(2)),
        "{named:?}"
    );

    // SMILES joined by name (case and punctuation aside) for all but one drug; MolCLIP then
    // trains its CLIP term on the drugs with a molecule and reports them.
    let table = tmp.path().join("smiles.tsv");
    let mut rows = String::from("name\tsmiles\tcas\n");
    let mut expected: BTreeMap<String, bool> = BTreeMap::new();
    for d in facts.drugs.iter().filter(|d| d.index != "7") {
        rows.push_str(&format!("{}\t{}\t\n", d.name.to_uppercase().replace(',', " "), d.smiles));
        expected.insert(d.index.clone(), true);
    }
    std::fs::write(&table, rows).unwrap();
    let xlsx = std::fs::read(data.join("annotation.xlsx")).unwrap();
    let (annotated, _) = ok(&["annotate", "--data", s(&data), "--smiles", s(&table)]);
    let missing = &facts.drugs.iter().find(|d| d.index == "7").unwrap().name;
    assert!(annotated.contains("no SMILES for 1 drug(s)") && annotated.contains(missing.as_str()), "{annotated}");
    assert_eq!(std::fs::read(data.join("annotation.xlsx")).unwrap(), xlsx, "annotation.xlsx is never touched");
    let again = molclip(&["annotate", "--data", s(&data), "--smiles", s(&table)]);
    assert!(!again.status.success() && text(&again).contains("exists"), "{}", text(&again));
    let (annotated_index, _) = ok(&["inspect", s(&data), "--json"]);
    assert!(annotated_index.contains(&format!("\"cells\": {}", facts.cells)), "{annotated_index}");

    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/molclip-mito.toml");
    let run = tmp.path().join("molclip-run");
    let mut args = vec!["train", "--config", s(&recipe), "--data", s(&data), "--out", s(&run), "--quiet"];
    args.extend(shrink);
    args.extend(["--set", "model.molecule.gin.hidden=16"]);
    let (trained, _) = ok(&args);
    let train_drugs: std::collections::BTreeSet<PathBuf> = ["l1", "l2", "l3"]
        .iter()
        .flat_map(|rep| sorted_dirs(&sim.join(rep).join("train")))
        .map(|p| PathBuf::from(p.file_name().unwrap()))
        .collect();
    let train_drugs = train_drugs.len();
    assert!(
        trained.contains(&format!("CLIP term on the {} of {train_drugs} training drugs", train_drugs - 1)),
        "{trained}"
    );
    assert!(facts.novel.len() > 1 && expected.len() + 1 == facts.drugs.len());
    // The report on the published layout: MoA-task gallery on the map, novel drugs named.
    let page = tmp.path().join("report.html");
    ok(&["report", s(&run), "--data", s(&data), "--out", s(&page), "--quiet"]);
    assert!(std::fs::read_to_string(&page).unwrap().contains("Example videos"));
}
