//! `demo`, `report` and `predict` as a user runs them, on the quick demo.

use std::path::Path;
use std::process::{Command, Output};

fn molclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molclip")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_ok(args: &[&str]) -> Output {
    let o = molclip(args);
    assert!(o.status.success(), "molclip {args:?}: {}", text(&o));
    o
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

const FCCP: &str = "N#CC(C#N)=NNc1ccc(OC(F)(F)F)cc1";

#[test]
fn quick_demo_then_report_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = run_ok(&["demo", "--quick", "--out", out.to_str().unwrap(), "--seed", "3", "--quiet"]);

    // metrics.json: well-formed and complete.
    let m = metrics(&out);
    assert_eq!(m["seed"], 3);
    assert!(m["seconds"].as_f64().unwrap() > 0.0);
    for model in ["single_frame", "video_only", "molclip"] {
        for task in ["drug", "moa"] {
            let t = &m["models"][model][task];
            let v = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{model}.{task}.{k} missing: {m}"));
            for k in ["mAP", "rank1", "rank5", "rank10"] {
                assert!((0.0..=100.0).contains(&v(k)), "{model}.{task}.{k} = {}", v(k));
            }
            assert!(v("rank1") <= v("rank5") && v("rank5") <= v("rank10"), "CMC is monotone: {t}");
        }
    }
    let z = &m["models"]["molclip"]["zero_shot"];
    assert_eq!(z["moas"], 6, "{z}");
    assert!(m["models"]["video_only"].get("zero_shot").is_none(), "only MolCLIP predicts from structure");
    // The table on stdout names every model.
    for kind in ["single-frame", "video-only", "molclip"] {
        assert!(String::from_utf8_lossy(&o.stdout).contains(kind), "{}", text(&o));
    }

    for model in ["single_frame", "video_only", "molclip"] {
        assert!(m["models"][model]["train_seconds"].as_f64().unwrap() > 0.0, "{model}: no training time");
    }

    // The figures agree with `evaluate --run`, an independent path through the same protocol.
    let vo = out.join("runs").join("video-only");
    let data = out.join("data");
    let ev = tmp.path().join("vo.json");
    run_ok(&[
        "evaluate",
        "--run",
        vo.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        ev.to_str().unwrap(),
        "--quiet",
    ]);
    let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ev).unwrap()).unwrap();
    for task in ["drug", "moa"] {
        let (a, b) = (ev[task]["mAP"].as_f64().unwrap(), m["models"]["video_only"][task]["mAP"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{task}: evaluate {a} vs demo {b}");
    }

    // The report holds every section.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in [
        "<h2>Results</h2>",
        "CMC, drug identification",
        "training loss",
        "embedding map",
        "outlined triangles",
        "MoA confusion",
        "Which time points mattered",
        "data:image/png;base64,",
        "zero-shot",
    ] {
        assert!(html.contains(needle), "report.html lacks {needle}");
    }

    // Same seed, same numbers; a finished run is kept, not retrained.
    let before = std::fs::metadata(vo.join("model.safetensors")).unwrap().modified().unwrap();
    run_ok(&["demo", "--quick", "--out", out.to_str().unwrap(), "--seed", "3", "--quiet"]);
    assert_eq!(std::fs::metadata(vo.join("model.safetensors")).unwrap().modified().unwrap(), before);
    // ...and its training time is still reported.
    assert_eq!(metrics(&out)["models"]["video_only"]["train_seconds"], m["models"]["video_only"]["train_seconds"]);
    let again = tmp.path().join("again");
    run_ok(&["demo", "--quick", "--out", again.to_str().unwrap(), "--seed", "3", "--quiet"]);
    assert_eq!(
        metrics(&again)["models"],
        m["models"]
            .as_object()
            .map(|o| {
                // train_seconds differ between runs; everything measured on the data must not.
                let mut o = o.clone();
                for (k, v) in metrics(&again)["models"].as_object().unwrap() {
                    o.get_mut(k).unwrap()["train_seconds"] = v["train_seconds"].clone();
                }
                serde_json::Value::Object(o)
            })
            .unwrap()
    );

    // `report` on two runs: both rows, and the second one's gain over the first.
    let mc = out.join("runs").join("molclip");
    let page = tmp.path().join("two.html");
    run_ok(&["report", vo.to_str().unwrap(), mc.to_str().unwrap(), "--out", page.to_str().unwrap(), "--quiet"]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("video-only") && html.contains("molclip"));
    assert!(html.contains("class=\"gain\"") || html.contains("class=\"loss\""), "no gain over the row above");

    // Zero-shot from a SMILES: every MoA ranked, best first.
    let o = run_ok(&["predict", "--run", mc.to_str().unwrap(), "--smiles", FCCP, "--json", "--top", "100", "--quiet"]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let moas = p[0]["moas"].as_array().unwrap();
    assert_eq!(moas.len(), 6);
    let scores: Vec<f64> = moas.iter().map(|s| s["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().all(|s| (-1.0..=1.0).contains(s)), "{scores:?}");
    assert_eq!(p[0]["nearest"].as_array().unwrap().len(), 3);
    assert!(p[0].get("warning").is_none(), "{p}");
    // A salt with no organic fragment is still ranked, with a warning saying what it is.
    let o = run_ok(&["predict", "--run", mc.to_str().unwrap(), "--smiles", "[Na+].[Cl-]", "--json", "--quiet"]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warning = p[0]["warning"].as_str().unwrap();
    assert!(warning.contains("no organic fragment"), "{warning}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no organic fragment"), "{}", text(&o));

    // New videos: one ranking per drug folder, as a table.
    let o = run_ok(&[
        "predict",
        "--run",
        vo.to_str().unwrap(),
        "--videos",
        data.join("novel").to_str().unwrap(),
        "--quiet",
    ]);
    let drugs = std::fs::read_dir(data.join("novel")).unwrap().count();
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("nearest reference drugs").count(), drugs, "{}", text(&o));

    // Clear refusals.
    let o = molclip(&["predict", "--run", vo.to_str().unwrap(), "--smiles", FCCP]);
    assert!(!o.status.success() && text(&o).contains("needs a molclip run"), "{}", text(&o));
    let o = molclip(&["predict", "--run", mc.to_str().unwrap(), "--smiles", "C1CC"]);
    assert!(!o.status.success() && text(&o).contains("C1CC"), "{}", text(&o));
    let o = molclip(&["predict", "--run", mc.to_str().unwrap(), "--videos", tmp.path().join("none").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("not a directory"), "{}", text(&o));
}
