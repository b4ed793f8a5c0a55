//! `evaluate`: the MitoReID protocol on an embedding matrix and its label columns.

use molclip_eval::{EmbeddingSet, Features, LabelColumns, SetEvaluation};
use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::{py_err, py_msg};

/// A 2-D float32 or float64 array, borrowed; C-contiguous arrays are read in place.
enum Matrix<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

impl<'py> Matrix<'py> {
    fn extract(array: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = array.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Matrix::F32(a));
        }
        if let Ok(a) = array.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Matrix::F64(a));
        }
        Err(pyo3::exceptions::PyTypeError::new_err(
            "embeddings: expected a 2-D numpy array of float32 or float64 (rows are videos)",
        ))
    }

    fn cols(&self) -> usize {
        match self {
            Matrix::F32(a) => a.shape()[1],
            Matrix::F64(a) => a.shape()[1],
        }
    }

    /// The values, row-major; `None` when the array is not C-contiguous.
    fn features(&self) -> Option<Features<'_>> {
        match self {
            Matrix::F32(a) => a.as_slice().ok().map(Features::F32),
            Matrix::F64(a) => a.as_slice().ok().map(Features::F64),
        }
    }
}

/// `molclip evaluate --json`'s result, as JSON text, for `embeddings` (`[N, D]`, float32 or
/// float64; C-contiguous arrays are read without a copy) and its label columns, one value
/// per row. Without the GIL.
#[pyfunction]
#[pyo3(signature = (embeddings, set, replicate, drug, moa, max_rank=molclip_eval::DEFAULT_MAX_RANK, novel_k=10))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    embeddings: &Bound<'_, PyAny>,
    set: Vec<String>,
    replicate: Vec<String>,
    drug: Vec<String>,
    moa: Vec<String>,
    max_rank: usize,
    novel_k: usize,
) -> PyResult<String> {
    if max_rank == 0 || novel_k == 0 {
        return Err(py_msg("max_rank and novel_k: expected at least 1"));
    }
    let matrix = Matrix::extract(embeddings)?;
    let cols = matrix.cols();
    let features = matrix.features().ok_or_else(|| py_msg("embeddings: expected a C-contiguous array"))?;
    let labels = LabelColumns { set: &set, replicate: &replicate, drug: &drug, moa: &moa };
    py.detach(|| {
        let set = EmbeddingSet::from_columns(features, cols, &labels).map_err(py_err)?;
        let result = SetEvaluation::new(&set, max_rank, novel_k).map_err(py_err)?;
        serde_json::to_string(&result).map_err(py_err)
    })
}

/// 2-D t-SNE coordinates (float64 `[n, 2]`) of float32 rows `[n, d]` under cosine
/// distances: the report's embedding map. Deterministic for a seed. Without the GIL.
#[pyfunction]
#[pyo3(signature = (embeddings, perplexity=30.0, iterations=750, seed=0))]
pub fn tsne<'py>(
    py: Python<'py>,
    embeddings: numpy::PyReadonlyArray2<'py, f32>,
    perplexity: f64,
    iterations: usize,
    seed: u64,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    let dim = embeddings.shape()[1];
    let rows = embeddings.as_slice().map_err(|_| py_msg("embeddings: expected a C-contiguous array"))?;
    let cfg = molclip_report::TsneConfig { perplexity, iterations, seed, ..Default::default() };
    let points = py.detach(|| molclip_report::tsne(rows, dim, &cfg)).map_err(py_err)?;
    let flat: Vec<f64> = points.iter().flatten().copied().collect();
    let array = numpy::ndarray::Array2::from_shape_vec((points.len(), 2), flat).expect("n x 2 values");
    Ok(numpy::IntoPyArray::into_pyarray(array, py))
}
