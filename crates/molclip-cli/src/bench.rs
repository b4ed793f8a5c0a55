//! `molclip bench`: speed tables. Every ratio compares against a reference
//! measured in the same run on the same machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rayon::prelude::*;

use mitosim::{DatasetPlan, SimConfig};
use molclip_chem::{featurize_smiles, FeaturizeOptions, FragmentPolicy};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Simulator throughput (frames per second) per preset, rendering only and written to disk.
    Simulate {
        /// Presets to measure.
        #[arg(long, value_delimiter = ',', default_value = "tiny,demo,bench,mito")]
        presets: Vec<String>,
        /// At most this many cells per preset (the full-size time is projected).
        #[arg(long, default_value_t = 600)]
        cells: usize,
        /// The drug table the bench and mito presets are simulated from (columns name, moa,
        /// smiles), as `simulate --drugs`; default ../shared/data/launched_drugs.tsv.
        #[arg(long)]
        drugs: Option<PathBuf>,
    },
    /// ReID evaluation on random clustered embeddings, against a NumPy full-sort reference.
    Evaluate {
        /// Query (= gallery) sizes; the NumPy reference runs only up to --reference-max.
        #[arg(long, value_delimiter = ',', default_value = "5000,20000,35600")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 512)]
        dim: usize,
        /// Largest size the NumPy reference is run at (it holds the full N x N matrix).
        #[arg(long, default_value_t = 20000)]
        reference_max: usize,
        #[arg(long, default_value = "benches/eval_reference.py")]
        script: PathBuf,
    },
    /// Decoding and augmenting videos of the bench preset (112 x 112), against PIL + NumPy.
    Data {
        /// Videos to read.
        #[arg(long, default_value_t = 300)]
        videos: usize,
        /// A training config whose `[data]` section (frames, augmentation, normalisation) both
        /// sides apply, e.g. configs/mitoreid.toml; default: the defaults of `[data]`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The drug table the bench preset is simulated from (columns name, moa, smiles), as
        /// `simulate --drugs`; default ../shared/data/launched_drugs.tsv.
        #[arg(long)]
        drugs: Option<PathBuf>,
        #[arg(long, default_value = "benches/data_reference.py")]
        script: PathBuf,
    },
    /// One training step (forward, backward, AdamW) of the video models at 8 x 16 x 1 x 112 x 112,
    /// against the same models in PyTorch eager, same thread count.
    Model {
        /// Models to measure.
        #[arg(long, value_delimiter = ',', default_value = "frame-vit,i3d-resnet18")]
        models: Vec<String>,
        #[command(flatten)]
        shape: StepShape,
        /// Timed steps per round (each side's median step), after one warm-up step.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Rounds of PyTorch then molclip, each side a process of its own per round: the
        /// ratio is the median of the rounds' ratios, so that a machine whose speed drifts
        /// slows both sides alike.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// `cpu`, or `cuda[:N]` (a build with `--features cuda`); PyTorch runs on the same device.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The step's arithmetic, as `[train] precision`: `f32`, `tf32` (CUDA) or `bf16`
        /// (autocast). PyTorch runs the same: f32 with its defaults (cuDNN may use TF32, matrix
        /// products do not), tf32 with TF32 products too, bf16 under `torch.autocast`.
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_reference: bool,
        #[arg(long, default_value = "benches/model_reference.py")]
        script: PathBuf,
    },
    /// One epoch of training end to end (reading and augmenting the videos, forward, backward,
    /// update) with a config, against PyTorch training the same network with a DataLoader
    /// over the same files: seconds, videos per second, and the share of the step spent
    /// waiting for data.
    Train {
        /// The dataset; without it, the `bench` preset (3,900 cells, 112 x 112) is simulated
        /// into a temporary folder first.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Without --data: the drug table the bench preset is simulated from (columns name,
        /// moa, smiles), as `simulate --drugs`; default ../shared/data/launched_drugs.tsv.
        #[arg(long, conflicts_with = "data")]
        drugs: Option<PathBuf>,
        /// The recipe (video-only configs; MitoReID's by default).
        #[arg(long, default_value = "configs/mitoreid.toml")]
        config: PathBuf,
        /// Time only the first N steps of the first stage's first epoch (the epoch's time is
        /// projected from them).
        #[arg(long)]
        steps: Option<usize>,
        /// `cpu`, or `cuda[:N]` (a build with `--features cuda`); PyTorch runs on the same device.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Override a config field by its dotted path, as `train --set` does (`--set
        /// precision=tf32`: the reference then runs as `bench model --precision` runs it);
        /// repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_reference: bool,
        #[arg(long, default_value = "benches/train_reference.py")]
        script: PathBuf,
    },
    /// (internal) time training steps of one model in this process; print JSON.
    #[command(hide = true)]
    ModelOnce {
        #[arg(long)]
        model: String,
        #[command(flatten)]
        shape: StepShape,
        #[arg(long)]
        steps: usize,
        #[arg(long)]
        device: String,
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// The same training forward and backward pass on the CPU and on `--device`: the largest
    /// relative difference of the features, the weight gradients and batch norm's running
    /// statistics, per model; then one AdamW update, a gradient norm, the feed's staging and
    /// a tensor shared between threads.
    DeviceCheck {
        #[arg(long, default_value = "cuda")]
        device: String,
    },
    /// Peak memory of one epoch's reading of a dataset's training split as `train` reads it
    /// (the config's [data] section: decode, resize, the cache filled up to cache_mb,
    /// augmentation, batches of --batch ahead of the trainer), without the model.
    Cache {
        /// The dataset (the `mito` preset stands in for the published data's 35.6k videos).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "configs/mitoreid.toml")]
        config: PathBuf,
        /// Videos per batch (MitoReID: P x K = 128).
        #[arg(long, default_value_t = 128)]
        batch: usize,
    },
    /// (internal) evaluate once in this process and print seconds and peak memory.
    #[command(hide = true)]
    EvaluateOnce { embeddings: PathBuf, metadata: PathBuf },
    /// Segmenting and tracking simulated raw fields (the tiny preset's drugs, one replicate,
    /// the default raw field of 512 x 512 x 16 frames) against ground truth: detection F1,
    /// SEG, tracks recovered whole, fields per second; scikit-image doing the same in the
    /// same run, with as many processes as molclip has threads.
    Extract {
        /// A config for both (only molclip reads it; the reference has the defaults built in).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Field side in pixels.
        #[arg(long, default_value_t = 512)]
        field_size: usize,
        /// Skip the scikit-image reference.
        #[arg(long)]
        no_reference: bool,
        #[arg(long, default_value = "benches/extract_reference.py")]
        script: PathBuf,
    },
    /// Featurizing the 1,000 oracle drugs, against RDKit in Python doing the same.
    Chem {
        #[arg(long, default_value = "../shared/chem/rdkit_oracle.jsonl")]
        oracle: PathBuf,
        /// The Python reference script.
        #[arg(long, default_value = "benches/chem_rdkit.py")]
        script: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

pub fn run(cmd: BenchCommand, quiet: bool) -> Result<()> {
    // Every table says which CPU it was measured on, and what molclip's kernels used there.
    if !matches!(cmd, BenchCommand::ModelOnce { .. } | BenchCommand::EvaluateOnce { .. }) {
        println!("CPU: {}", molclip_cpu::describe());
    }
    // The reference scripts: the repository's, or the binary's own copies outside it.
    let mut references = crate::references::References::default();
    match cmd {
        BenchCommand::Simulate { presets, cells, drugs } => bench_simulate(&presets, cells, drugs.as_deref()),
        BenchCommand::Evaluate { sizes, dim, reference_max, script } => {
            bench_evaluate(&sizes, dim, reference_max, &references.resolve(&script)?)
        }
        BenchCommand::Data { videos, config, drugs, script } => {
            bench_data(videos, config.as_deref(), drugs.as_deref(), &references.resolve(&script)?)
        }
        BenchCommand::Cache { data, config, batch } => bench_cache(&data, &config, batch),
        BenchCommand::EvaluateOnce { embeddings, metadata } => evaluate_once(&embeddings, &metadata),
        BenchCommand::Model { models, shape, steps, rounds, device, precision, no_reference, script } => {
            let script = references.unless(no_reference, &script)?;
            bench_model(&models, &shape, [steps, rounds], [&device, &precision], script.as_deref())
        }
        BenchCommand::ModelOnce { model, shape, steps, device, precision } => {
            model_once(&model, &shape, steps, &device, &precision)
        }
        BenchCommand::DeviceCheck { device } => device_check(&device),
        BenchCommand::Train { data, drugs, config, steps, device, sets, no_reference, script } => {
            let script = references.unless(no_reference, &script)?;
            // Without --data, the bench preset, simulated into a folder that lives for the run.
            let mut simulated = None;
            let data = match data {
                Some(data) => data,
                None => simulate_bench_preset(simulated.insert(tempfile::tempdir()?).path(), drugs.as_deref(), quiet)?,
            };
            bench_train(&data, &config, &sets, steps, &device, script.as_deref(), quiet)
        }
        BenchCommand::Chem { oracle, script, repeats } => bench_chem(&oracle, &references.resolve(&script)?, repeats),
        BenchCommand::Extract { config, field_size, no_reference, script } => {
            bench_extract(config.as_deref(), field_size, references.unless(no_reference, &script)?.as_deref())
        }
    }
}

/// The preset `name`, simulated from the drug table `drugs` where one is given (as `simulate
/// --preset NAME --drugs FILE`).
fn preset(name: &str, drugs: Option<&Path>) -> Result<SimConfig> {
    let mut config = SimConfig::preset(name)?;
    if let Some(drugs) = drugs {
        config.library.table = Some(drugs.to_path_buf());
    }
    Ok(config)
}

fn bench_simulate(presets: &[String], max_cells: usize, drugs: Option<&Path>) -> Result<()> {
    println!(
        "simulator throughput on {} threads (frames of the preset's size, 16 per cell)",
        rayon::current_num_threads()
    );
    println!(
        "{:<7} {:>5} {:>8} {:>8} {:>12} {:>12} {:>14}",
        "preset", "size", "cells", "total", "render f/s", "write f/s", "full dataset"
    );
    for name in presets {
        let config = preset(name, drugs)?;
        let mut plan = match DatasetPlan::new(config, Path::new(".")) {
            Ok(p) => p,
            Err(e) => {
                println!("{name:<7} skipped: {e}");
                continue;
            }
        };
        let total_cells = plan.jobs.len();
        // A spread-out sample of the full plan, so every MoA and replicate is represented.
        let step = (total_cells / max_cells.max(1)).max(1);
        plan.jobs = plan.jobs.iter().step_by(step).take(max_cells).cloned().collect();
        let frames = plan.frames();
        let start = Instant::now();
        plan.jobs.par_iter().for_each(|j| {
            std::hint::black_box(mitosim::render_cell_video(&plan, j));
        });
        let render = start.elapsed().as_secs_f64();
        let dir = std::env::temp_dir().join(format!("molclip-bench-sim-{}-{name}", std::process::id()));
        let report = mitosim::generate(&plan, &dir, true, &|| {})?;
        std::fs::remove_dir_all(&dir).ok();
        let write_fps = frames as f64 / report.seconds;
        let full = total_cells as f64 * plan.config.layout.frames as f64 / write_fps;
        println!(
            "{:<7} {:>5} {:>8} {:>8} {:>12.0} {:>12.0} {:>12.1} s",
            name,
            plan.config.layout.size,
            plan.jobs.len(),
            total_cells,
            frames as f64 / render,
            write_fps,
            full
        );
    }
    Ok(())
}

/// Run a Python reference that prints one number; `None` (with the reason
/// on stderr) when it cannot run.
fn python_number(cmd: &mut Command) -> Option<f64> {
    match cmd.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok(),
        Ok(o) => {
            eprintln!("Python reference failed: {}", String::from_utf8_lossy(&o.stderr).trim());
            None
        }
        Err(e) => {
            eprintln!("Python reference not run (python3: {e})");
            None
        }
    }
}

fn bench_chem(oracle: &Path, script: &Path, repeats: usize) -> Result<()> {
    let text = std::fs::read_to_string(oracle).with_context(|| format!("reading {}", oracle.display()))?;
    let smiles: Vec<String> = text
        .lines()
        .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?["smiles"].as_str().unwrap_or("").to_string()))
        .collect::<Result<_>>()?;
    let options = FeaturizeOptions { fragments: FragmentPolicy::Whole, ..Default::default() };
    let time = |parallel: bool| -> f64 {
        (0..repeats.max(1))
            .map(|_| {
                let start = Instant::now();
                let ok = if parallel {
                    smiles.par_iter().filter(|s| !featurize_smiles("", s, &options).is_err()).count()
                } else {
                    smiles.iter().filter(|s| !featurize_smiles("", s, &options).is_err()).count()
                };
                assert_eq!(ok, smiles.len());
                start.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let serial = time(false);
    let parallel = time(true);
    println!("featurizing {} drugs (parse, sanitise, canonical SMILES, atom/bond features, Morgan r2/2048); best of {repeats}", smiles.len());
    println!("{:<34} {:>10} {:>12} {:>10}", "implementation", "seconds", "mol/s", "vs RDKit");
    let rdkit = python_number(python_reference().arg(script).arg(oracle).arg(repeats.to_string()));
    let n = smiles.len() as f64;
    let ratio = |s: f64| rdkit.map_or("-".to_string(), |r| format!("{:.2}x", r / s));
    if let Some(r) = rdkit {
        println!("{:<34} {:>10.3} {:>12.0} {:>10}", "RDKit (Python, 1 thread)", r, n / r, "1.00x");
    }
    println!("{:<34} {:>10.3} {:>12.0} {:>10}", "molclip-chem (1 thread)", serial, n / serial, ratio(serial));
    println!(
        "{:<34} {:>10.3} {:>12.0} {:>10}",
        format!("molclip-chem ({} threads)", rayon::current_num_threads()),
        parallel,
        n / parallel,
        ratio(parallel)
    );
    if rdkit.is_none() {
        bail!("no RDKit reference time: install it with `pip install rdkit`");
    }
    Ok(())
}

/// Peak resident memory of this process, MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn evaluate_once(embeddings: &Path, metadata: &Path) -> Result<()> {
    let start = Instant::now();
    let features = molclip_eval::npy::read_npy(embeddings)?;
    let set = molclip_eval::EmbeddingSet::from_files(&features, metadata)?;
    drop(features);
    let (e, profile) = molclip_eval::evaluate_profiled(
        &set.query.0,
        &set.query.1,
        &set.gallery.0,
        &set.gallery.1,
        molclip_eval::DEFAULT_MAX_RANK,
    )?;
    println!(
        "{}",
        serde_json::json!({"seconds": start.elapsed().as_secs_f64(), "peak_rss_mib": peak_rss_mib(), "drug": e.drug,
                           "moa": e.moa, "isa": molclip_cpu::isa().name(), "products_seconds": profile.products,
                           "ranking_seconds": profile.ranking})
    );
    Ok(())
}

/// A Python reference's command, with the libraries it runs on held to the instruction set
/// molclip's kernels use (`MOLCLIP_CPU`), so that a capped run measures both sides on the
/// same ISA: ATen's own kernels (`ATEN_CPU_CAPABILITY`), oneDNN, which runs PyTorch's
/// convolutions and ignores ATen's cap (`ONEDNN_MAX_CPU_ISA`), MKL (`MKL_ENABLE_INSTRUCTIONS`),
/// NumPy's OpenBLAS (`OPENBLAS_CORETYPE`) and NumPy's own dispatch, its sorts included
/// (`NPY_DISABLE_CPU_FEATURES`). Nothing is set at the CPU's own level, nor a variable the user
/// set; the reference scripts report what their libraries picked.
fn python_reference() -> Command {
    let mut cmd = Command::new("python3");
    let caps: &[(&str, &str)] = match molclip_cpu::isa() {
        isa if isa == molclip_cpu::Isa::detected() || !cfg!(target_arch = "x86_64") => &[],
        molclip_cpu::Isa::Avx2 => &[
            ("ATEN_CPU_CAPABILITY", "avx2"),
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
            ("OPENBLAS_CORETYPE", "Haswell"),
            ("NPY_DISABLE_CPU_FEATURES", NUMPY_AVX512),
        ],
        _ => &[
            ("ATEN_CPU_CAPABILITY", "default"),
            ("ONEDNN_MAX_CPU_ISA", "SSE41"),
            ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"),
            ("OPENBLAS_CORETYPE", "Nehalem"),
            ("NPY_DISABLE_CPU_FEATURES", NUMPY_AVX),
        ],
    };
    for (var, value) in caps {
        if std::env::var_os(var).is_none() {
            cmd.env(var, value);
        }
    }
    cmd
}

/// NumPy's AVX-512 dispatch targets, under the names of NumPy 1.x and 2.x (each ignores the
/// other's).
const NUMPY_AVX512: &str =
    "X86_V4 AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR";
/// NumPy's AVX and AVX-512 dispatch targets.
const NUMPY_AVX: &str = "X86_V3 X86_V4 AVX AVX2 FMA3 F16C AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR";

fn run_json(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn bench_evaluate(sizes: &[usize], dim: usize, reference_max: usize, script: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    println!("ReID evaluation, N queries x N gallery, {dim}-d, both tasks; separate processes, times include reading the files");
    println!(
        "{:>6} {:<36} {:>9} {:>22} {:>10} {:>9} {:>10} {:>14}",
        "N",
        "implementation (ISA)",
        "seconds",
        "products/ranking",
        "peak MiB",
        "speed-up",
        "mAP drug",
        "max |diff mAP|"
    );
    for &n in sizes {
        let (features, rows) = molclip_eval::synthetic::clustered_embeddings(n, dim, 7);
        let (e, m) = (dir.path().join(format!("e{n}.npy")), dir.path().join(format!("m{n}.csv")));
        molclip_eval::npy::write_npy_f32(&e, rows.len(), dim, &features)?;
        std::fs::write(&m, molclip_eval::synthetic::metadata_csv(&rows))?;
        drop(features);
        let ours = run_json(Command::new(&exe).args(["bench", "evaluate-once"]).arg(&e).arg(&m))?;
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let reference =
            if n <= reference_max { Some(run_json(python_reference().arg(script).arg(&e).arg(&m))?) } else { None };
        if let Some(r) = &reference {
            println!(
                "{:>6} {:<36} {:>9.2} {:>22} {:>10.0} {:>9} {:>10.4} {:>14}",
                n,
                format!("NumPy full sort ({})", r["isa"].as_str().unwrap_or("?")),
                num(r, "seconds"),
                "",
                num(r, "peak_rss_mib"),
                "1.00x",
                num(&r["drug"], "mAP"),
                ""
            );
        }
        let diff = reference.as_ref().map_or("-".to_string(), |r| {
            let d =
                ["drug", "moa"].iter().map(|t| (num(&ours[t], "mAP") - num(&r[t], "mAP")).abs()).fold(0.0, f64::max);
            format!("{d:.1e}")
        });
        let speedup = reference
            .as_ref()
            .map_or("-".to_string(), |r| format!("{:.1}x", num(r, "seconds") / num(&ours, "seconds")));
        // The products' rate: 2 n² dim floating-point operations.
        let gflops = 2.0 * (n * n * dim) as f64 / num(&ours, "products_seconds") / 1e9;
        println!(
            "{:>6} {:<36} {:>9.2} {:>22} {:>10.0} {:>9} {:>10.4} {:>14}",
            n,
            format!("molclip-eval ({})", ours["isa"].as_str().unwrap_or("?")),
            num(&ours, "seconds"),
            format!("{:.1}/{:.1} ({gflops:.0} GF/s)", num(&ours, "products_seconds"), num(&ours, "ranking_seconds")),
            num(&ours, "peak_rss_mib"),
            speedup,
            num(&ours["drug"], "mAP"),
            diff
        );
        std::fs::remove_file(&e).ok();
    }
    Ok(())
}

fn bench_data(videos: usize, config: Option<&Path>, drugs: Option<&Path>, script: &Path) -> Result<()> {
    use molclip_data::loader::{DataConfig, Mode, VideoDataset};
    let data = match config {
        Some(path) => crate::read_train_config(path)?.data,
        None => DataConfig::default(),
    };
    // Every video decoded and augmented each time, as without a cache.
    let data = DataConfig { cache: false, ..data };
    // A slice of the bench preset: every MoA, two drugs each, 112 x 112.
    let mut sim = preset("bench", drugs)?;
    sim.library.drugs_per_moa = 2;
    sim.layout.train_cells = 4;
    (sim.layout.query_cells, sim.layout.gallery_cells) = (1, 1);
    let plan = DatasetPlan::new(sim, Path::new("."))?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("bench");
    mitosim::generate(&plan, &root, false, &|| {})?;
    let index = molclip_data::DatasetIndex::scan(&root)?;
    let cells: Vec<_> = index.split(molclip_data::Split::Train).take(videos).cloned().collect();
    let n = cells.len();
    let job = dir.path().join("job.json");
    let folders: Vec<_> = cells.iter().map(|c| c.dir.clone()).collect();
    std::fs::write(&job, serde_json::to_vec(&serde_json::json!({"data": &data, "folders": folders}))?)?;
    let ds = VideoDataset::new(cells, data.clone())?;
    let frames = (data.frames.frames * n) as f64;
    let time_with = |threads: usize| -> Result<f64> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let start = Instant::now();
        pool.install(|| -> Result<()> {
            for batch in molclip_data::sampler::sequential_batches(n, 16) {
                std::hint::black_box(ds.batch(&batch, Mode::Train { seed: 0, epoch: 0 })?);
            }
            Ok(())
        })?;
        Ok(frames / start.elapsed().as_secs_f64())
    };
    // Warm the page cache once, so both sides read from memory.
    time_with(rayon::current_num_threads())?;
    let one = time_with(1)?;
    let all = time_with(rayon::current_num_threads())?;
    let reference = python_number(python_reference().arg(script).arg(&job));
    let a = &data.augment;
    let on = |rate: f32| if rate >= 1.0 { "all".to_string() } else { format!("{:.0} %", rate * 100.0) };
    let rotation = if a.max_rotation > 0.0 {
        let (low, high) = a.rotation_range();
        format!(
            "rotate {} from {low} to {high} deg{} ({} fill)",
            on(a.rotation_rate),
            if a.whole_degrees { " whole" } else { "" },
            serde_json::to_value(a.rotation_fill)?.as_str().unwrap_or("?")
        )
    } else {
        "no rotation".to_string()
    };
    let rescale = if a.rescale > 0.0 {
        format!(
            ", rescale {} by {}-{} {}",
            on(a.rescale_rate),
            1.0 - a.rescale,
            1.0 + a.rescale,
            serde_json::to_value(a.rescale_filter)?.as_str().unwrap_or("?")
        )
    } else {
        String::new()
    };
    let blur = if a.blur_rate > 0.0 { format!(", blur {} of frames", on(a.blur_rate)) } else { String::new() };
    println!(
        "decode + augment with {} (resize {}, {rotation}{rescale}, flips, crop {}{blur}, jitter, normalise), \
         {n} videos x {} frames ({} channel(s)) of 112 x 112 PNG",
        config.map_or("the [data] defaults".to_string(), |p| p.display().to_string()),
        a.resize,
        a.crop,
        data.frames.frames,
        data.frames.channels.count(),
    );
    println!("{:<34} {:>12} {:>16}", "implementation", "frames/s", "vs Python/core");
    let ratio = |fps: f64, cores: f64| reference.map_or("-".into(), |r| format!("{:.1}x", fps / cores / r));
    if let Some(r) = reference {
        println!("{:<34} {:>12.0} {:>16}", "PIL + NumPy (1 process)", r, "1.0x");
    }
    println!("{:<34} {:>12.0} {:>16}", "molclip-data (1 thread)", one, ratio(one, 1.0));
    let threads = rayon::current_num_threads();
    println!("{:<34} {:>12.0} {:>16}", format!("molclip-data ({threads} threads)"), all, ratio(all, threads as f64));
    Ok(())
}

fn bench_cache(data: &Path, config: &Path, batch: usize) -> Result<()> {
    use molclip_data::loader::{Loader, Mode, VideoDataset};
    let cfg = crate::read_train_config(config)?;
    let index = molclip_data::DatasetIndex::open(data)?;
    let cells: Vec<_> = index.split(molclip_data::Split::Train).cloned().collect();
    let n = cells.len();
    anyhow::ensure!(n > 0, "{}: the training split is empty", data.display());
    let before = peak_rss_mib();
    let ds = std::sync::Arc::new(VideoDataset::new(cells, cfg.data.clone())?);
    let start = Instant::now();
    let batches = molclip_data::sampler::sequential_batches(n, batch.max(1));
    for b in Loader::start(ds.clone(), batches, Mode::Train { seed: 0, epoch: 0 }) {
        std::hint::black_box(b?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let d = &cfg.data;
    println!(
        "one epoch's reading of {} ({n} training videos) with {}: {} frames, {} channel(s), resize {}, \
         cache {} (budget {} MiB), batches of {batch}, prefetch {}",
        data.display(),
        config.display(),
        d.frames.frames,
        d.frames.channels.count(),
        d.augment.resize,
        d.cache,
        d.cache_mb,
        d.prefetch
    );
    println!("{:<36} {:>12}", "videos read", n);
    println!("{:<36} {:>12.0}", "cache held (MiB)", ds.cached_bytes() as f64 / (1 << 20) as f64);
    println!("{:<36} {:>12.0}", "peak resident memory (MiB)", peak_rss_mib());
    println!("{:<36} {:>12.0}", "  of which before reading (MiB)", before);
    println!("{:<36} {:>12.1}", "seconds", seconds);
    println!("{:<36} {:>12}", "threads", rayon::current_num_threads());
    Ok(())
}

/// The videos of `bench model`'s step and the I3Ds' blocks, as both sides take them.
#[derive(Args, Clone, Debug)]
pub struct StepShape {
    /// Videos per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Image channels (3: RGB frames, as the published MitoDataset's).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    #[arg(long, default_value_t = 112)]
    size: usize,
    /// The I3Ds' blocks, as `[model.video.i3d] blocks`.
    #[arg(long, value_enum, default_value_t = Blocks::Inflated)]
    blocks: Blocks,
}

/// `[model.video.i3d] blocks` on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// A 5 x 7 x 7 stem, temporal convolutions first in each block.
    Inflated,
    /// kenshohara's 3D ResNet, MitoReID's network: a 7 x 7 x 7 stem, 3 x 3 x 3 convolutions
    /// in the blocks.
    R3d,
}

impl Blocks {
    /// The name on the command line (`inflated`, `r3d`), as the PyTorch reference takes it:
    /// clap's, derived from the variant.
    fn name(self) -> String {
        self.to_possible_value().expect("every variant is a value").get_name().to_string()
    }
}

impl From<Blocks> for molclip::models::BlockStyle {
    fn from(blocks: Blocks) -> Self {
        match blocks {
            Blocks::Inflated => Self::Inflated,
            Blocks::R3d => Self::R3d,
        }
    }
}

impl StepShape {
    /// The arguments that give `bench model-once` and the PyTorch reference this shape.
    fn args(&self) -> Vec<String> {
        [
            ("--batch", self.batch.to_string()),
            ("--frames", self.frames.to_string()),
            ("--channels", self.channels.to_string()),
            ("--size", self.size.to_string()),
            ("--blocks", self.blocks.name()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }

    /// A batch of videos of this shape on `device`, the same values every time (from -1 to 1).
    fn videos(&self, device: &molclip::candle_core::Device) -> Result<molclip::candle_core::Tensor> {
        let dims = (self.batch, self.frames, self.channels, self.size, self.size);
        let n = dims.0 * dims.1 * dims.2 * dims.3 * dims.4;
        let x: Vec<f32> = (0..n).map(|i| ((i as u64).wrapping_mul(2654435761) % 1000) as f32 / 500.0 - 1.0).collect();
        Ok(molclip::candle_core::Tensor::from_vec(x, dims, device)?)
    }

    /// `model`'s config at this shape.
    fn video_config(&self, model: &str) -> Result<molclip::models::VideoConfig> {
        use molclip::models::{FrameVitConfig, I3dConfig, VideoConfig, VideoEncoderKind};
        let encoder = match model {
            "frame-vit" => VideoEncoderKind::FrameVit,
            "i3d-resnet18" => VideoEncoderKind::I3dResnet18,
            "i3d-resnet50" => VideoEncoderKind::I3dResnet50,
            other => bail!("unknown model `{other}` (frame-vit, i3d-resnet18, i3d-resnet50)"),
        };
        if self.channels == 0 {
            bail!("--channels must be at least 1");
        }
        let (frames, size, in_channels) = (self.frames, self.size, self.channels);
        let vit =
            FrameVitConfig { image_size: size, max_frames: frames.max(32), in_channels, ..FrameVitConfig::default() };
        let i3d = I3dConfig { in_channels, blocks: self.blocks.into(), ..I3dConfig::default() };
        Ok(VideoConfig { encoder, vit, i3d, ..VideoConfig::default() })
    }
}

/// Times `steps` training steps after one warm-up: CE (label smoothing 0.1) on a 4-drug
/// classifier plus batch-hard triplet, then AdamW; prints the median and the peak memory.
fn model_once(model: &str, shape: &StepShape, steps: usize, device: &str, precision: &str) -> Result<()> {
    use molclip::losses::{batch_hard_triplet, cross_entropy};
    use molclip::nn::ParamStore;
    use molclip::optim::{Optimizer, OptimizerConfig};
    use molclip::train::Precision;
    let device = molclip::parse_device(device)?;
    let precision = bench_precision(precision, device.is_cuda())?;
    if device.is_cuda() {
        molclip::candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
    }
    let store = ParamStore::new(0, &device);
    let net = molclip::models::VideoModel::new(&store.root(), &shape.video_config(model)?, 4, 0)?;
    let mut opt = Optimizer::new(store.trainable(), &OptimizerConfig::default())?;
    let x = shape.videos(&device)?;
    let labels: Vec<u32> = (0..shape.batch as u32).map(|i| i / 2 % 4).collect();
    let mut times = Vec::new();
    let (mut loss_value, mut forward_flops) = (0f32, 0);
    // The timed steps, then as many again split into forward (with the loss), backward and
    // update by a synchronisation after each (which the timed steps do without).
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for step in 0..2 * steps + 1 {
        let split = step > steps;
        let mut marks = vec![Instant::now()];
        let mark = |marks: &mut Vec<Instant>| -> Result<()> {
            if split {
                device.synchronize()?;
                marks.push(Instant::now());
            }
            Ok(())
        };
        let (loss, flops) = molclip::nn::flops::count_flops(|| -> Result<_> {
            let _autocast = molclip::nn::autocast(precision.autocast());
            let out = net.forward_t(&x, true)?;
            let logits = out.drug_logits.as_ref().context("no classifier")?;
            Ok((cross_entropy(logits, &labels, 0.1)? + batch_hard_triplet(&out.feature, &labels, 0.3)?)?)
        });
        let loss = loss?;
        forward_flops = flops;
        mark(&mut marks)?;
        let grads = loss.backward()?;
        mark(&mut marks)?;
        opt.step(&grads, 3e-4)?;
        loss_value = loss.to_scalar::<f32>()?;
        device.synchronize()?;
        let end = Instant::now();
        if split {
            marks.push(end);
            for (p, w) in phases.iter_mut().zip(marks.windows(2)) {
                p.push((w[1] - w[0]).as_secs_f64() * 1000.0);
            }
        } else if step > 0 {
            times.push((end - marks[0]).as_secs_f64() * 1000.0);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [forward, backward, update] = phases.map(median);
    // The peak the step's arithmetic is a share of: a GPU's dense peak for its precision (FMA
    // units in float32, tensor cores else), or the CPU threads' FMA peak at the ISA used
    // (bf16 runs float32 products there), measured.
    let peak = match molclip::nn::flops::Peak::of(&device) {
        Some(p) => {
            let (rate, units) = match precision {
                Precision::F32 => (p.f32, "FP32"),
                Precision::Tf32 => (p.tf32, "TF32"),
                Precision::Bf16 => (p.bf16, "bf16"),
            };
            let what = format!("{}'s dense {units} peak ({} SMs at {} MHz)", p.name, p.sms, p.clock_mhz);
            Some((what, rate))
        }
        None if device.is_cpu() => molclip_cpu::fma_peak(molclip_cpu::isa()).map(|rate| {
            let what =
                format!("{} threads' {} FMA peak, measured", rayon::current_num_threads(), molclip_cpu::isa().name());
            (what, rate)
        }),
        None => None,
    }
    .map(|(what, rate)| serde_json::json!({"what": what, "tflops": rate / 1e12}));
    println!(
        "{}",
        serde_json::json!({"median_ms": median(times), "peak_rss_mib": peak_rss_mib(), "loss": loss_value,
                           "params": store.num_trainable(), "isa": molclip_cpu::isa().name(),
                           "forward_ms": forward, "backward_ms": backward, "update_ms": update,
                           "forward_flops": forward_flops, "peak": peak})
    );
    Ok(())
}

/// How a CUDA run's cuDNN convolutions pick their algorithms, for a table's header: measured
/// where the config asks (`configured`) or `MOLCLIP_CUDNN_BENCHMARK=1` is set, for both sides
/// (the PyTorch references set `cudnn.benchmark` alike), heuristic otherwise.
fn cudnn_algorithms(device: &str, configured: bool) -> &'static str {
    match device.starts_with("cuda") {
        false => "",
        true if configured || molclip::nn::cudnn_benchmark() => " (cuDNN algorithms measured, both sides)",
        true => " (cuDNN algorithms from its heuristics, both sides)",
    }
}

/// `--precision` of `bench model`: f32, bf16, or tf32 on a CUDA device.
fn bench_precision(precision: &str, cuda: bool) -> Result<molclip::train::Precision> {
    use molclip::train::Precision;
    Ok(match precision {
        "f32" => Precision::F32,
        "tf32" if cuda => Precision::Tf32,
        "tf32" => bail!("--precision tf32: a mode of CUDA's tensor cores, for --device cuda"),
        "bf16" => Precision::Bf16,
        other => bail!("--precision {other}: expected f32, tf32 or bf16"),
    })
}

/// One model's step time in PyTorch (`benches/model_reference.py`), or `None` with a note
/// when it cannot run.
fn torch_reference(
    script: &Path,
    model: &str,
    shape: &StepShape,
    steps: usize,
    threads: usize,
    [device, precision]: [&str; 2],
) -> Option<serde_json::Value> {
    let mut cmd = python_reference();
    cmd.arg(script).args(["--model", model]).args(shape.args());
    cmd.args([
        "--steps",
        &steps.to_string(),
        "--threads",
        &threads.to_string(),
        "--device",
        device,
        "--precision",
        precision,
    ]);
    run_json(&mut cmd).map_err(|e| eprintln!("PyTorch reference not run: {e:#}")).ok()
}

/// "1 step", "3 steps".
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn bench_model(
    models: &[String],
    shape: &StepShape,
    [steps, rounds]: [usize; 2],
    [device, precision]: [&str; 2],
    script: Option<&Path>,
) -> Result<()> {
    let StepShape { batch, frames, channels, size, .. } = *shape;
    let blocks = match shape.blocks {
        Blocks::Inflated => String::new(),
        r3d => format!(", {} blocks", r3d.name()),
    };
    if batch < 4 {
        bail!("--batch {batch}: needs at least 4 videos (two drugs, two videos each) for the triplet loss");
    }
    if steps == 0 || rounds == 0 {
        bail!("--steps and --rounds must be at least 1");
    }
    bench_precision(precision, device.starts_with("cuda"))?;
    let exe = std::env::current_exe()?;
    let threads = rayon::current_num_threads();
    println!(
        "training step (forward + backward + AdamW), {batch} x {frames} x {channels} x {size} x {size}{blocks}, {device}{}, {precision}, {threads} threads, \
         median of {}, {} of PyTorch then molclip (median / fastest round; ratio: median of the rounds' ratios)",
        cudnn_algorithms(device, false),
        counted(steps, "step"),
        counted(rounds, "round"),
    );
    println!(
        "{:<14} {:<40} {:>15} {:>10} {:>11} {:>12} {:>16}",
        "model", "implementation (ISA)", "ms/step", "peak MiB", "params", "throughput", "TFLOP/s"
    );
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let h = v.len() / 2;
        if v.len() % 2 == 1 {
            v[h]
        } else {
            (v[h - 1] + v[h]) / 2.0
        }
    };
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for model in models {
        shape.video_config(model)?;
        // (PyTorch's step, ours) per round, PyTorch's `None` where it did not run.
        let (mut paired, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            paired.push(
                script.and_then(|script| torch_reference(script, model, shape, steps, threads, [device, precision])),
            );
            let mut once = Command::new(&exe);
            once.args(["bench", "model-once", "--model", model]).args(shape.args());
            once.args(["--steps", &steps.to_string(), "--device", device, "--precision", precision]);
            ours.push(run_json(&mut once)?);
        }
        let times = |runs: &[serde_json::Value]| runs.iter().map(|r| num(r, "median_ms")).collect::<Vec<_>>();
        let peak = |runs: &[serde_json::Value]| runs.iter().map(|r| num(r, "peak_rss_mib")).fold(0.0, f64::max);
        let references: Vec<serde_json::Value> = paired.iter().flatten().cloned().collect();
        let (ref_ms, our_ms) = (times(&references), times(&ours));
        let cell = |ms: &[f64]| format!("{:.0} / {:.0}", median(ms.to_vec()), fastest(ms));
        // A step as three times its forward pass's products, and where a peak is known, the
        // share of it reached at the median step.
        let step_flops = 3.0 * num(&ours[0], "forward_flops");
        let step_peak = highest_peak(&ours);
        let rate = |ms: &[f64]| {
            let tflops = step_flops / (median(ms.to_vec()) / 1e3) / 1e12;
            let digits = if tflops < 10.0 { 2 } else { 1 };
            match step_peak["tflops"].as_f64() {
                Some(peak) => format!("{tflops:.digits$} ({:.0} %)", 100.0 * tflops / peak),
                None => format!("{tflops:.digits$}"),
            }
        };
        if let Some(r) = references.first() {
            let label = format!(
                "PyTorch {} ({})",
                r["torch"].as_str().unwrap_or("?").split('+').next().unwrap_or("?"),
                r["isa"].as_str().unwrap_or("?")
            );
            println!(
                "{:<14} {:<40} {:>15} {:>10.0} {:>11} {:>12} {:>16}",
                model,
                label,
                cell(&ref_ms),
                peak(&references),
                "",
                "1.00x",
                rate(&ref_ms)
            );
        }
        // Each round's ratio pairs runs a few seconds apart, in the rounds where PyTorch ran.
        let ratios: Vec<f64> =
            paired.iter().zip(&our_ms).filter_map(|(r, o)| r.as_ref().map(|r| num(r, "median_ms") / o)).collect();
        let ratio = if ratios.is_empty() { "-".to_string() } else { format!("{:.2}x", median(ratios)) };
        println!(
            "{:<14} {:<40} {:>15} {:>10.0} {:>11} {:>12} {:>16}",
            model,
            format!("molclip ({})", ours[0]["isa"].as_str().unwrap_or("?")),
            cell(&our_ms),
            peak(&ours),
            ours[0]["params"],
            ratio,
            rate(&our_ms)
        );
        let phase = |k: &str| median(ours.iter().map(|r| num(r, k)).collect());
        println!(
            "{:<14} {:<40} {:>15}",
            "",
            "  forward / backward / update, ms",
            format!("{:.1} / {:.1} / {:.1}", phase("forward_ms"), phase("backward_ms"), phase("update_ms"))
        );
        let share = match (step_peak["what"].as_str(), step_peak["tflops"].as_f64()) {
            (Some(what), Some(tflops)) => format!("; {what}: {tflops:.2} TFLOP/s"),
            _ => String::new(),
        };
        println!("{:<14}   step's products: 3 x {:.1} GFLOP (the forward pass's){share}", "", step_flops / 3e9);
    }
    Ok(())
}

/// The highest peak that `rounds` (`model-once`'s outputs) measured, `Null` where none
/// states one: on the CPU, anything else on the cores (another process, a virtual machine's
/// stolen time) can only lower one round's measurement.
fn highest_peak(rounds: &[serde_json::Value]) -> &serde_json::Value {
    rounds
        .iter()
        .filter_map(|r| Some((r["peak"]["tflops"].as_f64()?, &r["peak"])))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(&serde_json::Value::Null, |(_, peak)| peak)
}

/// The `bench` preset simulated into `dir` from the drug table `drugs` (the preset's own
/// without it): 3,900 cells at 112 x 112.
fn simulate_bench_preset(dir: &Path, drugs: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let plan = DatasetPlan::new(preset("bench", drugs)?, Path::new("."))?;
    let root = dir.join("bench");
    let bar = crate::progress::bar(plan.jobs.len() as u64, "simulating the bench preset", quiet);
    mitosim::generate(&plan, &root, false, &|| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(root)
}

/// `bench train`: the first `steps` steps of an epoch of `config` with `sets` (`--set
/// KEY=VALUE`) applied, against the PyTorch reference `script` on the same files.
fn bench_train(
    data: &Path,
    config: &Path,
    sets: &[String],
    steps: Option<usize>,
    device: &str,
    script: Option<&Path>,
    quiet: bool,
) -> Result<()> {
    use molclip::train::{Identity, ModelKind, Trainer};
    let overrides = molclip_experiment::Overrides { sets: crate::parse_sets(sets)?, ..Default::default() };
    let cfg = overrides.apply(molclip_experiment::read_config(config)?)?;
    if cfg.kind == ModelKind::Molclip && script.is_some() {
        bail!(
            "{}: the PyTorch reference trains video models only (kind = \"video-only\"); pass --no-reference \
             to time a MolCLIP config alone",
            config.display()
        );
    }
    let index = molclip_data::DatasetIndex::open(data)?;
    let dev = molclip::parse_device(device)?;
    let mut trainer = Trainer::new(&cfg, &index, &dev)?;
    let plan = trainer
        .plan()?
        .into_iter()
        .find(|s| s.steps() > 0)
        .context("no stage of the config has a step on this dataset")?;
    let (per_epoch, identity) = (plan.steps_per_epoch, plan.identity);
    let n = steps.unwrap_or(per_epoch).clamp(1, per_epoch);
    // The stage's training videos and their labels, numbered as the trainer's classifiers
    // number them, for the reference.
    let train: Vec<_> = index.split(molclip_data::Split::Train).collect();
    let (labels, _) = trainer.labels(identity);
    let (drugs, moas) = (trainer.classes(Identity::Drug), trainer.classes(Identity::Moa));
    let cells: Vec<serde_json::Value> =
        train.iter().zip(labels).filter_map(|(c, label)| Some(serde_json::json!([c.dir, label?]))).collect();
    let batch = cfg.data.sampler.p * cfg.data.sampler.k;
    let threads = rayon::current_num_threads();
    println!(
        "training epoch end to end, {}{} ({} stage): {} videos of {}, batches of {batch}, {n} of {per_epoch} steps \
         timed, {device}{}, precision {}, {threads} threads",
        config.display(),
        sets.iter().map(|s| format!(" --set {s}")).collect::<String>(),
        format!("{identity:?}").to_lowercase(),
        cells.len(),
        data.display(),
        cudnn_algorithms(device, cfg.cudnn_benchmark),
        serde_json::to_value(cfg.precision)?.as_str().unwrap_or("?"),
    );
    println!(
        "{:<40} {:>10} {:>12} {:>13} {:>10} {:>11} {:>11}",
        "implementation (ISA)", "s/step", "epoch s", "videos/s", "data wait", "peak MiB", "throughput"
    );
    let reference = match script {
        Some(script) => {
            let tmp = tempfile::tempdir()?;
            let job = tmp.path().join("job.json");
            let value = serde_json::json!({"config": &cfg, "cells": cells, "identity": identity, "drugs": drugs,
                                           "moas": moas, "steps": n, "threads": threads, "device": device,
                                           "seed": cfg.seed});
            std::fs::write(&job, serde_json::to_vec(&value)?)?;
            run_json(python_reference().arg(script).arg(&job))
                .map_err(|e| eprintln!("PyTorch reference not run: {e:#}"))
                .ok()
        }
        None => None,
    };
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let row = |label: String, step_s: f64, share: f64, peak: f64, ratio: &str| {
        println!(
            "{:<40} {:>10.3} {:>12.1} {:>13.1} {:>9.1}% {:>11.0} {:>11}",
            label,
            step_s,
            step_s * per_epoch as f64,
            batch as f64 / step_s,
            share * 100.0,
            peak,
            ratio
        );
    };
    if let Some(r) = &reference {
        let label = format!(
            "PyTorch {} ({})",
            r["torch"].as_str().unwrap_or("?").split('+').next().unwrap_or("?"),
            r["isa"].as_str().unwrap_or("?")
        );
        row(label, num(r, "step_seconds"), num(r, "data_share"), num(r, "peak_rss_mib"), "1.00x");
    }
    let bar = crate::progress::bar(n as u64, "training", quiet);
    let state = trainer.train(None, &mut |_, state| {
        bar.set_position(state.step);
        (state.step as usize) < n
    })?;
    bar.finish_and_clear();
    let times = trainer.step_times();
    anyhow::ensure!(times.steps as usize == n && state.step as usize == n, "{} steps taken, {n} expected", times.steps);
    let step_s = times.total.as_secs_f64() / n as f64;
    let ratio = reference.as_ref().map_or("-".to_string(), |r| format!("{:.2}x", num(r, "step_seconds") / step_s));
    row(format!("molclip ({})", molclip_cpu::isa().name()), step_s, times.data_share(), peak_rss_mib(), &ratio);
    if let Some(r) = &reference {
        let params = trainer.store.num_trainable() as f64;
        if num(r, "params") != params {
            eprintln!("note: PyTorch's network has {} trainable parameters, molclip's {params}", r["params"]);
        }
    }
    Ok(())
}

fn device_check(device: &str) -> Result<()> {
    use molclip::candle_core::{Device, Tensor};
    use molclip::losses::{batch_hard_triplet, cross_entropy};
    use molclip::nn::ParamStore;
    let device = molclip::parse_device(device)?;
    let labels: Vec<u32> = vec![0, 0, 1, 1];
    // The three models of `bench model`, then MitoReID's network: r3d blocks on RGB frames.
    let cases = [
        ("frame-vit", Blocks::Inflated, 1),
        ("i3d-resnet18", Blocks::Inflated, 1),
        ("i3d-resnet50", Blocks::Inflated, 1),
        ("i3d-resnet50", Blocks::R3d, 3),
    ];
    for (model, blocks, channels) in cases {
        let shape = StepShape { batch: 4, frames: 8, channels, size: 64, blocks };
        let mut cfg = shape.video_config(model)?;
        cfg.i3d.width = 16;
        let x = shape.videos(&Device::Cpu)?;
        // MitoReID's network by kenshohara's name for it (3D ResNet, `r3d`), within the column.
        let label = match blocks {
            Blocks::Inflated => model.to_string(),
            Blocks::R3d => model.replace("i3d", "r3d"),
        };
        let run = |store: &ParamStore, x: &Tensor| -> Result<(Tensor, Vec<(String, Tensor)>)> {
            let net = molclip::models::VideoModel::new(&store.root(), &cfg, 2, 0)?;
            let out = net.forward_t(x, true)?;
            let logits = out.drug_logits.as_ref().context("no classifier")?;
            let loss = (cross_entropy(logits, &labels, 0.1)? + batch_hard_triplet(&out.feature, &labels, 0.3)?)?;
            let grads = loss.backward()?;
            let g = store
                .trainable()
                .into_iter()
                .filter_map(|(name, v)| grads.get(v.as_tensor()).map(|g| (name, g.to_device(&Device::Cpu).unwrap())))
                .collect();
            Ok((out.neck_feature.to_device(&Device::Cpu)?, g))
        };
        let cpu = ParamStore::new(0, &Device::Cpu);
        let (f_cpu, g_cpu) = run(&cpu, &x)?;
        // The device starts where the CPU did (a fresh store of the same seed), so that batch
        // norm's running statistics after the pass compare too.
        let fresh = ParamStore::new(0, &Device::Cpu);
        molclip::models::VideoModel::new(&fresh.root(), &cfg, 2, 0)?;
        let on_device = ParamStore::with_tensors(0, fresh.tensors(), &device);
        let start = Instant::now();
        let (f_dev, g_dev) = run(&on_device, &x.to_device(&device)?)?;
        let max_abs = |a: &Tensor| -> Result<f32> { Ok(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?) };
        // Relative to each tensor's largest value, but never below 1e-3 of the largest gradient:
        // gradients that are zero by construction (a bias a softmax or batch norm cancels)
        // carry only rounding noise.
        let largest =
            g_cpu.iter().map(|(_, g)| max_abs(g)).collect::<Result<Vec<_>>>()?.into_iter().fold(1e-12f32, f32::max);
        let rel = |a: &Tensor, b: &Tensor, floor: f32| -> Result<f64> {
            Ok((max_abs(&(a - b)?)? / max_abs(a)?.max(floor).max(1e-12)) as f64)
        };
        let mut worst = (rel(&f_cpu, &f_dev, 0.0)?, "neck feature".to_string());
        let dev: std::collections::HashMap<_, _> = g_dev.into_iter().collect();
        for (name, g) in &g_cpu {
            let d = dev.get(name).with_context(|| format!("{name}: no gradient on the device"))?;
            let r = rel(g, d, 1e-3 * largest)?;
            if r > worst.0 {
                worst = (r, name.clone());
            }
        }
        let after = on_device.tensors();
        for (name, t) in cpu.tensors().iter().filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        {
            let d = after.get(name).with_context(|| format!("{name}: not on the device"))?.to_device(&Device::Cpu)?;
            let r = rel(t, &d, 0.0)?;
            if r > worst.0 {
                worst = (r, name.clone());
            }
        }
        println!(
            "{label:<14} {} gradients, worst relative difference CPU vs {device:?}: {:.1e} ({}), {:.0} ms",
            g_cpu.len(),
            worst.0,
            worst.1,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    device_check_update(&device)?;
    device_check_norm(&device)?;
    device_check_staging(&device)?;
    device_check_threads(&device)
}

/// `count` products of `n x n` matrices of ones, each scaled by `1/n` (all ones again, exactly),
/// queued on `device`: work that keeps a GPU busy for a while (24 of 4096 x 4096: tens of
/// milliseconds), ending in a tensor whose every value is 1.
fn queued_products(
    device: &molclip::candle_core::Device,
    n: usize,
    count: usize,
) -> Result<molclip::candle_core::Tensor> {
    use molclip::candle_core::{DType, Tensor};
    let a = Tensor::ones((n, n), DType::F32, device)?;
    let mut b = a.clone();
    for _ in 0..count {
        b = (b.matmul(&a)? * (1.0 / n as f64))?;
    }
    Ok(b)
}

/// A tensor queued on one thread and read on another: the second thread sums the products
/// that the first has just queued (on a GPU, 24 of 4096 x 4096 matrices) and reads the sum
/// back at once. A device whose work went to a stream of each thread's own (CUDA's per-thread
/// default stream) would let the second thread read before the products had ended; on the
/// device's one stream it waits for them. The product is then dropped on the second thread
/// while the first thread's work on it may still be queued.
fn device_check_threads(device: &molclip::candle_core::Device) -> Result<()> {
    let n = if device.is_cpu() { 64 } else { 4096 };
    let ones = queued_products(device, n, 24)?;
    let twice = (&ones + &ones)?;
    let sum = std::thread::scope(|s| {
        s.spawn(move || -> Result<f32> {
            let sum = ones.sum_all()?.to_scalar::<f32>()?;
            drop(ones);
            Ok(sum)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("device-check: the second thread panicked"))?
    })?;
    let twice = twice.sum_all()?.to_scalar::<f32>()?;
    let expected = (n * n) as f32;
    println!(
        "{:<14} products queued on one thread, summed on another: {sum} ({expected} expected), and on the first \
         after the second dropped them: {twice} ({} expected)",
        "threads",
        2.0 * expected
    );
    anyhow::ensure!(
        sum == expected && twice == 2.0 * expected,
        "device-check: a tensor read on another thread than the one that queued it differs"
    );
    Ok(())
}

/// Batches through the feed's staging (pinned memory on a GPU): five batches of two lengths
/// through its buffers, all queued before any is read back, so that a buffer written again
/// before the GPU had finished reading it would show in an earlier batch. On a GPU the copies
/// are queued behind 24 products of 4096 x 4096 matrices, so that they are still
/// waiting when the host writes the buffers again (a missing wait shows). Then, on a device
/// other than the CPU, one batch of 64 Mi values copied from pageable memory
/// (`Tensor::from_slice`) and staged, each timed to the end of its copy (best of three).
fn device_check_staging(device: &molclip::candle_core::Device) -> Result<()> {
    use molclip::candle_core::Tensor;
    use molclip::train::feed::{Feed, PINNED_BUFFERS};
    let staging = Feed::staging(device);
    let batch = |k: usize, n: usize| -> Vec<f32> { (0..n).map(|i| (i * 31 + k * 1_000_003) as f32).collect() };
    let lengths = [1 << 20, 1 << 20, 3 << 19, 1 << 20, 1 << 20];
    let busy = if device.is_cpu() { None } else { Some(queued_products(device, 4096, 24)?) };
    let start = Instant::now();
    let tensors = lengths
        .iter()
        .enumerate()
        .map(|(k, &n)| Ok(staging.stage(batch(k, n), &[n])?.into_tensor(device)?))
        .collect::<Result<Vec<Tensor>>>()?;
    let queued = start.elapsed().as_secs_f64() * 1e3;
    drop(busy);
    let mut differing = 0;
    for (k, t) in tensors.iter().enumerate() {
        differing +=
            t.to_vec1::<f32>()?.iter().zip(batch(k, lengths[k])).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    }
    println!(
        "{:<14} {} batches through {}, values differing after the copies: {differing}, {queued:.0} ms to \
         queue, {:.0} ms in all",
        "staging",
        lengths.len(),
        if staging.is_pinned() { format!("{PINNED_BUFFERS} pinned buffers") } else { "no pinned memory".into() },
        start.elapsed().as_secs_f64() * 1e3
    );
    if device.is_cpu() {
        return Ok(());
    }
    let n = 64 << 20;
    let values = batch(7, n);
    let (mut pageable, mut write, mut queue, mut copy) = (f64::INFINITY, f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1e3;
    for _ in 0..3 {
        device.synchronize()?;
        let start = Instant::now();
        let t = Tensor::from_slice(&values, n, device)?;
        device.synchronize()?;
        pageable = pageable.min(ms(start, Instant::now()));
        drop(t);
        let v = values.clone();
        let start = Instant::now();
        let staged = staging.stage(v, &[n])?;
        let written = Instant::now();
        let t = staged.into_tensor(device)?;
        let queued = Instant::now();
        device.synchronize()?;
        let (w, q, c) = (ms(start, written), ms(written, queued), ms(written, Instant::now()));
        (write, queue, copy) = (write.min(w), queue.min(q), copy.min(c));
        drop(t);
    }
    let gb = (n * 4) as f64 / 1e9;
    println!(
        "{:<14} 256 MiB to {device:?}: from pageable memory {pageable:.1} ms ({:.1} GB/s); staged: written \
         {write:.1} ms (the feed's thread), queued {queue:.2} ms (the step), copied {copy:.1} ms ({:.1} GB/s)",
        "upload",
        gb / pageable * 1e3,
        gb / copy * 1e3
    );
    Ok(())
}

/// The gradient norm of 2^22 float32 values in 164 tensors (an I3D-ResNet-50's count) of
/// lengths from 1 to 80,000, on the CPU and on `device`: their difference relative to the
/// CPU's, and on `device` the time of `square_sums` (one read back) against reading each
/// tensor's sum of squares in turn, as clipping did before (best of three each).
fn device_check_norm(device: &molclip::candle_core::Device) -> Result<()> {
    use molclip::candle_core::{DType, Device, Tensor};
    use molclip::nn::square_sums;
    let n = 1 << 22;
    let values: Vec<f32> = (0..n as u64).map(|i| ((i * 2654435761) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut bounds = vec![0];
    while bounds.len() < 164 {
        let last = bounds[bounds.len() - 1];
        bounds.push(last + [1, 64, 4096, 80_000][bounds.len() % 4]);
    }
    bounds.push(n);
    let on = |dev: &Device| -> Result<Vec<Tensor>> {
        Ok(bounds
            .windows(2)
            .map(|w| Tensor::from_slice(&values[w[0]..w[1]], w[1] - w[0], dev))
            .collect::<Result<_, _>>()?)
    };
    let norm = |sums: Vec<f64>| sums.into_iter().fold(0f64, |t, s| t + s).sqrt();
    let (cpu, dev) = (on(&Device::Cpu)?, on(device)?);
    let want = norm(square_sums(&cpu.iter().collect::<Vec<_>>())?);
    let (mut fused, mut apart, mut got) = (f64::INFINITY, f64::INFINITY, 0.0);
    for _ in 0..3 {
        device.synchronize()?;
        let start = Instant::now();
        got = norm(square_sums(&dev.iter().collect::<Vec<_>>())?);
        fused = fused.min(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let mut total = 0f64;
        for t in &dev {
            total += t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        std::hint::black_box(total);
        apart = apart.min(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{:<14} gradient norm of {n} values in {} tensors, relative difference CPU vs {device:?}: {:.1e}; \
         {fused:.2} ms with one read back, {apart:.2} ms reading each tensor's",
        "norm",
        dev.len(),
        ((got - want) / want).abs()
    );
    Ok(())
}

/// One AdamW update (its third step) of 2^20 random float32 values in some 220 tensors of
/// lengths from 1 to 20,011 (the kernel takes 64 per launch), in place where the device has
/// the kernels and composed elsewhere, on the CPU and on `device`: the largest difference of
/// the parameters and the moments, relative to each one's largest value.
fn device_check_update(device: &molclip::candle_core::Device) -> Result<()> {
    use molclip::candle_core::{Device, Tensor};
    use molclip::nn::{adamw_in_place_all, AdamWSlot, AdamWStep};
    let n = 1 << 20;
    let values = |seed: u64, scale: f32| -> Vec<f32> {
        (0..n as u64).map(|i| ((i * 2654435761 + seed * 40503) % 2001) as f32 / 1000.0 * scale - scale).collect()
    };
    let (p, g, m, v) = (values(1, 1.0), values(2, 1e-2), values(3, 1e-3), values(4, 1e-2));
    let v: Vec<f32> = v.iter().map(|x| x * x).collect();
    let mut bounds = vec![0];
    while let Some(&last) = bounds.last().filter(|&&b| b < n) {
        bounds.push((last + [1, 255, 257, 3000, 20011][bounds.len() % 5]).min(n));
    }
    let parts = bounds.len() - 1;
    let step =
        AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, lr: 1e-3, weight_decay: 0.05, step: 3, grad_scale: 0.37 };
    let update = |dev: &Device| -> Result<[Vec<f32>; 3]> {
        let tensors = bounds
            .windows(2)
            .map(|w| {
                let t = |x: &[f32]| Tensor::from_slice(&x[w[0]..w[1]], w[1] - w[0], dev);
                Ok([t(&p)?, t(&g)?, t(&m)?, t(&v)?])
            })
            .collect::<Result<Vec<_>>>()?;
        let slots: Vec<AdamWSlot> = tensors.iter().map(|[p, g, m, v]| AdamWSlot { param: p, grad: g, m, v }).collect();
        let done = adamw_in_place_all(&slots, &step)?;
        let mut out: [Vec<f32>; 3] = Default::default();
        for ([p, g, m, v], done) in tensors.iter().zip(done) {
            let (p, m, v) = if done {
                (p.clone(), m.clone(), v.clone())
            } else {
                step.composed(p, g, Some(m.clone()), Some(v.clone()))?
            };
            for (o, t) in out.iter_mut().zip([p, m, v]) {
                o.extend(t.to_vec1::<f32>()?);
            }
        }
        Ok(out)
    };
    let start = Instant::now();
    let (cpu, dev) = (update(&Device::Cpu)?, update(device)?);
    let rel = |a: &[f32], b: &[f32]| {
        let scale = a.iter().fold(1e-30f32, |s, x| s.max(x.abs()));
        a.iter().zip(b).fold(0f32, |w, (x, y)| w.max((x - y).abs())) / scale
    };
    let worst = ["weight", "first moment", "second moment"]
        .into_iter()
        .zip(cpu.iter().zip(&dev))
        .map(|(name, (a, b))| (rel(a, b), name))
        .fold((0f32, "weight"), |w, x| if x.0 > w.0 { x } else { w });
    println!(
        "{:<14} AdamW, {n} values in {parts} tensors, worst relative difference CPU vs {device:?}: {:.1e} ({}), \
         {:.0} ms",
        "update",
        worst.0,
        worst.1,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Scores label stacks (track ids per frame) of every field against the ground truth.
fn score_fields(
    truth: &Path,
    fields: &[molclip_extract::RawField],
    predicted: &(dyn Fn(&molclip_extract::RawField) -> Result<Vec<Vec<u32>>> + Sync),
) -> Result<molclip_extract::score::Score> {
    let scores = fields
        .par_iter()
        .map(|f| -> Result<molclip_extract::score::Score> {
            let path = truth.join(&f.replicate).join(format!("{}.masks.tif", f.name));
            let gt = molclip_extract::score::read_label_stack(&path)?;
            let prediction = predicted(f)?;
            anyhow::ensure!(
                prediction.len() == gt.len(),
                "{}: {} predicted frames, {} true ones",
                f.label(),
                prediction.len(),
                gt.len()
            );
            Ok(molclip_extract::score::score_field(&gt, &prediction))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = molclip_extract::score::Score::default();
    for s in &scores {
        total.add(s);
    }
    Ok(total)
}

fn bench_extract(config: Option<&Path>, field_size: usize, script: Option<&Path>) -> Result<()> {
    let cfg = match config {
        Some(path) => molclip_extract::ExtractConfig::from_toml_file(path)?,
        None => molclip_extract::ExtractConfig::default(),
    };
    let mut sim = SimConfig::preset("tiny")?;
    sim.layout.replicates = 1;
    sim.raw.field_size = field_size;
    let plan = DatasetPlan::new(sim, Path::new("."))?;
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("raw");
    mitosim::generate_raw(&plan, &raw, false, &|| {})?;
    let fields = molclip_extract::discover(&raw)?;
    let truth = raw.join("ground_truth");
    let threads = rayon::current_num_threads();
    // Read once untimed, so that both sides read from the page cache.
    for f in &fields {
        molclip_extract::read_field(f)?;
    }
    let start = Instant::now();
    let extracted =
        fields.par_iter().map(|f| molclip_extract::extract_field(f, &cfg, None)).collect::<Result<Vec<_>, _>>()?;
    let seconds = start.elapsed().as_secs_f64();
    let labels: std::collections::HashMap<String, Vec<Vec<u32>>> =
        fields.iter().zip(&extracted).map(|(f, x)| (f.label(), x.track_labels())).collect();
    let ours = score_fields(&truth, &fields, &|f| Ok(labels[&f.label()].clone()))?;
    let reference = match script {
        Some(script) => {
            let out = dir.path().join("reference");
            let mut cmd = python_reference();
            cmd.arg(script).arg(&raw).arg(&out).arg(threads.to_string()).args(fields.iter().map(|f| f.label()));
            match run_json(&mut cmd) {
                Ok(json) => {
                    let score = score_fields(&truth, &fields, &|f| {
                        let path = out.join(&f.replicate).join(format!("{}.labels.tif", f.name));
                        Ok(molclip_extract::score::read_label_stack(&path)?)
                    })?;
                    let version = json["skimage"].as_str().unwrap_or("?").to_string();
                    Some((score, json["seconds"].as_f64().unwrap_or(f64::NAN), version))
                }
                Err(e) => {
                    eprintln!("scikit-image reference not run: {e:#}");
                    None
                }
            }
        }
        None => None,
    };
    let frames = plan.config.layout.frames;
    println!(
        "extract: {} raw fields of {field_size} x {field_size} x {frames} frames x 3 stains (tiny preset's drugs, \
         {} ground-truth tracks), {threads} threads / processes",
        fields.len(),
        ours.whole_tracks
    );
    println!(
        "{:<28} {:>12} {:>8} {:>15} {:>10} {:>10}",
        "implementation", "detection F1", "SEG", "tracks whole", "fields/s", "speed"
    );
    let row = |name: &str, s: &molclip_extract::score::Score, secs: f64, speed: String| {
        println!(
            "{:<28} {:>12.3} {:>8.3} {:>14.1}% {:>10.2} {:>10}",
            name,
            s.f1(),
            s.seg(),
            100.0 * s.tracks_recovered(),
            fields.len() as f64 / secs,
            speed
        )
    };
    if let Some((score, secs, version)) = &reference {
        row(&format!("scikit-image {version}"), score, *secs, "1.0x".into());
    }
    let speed = reference.as_ref().map_or("-".into(), |r| format!("{:.1}x", r.1 / seconds));
    row("molclip extract", &ours, seconds, speed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::highest_peak;

    /// The table's peak is the rounds' highest, whichever round measured it, and none where no
    /// round states one (a GPU it does not know, or a CPU below AVX2).
    #[test]
    fn the_peak_is_the_highest_any_round_measured() {
        let round = |tflops: Option<f64>| match tflops {
            Some(t) => json!({"median_ms": 1.0, "peak": {"what": format!("{t}"), "tflops": t}}),
            None => json!({"median_ms": 1.0, "peak": null}),
        };
        let rounds = [round(Some(0.24)), round(None), round(Some(0.49)), round(Some(0.47))];
        assert_eq!(highest_peak(&rounds)["tflops"], json!(0.49));
        assert_eq!(highest_peak(&rounds[..2])["tflops"], json!(0.24));
        assert!(highest_peak(&[round(None), round(None)]).is_null());
        assert!(highest_peak(&[]).is_null());
    }
}
