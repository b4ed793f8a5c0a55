//! `molclip evaluate`: agreement with the NumPy reference to 1e-9, and clear
//! errors for bad inputs.

use std::path::Path;
use std::process::{Command, Output};

use molclip_eval::synthetic::{clustered_embeddings, metadata_csv};

fn molclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molclip")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write_case(dir: &Path, n: usize, dim: usize, seed: u64) -> (String, String) {
    let (features, rows) = clustered_embeddings(n, dim, seed);
    let (e, m) = (dir.join(format!("e{seed}.npy")), dir.join(format!("m{seed}.csv")));
    molclip_eval::npy::write_npy_f32(&e, rows.len(), dim, &features).unwrap();
    std::fs::write(&m, metadata_csv(&rows)).unwrap();
    (e.to_str().unwrap().into(), m.to_str().unwrap().into())
}

#[test]
fn agrees_with_the_numpy_reference_to_1e_9() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/eval_reference.py");
    let tmp = tempfile::tempdir().unwrap();
    for (n, dim, seed) in [(600, 32, 1), (1500, 128, 2), (257, 8, 3)] {
        let (e, m) = write_case(tmp.path(), n, dim, seed);
        let ours_json = tmp.path().join("ours.json");
        let ours_cmc = tmp.path().join("cmc.csv");
        let o = molclip(&[
            "evaluate",
            "--embeddings",
            &e,
            "--metadata",
            &m,
            "--json",
            ours_json.to_str().unwrap(),
            "--cmc-csv",
            ours_cmc.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let reference =
            Command::new("python3").args([script, &e, &m]).output().expect("python3 with numpy (pip install numpy)");
        assert!(reference.status.success(), "NumPy reference failed (is numpy installed?): {}", text(&reference));
        let r: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ours_json).unwrap()).unwrap();
        let cmc: Vec<Vec<f64>> = std::fs::read_to_string(&ours_cmc)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(cmc.len(), 50);
        for (t, task) in ["drug", "moa"].iter().enumerate() {
            for key in ["mAP", "rank1", "rank5", "rank10"] {
                let (a, b) = (ours[task][key].as_f64().unwrap(), r[task][key].as_f64().unwrap());
                assert!((a - b).abs() < 1e-9, "n={n} {task} {key}: ours {a}, NumPy {b}");
            }
            assert_eq!(ours[task]["valid_queries"], r[task]["valid_queries"]);
            for (k, row) in cmc.iter().enumerate() {
                let b = r[task]["cmc"][k].as_f64().unwrap();
                assert!((row[t + 1] - b).abs() < 1e-9, "{task} CMC at rank {}: {} vs {b}", k + 1, row[t + 1]);
            }
        }
        // The data are neither trivial nor hopeless.
        let map = ours["moa"]["mAP"].as_f64().unwrap();
        assert!(map > 5.0 && map < 99.0, "{map}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, m) = write_case(tmp.path(), 40, 4, 9);
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let run = |e: &str, m: &str| {
        let o = molclip(&["evaluate", "--embeddings", e, "--metadata", m]);
        assert!(!o.status.success());
        text(&o)
    };
    let csv = std::fs::read_to_string(&m).unwrap();

    // Row count mismatch.
    std::fs::write(p("short.csv"), csv.lines().take(30).collect::<Vec<_>>().join("\n")).unwrap();
    assert!(run(&e, &p("short.csv")).contains("29 metadata rows but 80 embedding rows"));
    // Missing column.
    std::fs::write(p("nocol.csv"), csv.replace("set,replicate,drug,moa", "set,replicate,drug,mode")).unwrap();
    assert!(run(&e, &p("nocol.csv")).contains("missing column `moa`"));
    // Unknown set, with its line.
    std::fs::write(p("badset.csv"), csv.replacen("query,", "querry,", 1)).unwrap();
    let msg = run(&e, &p("badset.csv"));
    assert!(msg.contains("line 2") && msg.contains("querry"), "{msg}");
    // Empty gallery.
    std::fs::write(p("nogal.csv"), csv.replace("gallery,", "train,")).unwrap();
    assert!(run(&e, &p("nogal.csv")).contains("no gallery rows"));
    // NaN and zero rows name the row.
    let mut features = vec![1.0f32; 80 * 4];
    features[13 * 4 + 2] = f32::NAN;
    molclip_eval::npy::write_npy_f32(Path::new(&p("nan.npy")), 80, 4, &features).unwrap();
    let msg = run(&p("nan.npy"), &m);
    assert!(msg.contains("row 13") && msg.contains("not finite"), "{msg}");
    let mut features = vec![1.0f32; 80 * 4];
    features[50 * 4..51 * 4].fill(0.0);
    molclip_eval::npy::write_npy_f32(Path::new(&p("zero.npy")), 80, 4, &features).unwrap();
    let msg = run(&p("zero.npy"), &m);
    assert!(msg.contains("row 50") && msg.contains("zero"), "{msg}");
    // Not an npy at all.
    std::fs::write(p("junk.npy"), "hello").unwrap();
    assert!(run(&p("junk.npy"), &m).contains("junk.npy"));
}

#[test]
fn novel_drugs_get_a_moa_and_a_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let (features, mut rows) = clustered_embeddings(600, 32, 5);
    // Turn the query videos of the first 10 drugs into novel videos.
    let novel: Vec<String> = (0..10).map(|d| format!("d{d}")).collect();
    for r in rows.iter_mut().filter(|r| r.set == molclip_core::Split::Query && novel.contains(&r.drug)) {
        r.set = molclip_core::Split::Novel;
    }
    let (e, m) = (tmp.path().join("e.npy"), tmp.path().join("m.csv"));
    molclip_eval::npy::write_npy_f32(&e, rows.len(), 32, &features).unwrap();
    std::fs::write(&m, metadata_csv(&rows)).unwrap();
    let (json, confusion) = (tmp.path().join("r.json"), tmp.path().join("c.csv"));
    let o = molclip(&[
        "evaluate",
        "--embeddings",
        e.to_str().unwrap(),
        "--metadata",
        m.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--confusion-csv",
        confusion.to_str().unwrap(),
        "--novel-k",
        "5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let drugs = v["novel"]["drugs"].as_array().unwrap();
    assert_eq!(drugs.len(), 10);
    let right = drugs.iter().filter(|d| d["correct"] == true).count();
    assert!((v["novel"]["drug_accuracy"].as_f64().unwrap() - 10.0 * right as f64).abs() < 1e-9);
    // The gallery holds these drugs' own videos, so most are named right.
    assert!(right >= 8, "{right}/10");
    // The same novel videos as queries, retrieved under the protocol: complete, in range.
    for task in ["drug", "moa"] {
        let t = &v["novel"]["retrieval"][task];
        let map = t["mAP"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&map) && t["valid_queries"].as_u64().unwrap() > 0, "{t}");
        assert!(t["rank1"].as_f64().unwrap() <= t["rank5"].as_f64().unwrap());
    }
    let c = std::fs::read_to_string(&confusion).unwrap();
    let total: usize = c.lines().skip(1).flat_map(|l| l.split(',').skip(1).map(|x| x.parse::<usize>().unwrap())).sum();
    assert_eq!(total, 10);
}

/// `MOLCLIP_CPU` caps the kernels (here the distance GEMM): every level this CPU runs gives
/// the same metrics to 1e-9, and an unknown level is refused before anything runs.
#[test]
fn every_instruction_set_gives_the_same_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, m) = write_case(tmp.path(), 700, 64, 4);
    let run = |level: &str| -> serde_json::Value {
        let json = tmp.path().join(format!("{level}.json"));
        let o = Command::new(env!("CARGO_BIN_EXE_molclip"))
            .env("MOLCLIP_CPU", level)
            .args(["evaluate", "--embeddings", &e, "--metadata", &m, "--json", json.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{level}: {}", text(&o));
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let full = run("avx512");
    for level in ["avx2", "scalar"] {
        let capped = run(level);
        for task in ["drug", "moa"] {
            let (a, b) = (full[task]["mAP"].as_f64().unwrap(), capped[task]["mAP"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{level} {task}: {a} vs {b}");
            assert_eq!(full[task]["valid_queries"], capped[task]["valid_queries"]);
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_molclip"))
        .env("MOLCLIP_CPU", "sse9")
        .args(["evaluate", "--embeddings", &e, "--metadata", &m])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("MOLCLIP_CPU=sse9: expected avx512, avx2"), "{}", text(&o));
}
