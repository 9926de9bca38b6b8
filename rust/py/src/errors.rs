//! The one place where core errors become Python exceptions. The exception
//! classes live in `ferroflow.exceptions` so users can catch them by name.

use ferroflow_core::CoreError;
use pyo3::prelude::*;

/// Raise `ferroflow.exceptions.<class_name>(message)`.
pub fn ff_error(py: Python<'_>, class_name: &str, message: String) -> PyErr {
    let made = py
        .import("ferroflow.exceptions")
        .and_then(|m| m.getattr(class_name))
        .and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Convert a core error into its typed Python exception.
pub fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    let class = match &err {
        CoreError::Cycle(_) => "CycleError",
        CoreError::SelfEdge(_) | CoreError::UnknownTask { .. } => "EdgeError",
        CoreError::UnknownRun(_) | CoreError::NotRunning { .. } | CoreError::TooManyRuns(_) => {
            "FerroflowError"
        }
    };
    if let CoreError::Cycle(mut names) = err {
        // CycleError(tasks) names each task once; its message closes the loop.
        names.pop();
        let made = py
            .import("ferroflow.exceptions")
            .and_then(|m| m.getattr("CycleError"))
            .and_then(|cls| cls.call1((names,)));
        return match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        };
    }
    ff_error(py, class, err.to_string())
}
