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
