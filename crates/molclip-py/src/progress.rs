//! Progress from Rust to a Python object (the package's tqdm bars, or anything with the same
//! methods), and Ctrl-C from Python to Rust.

use molclip_experiment::Progress;
use std::sync::Mutex;

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

/// Forwards [`Progress`] to a Python object with methods `start(what, total)`,
/// `set_total(n)`, `advance(n)`, `set_position(n)`, `message(text)`, `finish()` and
/// `note(line)`; `None` shows nothing. Called from any thread, with or without the GIL: each
/// call takes it for as long as the method runs. An exception raised by the object is
/// reported as unraisable and the work goes on, except a KeyboardInterrupt (Ctrl-C handled
/// while the object's Python code ran), which is kept for [`PyProgress::interrupt`].
pub struct PyProgress {
    sink: Option<Py<PyAny>>,
    interrupt: Mutex<Option<PyErr>>,
}

impl PyProgress {
    /// Progress shown by `sink` (`None`: nothing).
    pub fn new(sink: Option<Py<PyAny>>) -> Self {
        Self { sink, interrupt: Mutex::new(None) }
    }

    /// A Ctrl-C (or another signal whose Python handler raises) since the last call, as the
    /// exception it raised; `None` when there was none. Only the main thread sees signals, as
    /// in Python.
    pub fn interrupt(&self) -> Option<PyErr> {
        let kept = self.interrupt.lock().unwrap_or_else(|e| e.into_inner()).take();
        kept.or_else(|| Python::attach(|py| py.check_signals().err()))
    }

    fn call<A: for<'py> PyCallArgs<'py>>(&self, method: &str, args: A) {
        if let Some(sink) = &self.sink {
            Python::attach(|py| {
                if let Err(e) = sink.call_method1(py, method, args) {
                    if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                        self.interrupt.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    } else {
                        e.write_unraisable(py, Some(sink.bind(py)));
                    }
                }
            });
        }
    }
}

impl Progress for PyProgress {
    fn start(&self, what: &str, total: u64) {
        self.call("start", (what, total));
    }
    fn set_total(&self, total: u64) {
        self.call("set_total", (total,));
    }
    fn advance(&self, n: u64) {
        self.call("advance", (n,));
    }
    fn set_position(&self, position: u64) {
        self.call("set_position", (position,));
    }
    fn message(&self, message: &str) {
        self.call("message", (message,));
    }
    fn finish(&self) {
        self.call("finish", ());
    }
    fn note(&self, line: &str) {
        self.call("note", (line,));
    }
}
