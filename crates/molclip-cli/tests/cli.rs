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
fn inspect_names_the_missing_dataset() {
    let o = molclip(&["inspect", "/nonexistent/dataset"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/dataset"), "{}", text(&o));
}

#[test]
fn featurize_writes_every_row_and_fails_on_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.tsv");
    std::fs::write(&input, "# a comment\nname\tsmiles\naspirin\tCC(=O)Oc1ccccc1C(=O)O\nbroken\tc1cccc1\nsalt\tCl.NCCC[C@@H](N)C(=O)O\n").unwrap();
    let output = tmp.path().join("out.jsonl");
    let o = molclip(&["chem", "featurize", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(":4:"), "error names the line: {}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["canonical"], "CC(=O)Oc1ccccc1C(=O)O");
    assert_eq!(lines[0]["morgan2_2048"].as_array().unwrap().len(), 24);
    assert!(lines[1]["error"].as_str().unwrap().contains("c1cccc1"));
    assert_eq!(lines[2]["canonical"], "NCCC[C@@H](N)C(=O)O");
    assert_eq!(lines[2]["num_fragments"], 2);
    assert_eq!(lines[2]["fragment_policy"], "largest");

    let good = tmp.path().join("good.csv");
    std::fs::write(&good, "smiles\nCCO\n").unwrap();
    let o = molclip(&["chem", "featurize", "--input", good.to_str().unwrap(), "--output", output.to_str().unwrap(), "--radius", "1", "--bits", "1024", "--fragments", "whole"]);
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
    let (mean, std) = (table["data"]["normalize"]["mean"].as_float().unwrap(), table["data"]["normalize"]["std"].as_float().unwrap());
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
    let rgb = FrameVitConfig { image_size: 32, patch_size: 8, in_channels: 3, dim: 16, depth: 2, heads: 2, ..FrameVitConfig::default() };
    let store = molclip::nn::ParamStore::new(1, &molclip::candle_core::Device::Cpu);
    FrameVit::new(&store.root(), &rgb).unwrap();
    let src = tmp.path().join("vit.safetensors");
    store.save(&src).unwrap();
    let cfg = tmp.path().join("model.toml");
    std::fs::write(&cfg, "[video]\nencoder = \"frame-vit\"\n[video.vit]\nimage_size = 48\npatch_size = 8\ndim = 16\ndepth = 2\nheads = 2\n").unwrap();
    let out = tmp.path().join("init.safetensors");
    let o = molclip(&["weights", "import-vit", src.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = molclip(&["weights", "list", out.to_str().unwrap()]);
    let listing = text(&o);
    assert!(listing.contains("video.encoder.pos_embed") && listing.contains("[1, 37, 16]"), "{listing}");
    assert!(listing.contains("video.encoder.patch_embed.proj.weight") && listing.contains("[16, 1, 8, 8]"), "{listing}");
    // A config of another width: refused, naming both widths.
    std::fs::write(&cfg, "[video]\nencoder = \"frame-vit\"\n[video.vit]\ndim = 32\nheads = 2\n").unwrap();
    let o = molclip(&["weights", "import-vit", src.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("width 16") && text(&o).contains("dim 32"), "{}", text(&o));
}

#[test]
fn bench_model_prints_a_row_per_model() {
    let o = molclip(&["bench", "model", "--models", "frame-vit,i3d-resnet18", "--batch", "4", "--frames", "4", "--size", "32", "--steps", "1", "--no-reference"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert_eq!(out.matches("molclip (candle)").count(), 2, "{out}");
    let o = molclip(&["bench", "model", "--models", "resnet", "--no-reference"]);
    assert!(!o.status.success() && text(&o).contains("unknown model `resnet`"), "{}", text(&o));
}
