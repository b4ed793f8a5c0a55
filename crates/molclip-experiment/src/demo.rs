//! The demo: simulate the demo dataset, train single-frame, video-only and MolCLIP with the
//! shipped recipes, evaluate all three and write the report and `metrics.json`. An
//! interrupted demo picks up where it stopped: the dataset and finished runs are kept, a run
//! with a checkpoint resumes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mitosim::{DatasetPlan, SimConfig};
use molclip::candle_core::Device;
use molclip::train::TrainConfig;
use molclip_core::IoError;
use molclip_data::DatasetIndex;
use molclip_report::Report;
use serde_json::json;

use crate::analysis::{analyse_run, moa_names};
use crate::embedding::open_dataset;
use crate::error::{ExperimentError, Result};
use crate::progress::Progress;
use crate::run_dir::RunDir;
use crate::training::Training;

/// The three models in the order the report compares them, with their shipped recipes.
pub const MODELS: [(&str, &str); 3] = [
    ("single_frame", include_str!("../../../configs/single-frame.toml")),
    ("video_only", include_str!("../../../configs/video-only.toml")),
    ("molclip", include_str!("../../../configs/molclip.toml")),
];

/// What the demo is asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The tiny dataset and a few epochs: a smoke test.
    pub quick: bool,
    /// Where the dataset, the runs, `metrics.json` and `report.html` go.
    pub out: PathBuf,
    /// Fixes the dataset, the sampling and the initialisation.
    pub seed: u64,
    /// The simulated dataset's structure coupling, when not the preset's.
    pub structure_coupling: Option<f64>,
}

/// What the demo wrote.
pub struct DemoOutcome {
    /// The report it wrote (`DIR/report.html`).
    pub report: Report,
    /// `DIR/report.html`.
    pub html: PathBuf,
    /// `DIR/metrics.json`.
    pub metrics: PathBuf,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A recipe for the demo: the shipped one, seeded; `quick` shortens it.
pub fn recipe(text: &str, seed: u64, quick: bool) -> Result<TrainConfig> {
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

fn dataset_config(options: &DemoOptions) -> Result<SimConfig> {
    let mut c = SimConfig::preset(if options.quick { "tiny" } else { "demo" })?;
    c.seed = options.seed;
    if let Some(s) = options.structure_coupling {
        c.biology.structure_coupling = s;
    }
    Ok(c)
}

/// Simulates the dataset unless `dir` already holds this very one.
fn simulate(config: SimConfig, dir: &Path, progress: &dyn Progress) -> Result<()> {
    if let Ok(existing) = SimConfig::from_toml_file(&dir.join("simulation.toml")) {
        if existing == config && dir.join("annotation.csv").exists() {
            return Ok(());
        }
    }
    let plan = DatasetPlan::new(config, Path::new("."))?;
    progress.start("simulating cells", plan.jobs.len() as u64);
    let written = mitosim::generate(&plan, dir, true, &|| progress.advance(1));
    progress.finish();
    written?;
    Ok(())
}

/// Trains `cfg` into `run` unless it is there already, finished; resumes an interrupted one.
fn train(
    cfg: &TrainConfig,
    data: &Path,
    index: &DatasetIndex,
    run: &RunDir,
    device: &Device,
    progress: &dyn Progress,
) -> Result<()> {
    let same_config = run.read_config().is_ok_and(|c| &c == cfg);
    if same_config && run.is_finished() {
        return Ok(());
    }
    let resume = same_config && run.has_checkpoint();
    if !resume && run.root().exists() {
        // Replaced only when molclip wrote it: a run folder (run.toml) or an empty one.
        let empty = std::fs::read_dir(run.root()).map_err(IoError::at(run.root()))?.next().is_none();
        if !empty && !run.config_path().exists() {
            return Err(ExperimentError::Input(format!(
                "{} holds files that are not a molclip run (no run.toml): the demo never replaces them; \
                 move them away or choose another --out",
                run.root().display()
            )));
        }
        std::fs::remove_dir_all(run.root()).map_err(IoError::at(run.root()))?;
    }
    // The dataset was just written by the simulator: its frames need no second reading.
    Training { cfg, data, index, run, device, resume, check_frames: false }.run(progress, &mut |_| true)?;
    Ok(())
}

fn task_json(t: &molclip_report::TaskResult) -> serde_json::Value {
    json!({"mAP": t.map, "rank1": t.rank1, "rank5": t.rank5, "rank10": t.rank10})
}

/// Runs the demo.
pub fn run_demo(options: &DemoOptions, device: &Device, progress: &dyn Progress) -> Result<DemoOutcome> {
    let start = Instant::now();
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(IoError::at(out))?;
    let _lock = molclip_core::OutputLock::acquire(&out.join(".lock"), out, "a demo there", false)?;
    let data = out.join("data");
    let sim = dataset_config(options)?;
    let coupling = sim.biology.structure_coupling;
    progress.note(&format!(
        "demo: simulating {} (seed {}, structure coupling {coupling})",
        data.display(),
        options.seed
    ));
    simulate(sim, &data, progress)?;
    let index = open_dataset(&data, progress)?;

    let mut runs = Vec::new();
    let mut models = serde_json::Map::new();
    for (name, text) in MODELS {
        let cfg = recipe(text, options.seed, options.quick)?;
        let run = RunDir::new(out.join("runs").join(name.replace('_', "-")));
        progress.note(&format!("demo: training {name} into {}", run.root().display()));
        train(&cfg, &data, &index, &run, device, progress)?;
        let analysis = analyse_run(&run, &index, device, options.seed, progress)?;
        let r = analysis.result;
        let mut entry = json!({"drug": task_json(&r.drug), "moa": task_json(&r.moa)});
        if let Some(n) = &r.novel {
            entry["novel_video_vote"] = json!(n.video_vote);
        }
        if let Some(z) = &analysis.zero_shot {
            entry["zero_shot"] = json!(z);
        }
        if let Some(s) = r.train_seconds {
            entry["train_seconds"] = json!(s);
        }
        progress.note(&format!("demo: {name}: drug mAP {:.2}, MoA mAP {:.2}", r.drug.map, r.moa.map));
        models.insert(name.to_string(), entry);
        runs.push(r);
    }

    let videos: usize = index.counts().iter().map(|c| c.cells).sum();
    let report = Report {
        title: format!("molclip demo{}", if options.quick { " (quick)" } else { "" }),
        summary: vec![
            format!(
                "Simulated dataset {}: {} MoAs, {} drugs, {} videos; seed {}, structure coupling {coupling}.",
                data.display(),
                moa_names(&index).len(),
                index.annotation.drugs.len(),
                videos,
                options.seed
            ),
            "Three models trained with the shipped recipes (configs/): one frame per video, the whole video, and the whole video aligned with the drug's molecule (MolCLIP).".into(),
        ],
        moas: moa_names(&index),
        runs,
        montage_png: molclip_data::montage::montage_png(&index).ok(),
    };
    let html = out.join("report.html");
    molclip_report::write(&report, &html)?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = json!({
        "models": models,
        "seconds": seconds,
        "seed": options.seed,
        "structure_coupling": coupling,
        "quick": options.quick,
    });
    let metrics_path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&metrics).map_err(|e| ExperimentError::Input(e.to_string()))?;
    molclip_core::write_atomic(&metrics_path, text.as_bytes())?;
    Ok(DemoOutcome { report, html, metrics: metrics_path, seconds })
}
