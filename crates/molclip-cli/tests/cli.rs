//! The binary as a user runs it: commands, outputs, exit codes and messages.

use std::process::{Command, Output};

fn molclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molclip")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn simulate_then_inspect_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let o = molclip(&["simulate", "--preset", "tiny", "--seed", "4", "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = molclip(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cells"], 147);
    assert_eq!(v["drugs"], 16);
    // Again into the same folder: refused without --force.
    let o = molclip(&["simulate", "--preset", "tiny", "--out", out.to_str().unwrap(), "--quiet"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
}

#[test]
fn bad_simulation_requests_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = molclip(&["simulate", "--preset", "huge", "--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("unknown preset \"huge\""), "{}", text(&o));
    let o = molclip(&["simulate", "--structure-coupling", "2", "--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("biology.structure_coupling"), "{}", text(&o));
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[layout]\nframes = 1\n").unwrap();
    let o = molclip(&["simulate", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("layout.frames"), "{}", text(&o));
    let drugs = tmp.path().join("drugs.tsv");
    std::fs::write(&drugs, "name\tmoa\tsmiles\n").unwrap();
    let o = molclip(&["simulate", "--drugs", drugs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("no drugs"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn counts_and_negative_numbers_are_refused_when_parsed_naming_the_flag() {
    let o = molclip(&["predict", "--run", "nowhere", "--smiles", "C", "--top", "0"]);
    assert!(!o.status.success() && text(&o).contains("--top") && text(&o).contains("at least 1"), "{}", text(&o));
    let o = molclip(&["evaluate", "--embeddings", "e.npy", "--metadata", "m.csv", "--novel-k", "0"]);
    assert!(!o.status.success() && text(&o).contains("--novel-k") && text(&o).contains("at least 1"), "{}", text(&o));
    // A negative coupling is a value (refused by the range check), not an unknown flag.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = molclip(&["simulate", "--structure-coupling", "-0.5", "--out", out.to_str().unwrap()]);
    assert!(text(&o).contains("biology.structure_coupling"), "{}", text(&o));
}

#[test]
fn inspect_names_the_missing_dataset() {
    let o = molclip(&["inspect", "/nonexistent/dataset"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/dataset"), "{}", text(&o));
}

#[test]
fn featurize_writes_every_row_and_fails_on_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.tsv");
    std::fs::write(
        &input,
        "# a comment\nname\tsmiles\naspirin\tCC(=O)Oc1ccccc1C(=O)O\nbroken\tc1cccc1\nsalt\tCl.NCCC[C@@H](N)C(=O)O\n",
    )
    .unwrap();
    let output = tmp.path().join("out.jsonl");
    let o = molclip(&["chem", "featurize", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(":4:"), "error names the line: {}", text(&o));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["canonical"], "CC(=O)Oc1ccccc1C(=O)O");
    assert_eq!(lines[0]["morgan2_2048"].as_array().unwrap().len(), 24);
    assert!(lines[1]["error"].as_str().unwrap().contains("c1cccc1"));
    assert_eq!(lines[2]["canonical"], "NCCC[C@@H](N)C(=O)O");
    assert_eq!(lines[2]["num_fragments"], 2);
    assert_eq!(lines[2]["fragment_policy"], "largest");

    let good = tmp.path().join("good.csv");
    std::fs::write(&good, "smiles\nCCO\n").unwrap();
    let o = molclip(&[
        "chem",
        "featurize",
        "--input",
        good.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--radius",
        "1",
        "--bits",
        "1024",
        "--fragments",
        "whole",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    assert!(v["morgan1_1024"].is_array());
    assert_eq!(v["name"], "row2");
}

#[test]
fn data_stats_writes_the_config_and_names_bad_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    assert!(molclip(&["simulate", "--preset", "tiny", "--out", out.to_str().unwrap(), "-q"]).status.success());
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "seed = 3\n[data.frames]\nframes = 8\n").unwrap();
    let o = molclip(&["data", "stats", out.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let table: toml::Table = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    assert_eq!(table["seed"].as_integer(), Some(3));
    assert_eq!(table["data"]["frames"]["frames"].as_integer(), Some(8));
    let (mean, std) =
        (table["data"]["normalize"]["mean"].as_float().unwrap(), table["data"]["normalize"]["std"].as_float().unwrap());
    assert!(mean > 0.0 && mean < 0.5 && std > 0.0 && std < 0.5, "{mean} {std}");
    std::fs::write(&cfg, "[data.frames]\nframez = 8\n").unwrap();
    let o = molclip(&["data", "stats", out.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "-q"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("framez"), "{}", text(&o));
}

#[test]
fn import_vit_maps_a_pretrained_checkpoint_onto_frame_vit() {
    use molclip::models::{FrameVit, FrameVitConfig};
    let tmp = tempfile::tempdir().unwrap();
    // An RGB ViT with timm names, 4 x 4 patches.
    let rgb = FrameVitConfig {
        image_size: 32,
        patch_size: 8,
        in_channels: 3,
        dim: 16,
        depth: 2,
        heads: 2,
        ..FrameVitConfig::default()
    };
    let store = molclip::nn::ParamStore::new(1, &molclip::candle_core::Device::Cpu);
    FrameVit::new(&store.root(), &rgb).unwrap();
    let src = tmp.path().join("vit.safetensors");
    store.save(&src).unwrap();
    let cfg = tmp.path().join("model.toml");
    std::fs::write(&cfg, "[video]\nencoder = \"frame-vit\"\n[video.vit]\nimage_size = 48\npatch_size = 8\ndim = 16\ndepth = 2\nheads = 2\n").unwrap();
    let out = tmp.path().join("init.safetensors");
    let o = molclip(&[
        "weights",
        "import-vit",
        src.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = molclip(&["weights", "list", out.to_str().unwrap()]);
    let listing = text(&o);
    assert!(listing.contains("video.encoder.pos_embed") && listing.contains("[1, 37, 16]"), "{listing}");
    assert!(
        listing.contains("video.encoder.patch_embed.proj.weight") && listing.contains("[16, 1, 8, 8]"),
        "{listing}"
    );
    // A config of another width: refused, naming both widths.
    std::fs::write(&cfg, "[video]\nencoder = \"frame-vit\"\n[video.vit]\ndim = 32\nheads = 2\n").unwrap();
    let o = molclip(&[
        "weights",
        "import-vit",
        src.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("width 16") && text(&o).contains("dim 32"), "{}", text(&o));
}

#[test]
fn bench_model_prints_a_row_per_model() {
    let o = molclip(&[
        "bench",
        "model",
        "--models",
        "frame-vit,i3d-resnet18",
        "--batch",
        "4",
        "--frames",
        "4",
        "--size",
        "32",
        "--steps",
        "1",
        "--rounds",
        "2",
        "--no-reference",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    // Each row names the instruction set molclip used, and the table the CPU.
    let isa = molclip_cpu::isa().name();
    assert_eq!(out.matches(&format!("molclip ({isa})")).count(), 2, "{out}");
    assert!(out.starts_with(&format!("CPU: {}", molclip_cpu::cpu_model())), "{out}");
    // The header counts what it timed, in English: one step, two rounds.
    assert!(out.contains("median of 1 step, 2 rounds of PyTorch"), "{out}");
    // And where its step went: three positive phase times per model.
    let phases: Vec<Vec<f64>> = out
        .lines()
        .filter(|l| l.contains("forward / backward / update, ms"))
        .map(|l| l.rsplit("ms").next().unwrap().split('/').map(|v| v.trim().parse().unwrap()).collect())
        .collect();
    assert_eq!(phases.len(), 2, "{out}");
    assert!(phases.iter().all(|p| p.len() == 3 && p.iter().all(|&v| v > 0.0)), "{out}");
    // And the arithmetic of its products, counted as they ran (a positive count per model).
    let counted: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("step's products: 3 x ").nth(1))
        .map(|l| l.split(" GFLOP").next().unwrap().parse().unwrap())
        .collect();
    assert!(counted.len() == 2 && counted.iter().all(|&g| g > 0.0), "{out}");
    let o = molclip(&["bench", "model", "--models", "frame-vit", "--precision", "tf32", "--no-reference"]);
    assert!(
        !o.status.success() && text(&o).contains("--precision tf32: a mode of CUDA's tensor cores"),
        "{}",
        text(&o)
    );
    let o = molclip(&["bench", "model", "--models", "resnet", "--no-reference"]);
    assert!(!o.status.success() && text(&o).contains("unknown model `resnet`"), "{}", text(&o));
    // MitoReID's blocks on RGB frames: the header names them; blocks it does not build are
    // refused with the ones it does.
    let small = ["--batch", "4", "--frames", "4", "--size", "32", "--steps", "1", "--rounds", "1", "--no-reference"];
    let o = molclip(
        &[&["bench", "model", "--models", "i3d-resnet18", "--channels", "3", "--blocks", "r3d"], &small[..]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("4 x 4 x 3 x 32 x 32, r3d blocks, cpu"), "{}", text(&o));
    let o = molclip(&[&["bench", "model", "--models", "i3d-resnet18", "--blocks", "r2plus1d"], &small[..]].concat());
    assert!(!o.status.success() && text(&o).contains("[possible values: inflated, r3d]"), "{}", text(&o));
}

#[test]
fn bench_train_times_the_first_steps_of_an_epoch() {
    let (_tmp, data, cfg) = tiny_and_small_config();
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "train", "--data", data.to_str().unwrap(), "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        molclip(&args)
    };
    let o = bench(&["--steps", "3", "--no-reference", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(", 3 of ") && out.contains("(drug stage)"), "{out}");
    let row = out.lines().find(|l| l.starts_with(&format!("molclip ({})", molclip_cpu::isa().name()))).expect(&out);
    // s/step, epoch s, videos/s, data wait %, peak MiB.
    let cols: Vec<f64> =
        row.split_whitespace().skip(2).take(5).map(|c| c.trim_end_matches('%').parse().unwrap()).collect();
    assert!(cols[0] > 0.0 && cols[1] >= 3.0 * cols[0] && (0.0..=100.0).contains(&cols[3]), "{row}");
    assert!(out.contains(", precision f32, "), "{out}");
    // The reference trains video models only: a MolCLIP config needs --no-reference.
    let o = bench(&["--steps", "1", "--quiet"]);
    assert!(!o.status.success() && text(&o).contains("--no-reference"), "{}", text(&o));
    // `--set` overrides the config as `train --set` does, validated alike.
    let o = bench(&["--steps", "1", "--no-reference", "--quiet", "--set", "precision=bf16"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" --set precision=bf16 (drug stage)") && text(&o).contains(", precision bf16, "));
    let o = bench(&["--steps", "1", "--no-reference", "--quiet", "--set", "precision=tf32"]);
    assert!(!o.status.success() && text(&o).contains("tf32 is a mode of CUDA's tensor cores"), "{}", text(&o));
    let o = bench(&["--steps", "1", "--no-reference", "--quiet", "--set", "precision"]);
    assert!(!o.status.success() && text(&o).contains("--set precision: expected KEY=VALUE"), "{}", text(&o));
}

const SMALL_TRAIN: &str = r#"
kind = "molclip"
seed = 3
checkpoint_every = 4
[model]
projection_dim = 16
[model.video.i3d]
width = 4
[model.molecule.gin]
hidden = 16
[data]
cache = true
# Batches built ahead on the loader's thread: the kill finds some built and unused.
prefetch = 2
[data.frames]
frames = 4
[data.augment]
resize = 36
crop = 32
[data.sampler]
p = 4
k = 2
[schedule]
warmup_epochs = 0.5
[[stages]]
identity = "drug"
epochs = 1
[[stages]]
identity = "moa"
epochs = 1
"#;

/// The tiny preset simulated and [`SMALL_TRAIN`] written, in a temporary folder.
fn tiny_and_small_config() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tiny");
    let o = molclip(&["simulate", "--preset", "tiny", "--out", data.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = tmp.path().join("small.toml");
    std::fs::write(&cfg, SMALL_TRAIN).unwrap();
    (tmp, data, cfg)
}

/// Every file under `dir` and its bytes.
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// A run killed with SIGKILL mid-epoch and resumed ends with the same weights and metrics as
/// a run that was never interrupted.
#[test]
fn train_killed_and_resumed_equals_an_uninterrupted_run() {
    let (tmp, data, cfg) = tiny_and_small_config();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let train = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        molclip(&args)
    };
    let o = train(&a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&b, &["--kill-after-steps", "6"]);
    assert!(!o.status.success(), "the run was to be killed: {}", text(&o));
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9));
    }
    assert!(!b.join("model.safetensors").exists());
    // The time up to the last checkpoint (step 4) survives the kill, and the resumed run adds to it.
    let killed: f64 = std::fs::read_to_string(b.join("train_seconds.txt")).unwrap().trim().parse().unwrap();
    assert!(killed > 0.0);
    // A dry run says where each run stands, and writes nothing.
    let before = files(&b);
    let o = train(&b, &["--resume", "--dry-run"]);
    assert!(o.status.success() && text(&o).contains("resuming after step 4"), "{}", text(&o));
    let o = train(&a, &["--resume", "--dry-run"]);
    assert!(o.status.success() && text(&o).contains("nothing is left to train"), "{}", text(&o));
    assert!(files(&b) == before, "the dry run changed the run folder");
    // A stage that cannot fill its batches stops the run before anything is written.
    let c = tmp.path().join("c");
    let o = train(&c, &["--set", "data.sampler.p=7"]);
    assert!(!o.status.success() && text(&o).contains("stage 2 (moa)"), "{}", text(&o));
    assert!(!c.exists(), "nothing is written");
    // Without --resume an existing run is not overwritten.
    let o = train(&b, &[]);
    assert!(!o.status.success() && text(&o).contains("--resume"), "{}", text(&o));
    // --resume never silently takes another config or dataset: it names what differs.
    let edited = tmp.path().join("edited.toml");
    std::fs::write(&edited, SMALL_TRAIN.replace("seed = 3", "seed = 4")).unwrap();
    let o = molclip(&[
        "train",
        "--config",
        edited.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
        "--resume",
        "--quiet",
    ]);
    assert!(!o.status.success() && text(&o).contains("`seed`"), "{}", text(&o));
    let other = tmp.path().join("other");
    let o = molclip(&["simulate", "--preset", "tiny", "--seed", "5", "--out", other.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = molclip(&["train", "--data", other.to_str().unwrap(), "--out", b.to_str().unwrap(), "--resume", "--quiet"]);
    assert!(!o.status.success() && text(&o).contains("not the dataset this run was trained on"), "{}", text(&o));
    // Another dataset at the same path: its fingerprint differs.
    let kept = tmp.path().join("kept");
    std::fs::rename(&data, &kept).unwrap();
    std::fs::rename(&other, &data).unwrap();
    let o = train(&b, &["--resume"]);
    assert!(!o.status.success() && text(&o).contains("changed since the run started"), "{}", text(&o));
    std::fs::rename(&data, &other).unwrap();
    std::fs::rename(&kept, &data).unwrap();
    // A flipped byte in the checkpoint is caught by its checksum, naming the file.
    let weights = b.join("checkpoints").join("last").join("model.safetensors");
    let intact = std::fs::read(&weights).unwrap();
    let mut flipped = intact.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &flipped).unwrap();
    let o = train(&b, &["--resume"]);
    assert!(
        !o.status.success() && text(&o).contains("model.safetensors") && text(&o).contains("damaged"),
        "{}",
        text(&o)
    );
    std::fs::write(&weights, &intact).unwrap();
    let o = train(&b, &["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    let total: f64 = std::fs::read_to_string(b.join("train_seconds.txt")).unwrap().trim().parse().unwrap();
    assert!(total > killed, "{total} <= {killed}");
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    let (ma, mb) = (
        std::fs::read_to_string(a.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(b.join("metrics.csv")).unwrap(),
    );
    assert_eq!(ma, mb);
    assert!(
        ma.starts_with(
            "step,stage,identity,epoch,lr,loss,clip,triplet,ce,center,temperature,grad_norm,val_drug_map,val_moa_map\n"
        ),
        "{ma}"
    );
    // Each epoch ends with a validation.
    assert_eq!(ma.lines().filter(|l| !l.ends_with(",,")).count(), 1 + 2, "{ma}");
    assert!(ma.lines().count() > 10);
    // run.toml is the fully resolved config: every section written out.
    let run = std::fs::read_to_string(a.join("run.toml")).unwrap();
    assert!(run.contains("[optimizer]") && run.contains("[model.video.vit]"), "{run}");

    // The trained run embeds and evaluates.
    let o = molclip(&["evaluate", "--run", a.to_str().unwrap(), "--data", data.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("drug identification") && text(&o).contains("novel drugs"), "{}", text(&o));
    let e = tmp.path().join("emb").join("novel.npy");
    let o = molclip(&[
        "embed",
        "--run",
        a.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--split",
        "novel",
        "--out",
        e.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = std::fs::read_to_string(e.with_extension("csv")).unwrap();
    assert!(
        meta.starts_with("set,replicate,drug,moa,path\n") && meta.lines().skip(1).all(|l| l.starts_with("novel,")),
        "{meta}"
    );
    // A split that does not exist is refused by name; one that exists but is empty too.
    let embed = |split: &str| {
        molclip(&[
            "embed",
            "--run",
            a.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--split",
            split,
            "--out",
            e.to_str().unwrap(),
        ])
    };
    let o = embed("validation");
    assert!(!o.status.success() && text(&o).contains("unknown split \"validation\""), "{}", text(&o));
    let o = embed("unlabelled");
    assert!(!o.status.success() && text(&o).contains("`unlabelled` is empty"), "{}", text(&o));
}

#[test]
fn train_config_errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[optimizer]\nlr = 0\n").unwrap();
    let o = molclip(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        "nowhere",
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("bad.toml") && text(&o).contains("optimizer.lr"), "{}", text(&o));
}

#[test]
fn a_corrupt_frame_stops_train_before_its_first_step_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tiny");
    let o = molclip(&["simulate", "--preset", "tiny", "--out", data.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    // Truncated: the header still reads, the pixels do not.
    let first = |dir: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        v.sort();
        v[0].clone()
    };
    let frame = first(&first(&data.join("l3/gallery"))).join("9.png");
    let bytes = std::fs::read(&frame).unwrap();
    std::fs::write(&frame, &bytes[..bytes.len() / 2]).unwrap();
    let run = tmp.path().join("run");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/video-only.toml");
    let o = molclip(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains(frame.to_str().unwrap()), "{}", text(&o));
    assert!(!run.exists(), "the check runs before the run folder is made");
}

#[test]
fn raw_fields_are_simulated_extracted_and_read_as_a_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    let cfg = tmp.path().join("sim.toml");
    std::fs::write(
        &cfg,
        "[library]\nmax_moas = 2\n[layout]\nreplicates = 1\nframes = 6\n[raw]\nfield_size = 192\ncells = [6, 8]\n",
    )
    .unwrap();
    let o = molclip(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--raw",
        "--raw-format",
        "ome-tiff",
        "--out",
        raw.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("raw fields of 192x192"), "{}", text(&o));
    let (cells, qc) = (tmp.path().join("cells"), tmp.path().join("qc"));
    let o = molclip(&[
        "extract",
        "--raw",
        raw.to_str().unwrap(),
        "--out",
        cells.to_str().unwrap(),
        "--format",
        "tiff",
        "--qc",
        qc.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(qc.read_dir().unwrap().count() > 0);
    let o = molclip(&["inspect", cells.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["cells"].as_u64().unwrap() >= 10, "{v}");
    // A bad config names its field; an unknown split is refused when parsed.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[crop]\nmargin = 9\n").unwrap();
    let o = molclip(&["extract", "--raw", raw.to_str().unwrap(), "--out", "x", "--config", bad.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("crop.margin"), "{}", text(&o));
    let o = molclip(&["extract", "--raw", raw.to_str().unwrap(), "--out", "x", "--split", "half"]);
    assert!(!o.status.success() && text(&o).contains("random, train or novel"), "{}", text(&o));
}

/// `bench device-check` against the CPU itself: every model's features and gradients, the
/// AdamW update and the gradient norm, are the same bits twice, staged batches arrive unchanged and a tensor queued
/// on one thread reads the same on another (a difference would be nondeterminism or a check
/// comparing the wrong tensors), one line each.
#[test]
fn device_check_on_the_cpu_finds_no_difference() {
    let o = molclip(&["bench", "device-check", "--device", "cpu"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("worst relative difference CPU vs Cpu: ")).collect();
    assert_eq!(lines.len(), 5, "{out}");
    for (line, name) in lines.iter().zip(["frame-vit", "i3d-resnet18", "i3d-resnet50", "r3d-resnet50", "update"]) {
        assert!(line.starts_with(name), "{out}");
        assert!(line.contains("CPU vs Cpu: 0.0e0 "), "{out}");
    }
    assert!(
        out.contains(
            "norm           gradient norm of 4194304 values in 164 tensors, relative difference CPU vs Cpu: 0.0e0;"
        ),
        "{out}"
    );
    // The batches staged for the device arrive whole (no pinned memory on the CPU).
    assert!(
        out.contains("staging        5 batches through no pinned memory, values differing after the copies: 0,"),
        "{out}"
    );
    // A tensor queued on one thread reads the same on another (64 x 64 ones on the CPU).
    assert!(
        out.contains(
            "threads        products queued on one thread, summed on another: 4096 (4096 expected), and on \
                      the first after the second dropped them: 8192 (8192 expected)"
        ),
        "{out}"
    );
}

/// `bench` outside the repository runs the references built into the binary: from a folder
/// without `benches/`, the NumPy evaluation reference runs and agrees with molclip's mAP.
#[test]
fn bench_finds_its_references_outside_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_molclip"))
        .args(["bench", "evaluate", "--sizes", "300", "--dim", "16"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.lines().any(|l| l.contains("NumPy full sort")), "{out}");
    let ours = out.lines().find(|l| l.contains("molclip-eval")).expect("molclip's row");
    let diff: f64 = ours.split_whitespace().last().unwrap().parse().unwrap();
    assert!(diff < 1e-9, "{out}");
}

/// `bench simulate --drugs` outside the repository: the bench preset, whose drug table is
/// `../shared/data/launched_drugs.tsv` by default, is skipped there without it and measured
/// with it.
#[test]
fn bench_simulates_the_bench_preset_from_a_given_drug_table() {
    let drugs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/launched_drugs.tsv");
    let tmp = tempfile::tempdir().unwrap();
    let bench = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_molclip"));
        cmd.args(["bench", "simulate", "--presets", "bench", "--cells", "4"]).args(extra);
        let o = cmd.current_dir(tmp.path()).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let out = bench(&[]);
    assert!(out.contains("bench   skipped: drug table") && out.contains("pass --drugs"), "{out}");
    let out = bench(&["--drugs", drugs]);
    let row = out.lines().find(|l| l.starts_with("bench ")).expect("a bench row");
    // preset, size, cells, total cells: 3,900 at 112 x 112.
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..4], ["bench", "112", "4", "3900"], "{out}");
}
