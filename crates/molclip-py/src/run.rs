//! `Run` and `train`: a run folder of `molclip train`, its model loaded once; training into
//! one, interruptible with Ctrl-C.

use std::path::PathBuf;
use std::sync::OnceLock;

use molclip::candle_core::Device;
use molclip::train::{TrainConfig, TrainedRun};
use molclip_core::error_text;
use molclip_data::{SampleDepth, Split, Video};
use molclip_experiment::embedding::EMBED_BATCH;
use molclip_experiment::{
    embed_dataset, read_config, resolve_config, Overrides, Progress, Query, RunDir, TrainPlan, Training,
};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::data::Dataset;
use crate::progress::PyProgress;
use crate::{py_err, py_msg};

/// `rows` (`[n, dim]`, row-major) as a NumPy array, without a copy.
fn matrix(py: Python<'_>, rows: Vec<f32>, dim: usize) -> Bound<'_, PyArray2<f32>> {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    Array2::from_shape_vec((n, dim), rows).expect("n x dim values").into_pyarray(py)
}

/// A `[T, C, H, W]` array as a video: `uint8` and `uint16` are 8- and 16-bit samples;
/// float32 and float64 are values in [0, 1], kept to 16 bits.
fn video(i: usize, array: &Bound<'_, PyAny>) -> PyResult<Video> {
    fn planes<T: numpy::Element + Copy>(
        a: &PyReadonlyArray4<'_, T>,
        scale: impl Fn(T) -> f32,
        depth: SampleDepth,
    ) -> Video {
        let [t, c, h, w] = [a.shape()[0], a.shape()[1], a.shape()[2], a.shape()[3]];
        let values = a.as_array();
        let frames =
            (0..t).map(|k| values.index_axis(numpy::ndarray::Axis(0), k).iter().map(|&x| scale(x)).collect()).collect();
        Video { width: w, height: h, channels: c, depth, frames }
    }
    if let Ok(a) = array.extract::<PyReadonlyArray4<'_, u8>>() {
        return Ok(planes(&a, |x| x as f32 / 255.0, SampleDepth::Eight));
    }
    if let Ok(a) = array.extract::<PyReadonlyArray4<'_, u16>>() {
        return Ok(planes(&a, |x| x as f32 / 65535.0, SampleDepth::Sixteen));
    }
    if let Ok(a) = array.extract::<PyReadonlyArray4<'_, f32>>() {
        return Ok(planes(&a, |x| x, SampleDepth::Sixteen));
    }
    if let Ok(a) = array.extract::<PyReadonlyArray4<'_, f64>>() {
        return Ok(planes(&a, |x| x as f32, SampleDepth::Sixteen));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "video {i}: expected a [T, C, H, W] numpy array of uint8, uint16, float32 or float64"
    )))
}

/// A run folder written by `molclip train`.
#[pyclass(module = "molclip._molclip", frozen)]
pub struct Run {
    dir: RunDir,
    device: Device,
    trained: OnceLock<TrainedRun>,
}

impl Run {
    /// The model, loaded on first use.
    fn trained(&self, py: Python<'_>) -> PyResult<&TrainedRun> {
        if let Some(t) = self.trained.get() {
            return Ok(t);
        }
        let loaded = py.detach(|| self.dir.load(&self.device)).map_err(py_err)?;
        Ok(self.trained.get_or_init(|| loaded))
    }
}

#[pymethods]
impl Run {
    /// The run folder at `path`; its model runs on `device` (`cpu`, `cuda`, `cuda:N`).
    #[new]
    #[pyo3(signature = (path, device="cpu"))]
    fn new(path: PathBuf, device: &str) -> PyResult<Self> {
        let dir = RunDir::new(path);
        if !dir.config_path().exists() {
            return Err(py_msg(format!("{}: not a molclip run (no run.toml)", dir.root().display())));
        }
        Ok(Self { dir, device: molclip::parse_device(device).map_err(py_err)?, trained: OnceLock::new() })
    }

