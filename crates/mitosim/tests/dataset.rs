//! The written dataset: layout, determinism across thread counts, and
//! regeneration from its own simulation.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mitosim::{generate, DatasetPlan, SimConfig};

fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn tiny() -> SimConfig {
    let mut c = SimConfig::preset("tiny").unwrap();
    c.seed = 11;
    c
}

fn generate_with_threads(config: &SimConfig, out: &Path, threads: usize) {
    let plan = DatasetPlan::new(config.clone(), Path::new(".")).unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| generate(&plan, out, false, &|| {}).unwrap());
}

#[test]
fn tiny_preset_has_the_mitoreid_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    generate_with_threads(&tiny(), &out, 2);
    let annotation = std::fs::read_to_string(out.join("annotation.csv")).unwrap();
    let mut lines = annotation.lines();
    assert_eq!(lines.next().unwrap(), "index,drug_id,name,smiles,moa,moa_id");
    let rows: Vec<&str> = lines.collect();
    // DMSO + 5 MoAs x 3 drugs.
    assert_eq!(rows.len(), 16);
    assert!(rows[0].starts_with("0,0,DMSO,CS(C)=O,control,0"));
    for rep in ["l1", "l2", "l3"] {
        for split in ["train", "query", "gallery"] {
            let dir = out.join(rep).join(split);
            // 5 MoAs x 2 training drugs + DMSO.
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 11, "{}", dir.display());
        }
    }
    let cell = out.join("l2/train/0/cell001");
    for t in 1..=16 {
        let img = image::open(cell.join(format!("{t}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        assert_eq!(img.color(), image::ColorType::L8);
    }
    assert!(!cell.join("17.png").exists());
    // 5 novel drugs, one cell per replicate each.
    let novel = out.join("novel");
    assert_eq!(std::fs::read_dir(&novel).unwrap().count(), 5);
    let some_novel = std::fs::read_dir(&novel).unwrap().next().unwrap().unwrap().path();
    let mut cells: Vec<String> =
        std::fs::read_dir(some_novel).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    cells.sort();
    assert_eq!(cells, ["l1-cell001", "l2-cell001", "l3-cell001"]);
    let recorded = SimConfig::from_toml_file(&out.join("simulation.toml")).unwrap();
    assert_eq!(recorded, tiny());
}

#[test]
fn same_seed_gives_identical_bytes_on_any_thread_count_and_from_simulation_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two, again) = (tmp.path().join("one"), tmp.path().join("two"), tmp.path().join("again"));
    generate_with_threads(&tiny(), &one, 1);
    generate_with_threads(&tiny(), &two, 2);
    let a = files(&one);
    assert!(a.len() > 16 * 100);
    assert!(a == files(&two), "thread count changed the output");
    let recorded = SimConfig::from_toml_file(&one.join("simulation.toml")).unwrap();
    generate_with_threads(&recorded, &again, 2);
    assert!(a == files(&again), "simulation.toml did not regenerate the dataset");

    let mut other = tiny();
    other.seed = 12;
    let diff = tmp.path().join("diff");
    generate_with_threads(&other, &diff, 2);
    assert!(files(&diff) != a, "a different seed gave the same dataset");
}

#[test]
fn tiff_stacks_are_16_bit_and_hold_every_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiff");
    let mut c = tiny();
    c.layout.format = mitosim::FrameFormat::Tiff;
    generate_with_threads(&c, &out, 2);
    let file = std::fs::File::open(out.join("l1/query/1/cell001/stack.tif")).unwrap();
    let mut decoder = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).unwrap();
    let mut pages = 0;
    loop {
        assert_eq!(decoder.colortype().unwrap(), tiff::ColorType::Gray(16));
        assert_eq!(decoder.dimensions().unwrap(), (64, 64));
        pages += 1;
        if !decoder.more_images() {
            break;
        }
        decoder.next_image().unwrap();
    }
    assert_eq!(pages, 16);
}

#[test]
fn an_existing_output_is_not_overwritten_without_asking() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("busy");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let plan = DatasetPlan::new(tiny(), Path::new(".")).unwrap();
    let err = generate(&plan, &out, false, &|| {}).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    // --force does not delete what molclip did not write: a folder of the user's...
    let err = generate(&plan, &out, true, &|| {}).unwrap_err().to_string();
    assert!(err.contains("is not a simulated dataset molclip wrote"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    // ...nor a simulated dataset the user added a file to.
    let data = tmp.path().join("data");
    generate(&plan, &data, false, &|| {}).unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let err = generate(&plan, &data, true, &|| {}).unwrap_err().to_string();
    assert!(err.contains("`notes.txt`"), "{err}");
    assert_eq!(std::fs::read_to_string(data.join("notes.txt")).unwrap(), "mine");
    // A dataset of its own it replaces, and no staging folder is left beside it, not even
    // one a killed run left.
    std::fs::remove_file(data.join("notes.txt")).unwrap();
    std::fs::create_dir_all(tmp.path().join(".data.partial-1/l1")).unwrap();
    generate(&plan, &data, true, &|| {}).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
}

#[test]
fn force_never_replaces_the_root_the_home_folder_or_the_working_directory() {
    let plan = DatasetPlan::new(tiny(), Path::new(".")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let mut places = vec![(PathBuf::from("/"), "root"), (cwd.clone(), "working directory")];
    places.push((cwd.parent().unwrap().to_path_buf(), "ancestors"));
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_dir() && !cwd.starts_with(h)) {
        places.push((home, "home folder"));
    }
    for (place, says) in places {
        let err = generate(&plan, &place, true, &|| {}).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains("--force never replaces"), "{}: {err}", place.display());
    }
}

#[test]
fn an_output_that_cannot_be_created_is_an_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = DatasetPlan::new(tiny(), Path::new(".")).unwrap();
    // The output's parent is a file: nothing can be created there.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("data");
    assert!(generate(&plan, &out, false, &|| {}).is_err());
    let names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["file"]);
}

#[test]
fn structure_coupling_ties_drug_effects_to_structure() {
    // Two drugs with near-identical structures (dexamethasone and its
    // epimer betamethasone) behave alike when coupling is 1, not when 0.
    use mitosim::biology::ScreenBiology;
    let mut c = SimConfig::preset("demo").unwrap();
    c.library.max_moas = 0;
    c.library.drugs_per_moa = 0;
    c.library.novel_drugs_per_moa = 0;
    let lib = mitosim::DrugLibrary::from_config(&c.library, 1, Path::new(".")).unwrap();
    let idx = |n: &str| lib.drugs.iter().position(|d| d.name == n).unwrap();
    let (dex, beta) = (idx("dexamethasone"), idx("betamethasone"));
    let gap = |coupling: f64| {
        let mut bio = c.biology.clone();
        bio.structure_coupling = coupling;
        (0..20u64)
            .map(|seed| {
                let b = ScreenBiology::new(&lib, &bio, seed);
                (0..7)
                    .map(|k| (b.drug_programs[dex][k].level(0.8) - b.drug_programs[beta][k].level(0.8)).abs())
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    assert!(gap(1.0) < 0.2 * gap(0.0), "coupled {} vs uncoupled {}", gap(1.0), gap(0.0));
}
