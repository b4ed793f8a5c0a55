//! `simulate(raw=True)` and `extract`: raw fields of view simulated with ground truth, and
//! turned into single-cell videos, as `molclip simulate --raw` and `molclip extract` do.

use std::path::{Path, PathBuf};

use mitosim::{DatasetPlan, RawFormat};
use molclip_extract::{CropFormat, ExtractConfig, ExtractOptions, SplitPolicy};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::progress::PyProgress;
use crate::{py_err, py_msg};

/// Writes simulated raw fields (three stains, ground-truth masks and tracks) into `out`.
#[pyfunction]
#[pyo3(signature = (out, preset="tiny", config=None, seed=None, field_size=None, raw_format=None, force=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn simulate_raw<'py>(
    py: Python<'py>,
    out: PathBuf,
    preset: &str,
    config: Option<PathBuf>,
    seed: Option<u64>,
    field_size: Option<usize>,
    raw_format: Option<&str>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cfg = crate::data::sim_config(preset, config.as_deref(), seed)?;
    if let Some(side) = field_size {
        cfg.raw.field_size = side;
    }
    if let Some(format) = raw_format {
        cfg.raw.format = format.parse::<RawFormat>().map_err(py_msg)?;
    }
    cfg.validate().map_err(py_err)?;
    let progress = PyProgress::new(progress);
    let report = py.detach(|| {
        let plan = DatasetPlan::new(cfg, Path::new(".")).map_err(py_err)?;
        use molclip_experiment::Progress;
        progress.start("simulating fields", mitosim::field::field_jobs(&plan).len() as u64);
        let report = mitosim::generate_raw(&plan, &out, force, &|| progress.advance(1));
        progress.finish();
        report.map_err(|e| py_msg(format!("writing {}: {}", out.display(), molclip_core::error_text(&e))))
    })?;
    let d = PyDict::new(py);
    d.set_item("path", &out)?;
    d.set_item("fields", report.fields)?;
    d.set_item("tracks", report.tracks)?;
    d.set_item("whole_tracks", report.whole_tracks)?;
    d.set_item("seconds", report.seconds)?;
    Ok(d)
}

/// Segments, tracks and crops the cells of the raw fields under `raw` into a dataset at `out`.
#[pyfunction]
#[pyo3(signature = (raw, out, config_path=None, config_json=None, split="random", seed=0, format=None,
                    annotation=None, masks=None, qc=None, force=false, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn extract<'py>(
    py: Python<'py>,
    raw: PathBuf,
    out: PathBuf,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    split: &str,
    seed: u64,
    format: Option<&str>,
    annotation: Option<PathBuf>,
    masks: Option<PathBuf>,
    qc: Option<PathBuf>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cfg = match (&config_path, &config_json) {
        (Some(path), _) => ExtractConfig::from_toml_file(path).map_err(py_err)?,
        (None, Some(json)) => {
            ExtractConfig::from_toml_str(&crate::toml_from_json(json)?, Path::new("config")).map_err(py_err)?
        }
        (None, None) => ExtractConfig::default(),
    };
    if let Some(format) = format {
        cfg.crop.format = format.parse::<CropFormat>().map_err(py_msg)?;
    }
    let options = ExtractOptions {
        split: split.parse::<SplitPolicy>().map_err(py_msg)?,
        seed,
        qc,
        overwrite: force,
        annotation,
        masks,
    };
    let progress = PyProgress::new(progress);
    let report = py.detach(|| {
        use molclip_experiment::Progress;
        let fields = molclip_extract::discover(&raw).map_err(py_err)?;
        progress.start("extracting fields", fields.len() as u64);
        let report = molclip_extract::extract(&raw, &fields, &out, &cfg, &options, &|| progress.advance(1));
        progress.finish();
        report.map_err(|e| {
            py_msg(format!("extracting {} into {}: {}", raw.display(), out.display(), molclip_core::error_text(&e)))
        })
    })?;
    let d = PyDict::new(py);
    d.set_item("path", &out)?;
    d.set_item("fields", report.fields)?;
    d.set_item("frames", report.frames)?;
    d.set_item("tracks", report.tracks)?;
    let videos = PyDict::new(py);
    for (name, n) in ["train", "query", "gallery", "novel"].iter().zip(report.videos) {
        videos.set_item(name, n)?;
    }
    d.set_item("videos", videos)?;
    d.set_item("unannotated", report.unannotated)?;
    d.set_item("seconds", report.seconds)?;
    Ok(d)
}