    /// The run folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.root().to_path_buf()
    }

    /// The resolved config (run.toml) as JSON text.
    fn config_json(&self) -> PyResult<String> {
        let cfg = self.dir.read_config().map_err(py_err)?;
        serde_json::to_string(&cfg).map_err(py_err)
    }

    /// The training log (metrics.csv).
    #[getter]
    fn metrics_path(&self) -> PathBuf {
        self.dir.metrics_path()
    }

    /// Whether the run finished (its final weights are there).
    #[getter]
    fn finished(&self) -> bool {
        self.dir.is_finished()
    }

    /// The dataset the run was trained on.
    fn trained_on(&self) -> PyResult<PathBuf> {
        self.dir.trained_on().map_err(py_err)
    }

    /// The videos of `splits` of `dataset`, embedded as `molclip embed` does: float32
    /// `[N, D]` and the metadata columns (set, replicate, drug, moa, path).
    #[pyo3(signature = (dataset, splits, batch=EMBED_BATCH, progress=None))]
    fn embed_dataset<'py>(
        &self,
        py: Python<'py>,
        dataset: PyRef<'py, Dataset>,
        splits: Vec<String>,
        batch: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyDict>)> {
        let splits = splits.iter().map(|s| s.parse::<Split>().map_err(py_err)).collect::<PyResult<Vec<_>>>()?;
        let trained = self.trained(py)?;
        let progress = PyProgress::new(progress);
        let index = &dataset.index;
        let e = py.detach(|| embed_dataset(trained, index, &splits, batch.max(1), &progress)).map_err(py_err)?;
        let columns = PyDict::new(py);
        for (name, column) in molclip_experiment::EmbeddedMetadata::COLUMNS.iter().zip(e.metadata.columns()) {
            columns.set_item(name, column)?;
        }
        Ok((matrix(py, e.rows, e.dim), columns))
    }

    /// Videos in memory (`[T, C, H, W]` arrays, every frame), embedded as the same videos
    /// read from a dataset would be: float32 `[N, D]`.
    #[pyo3(signature = (videos, batch=EMBED_BATCH, progress=None))]
    fn embed_frames<'py>(
        &self,
        py: Python<'py>,
        videos: Vec<Bound<'py, PyAny>>,
        batch: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let videos = videos.iter().enumerate().map(|(i, v)| video(i, v)).collect::<PyResult<Vec<_>>>()?;
        let trained = self.trained(py)?;
        let progress = PyProgress::new(progress);
        let e = py
            .detach(|| {
                progress.start("embedding", videos.len() as u64);
                let e = trained.embed_frames(&videos, batch.max(1), &mut |k| progress.advance(k as u64));
                progress.finish();
                e
            })
            .map_err(py_err)?;
        Ok(matrix(py, e.feature, e.dim))
    }

    /// Unit-norm shared-space embeddings of molecules (MolCLIP runs): float32 `[n, d]`.
    fn embed_smiles<'py>(&self, py: Python<'py>, smiles: Vec<String>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let trained = self.trained(py)?;
        let refs: Vec<&str> = smiles.iter().map(String::as_str).collect();
        let (rows, dim) = py.detach(|| trained.embed_smiles(&refs)).map_err(py_err)?;
        Ok(matrix(py, rows, dim))
    }

    /// `molclip predict --videos DIR --json`: a MoA ranking per drug folder of `videos`,
    /// against `dataset`'s gallery, as JSON text.
    #[pyo3(signature = (videos, dataset, nearest=3, progress=None))]
    fn predict_videos(
        &self,
        py: Python<'_>,
        videos: PathBuf,
        dataset: PyRef<'_, Dataset>,
        nearest: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        self.predict(py, &Query::Videos(&videos), &dataset, nearest, progress)
    }

    /// `molclip predict --smiles ... --json`: zero-shot MoA rankings of named molecules
    /// (MolCLIP runs), against `dataset`'s gallery, as JSON text.
    #[pyo3(signature = (names, smiles, dataset, nearest=3, progress=None))]
    fn predict_smiles(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        smiles: Vec<String>,
        dataset: PyRef<'_, Dataset>,
        nearest: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        if names.len() != smiles.len() {
            return Err(py_msg(format!("{} names for {} SMILES", names.len(), smiles.len())));
        }
        let molecules: Vec<(String, String)> = names.into_iter().zip(smiles).collect();
        self.predict(py, &Query::Molecules(&molecules), &dataset, nearest, progress)
    }

    fn __repr__(&self) -> String {
        format!("Run({:?})", self.dir.root().display().to_string())
    }
}

impl Run {
    fn predict(
        &self,
        py: Python<'_>,
        query: &Query<'_>,
        dataset: &Dataset,
        nearest: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        if nearest == 0 {
            return Err(py_msg("nearest: expected at least 1"));
        }
        let trained = self.trained(py)?;
        let progress = PyProgress::new(progress);
        let predictions = py
            .detach(|| molclip_experiment::predict(trained, &dataset.index, query, nearest, &progress))
            .map_err(py_err)?;
        serde_json::to_string(&predictions).map_err(py_err)
    }
}

