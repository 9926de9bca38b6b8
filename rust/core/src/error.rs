//! The core's one error type. The binding maps each variant to a typed Python
//! exception in exactly one place.

use thiserror::Error;

/// Everything that can go wrong when the host hands the core bad input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The graph has a cycle; the tasks on it are listed in order (first repeated last).
    #[error("cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// An edge names a task id that does not exist.
    #[error("edge {edge} refers to task {task}, but the graph has only {n_tasks} tasks")]
    UnknownTask {
        edge: usize,
        task: u32,
        n_tasks: usize,
    },
    /// An edge from a task to itself.
    #[error("task '{0}' cannot depend on itself")]
    SelfEdge(String),
    /// A run id the host passed in does not exist.
    #[error("unknown task run {0}")]
    UnknownRun(u32),
    /// The host reported an outcome for a run that is not running.
    #[error("task run {run} is not running (state {state})")]
    NotRunning { run: u32, state: &'static str },
    /// Only a paused run can be approved.
    #[error("task run {run} is not paused (state {state}): only a paused run can be approved")]
    NotPaused { run: u32, state: &'static str },
    /// More runs than the run table can index.
    #[error("too many task runs: the run table holds at most {0}")]
    TooManyRuns(u64),
}
