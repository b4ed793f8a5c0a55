//! molclip from Python: the native module `molclip._molclip`, which the pure-Python package
//! `molclip` (python/molclip) wraps into its documented API. NumPy arrays go in and come out
//! without copies where the layout allows; the GIL is released while Rust works; errors
//! become `molclip.MolclipError` carrying the Rust message.
//!
//! The work is done by the library crates (molclip-experiment and below), as for the CLI:
//! this crate converts arguments and results, and nothing else.

mod chem;
mod data;
mod eval;
mod extract;
mod progress;
mod run;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _molclip,
    MolclipError,
    PyException,
    "An error from molclip: bad input (a file, a field, a SMILES), or work that failed; the \
     message says which and what was expected."
);

/// A Rust error as a `MolclipError`.
fn py_err(error: impl std::error::Error + 'static) -> PyErr {
    MolclipError::new_err(molclip_core::error_text(&error))
}

/// A message as a `MolclipError`.
fn py_msg(text: impl Into<String>) -> PyErr {
    MolclipError::new_err(text.into())
}

/// A config given from Python as a dict (sent as JSON) in the TOML that configs are read from.
fn toml_from_json(json: &str) -> PyResult<String> {
    let value: toml::Value = serde_json::from_str(json).map_err(|e| py_msg(format!("config: {e}")))?;
    toml::to_string(&value).map_err(|e| py_msg(format!("config: {e}")))
}

/// The allocator of the module's Rust side (mimalloc; see [`molclip_cpu::allocator`]).
#[global_allocator]
static ALLOCATOR: molclip_cpu::allocator::Allocator = molclip_cpu::allocator::Allocator;

/// The native module.
#[pymodule]
fn _molclip(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Long enough for a training step to reuse the memory of the one before.
    molclip_cpu::allocator::keep_freed_memory(molclip_cpu::allocator::KeepFreed::For(10_000));
    // A typo in MOLCLIP_CPU fails the import instead of running at full width unnoticed.
    molclip_cpu::check_cap().map_err(py_err)?;
    m.add("MolclipError", m.py().get_type::<MolclipError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(chem::featurize, m)?)?;
    m.add_function(wrap_pyfunction!(chem::morgan, m)?)?;
    m.add_function(wrap_pyfunction!(eval::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(eval::tsne, m)?)?;
    m.add_function(wrap_pyfunction!(data::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(extract::simulate_raw, m)?)?;
    m.add_function(wrap_pyfunction!(extract::extract, m)?)?;
    m.add_class::<data::Dataset>()?;
    m.add_class::<run::Run>()?;
    m.add_function(wrap_pyfunction!(run::train, m)?)?;
    Ok(())
}
