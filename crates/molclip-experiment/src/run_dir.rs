//! A run folder: what `molclip train` writes and every later command reads. This type is the
//! one place that knows its layout.
//!
//! ```text
//! RUN/
//!   run.toml             the fully resolved config
//!   data.txt             the dataset it was trained on (absolute path)
//!   metrics.csv          one row per step: losses, learning rate, validation mAP
//!   checkpoints/last/    the last checkpoint (weights, optimiser, run state)
//!   best.safetensors     the weights at the best validation mAP of the stage
//!   model.safetensors    the final weights
//!   train_seconds.txt    training time over every session of the run
//!   embeddings.npy/.csv  what `evaluate --run` embedded
//! ```

use std::path::{Path, PathBuf};

use molclip::candle_core::Device;
use molclip::losses::LossTerm;
use molclip::nn::ParamStore;
use molclip::train::{is_checkpoint, StepRecord, TrainConfig, TrainOutputs, TrainedRun};
use molclip_core::{write_atomic, IoError};
use molclip_data::DatasetIndex;
use molclip_report::CurvePoint;

use crate::error::{ExperimentError, Result};

/// An exclusive hold on a run folder while a training writes into it (an OS file lock on
/// `RUN/.lock`, which names the holder's pid); released when dropped, and by the OS if the
/// process dies.
pub type RunLock = molclip_core::OutputLock;

/// A run folder, by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

const CONFIG: &str = "run.toml";
const DATA: &str = "data.txt";
const METRICS: &str = "metrics.csv";
const MODEL: &str = "model.safetensors";
const BEST: &str = "best.safetensors";
const TRAIN_SECONDS: &str = "train_seconds.txt";
const EMBEDDINGS: &str = "embeddings.npy";

impl RunDir {
    /// The run folder at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `run.toml`: the resolved config.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// `model.safetensors`: the final weights.
    pub fn model_path(&self) -> PathBuf {
        self.root.join(MODEL)
    }

    /// `metrics.csv`: the training log.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `embeddings.npy`: where `evaluate --run` writes the embeddings (the metadata CSV goes
    /// beside it).
    pub fn embeddings_path(&self) -> PathBuf {
        self.root.join(EMBEDDINGS)
    }

    /// Where the trainer writes: the last checkpoint and the best weights.
    pub fn outputs(&self) -> TrainOutputs {
        TrainOutputs { checkpoint: self.root.join("checkpoints").join("last"), best: self.root.join(BEST) }
    }

    /// Whether the run has a checkpoint to resume from.
    pub fn has_checkpoint(&self) -> bool {
        is_checkpoint(&self.outputs().checkpoint)
    }

    /// Whether the run finished (its final weights are there).
    pub fn is_finished(&self) -> bool {
        self.model_path().exists()
    }

    /// Creates the folder.
    pub fn create(&self) -> Result<()> {
        Ok(std::fs::create_dir_all(&self.root).map_err(IoError::at(&self.root))?)
    }

    /// Takes the run folder for this process: a second training into the same folder, while
    /// this one holds it, is refused instead of mixing two runs' files.
    pub fn lock(&self) -> Result<RunLock> {
        self.create()?;
        Ok(RunLock::acquire(&self.root.join(".lock"), &self.root, "into this run folder", false)?)
    }

    /// The run's config, parsed and validated.
    pub fn read_config(&self) -> Result<TrainConfig> {
        read_config(&self.config_path())
    }