/// Trains into `out` as `molclip train` does (config from `config_path`, or `config_json`,
/// a config as JSON; with `resume`, the run's own), and returns the outcome. Ctrl-C stops
/// at the end of the current step, leaves a checkpoint there and raises KeyboardInterrupt;
/// `resume=True` continues from it. With `dry_run`, checks what a run checks before its
/// first step and returns the plan (`molclip train --dry-run`), writing nothing.
#[pyfunction]
#[pyo3(signature = (data, out, config_path=None, config_json=None, resume=false, epochs=None, sets=Vec::new(),
                    init=None, device="cpu", check_frames=true, progress=None, dry_run=false))]
#[allow(clippy::too_many_arguments)]
pub fn train<'py>(
    py: Python<'py>,
    data: PathBuf,
    out: PathBuf,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    resume: bool,
    epochs: Option<usize>,
    sets: Vec<(String, String)>,
    init: Option<PathBuf>,
    device: &str,
    check_frames: bool,
    progress: Option<Py<PyAny>>,
    dry_run: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let given = match (&config_path, &config_json) {
        (Some(path), _) => Some((path.display().to_string(), read_config(path).map_err(py_err)?)),
        (None, Some(json)) => {
            let text = crate::toml_from_json(json)?;
            let cfg = TrainConfig::from_toml(&text).map_err(|e| py_msg(format!("config: {}", error_text(&e))))?;
            Some(("config".to_string(), cfg))
        }
        (None, None) => None,
    };
    let run = RunDir::new(&out);
    let overrides = Overrides { sets, epochs, init };
    let cfg = resolve_config(&run, given, &overrides, resume).map_err(py_err)?;
    let device = molclip::parse_device(device).map_err(py_err)?;
    let progress = PyProgress::new(progress);
    let mut interrupt: Option<PyErr> = None;
    let outcome = py.detach(|| {
        let index = molclip_experiment::open_dataset(&data, &progress)?;
        let training =
            Training { cfg: &cfg, data: &data, index: &index, run: &run, device: &device, resume, check_frames };
        if dry_run {
            return training.plan(&progress).map(Done::Planned);
        }
        training
            .run(&progress, &mut |_| {
                interrupt = progress.interrupt();
                interrupt.is_none()
            })
            .map(Done::Trained)
    });
    let outcome = match outcome.map_err(py_err)? {
        Done::Trained(outcome) => outcome,
        Done::Planned(plan) => return plan_dict(py, &plan, &run, &cfg),
    };
    if let Some(e) = interrupt {
        progress.note(&format!(
            "stopped at step {}: the checkpoint is in {}; train(..., resume=True) continues",
            outcome.state.step,
            run.root().display()
        ));
        return Err(e);
    }
    let d = PyDict::new(py);
    d.set_item("path", run.root())?;
    d.set_item("steps", outcome.state.step)?;
    d.set_item("seconds", outcome.seconds)?;
    d.set_item("finished", outcome.state.finished)?;
    d.set_item("summary", outcome.summary(&run))?;
    Ok(d)
}

/// What [`train`] did: trained, or (a dry run) planned.
enum Done {
    Trained(molclip_experiment::TrainOutcome),
    Planned(TrainPlan),
}

/// A [`TrainPlan`] as `train(dry_run=True)` returns it.
fn plan_dict<'py>(py: Python<'py>, plan: &TrainPlan, run: &RunDir, cfg: &TrainConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", run.root())?;
    d.set_item("videos", plan.videos)?;
    d.set_item("steps", plan.steps())?;
    d.set_item("done", plan.done)?;
    d.set_item("finished", plan.finished)?;
    let stages = plan
        .stages
        .iter()
        .map(|s| {
            let stage = PyDict::new(py);
            stage.set_item("identity", s.identity.name())?;
            stage.set_item("classes", s.classes)?;
            stage.set_item("videos", s.videos)?;
            stage.set_item("epochs", s.epochs)?;
            stage.set_item("steps_per_epoch", s.steps_per_epoch)?;
            Ok(stage)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("stages", stages)?;
    d.set_item("summary", plan.summary(run, cfg))?;
    Ok(d)
}
