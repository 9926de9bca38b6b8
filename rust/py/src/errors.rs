//! The one place where core errors become Python exceptions. The exception
//! classes live in `ferroflow.exceptions` so users can catch them by name;
//! [`PyErrKind`] names each class the binding raises, once.

use ferroflow_core::CoreError;
use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

/// The `ferroflow.exceptions` classes the binding raises.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PyErrKind {
    /// `FerroflowError`, the base class.
    Ferroflow,
    /// `CycleError`.
    Cycle,
    /// `EdgeError`.
    Edge,
    /// `ExecutorError`.
    Executor,
    /// `ResultError`.
    Result,
    /// `StoreError`.
    Store,
    /// `TaskDefinitionError`.
    TaskDefinition,
}

impl PyErrKind {
    /// The class name in `ferroflow.exceptions`.
    pub fn class_name(self) -> &'static str {
        match self {
            PyErrKind::Ferroflow => "FerroflowError",
            PyErrKind::Cycle => "CycleError",
            PyErrKind::Edge => "EdgeError",
            PyErrKind::Executor => "ExecutorError",
            PyErrKind::Result => "ResultError",
            PyErrKind::Store => "StoreError",
            PyErrKind::TaskDefinition => "TaskDefinitionError",
        }
    }

    /// Every kind (a test checks each class exists in `ferroflow.exceptions`).
    pub const ALL: [PyErrKind; 7] = [
        PyErrKind::Ferroflow,
        PyErrKind::Cycle,
        PyErrKind::Edge,
        PyErrKind::Executor,
        PyErrKind::Result,
        PyErrKind::Store,
        PyErrKind::TaskDefinition,
    ];
}

/// `ferroflow.exceptions.<class>(*args)` as an error to raise (or the error met
/// building it).
fn exception<'py>(py: Python<'py>, kind: PyErrKind, args: impl PyCallArgs<'py>) -> PyErr {
    let made = py
        .import("ferroflow.exceptions")
        .and_then(|m| m.getattr(kind.class_name()))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Raise `ferroflow.exceptions.<kind>(message)`.
pub fn ff_error(py: Python<'_>, kind: PyErrKind, message: String) -> PyErr {
    exception(py, kind, (message,))
}

/// The exception class of a core error: exhaustive, so a new core error must be
/// given its class here.
fn kind_of(err: &CoreError) -> PyErrKind {
    match err {
        CoreError::Cycle(_) => PyErrKind::Cycle,
        CoreError::SelfEdge(_) | CoreError::UnknownTask { .. } => PyErrKind::Edge,
        CoreError::UnknownRun(_)
        | CoreError::NotRunning { .. }
        | CoreError::NotPaused { .. }
        | CoreError::TooManyRuns(_) => PyErrKind::Ferroflow,
    }
}

/// Convert a core error into its typed Python exception.
pub fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    let kind = kind_of(&err);
    if let CoreError::Cycle(mut names) = err {
        // CycleError(tasks) names each task once; its message closes the loop.
        names.pop();
        return exception(py, kind, (names,));
    }
    ff_error(py, kind, err.to_string())
}

/// `(class name, ...)` of every exception class the binding raises, for the
/// test that checks them against `ferroflow.exceptions`.
#[pyfunction]
pub fn error_classes() -> Vec<&'static str> {
    PyErrKind::ALL.iter().map(|k| k.class_name()).collect()
}

/// Whether `e` is a Ctrl-C (`KeyboardInterrupt`) that arrived while Python code ran
/// under a call whose errors the binding handles (a pack write, the progress callback);
/// if so, it is raised again in the main thread at the run loop's next signal check,
/// so that it still stops the run instead of passing for that call's failure.
pub fn keep_interrupt(py: Python<'_>, e: &PyErr) -> bool {
    if !e.is_instance_of::<PyKeyboardInterrupt>(py) {
        return false;
    }
    if let Ok(thread) = py.import("_thread") {
        let _ = thread.call_method0("interrupt_main");
    }
    true
}
