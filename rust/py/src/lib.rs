//! `ferroflow._native`: the PyO3 binding of ferroflow-core.
//!
//! Translation only: Python objects (callables, constants, results, exceptions)
//! are held in slabs indexed by task or run id; every scheduling decision is the
//! core's. Core errors become typed Python exceptions in [`errors`], and nowhere
//! else.
#![deny(unsafe_code)]

mod errors;
mod packs;
mod recording;
mod runner;
mod store;
mod ticker;

use pyo3::prelude::*;

/// Find a cycle among `n` tasks given `(upstream, downstream)` index pairs.
/// Returns the task indices along the cycle (first repeated last), or None.
#[pyfunction]
fn find_cycle(py: Python<'_>, n: usize, edges: Vec<(u32, u32)>) -> Option<Vec<u32>> {
    py.detach(|| ferroflow_core::graph::find_cycle(n, edges))
        .map(|c| c.into_iter().map(|t| t.0).collect())
}

/// The current task run of the calling thread, as
/// `(runner_token, run_id, task_id, map_index, run_count, loop_count, loop_result)`,
/// or None outside a task.
#[pyfunction]
fn current(py: Python<'_>) -> Option<Py<PyAny>> {
    runner::current(py)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(find_cycle, m)?)?;
    m.add_function(wrap_pyfunction!(current, m)?)?;
    m.add_class::<runner::PyRunner>()?;
    store::register(m)?;
    Ok(())
}
