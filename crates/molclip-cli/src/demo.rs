//! `molclip demo`: simulate the demo dataset, train single-frame, video-only and MolCLIP
//! with the shipped recipes, evaluate all three and write the report. An interrupted demo
//! picks up where it stopped: a finished run is kept, a run with a checkpoint resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use mitosim::{DatasetPlan, SimConfig};
use molclip::train::{last_checkpoint, TrainConfig};
use molclip_data::DatasetIndex;
use molclip_report::Report;
use serde_json::json;

use crate::progress;
use crate::report::{analyse_run, moa_names};
use crate::train::{open_dataset, run_training, write_atomic};

#[derive(Args)]
pub struct DemoArgs {
    /// A smoke test: the tiny dataset and a few epochs (well under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the dataset, the runs, metrics.json and report.html go.
    #[arg(long, default_value = "demo")]
    out: PathBuf,
    /// Fixes the dataset, the sampling and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How much drug effects follow structure in the simulated dataset, in [0, 1]; at 0 the
    /// molecule says nothing about a drug's phenotype beyond its MoA.
    #[arg(long)]
    structure_coupling: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The three models in the order the report compares them, with their shipped recipes.
pub const MODELS: [(&str, &str); 3] = [
    ("single_frame", include_str!("../../../configs/single-frame.toml")),
    ("video_only", include_str!("../../../configs/video-only.toml")),
    ("molclip", include_str!("../../../configs/molclip.toml")),
];

/// A recipe for the demo: the shipped one, seeded; `--quick` shortens it.
fn recipe(text: &str, seed: u64, quick: bool) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::from_toml(text)?;
    cfg.seed = seed;
    if quick {
        cfg.data.frames.frames = cfg.data.frames.frames.min(8);
        (cfg.data.augment.resize, cfg.data.augment.crop) = (36, 32);
        cfg.model.video.i3d.width = 8;
        // The tiny dataset has 6 MoAs: a MoA-stage batch cannot hold 8.
        cfg.data.sampler.p = 4;
        for (stage, epochs) in cfg.stages.iter_mut().zip([3, 2]) {
            stage.epochs = epochs;
        }
    }
    Ok(cfg)
}

fn dataset_config(args: &DemoArgs) -> Result<SimConfig> {
    let mut c = SimConfig::preset(if args.quick { "tiny" } else { "demo" })?;
    c.seed = args.seed;
    if let Some(s) = args.structure_coupling {
        c.biology.structure_coupling = s;
    }
    Ok(c)
}

/// Simulates the dataset unless `dir` already holds this very one.
fn simulate(config: SimConfig, dir: &Path, quiet: bool) -> Result<()> {
    let recorded = dir.join("simulation.toml");
    if let Ok(existing) = SimConfig::from_toml_file(&recorded) {
        if existing == config && dir.join("annotation.csv").exists() {
            return Ok(());
        }
    }
    let plan = DatasetPlan::new(config, Path::new(".")).context("planning the simulation")?;
    let bar = progress::bar(plan.jobs.len() as u64, "simulating cells", quiet);
    mitosim::generate(&plan, dir, true, &|| bar.inc(1)).with_context(|| format!("writing {}", dir.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// Trains `cfg` into `run` unless it is there already, finished; resumes an interrupted one.
fn train(cfg: &TrainConfig, data: &Path, index: &DatasetIndex, run: &Path, device: &str, quiet: bool) -> Result<()> {
    let same_config = std::fs::read_to_string(run.join("run.toml")).ok().and_then(|t| TrainConfig::from_toml(&t).ok()).is_some_and(|c| &c == cfg);
    if same_config && run.join("model.safetensors").exists() {
        return Ok(());
    }
    let resume = same_config && last_checkpoint(run).join("state.json").exists();
    if !resume && run.exists() {
        std::fs::remove_dir_all(run).with_context(|| format!("clearing {}", run.display()))?;
    }
    run_training(cfg, data, index, run, device, resume, quiet, None)?;
    Ok(())
}

fn task_json(t: &molclip_report::TaskResult) -> serde_json::Value {
    json!({"mAP": t.map, "rank1": t.rank1, "rank5": t.rank5, "rank10": t.rank10})
}

pub fn demo(args: DemoArgs, quiet: bool) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let data = args.out.join("data");
    let sim = dataset_config(&args)?;
    let coupling = sim.biology.structure_coupling;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say(format!("demo: simulating {} (seed {}, structure coupling {coupling})", data.display(), args.seed));
    simulate(sim, &data, quiet)?;
    let index = open_dataset(&data, quiet)?;

    let mut runs = Vec::new();
    let mut models = serde_json::Map::new();
    for (name, text) in MODELS {
        let cfg = recipe(text, args.seed, args.quick).with_context(|| format!("the {name} recipe"))?;
        let run = args.out.join("runs").join(name.replace('_', "-"));
        say(format!("demo: training {name} into {}", run.display()));
        train(&cfg, &data, &index, &run, &args.device, quiet)?;
        let analysis = analyse_run(&run, &index, &args.device, quiet, args.seed)?;
        let r = analysis.result;
        let mut entry = json!({"drug": task_json(&r.drug), "moa": task_json(&r.moa)});
        if let Some(n) = &r.novel {
            entry["novel_video_vote"] = json!(n.video_vote);
        }
        if let Some(z) = &analysis.zero_shot {
            entry["zero_shot"] = serde_json::to_value(z)?;
        }
        if let Some(s) = r.train_seconds {
            entry["train_seconds"] = json!(s);
        }
        say(format!("demo: {name}: drug mAP {:.2}, MoA mAP {:.2}", r.drug.map, r.moa.map));
        models.insert(name.to_string(), entry);
        runs.push(r);
    }

    let counts = index.counts();
    let videos: usize = counts.iter().map(|c| c.cells).sum();
    let report = Report {
        title: format!("molclip demo{}", if args.quick { " (quick)" } else { "" }),
        summary: vec![
            format!(
                "Simulated dataset {}: {} MoAs, {} drugs, {} videos; seed {}, structure coupling {coupling}.",
                data.display(),
                moa_names(&index).len(),
                index.annotation.drugs.len(),
                videos,
                args.seed
            ),
            "Three models trained with the shipped recipes (configs/): one frame per video, the whole video, and the whole video aligned with the drug's molecule (MolCLIP).".into(),
        ],
        moas: moa_names(&index),
        runs,
        montage_png: molclip_data::montage::montage_png(&index).ok(),
    };
    let html = args.out.join("report.html");
    molclip_report::write(&report, &html)?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = json!({
        "models": models,
        "seconds": seconds,
        "seed": args.seed,
        "structure_coupling": coupling,
        "quick": args.quick,
    });
    write_atomic(&args.out.join("metrics.json"), &serde_json::to_string_pretty(&metrics)?)?;

    println!("{:<14} {:>9} {:>9} {:>9} {:>9}", "model", "drug mAP", "rank-1", "MoA mAP", "rank-1");
    for r in &report.runs {
        println!("{:<14} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", r.kind, r.drug.map, r.drug.rank1, r.moa.map, r.moa.rank1);
    }
    println!("{} and {} in {seconds:.0} s", html.display(), args.out.join("metrics.json").display());
    Ok(())
}
