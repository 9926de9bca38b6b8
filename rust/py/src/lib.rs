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

/// Whether a run that ends with state `code` (and, for a failure, `cause`, one
/// of `CAUSE_*`) is retried when it has `retries_left`: the core's one retry
/// rule, asked by the run hook so state handlers see `Failed` then `Retrying`
/// exactly when the core will retry.
#[pyfunction]
fn will_retry(code: u8, cause: u8, retries_left: bool) -> bool {
    runner::hook_outcome(code, None, cause).is_retried(retries_left)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(find_cycle, m)?)?;
    m.add_function(wrap_pyfunction!(current, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_classes, m)?)?;
    m.add_function(wrap_pyfunction!(will_retry, m)?)?;
    m.add_class::<runner::PyRunner>()?;
    m.add_class::<runner::PyLane>()?;
    // State codes, by name, as the core defines them: Python's state classes
    // and the executors take their codes from here.
    let codes = pyo3::types::PyDict::new(m.py());
    for k in ferroflow_core::StateKind::ALL {
        codes.set_item(k.name(), k as u8)?;
    }
    m.add("STATE_CODES", codes)?;
    m.add("CAUSE_UNMATCHED", runner::CAUSE_UNMATCHED)?;
    m.add("CAUSE_MATCHED", runner::CAUSE_MATCHED)?;
    m.add("CAUSE_FAIL_SIGNAL", runner::CAUSE_FAIL_SIGNAL)?;
    m.add("CAUSE_WORKER_LOST", runner::CAUSE_WORKER_LOST)?;
    m.add("CAUSE_INTERNAL", runner::CAUSE_INTERNAL)?;
    store::register(m)?;
    Ok(())
}