    /// Writes `run.toml`.
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        let text = toml::to_string(cfg).map_err(|e| ExperimentError::Input(format!("serialising the config: {e}")))?;
        Ok(write_atomic(&self.config_path(), text.as_bytes())?)
    }

    /// Records the dataset the run trains on (`data.txt`: its path, then its fingerprint and
    /// video count), so that `report` and `predict` find its gallery and `--resume` can tell
    /// whether it changed.
    pub fn record_dataset(&self, data: &Path, index: &DatasetIndex) -> Result<()> {
        let text =
            format!("{}\nfingerprint {} videos {}\n", absolute(data).display(), index.fingerprint(), index.cells.len());
        Ok(write_atomic(&self.root.join(DATA), text.as_bytes())?)
    }

    fn read_data_record(&self) -> Result<(PathBuf, Option<String>)> {
        let path = self.root.join(DATA);
        let text = std::fs::read_to_string(&path).map_err(|_| ExperimentError::Run {
            path: path.clone(),
            message: "no record of the run's dataset; pass --data".into(),
        })?;
        let mut lines = text.lines();
        let data = PathBuf::from(lines.next().unwrap_or("").trim());
        let fingerprint = lines.next().and_then(|l| l.strip_prefix("fingerprint ")).and_then(|l| l.split(' ').next());
        Ok((data, fingerprint.map(str::to_string)))
    }

    /// The dataset the run was trained on, as recorded.
    pub fn trained_on(&self) -> Result<PathBuf> {
        Ok(self.read_data_record()?.0)
    }

    /// Refuses `data` unless it is the dataset the run was trained on, at the same path and
    /// with the same content (its fingerprint), so that a resumed run never continues silently
    /// on another or on one that changed.
    pub fn check_dataset(&self, data: &Path, index: &DatasetIndex) -> Result<()> {
        let (recorded, fingerprint) = self.read_data_record()?;
        if absolute(data) != absolute(&recorded) {
            return Err(ExperimentError::Input(format!(
                "{}: --data {} is not the dataset this run was trained on ({}): resume with that one",
                self.root.display(),
                data.display(),
                recorded.display()
            )));
        }
        let now = index.fingerprint();
        if let Some(before) = fingerprint.filter(|f| *f != now) {
            return Err(ExperimentError::Input(format!(
                "{}: the dataset {} changed since the run started (fingerprint {}, recorded {}; its annotation, \
                 simulation.toml or list of videos differ): resume on the dataset as it was, or train a new run",
                self.root.display(),
                data.display(),
                &now[..16],
                &before[..16.min(before.len())]
            )));
        }
        Ok(())
    }

    /// Writes `metrics.csv`: one row per step.
    pub fn write_metrics(&self, records: &[StepRecord]) -> Result<()> {
        Ok(write_atomic(&self.metrics_path(), metrics_csv(records).as_bytes())?)
    }

    /// The training log, as the report plots it.
    pub fn read_curves(&self) -> Result<Vec<CurvePoint>> {
        let path = self.metrics_path();
        let text = std::fs::read_to_string(&path).map_err(IoError::at(&path))?;
        parse_curves(&text).map_err(|message| ExperimentError::Run { path, message })
    }

    /// The training time the run recorded, over all its sessions.
    pub fn train_seconds(&self) -> Option<f64> {
        std::fs::read_to_string(self.root.join(TRAIN_SECONDS)).ok()?.trim().parse().ok()
    }

    /// Records the training time.
    pub fn write_train_seconds(&self, seconds: f64) -> Result<()> {
        Ok(write_atomic(&self.root.join(TRAIN_SECONDS), format!("{seconds:.3}\n").as_bytes())?)
    }

    /// Saves the final weights.
    pub fn save_model(&self, store: &ParamStore) -> Result<()> {
        Ok(store.save(&self.model_path()).map_err(molclip::ModelError::from)?)
    }

    /// The trained model: `run.toml` and `model.safetensors`, loaded strictly.
    pub fn load(&self, device: &Device) -> Result<TrainedRun> {
        let cfg = self.read_config()?;
        TrainedRun::load(cfg, &self.model_path(), device)
            .map_err(|e| ExperimentError::Run { path: self.root.clone(), message: format!("loading the run: {e}") })
    }
}

/// A training config (TOML) read from `path`, parsed and validated; errors name the file.
pub fn read_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).map_err(IoError::at(path))?;
    TrainConfig::from_toml(&text).map_err(|e| ExperimentError::Run { path: path.to_path_buf(), message: e.to_string() })
}

/// `path` made absolute where it exists, as it is otherwise.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `metrics.csv`'s columns before and after the loss terms.
const LEADING: &str = "step,stage,identity,epoch,lr,loss";
const TRAILING: &str = "temperature,grad_norm,val_drug_map,val_moa_map";

