//! `simulate` and `Dataset`: a simulated MitoDataset written, and a dataset's index and
//! videos read.

use std::path::{Path, PathBuf};

use mitosim::{DatasetPlan, SimConfig};
use molclip_data::{read_video_with, Channels, DatasetIndex, FrameOptions, SampleDepth};
use molclip_experiment::{open_dataset, EmbeddedMetadata};
use numpy::ndarray::Array4;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::progress::PyProgress;
use crate::{py_err, py_msg};

/// The simulation config of a preset or a file, with its seed replaced if one is given.
pub(crate) fn sim_config(preset: &str, config: Option<&Path>, seed: Option<u64>) -> PyResult<SimConfig> {
    let mut cfg = match config {
        Some(path) => SimConfig::from_toml_file(path),
        None => SimConfig::preset(preset),
    }
    .map_err(py_err)?;
    if let Some(seed) = seed {
        cfg.seed = seed;
    }
    Ok(cfg)
}

/// Writes a simulated MitoDataset (MitoReID layout) into `out`, from a preset or a
/// simulation config (TOML), as `molclip simulate` does; returns what was written.
#[pyfunction]
#[pyo3(signature = (out, preset="tiny", config=None, seed=None, structure_coupling=None, force=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn simulate<'py>(
    py: Python<'py>,
    out: PathBuf,
    preset: &str,
    config: Option<PathBuf>,
    seed: Option<u64>,
    structure_coupling: Option<f64>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cfg = sim_config(preset, config.as_deref(), seed)?;
    if let Some(c) = structure_coupling {
        cfg.biology.structure_coupling = c;
    }
    cfg.validate().map_err(py_err)?;
    let progress = PyProgress::new(progress);
    let (report, novel, size) = py.detach(|| {
        let plan = DatasetPlan::new(cfg, Path::new(".")).map_err(py_err)?;
        use molclip_experiment::Progress;
        progress.start("simulating cells", plan.jobs.len() as u64);
        let report = mitosim::generate(&plan, &out, force, &|| progress.advance(1));
        progress.finish();
        let report =
            report.map_err(|e| py_msg(format!("writing {}: {}", out.display(), molclip_core::error_text(&e))))?;
        PyResult::Ok((report, plan.library.novel_drugs().count(), plan.config.layout.size))
    })?;
    let d = PyDict::new(py);
    d.set_item("path", &out)?;
    d.set_item("moas", report.moas)?;
    d.set_item("drugs", report.drugs)?;
    d.set_item("novel_drugs", novel)?;
    d.set_item("cells", report.cells)?;
    d.set_item("frames", report.frames)?;
    d.set_item("size", size)?;
    d.set_item("seconds", report.seconds)?;
    d.set_item("removed_staging", report.removed_staging)?;
    Ok(d)
}

/// A dataset (a MitoReID-layout folder or a manifest CSV), scanned and validated once.
#[pyclass(module = "molclip._molclip", frozen)]
pub struct Dataset {
    pub(crate) path: PathBuf,
    pub(crate) index: DatasetIndex,
}

/// The channels asked for: `"grey"`, `"rgb"` or a list of channel indices.
fn channels(value: &Bound<'_, PyAny>) -> PyResult<Channels> {
    let json = if let Ok(name) = value.extract::<String>() {
        serde_json::Value::String(name)
    } else if let Ok(picks) = value.extract::<Vec<usize>>() {
        serde_json::json!(picks)
    } else {
        return Err(py_msg("channels: expected \"grey\", \"rgb\" or a list of channel indices"));
    };
    serde_json::from_value(json).map_err(|e| py_msg(format!("channels: {e} (expected \"grey\", \"rgb\" or indices)")))
}

#[pymethods]
impl Dataset {
    /// Scans and validates the dataset at `path`.
    #[new]
    #[pyo3(signature = (path, progress=None))]
    fn new(py: Python<'_>, path: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<Self> {
        let progress = PyProgress::new(progress);
        let index = py.detach(|| open_dataset(&path, &progress)).map_err(py_err)?;
        Ok(Self { path, index })
    }

    /// The dataset's path, as given.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The folder the videos' paths are relative to.
    #[getter]
    fn root(&self) -> PathBuf {
        self.index.root.clone()
    }

    fn __len__(&self) -> usize {
        self.index.cells.len()
    }

    /// One list per column, one entry per video, in scan order: `path` (relative to the
    /// root), `split`, `replicate`, `drug` (the key `evaluate` uses), `drug_name`, `moa`
    /// (empty outside the MoA task), `frames`, `height`, `width`.
    fn columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cells = &self.index.cells;
        let meta = EmbeddedMetadata::of(&self.index, cells);
        let d = PyDict::new(py);
        d.set_item("path", &meta.path)?;
        d.set_item("split", &meta.set)?;
        d.set_item("replicate", &meta.replicate)?;
        d.set_item("drug", &meta.drug)?;
        let names: Vec<String> =
            cells.iter().map(|c| self.index.annotation.drug_name(c.split, &c.drug_folder)).collect();
        d.set_item("drug_name", names)?;
        d.set_item("moa", &meta.moa)?;
        d.set_item("frames", cells.iter().map(|c| c.n_frames).collect::<Vec<_>>())?;
        d.set_item("height", cells.iter().map(|c| c.height).collect::<Vec<_>>())?;
        d.set_item("width", cells.iter().map(|c| c.width).collect::<Vec<_>>())?;
        Ok(d)
    }

    /// Every frame of video `i` as `[T, C, H, W]`, at the source's depth: `uint8` for 8-bit
    /// frames, `uint16` for deeper ones. `channels`: `"grey"` (colour as luminance), `"rgb"`,
    /// or channel indices.
    #[pyo3(signature = (i, channels=None))]
    fn video<'py>(&self, py: Python<'py>, i: usize, channels: Option<&Bound<'py, PyAny>>) -> PyResult<Py<PyAny>> {
        let n = self.index.cells.len();
        let cell =
            self.index.cells.get(i).ok_or_else(|| {
                pyo3::exceptions::PyIndexError::new_err(format!("video {i}: the dataset has {n} videos"))
            })?;
        let channels = channels.map(self::channels).transpose()?.unwrap_or_default();
        let options = FrameOptions { channels, ..FrameOptions::all_frames() };
        let video = py.detach(|| read_video_with(cell, &options)).map_err(py_err)?;
        let shape = (video.frames.len(), video.channels, video.height, video.width);
        let values = video.frames.iter().flatten();
        Ok(match video.depth {
            SampleDepth::Eight => {
                let v: Vec<u8> = values.map(|&x| (x * 255.0).round() as u8).collect();
                Array4::from_shape_vec(shape, v).expect("T x C x H x W").into_pyarray(py).into_any().unbind()
            }
            SampleDepth::Sixteen => {
                let v: Vec<u16> = values.map(|&x| (x * 65535.0).round() as u16).collect();
                Array4::from_shape_vec(shape, v).expect("T x C x H x W").into_pyarray(py).into_any().unbind()
            }
        })
    }

    fn __repr__(&self) -> String {
        format!("Dataset({:?}: {} videos)", self.path.display().to_string(), self.index.cells.len())
    }
}
