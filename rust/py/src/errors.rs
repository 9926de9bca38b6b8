//! The one place where core errors become Python exceptions. The exception
//! classes live in `ferroflow.exceptions` so users can catch them by name.

use ferroflow_core::CoreError;
use pyo3::call::PyCallArgs;
use pyo3::prelude::*;

/// `ferroflow.exceptions.<class_name>(*args)` as an error to raise (or the
/// error met building it).
fn exception<'py>(py: Python<'py>, class_name: &str, args: impl PyCallArgs<'py>) -> PyErr {
    let made = py
        .import("ferroflow.exceptions")
        .and_then(|m| m.getattr(class_name))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Raise `ferroflow.exceptions.<class_name>(message)`.
pub fn ff_error(py: Python<'_>, class_name: &str, message: String) -> PyErr {
    exception(py, class_name, (message,))
}

/// Convert a core error into its typed Python exception.
pub fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    let class = match err {
        CoreError::Cycle(mut names) => {
            // CycleError(tasks) names each task once; its message closes the loop.
            names.pop();
            return exception(py, "CycleError", (names,));
        }
        CoreError::SelfEdge(_) | CoreError::UnknownTask { .. } => "EdgeError",
        CoreError::UnknownRun(_) | CoreError::NotRunning { .. } | CoreError::TooManyRuns(_) => {
            "FerroflowError"
        }
    };
    ff_error(py, class, err.to_string())
}