fn metrics_csv(records: &[StepRecord]) -> String {
    let names: Vec<&str> = LossTerm::ALL.iter().map(|t| t.name()).collect();
    let mut out = format!("{LEADING},{},{TRAILING}\n", names.join(","));
    for r in records {
        let term = |t: LossTerm| r.terms.iter().find(|(n, _)| *n == t).map_or(String::new(), |(_, v)| v.to_string());
        let terms: Vec<String> = LossTerm::ALL.iter().map(|&t| term(t)).collect();
        let (vd, vm) =
            r.validation.map_or((String::new(), String::new()), |(d, m)| (format!("{d:.4}"), format!("{m:.4}")));
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{vd},{vm}\n",
            r.step,
            r.stage,
            r.identity,
            r.epoch,
            r.lr,
            r.loss,
            terms.join(","),
            r.temperature.map_or(String::new(), |t| t.to_string()),
            if r.grad_norm.is_nan() { String::new() } else { r.grad_norm.to_string() }
        ));
    }
    out
}

fn parse_curves(text: &str) -> std::result::Result<Vec<CurvePoint>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (step, loss) = (col("step").ok_or("no step column")?, col("loss").ok_or("no loss column")?);
    let terms: Vec<(usize, LossTerm)> = LossTerm::ALL.iter().filter_map(|&t| col(t.name()).map(|c| (c, t))).collect();
    let (vd, vm) = (col("val_drug_map"), col("val_moa_map"));
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Option<f64> { f.get(c).and_then(|v| v.parse().ok()) };
        let (Some(s), Some(l)) = (num(step), num(loss)) else {
            return Err(format!("line {}: expected numbers in the step and loss columns", n + 2));
        };
        let validation = match (vd.and_then(num), vm.and_then(num)) {
            (Some(d), Some(m)) => Some((d, m)),
            _ => None,
        };
        let terms = terms.iter().filter_map(|&(c, t)| num(c).map(|v| (t.name().to_string(), v))).collect();
        out.push(CurvePoint { step: s, loss: l, terms, validation });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_read_back_from_metrics_csv() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::write(
            run.metrics_path(),
            "step,stage,identity,epoch,lr,loss,clip,triplet,ce,center,temperature,grad_norm,val_drug_map,val_moa_map\n\
             0,0,drug,0,0.001,5.5,,0.3,2.5,,,1.0,,\n\
             1,0,drug,0,0.001,4.5,,0.2,2.0,,,1.0,20.5000,40.2500\n",
        )
        .unwrap();
        let c = run.read_curves().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].step, c[1].loss), (1.0, 4.5));
        assert_eq!(c[0].terms, vec![("triplet".to_string(), 0.3), ("ce".to_string(), 2.5)]);
        assert_eq!((c[0].validation, c[1].validation), (None, Some((20.5, 40.25))));
        std::fs::write(run.metrics_path(), "step,loss\nx,1\n").unwrap();
        let e = run.read_curves().unwrap_err().to_string();
        assert!(e.contains("metrics.csv") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_run_folder_is_held_by_one_training_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.lock().unwrap();
        let e = run.lock().unwrap_err().to_string();
        assert!(e.contains(&format!("another molclip process (pid {})", std::process::id())), "{e}");
        drop(held);
        run.lock().unwrap();
    }

    #[test]
    fn metrics_written_read_back_as_curves() {
        use molclip::train::Identity;
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let record = StepRecord {
            stage: 1,
            identity: Identity::Moa,
            epoch: 2,
            step: 7,
            lr: 0.5,
            loss: 3.0,
            terms: vec![(LossTerm::Triplet, 1.0), (LossTerm::Ce, 2.0)],
            temperature: None,
            grad_norm: f64::NAN,
            validation: Some((12.5, 40.0)),
            left_out: 0,
        };
        run.write_metrics(std::slice::from_ref(&record)).unwrap();
        let text = std::fs::read_to_string(run.metrics_path()).unwrap();
        assert_eq!(text.lines().nth(1).unwrap(), "7,1,moa,2,0.5,3,,1,2,,,,12.5000,40.0000");
        let c = run.read_curves().unwrap();
        assert_eq!(c[0].terms, vec![("triplet".to_string(), 1.0), ("ce".to_string(), 2.0)]);
        assert_eq!(c[0].validation, Some((12.5, 40.0)));
    }
}
