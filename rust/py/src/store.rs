//! The run store seen from Python: `Store` (reads, and the few direct writes:
//! cache entries, the interrupted-run fixup) and `Recorder` (the writer thread a
//! run records through). Translation only: every query is the core's
//! ([`ferroflow_core::store`]); rows become plain dicts of str/int/float/None.
//!
//! Every [`StoreError`] becomes `ferroflow.exceptions.StoreError` with the core's
//! message (which names the store's path and says what to do), in [`store_err`].
//! Store I/O runs with the GIL released.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ferroflow_core::store::{
    self as core_store, CacheRow, Event, FinishedTaskRun, FlowRunRow, JournalFold, LogLine, LogRow,
    NewTaskRun, Recorder, Store, StoreError, TaskRunFilter, TaskRunRow, TransitionItem,
    TransitionRow,
};
use ferroflow_core::{RunId, StateKind, TaskId};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors::{PyErrKind, ff_error};
use crate::recording::recorder_for;

/// `ferroflow.exceptions.StoreError` with the core error's message.
pub(crate) fn store_err(py: Python<'_>, err: &StoreError) -> PyErr {
    ff_error(py, PyErrKind::Store, err.to_string())
}

/// Run store I/O `f` with the GIL released; its error becomes a StoreError.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, StoreError> + Send,
) -> PyResult<T> {
    py.detach(f).map_err(|e| store_err(py, &e))
}

/// This machine's name as the run store records it (`socket.gethostname()`), so
/// that the recorder and the interrupted-run fixup agree on it. Read from
/// `os.uname().nodename` where there is one (the same name: `gethostname(2)` returns
/// the node name uname reports), because importing `socket` is a good part of a
/// recorded first run's cost in a fresh process.
pub(crate) fn host_name(py: Python<'_>) -> PyResult<String> {
    let os = py.import("os")?;
    if os.hasattr("uname")? {
        return os.call_method0("uname")?.getattr("nodename")?.extract();
    }
    py.import("socket")?.call_method0("gethostname")?.extract()
}

/// The [`StateKind`] named `name` (e.g. `"Success"`), or a ValueError.
fn state_kind(name: &str) -> PyResult<StateKind> {
    core_store::state_from_name(name).ok_or_else(|| {
        let known: Vec<&str> = StateKind::ALL.iter().map(|k| k.name()).collect();
        PyValueError::new_err(format!(
            "unknown state name {name:?}: expected one of {}",
            known.join(", ")
        ))
    })
}

/// A cache entry as `Store.cache_put` and `Recorder.cache_put` take it.
#[allow(clippy::too_many_arguments)]
fn cache_row(
    task_key: String,
    cache_key: String,
    result_location: String,
    inputs_hash: &str,
    created: Option<f64>,
    expires: Option<f64>,
    serializer: &str,
) -> CacheRow {
    CacheRow {
        task_key,
        cache_key,
        inputs_hash: inputs_hash.to_owned(),
        created: created.unwrap_or_else(core_store::now),
        expires,
        result_location,
        serializer: serializer.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Rows as dicts.

fn flow_run_dict<'py>(py: Python<'py>, r: FlowRunRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", r.id)?;
    d.set_item("flow_name", r.flow_name)?;
    d.set_item("parameters_json", r.parameters_json)?;
    d.set_item("state", r.state)?;
    d.set_item("message", r.message)?;
    d.set_item("started", r.started)?;
    d.set_item("ended", r.ended)?;
    d.set_item("pid", r.pid)?;
    d.set_item("host", r.host)?;
    d.set_item("resumed_from", r.resumed_from)?;
    Ok(d)
}

fn task_run_dict<'py>(py: Python<'py>, r: TaskRunRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run", r.run.0)?;
    d.set_item("task", r.task.0)?;
    d.set_item("task_name", &*r.task_name)?;
    d.set_item("map_index", r.map_index)?;
    d.set_item("run_count", r.run_count)?;
    d.set_item("state", r.state.name())?;
    d.set_item("message", r.message)?;
    d.set_item("started", r.started)?;
    d.set_item("ended", r.ended)?;
    d.set_item("result_location", r.result_location)?;
    Ok(d)
}

fn transition_dict<'py>(py: Python<'py>, r: TransitionRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("state", r.state.name())?;
    d.set_item("message", r.message)?;
    d.set_item("at", r.at)?;
    Ok(d)
}

fn log_dict<'py>(py: Python<'py>, r: LogRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run", r.run.map(|x| x.0))?;
    d.set_item("level", r.level)?;
    d.set_item("at", r.at)?;
    d.set_item("message", r.message)?;
    Ok(d)
}

fn finished_dict<'py>(py: Python<'py>, r: FinishedTaskRun) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run", r.run.0)?;
    d.set_item("task", r.task.0)?;
    d.set_item("task_name", &*r.task_name)?;
    d.set_item("map_index", r.map_index)?;
    d.set_item("state", r.state.name())?;
    d.set_item("result_location", r.result_location)?;
    Ok(d)
}

/// `"<pack>#<offset>:<length>"` split into its parts (as `results._split_slice`
/// does), or None for any other location.
fn split_pack_location(location: &str) -> Option<(&str, u64, u32)> {
    let (pack, span) = location.rsplit_once('#')?;
    let (offset, length) = span.split_once(':')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if pack.is_empty() || !digits(offset) || !digits(length) {
        return None;
    }
    Some((pack, offset.parse().ok()?, length.parse().ok()?))
}

fn cache_dict<'py>(py: Python<'py>, r: CacheRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("task_key", r.task_key)?;
    d.set_item("cache_key", r.cache_key)?;
    d.set_item("inputs_hash", r.inputs_hash)?;
    d.set_item("created", r.created)?;
    d.set_item("expires", r.expires)?;
    d.set_item("result_location", r.result_location)?;
    d.set_item("serializer", r.serializer)?;
    Ok(d)
}

fn dict_list<'py, T>(
    py: Python<'py>,
    rows: Vec<T>,
    conv: impl Fn(Python<'py>, T) -> PyResult<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for row in rows {
        list.append(conv(py, row)?)?;
    }
    Ok(list)
}

// ---------------------------------------------------------------------------
// Store.

/// A connection to the run store for reading (and for cache entries and the
/// interrupted-run fixup). Runs record through a `Recorder`.
///
/// `Store(path)` opens the file, creating it (and its directory) if needed; a
/// corrupt file, a newer schema, a read-only or locked store raise
/// `ferroflow.exceptions.StoreError` and leave the file untouched.
#[pyclass(frozen, name = "Store", module = "ferroflow._native")]
pub struct PyStore {
    inner: Mutex<Store>,
    path: PathBuf,
}

impl PyStore {
    /// Run `f` on the store with the GIL released; map its error.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send,
    ) -> PyResult<T> {
        detached(py, || f(&lock(&self.inner)))
    }
}

#[pymethods]
impl PyStore {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<PyStore> {
        let store = detached(py, || Store::open(&path))?;
        Ok(PyStore {
            inner: Mutex::new(store),
            path,
        })
    }

    /// The store file, as a str.
    #[getter]
    fn path(&self) -> OsString {
        self.path.clone().into_os_string()
    }

    /// The most recently started flow runs, newest first, as dicts.
    #[pyo3(signature = (limit=20))]
    fn list_flow_runs<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyList>> {
        let rows = self.with(py, |s| s.list_flow_runs(limit))?;
        dict_list(py, rows, flow_run_dict)
    }

    /// The flow run with this id or unique id prefix, as a dict; None when none
    /// matches; StoreError when the prefix matches several.
    fn flow_run<'py>(
        &self,
        py: Python<'py>,
        id_or_prefix: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let id = id_or_prefix.to_owned();
        self.with(py, move |s| s.flow_run(&id))?
            .map(|r| flow_run_dict(py, r))
            .transpose()
    }

    /// The task runs of a flow run (full id), in run-id order, each in its latest
    /// state; empty when the flow run is unknown.
    fn task_runs<'py>(&self, py: Python<'py>, flow_run_id: &str) -> PyResult<Bound<'py, PyList>> {
        let id = flow_run_id.to_owned();
        let rows = self.with(py, move |s| s.task_runs(&id))?;
        dict_list(py, rows, task_run_dict)
    }

    /// Every state transition of one task run, oldest first.
    fn transitions<'py>(
        &self,
        py: Python<'py>,
        flow_run_id: &str,
        run: u32,
    ) -> PyResult<Bound<'py, PyList>> {
        let id = flow_run_id.to_owned();
        let rows = self.with(py, move |s| s.transitions(&id, RunId(run)))?;
        dict_list(py, rows, transition_dict)
    }

    /// The log lines of a flow run and its task runs, in the order written.
    fn logs<'py>(&self, py: Python<'py>, flow_run_id: &str) -> PyResult<Bound<'py, PyList>> {
        let id = flow_run_id.to_owned();
        let rows = self.with(py, move |s| s.logs(&id))?;
        dict_list(py, rows, log_dict)
    }

    /// The next batch of a flow run's records for a server, read in one transaction:
    /// a dict ``{"run": <flow-run dict>, "structure": str | None, "journal": [(seq,
    /// bytes)], "logs": [(rowid, task_run_id | None, level, time, message)],
    /// "complete": bool}`` with the journal blobs after ``journal_after`` (about
    /// ``max_bytes``, at least one) and the log lines after ``log_after`` (at most
    /// ``max_logs``); None for an unknown flow run. What ``ferroflow.reporting`` sends:
    /// read through this module's SQLite, never a second copy in the same process.
    fn report_batch<'py>(
        &self,
        py: Python<'py>,
        flow_run_id: &str,
        journal_after: i64,
        log_after: i64,
        max_bytes: usize,
        max_logs: usize,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let id = flow_run_id.to_owned();
        let Some(batch) = self.with(py, move |s| {
            s.report_batch(&id, journal_after, log_after, max_bytes, max_logs)
        })?
        else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("run", flow_run_dict(py, batch.run)?)?;
        d.set_item("structure", batch.structure)?;
        let journal = PyList::empty(py);
        for (seq, data) in batch.journal {
            journal.append((seq, pyo3::types::PyBytes::new(py, &data)))?;
        }
        d.set_item("journal", journal)?;
        let logs = PyList::empty(py);
        for l in batch.logs {
            logs.append((l.rowid, l.run.map(|r| r.0), l.level, l.at, l.message))?;
        }
        d.set_item("logs", logs)?;
        d.set_item("complete", batch.complete)?;
        Ok(Some(d))
    }

    /// The flow's structure recorded for a flow run (full id), as JSON text, or None.
    fn flow_structure(&self, py: Python<'_>, flow_run_id: &str) -> PyResult<Option<String>> {
        let id = flow_run_id.to_owned();
        self.with(py, move |s| s.flow_structure(&id))
    }

    /// When the last record of a flow run (full id) was made (its latest task-run
    /// transition or log line, else its start), or None for an unknown flow run.
    fn last_record_time(&self, py: Python<'_>, flow_run_id: &str) -> PyResult<Option<f64>> {
        let id = flow_run_id.to_owned();
        self.with(py, move |s| s.last_record_time(&id))
    }

    /// The finished task runs of a flow run that have a result location (what a
    /// resume may reuse), in run-id order.
    fn finished_task_runs_with_results<'py>(
        &self,
        py: Python<'py>,
        flow_run_id: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let id = flow_run_id.to_owned();
        let rows = self.with(py, move |s| s.finished_task_runs_with_results(&id))?;
        dict_list(py, rows, finished_dict)
    }

    /// What a resume of a flow run can restore, compactly: one tuple per task run
    /// that ended `Success` or `Cached` with a result location, in run order:
    /// `(task, map_index or -1, task_name, location, offset, length)`. For a
    /// pack record (`"<pack>#<offset>:<length>"`) `location` is the pack and
    /// `offset`/`length` name the payload; otherwise both are -1. Repeated names
    /// and packs are one string object each.
    fn restorable<'py>(
        &self,
        py: Python<'py>,
        flow_run_id: &str,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let id = flow_run_id.to_owned();
        let rows = self.with(py, move |s| s.finished_task_runs_with_results(&id))?;
        let mut strings: HashMap<String, Bound<'py, PyString>> = HashMap::new();
        let mut intern = |text: &str| -> Bound<'py, PyString> {
            if let Some(s) = strings.get(text) {
                return s.clone();
            }
            let s = PyString::new(py, text);
            strings.insert(text.to_owned(), s.clone());
            s
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if !matches!(r.state, StateKind::Success | StateKind::Cached) {
                continue;
            }
            let (location, offset, length) = split_pack_location(&r.result_location)
                .map_or((r.result_location.as_str(), -1, -1), |(p, o, l)| {
                    (p, o as i64, i64::from(l))
                });
            let map_index = r.map_index.map_or(-1, i64::from);
            out.push(PyTuple::new(
                py,
                [
                    r.task.0.into_pyobject(py)?.into_any(),
                    map_index.into_pyobject(py)?.into_any(),
                    intern(&r.task_name).into_any(),
                    intern(location).into_any(),
                    offset.into_pyobject(py)?.into_any(),
                    length.into_pyobject(py)?.into_any(),
                ],
            )?);
        }
        Ok(out)
    }

    /// Mark a flow run `Interrupted` with this message if it is still recorded as
    /// running. Returns whether it was.
    fn mark_interrupted(&self, py: Python<'_>, id: &str, message: &str) -> PyResult<bool> {
        let (id, message) = (id.to_owned(), message.to_owned());
        self.with(py, move |s| s.mark_interrupted(&id, &message))
    }

    /// Mark `Interrupted` every flow run recorded as running on `host` (default:
    /// this machine, `socket.gethostname()`) whose process is gone. Returns the
    /// ids marked.
    #[pyo3(signature = (host=None))]
    fn fixup_interrupted(&self, py: Python<'_>, host: Option<String>) -> PyResult<Vec<String>> {
        let host = host.map_or_else(|| host_name(py), Ok)?;
        self.with(py, move |s| {
            s.fixup_interrupted(&host, core_store::pid_is_alive)
        })
    }

    /// The newest unexpired cache entry for this task and cache key at time `now`
    /// (default: the current time), as a dict, or None.
    #[pyo3(signature = (task_key, cache_key, now=None))]
    fn cache_get<'py>(
        &self,
        py: Python<'py>,
        task_key: &str,
        cache_key: &str,
        now: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let (tk, ck) = (task_key.to_owned(), cache_key.to_owned());
        let now = now.unwrap_or_else(core_store::now);
        self.with(py, move |s| s.cache_get(&tk, &ck, now))?
            .map(|r| cache_dict(py, r))
            .transpose()
    }

    /// Every unexpired cache entry for this task and cache key at time `now`
    /// (default: the current time), newest first, as dicts.
    #[pyo3(signature = (task_key, cache_key, now=None))]
    fn cache_candidates<'py>(
        &self,
        py: Python<'py>,
        task_key: &str,
        cache_key: &str,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (tk, ck) = (task_key.to_owned(), cache_key.to_owned());
        let now = now.unwrap_or_else(core_store::now);
        let rows = self.with(py, move |s| s.cache_candidates(&tk, &ck, now))?;
        dict_list(py, rows, cache_dict)
    }

    /// Add a cache entry, replacing the one with the same task key, cache key and
    /// inputs hash. `created` defaults to the current time.
    #[pyo3(signature = (
        task_key, cache_key, result_location, inputs_hash="", created=None, expires=None,
        serializer=""
    ))]
    #[allow(clippy::too_many_arguments)]
    fn cache_put(
        &self,
        py: Python<'_>,
        task_key: String,
        cache_key: String,
        result_location: String,
        inputs_hash: &str,
        created: Option<f64>,
        expires: Option<f64>,
        serializer: &str,
    ) -> PyResult<()> {
        let row = cache_row(
            task_key,
            cache_key,
            result_location,
            inputs_hash,
            created,
            expires,
            serializer,
        );
        self.with(py, move |s| s.cache_put(&row))
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.path.display().to_string())
    }
}

// ---------------------------------------------------------------------------
// Recorder.

/// The write side of the run store: one writer thread fed through a channel.
///
/// `Recorder(path)` opens the store (every error `Store(path)` can raise is
/// raised here, before anything is recorded) and starts the thread. Sending
/// never blocks and never raises for a write failure: `flush()` and `close()`
/// raise the first error the writer met. Times are seconds since the Unix
/// epoch; state names are those of `ferroflow.states` (e.g. `"Success"`).
#[pyclass(frozen, name = "Recorder", module = "ferroflow._native")]
pub struct PyRecorder {
    inner: Mutex<Option<Arc<Recorder>>>,
    path: PathBuf,
}

impl PyRecorder {
    /// The core recorder, shared (None once closed).
    fn inner(&self) -> Option<Arc<Recorder>> {
        lock(&self.inner).clone()
    }

    /// The recorder, or StoreError when it is closed.
    fn live(&self, py: Python<'_>) -> PyResult<Arc<Recorder>> {
        self.inner().ok_or_else(|| {
            ff_error(
                py,
                PyErrKind::Store,
                format!(
                    "the recorder for the run store {} is closed",
                    self.path.display()
                ),
            )
        })
    }

    fn send(&self, py: Python<'_>, event: Event) -> PyResult<()> {
        self.live(py)?.send(event);
        Ok(())
    }
}

/// Close a recorder: stop the thread if this is the last reference, else flush.
fn close_recorder(rec: Arc<Recorder>) -> Result<(), StoreError> {
    match Arc::try_unwrap(rec) {
        Ok(rec) => rec.close(),
        Err(shared) => shared.flush(),
    }
}

#[pymethods]
impl PyRecorder {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<PyRecorder> {
        let rec = detached(py, || Recorder::start(&path))?;
        Ok(PyRecorder {
            inner: Mutex::new(Some(Arc::new(rec))),
            path,
        })
    }

    /// The store file, as a str.
    #[getter]
    fn path(&self) -> OsString {
        self.path.clone().into_os_string()
    }

    /// How many records could not be written so far.
    #[getter]
    fn lost(&self) -> u64 {
        self.inner().map_or(0, |r| r.lost())
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// A flow run starts (state `Running`). `pid` defaults to this process,
    /// `host` to `socket.gethostname()`, `started` to now.
    #[pyo3(signature = (
        id, flow_name, parameters_json="{}", started=None, pid=None, host=None,
        resumed_from=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn flow_run_started(
        &self,
        py: Python<'_>,
        id: &str,
        flow_name: String,
        parameters_json: &str,
        started: Option<f64>,
        pid: Option<u32>,
        host: Option<String>,
        resumed_from: Option<String>,
    ) -> PyResult<()> {
        let host = host.map_or_else(|| host_name(py), Ok)?;
        self.send(
            py,
            Event::FlowRunStarted {
                id: Arc::from(id),
                flow_name,
                parameters_json: parameters_json.to_owned(),
                started: started.unwrap_or_else(core_store::now),
                pid: pid.unwrap_or_else(std::process::id),
                host,
                resumed_from,
            },
        )
    }

    /// Register task runs: `runs` is a list of `(run, task, task_name, map_index)`
    /// (`map_index` None for a task's own run).
    fn task_runs(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        runs: Vec<(u32, u32, String, Option<u32>)>,
    ) -> PyResult<()> {
        let runs = runs
            .into_iter()
            .map(|(run, task, name, map_index)| NewTaskRun {
                run: RunId(run),
                task: TaskId(task),
                task_name: Arc::from(name),
                map_index,
            })
            .collect();
        self.send(
            py,
            Event::TaskRuns {
                flow_run_id: Arc::from(flow_run_id),
                runs,
            },
        )
    }

    /// Register the `count` children of a mapped task: runs `first_run ..
    /// first_run + count` with map indexes `0 .. count`.
    fn map_children(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        task: u32,
        task_name: &str,
        first_run: u32,
        count: u32,
    ) -> PyResult<()> {
        self.send(
            py,
            Event::MapChildren {
                flow_run_id: Arc::from(flow_run_id),
                task: TaskId(task),
                task_name: Arc::from(task_name),
                first_run: RunId(first_run),
                count,
            },
        )
    }

    /// A task run entered state `state_name` (with its message, attempt count,
    /// time, and the result location if this transition checkpointed it).
    #[pyo3(signature = (
        flow_run_id, run, state_name, message=None, run_count=0, at=None, result_location=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        run: u32,
        state_name: &str,
        message: Option<String>,
        run_count: u32,
        at: Option<f64>,
        result_location: Option<String>,
    ) -> PyResult<()> {
        let state = state_kind(state_name)?;
        self.send(
            py,
            Event::Transition {
                flow_run_id: Arc::from(flow_run_id),
                item: TransitionItem {
                    run: RunId(run),
                    state,
                    message,
                    run_count,
                    at: at.unwrap_or_else(core_store::now),
                    result_location,
                },
            },
        )
    }

    /// Where a task run's result was written.
    fn result_location(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        run: u32,
        location: String,
    ) -> PyResult<()> {
        self.send(
            py,
            Event::ResultLocation {
                flow_run_id: Arc::from(flow_run_id),
                run: RunId(run),
                location,
            },
        )
    }

    /// A log line of the flow run (`run` None) or of one of its task runs;
    /// `level` as `logging` numbers it.
    #[pyo3(signature = (flow_run_id, run, level, message, at=None))]
    fn log(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        run: Option<u32>,
        level: i32,
        message: String,
        at: Option<f64>,
    ) -> PyResult<()> {
        self.send(
            py,
            Event::Log {
                flow_run_id: Arc::from(flow_run_id),
                run: run.map(RunId),
                level,
                at: at.unwrap_or_else(core_store::now),
                message,
            },
        )
    }

    /// Many log lines of a flow run at once: `lines` is a list of
    /// `(run or None, level, at, message)`.
    fn logs(
        &self,
        py: Python<'_>,
        flow_run_id: &str,
        lines: Vec<(Option<u32>, i32, f64, String)>,
    ) -> PyResult<()> {
        self.send(py, logs_event(flow_run_id, lines))
    }

    /// A flow run ended in its final state `state_name`.
    #[pyo3(signature = (id, state_name, message=None, ended=None))]
    fn flow_run_ended(
        &self,
        py: Python<'_>,
        id: &str,
        state_name: &str,
        message: Option<String>,
        ended: Option<f64>,
    ) -> PyResult<()> {
        let state = state_kind(state_name)?;
        self.send(
            py,
            Event::FlowRunEnded {
                id: Arc::from(id),
                state,
                message,
                ended: ended.unwrap_or_else(core_store::now),
            },
        )
    }

    /// Add or replace a cache entry (see `Store.cache_put`).
    #[pyo3(signature = (
        task_key, cache_key, result_location, inputs_hash="", created=None, expires=None,
        serializer=""
    ))]
    #[allow(clippy::too_many_arguments)]
    fn cache_put(
        &self,
        py: Python<'_>,
        task_key: String,
        cache_key: String,
        result_location: String,
        inputs_hash: &str,
        created: Option<f64>,
        expires: Option<f64>,
        serializer: &str,
    ) -> PyResult<()> {
        let row = cache_row(
            task_key,
            cache_key,
            result_location,
            inputs_hash,
            created,
            expires,
            serializer,
        );
        self.send(py, Event::CachePut(row))
    }

    /// Wait until everything sent is committed; raise the first error the writer
    /// met (StoreError), if any.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let rec = self.live(py)?;
        detached(py, || rec.flush())
    }

    /// Commit everything sent and stop the writer thread; raise the first error
    /// it met (StoreError), if any. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(rec) = lock(&self.inner).take() else {
            return Ok(());
        };
        detached(py, || close_recorder(rec))
    }

    /// `with Recorder(path) as rec:` closes it at the end of the block.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Close the recorder (see `close()`); exceptions propagate.
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("Recorder({:?})", self.path.display().to_string())
    }
}

// ---------------------------------------------------------------------------
// Functions.

fn logs_event(flow_run_id: &str, lines: Vec<(Option<u32>, i32, f64, String)>) -> Event {
    Event::Logs {
        flow_run_id: Arc::from(flow_run_id),
        lines: lines
            .into_iter()
            .map(|(run, level, at, message)| LogLine {
                run: run.map(RunId),
                level,
                at,
                message,
            })
            .collect(),
    }
}

/// Send events through the process-wide recorder of the store at `path` (the one
/// flow runs record through, so they are written in order with the run's own
/// records, by the same writer thread, in the same transactions).
fn send_shared(py: Python<'_>, path: PathBuf, events: Vec<Event>) -> PyResult<()> {
    let rec = detached(py, move || recorder_for(&path))?;
    rec.send_all(events);
    Ok(())
}

/// Record log lines of a flow run that is recording into the store at `path`:
/// `lines` is a list of `(run or None, level, at, message)`. Never blocks on the
/// disk; a write failure shows up in the run's end (`Runner.record_end`).
#[pyfunction]
fn record_logs(
    py: Python<'_>,
    path: PathBuf,
    flow_run_id: &str,
    lines: Vec<(Option<u32>, i32, f64, String)>,
) -> PyResult<()> {
    if lines.is_empty() {
        return Ok(());
    }
    send_shared(py, path, vec![logs_event(flow_run_id, lines)])
}

/// Record the flow's structure (JSON text) for a flow run that is recording into
/// the store at `path`.
#[pyfunction]
fn record_structure(
    py: Python<'_>,
    path: PathBuf,
    flow_run_id: &str,
    structure_json: String,
) -> PyResult<()> {
    let event = Event::FlowStructure {
        id: Arc::from(flow_run_id),
        structure_json,
    };
    send_shared(py, path, vec![event])
}

/// The store path for the current environment: `$FERROFLOW_HOME/ferroflow.db`,
/// else `~/.ferroflow/ferroflow.db`. StoreError when neither `FERROFLOW_HOME`
/// nor a home directory is set.
#[pyfunction]
fn default_store_path(py: Python<'_>) -> PyResult<OsString> {
    core_store::default_store_path()
        .map(PathBuf::into_os_string)
        .ok_or_else(|| {
            ff_error(
                py,
                PyErrKind::Store,
                "cannot find the run store: neither FERROFLOW_HOME nor HOME is set; set \
             FERROFLOW_HOME to a writable directory, or run with recording off"
                    .to_owned(),
            )
        })
}

/// Whether process `pid` is alive on this machine (True when it cannot tell).
#[pyfunction]
fn pid_is_alive(py: Python<'_>, pid: u32) -> bool {
    py.detach(|| core_store::pid_is_alive(pid))
}

/// Journal blobs as the core reads them.
fn blob_slices(blobs: &[Vec<u8>]) -> impl Iterator<Item = &[u8]> {
    blobs.iter().map(Vec::as_slice)
}

/// A damaged journal as a StoreError.
fn journal_err(py: Python<'_>, detail: String) -> PyErr {
    ff_error(
        py,
        PyErrKind::Store,
        format!("a flow run's task-run journal is damaged ({detail})"),
    )
}

/// One row of `JournalFold.counts`: task, task name, mapped child?, state, count.
type CountRow = (u32, String, bool, &'static str, u64);

/// One row of `JournalFold.spans`: task, task name, mapped children?, runs, earliest
/// start, latest end.
type SpanRow = (u32, String, bool, u64, Option<f64>, Option<f64>);

/// One flow run's task runs, folded incrementally from its journal blobs (as in
/// the `journal` table): `apply(blobs)` the new blobs in `seq` order as they
/// appear, then read `counts()` and `page(...)`. The server keeps one per busy
/// flow run and folds each blob once.
#[pyclass(frozen, name = "JournalFold", module = "ferroflow._native")]
pub struct PyJournalFold {
    inner: Mutex<JournalFold>,
}

#[pymethods]
impl PyJournalFold {
    #[new]
    fn new() -> PyJournalFold {
        PyJournalFold {
            inner: Mutex::new(JournalFold::new()),
        }
    }

    /// Apply these blobs, oldest first; StoreError for a damaged one.
    fn apply(&self, py: Python<'_>, blobs: Vec<Vec<u8>>) -> PyResult<()> {
        let result = py.detach(|| {
            let mut fold = lock(&self.inner);
            for blob in &blobs {
                fold.apply(blob)?;
            }
            Ok::<(), String>(())
        });
        result.map_err(|d| journal_err(py, d))
    }

    /// How many task runs are registered.
    fn __len__(&self) -> usize {
        lock(&self.inner).len() as usize
    }

    /// `(task, task_name, is_mapped_child, state, count)` rows, ordered by task, own
    /// run before children, then state. A map of a million children is a few rows.
    fn counts(&self, py: Python<'_>) -> Vec<CountRow> {
        py.detach(|| lock(&self.inner).counts())
            .into_iter()
            .map(|(t, name, child, state, n)| (t.0, name, child, state.name(), n))
            .collect()
    }

    /// `(task, task_name, is_mapped_child, runs, earliest_start, latest_end)` rows,
    /// ordered by task, own run before children: one timeline bar per task.
    fn spans(&self, py: Python<'_>) -> Vec<SpanRow> {
        py.detach(|| lock(&self.inner).spans())
            .into_iter()
            .map(|(t, name, child, n, s, e)| (t.0, name, child, n, s, e))
            .collect()
    }

    /// Task run `run` as a dict (like `Store.task_runs`), or None.
    fn get<'py>(&self, py: Python<'py>, run: u32) -> PyResult<Option<Bound<'py, PyDict>>> {
        let row = lock(&self.inner).get(RunId(run));
        row.map(|r| task_run_dict(py, r)).transpose()
    }

    /// `(total, rows)`: how many task runs match (of one `task`; only mapped
    /// `children` or only own runs; in one of `states`), and the task-run dicts
    /// (like `Store.task_runs`) from `offset`, at most `limit`, in run-id order.
    #[pyo3(signature = (task=None, children=None, states=None, offset=0, limit=100))]
    fn page<'py>(
        &self,
        py: Python<'py>,
        task: Option<u32>,
        children: Option<bool>,
        states: Option<Vec<String>>,
        offset: usize,
        limit: usize,
    ) -> PyResult<(usize, Bound<'py, PyList>)> {
        let states = states
            .unwrap_or_default()
            .iter()
            .map(|s| state_kind(s))
            .collect::<PyResult<Vec<_>>>()?;
        let filter = TaskRunFilter {
            task: task.map(TaskId),
            children,
            states,
        };
        let (total, rows) = py.detach(|| lock(&self.inner).page(&filter, offset, limit));
        Ok((total, dict_list(py, rows, task_run_dict)?))
    }
}

/// Every transition of task run `run` in these journal blobs, as dicts like
/// `Store.transitions` returns (its length is the run's state version).
#[pyfunction]
fn journal_transitions<'py>(
    py: Python<'py>,
    blobs: Vec<Vec<u8>>,
    run: u32,
) -> PyResult<Bound<'py, PyList>> {
    let rows = core_store::journal_transitions(blob_slices(&blobs), RunId(run))
        .map_err(|d| journal_err(py, d))?;
    dict_list(py, rows, transition_dict)
}

/// One journal blob holding these transitions, each `(run, state_name, message,
/// run_count, at)`, for a row of the `journal` table: how the server applies a
/// state change to a task run the journal already registers.
#[pyfunction]
fn journal_encode_transitions(
    py: Python<'_>,
    items: Vec<(u32, String, Option<String>, u32, f64)>,
) -> PyResult<Py<PyAny>> {
    let items = items
        .into_iter()
        .map(|(run, state, message, run_count, at)| {
            Ok(TransitionItem {
                run: RunId(run),
                state: state_kind(&state)?,
                message,
                run_count,
                at,
                result_location: None,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let blob = core_store::encode_transitions(&items);
    Ok(pyo3::types::PyBytes::new(py, &blob).into_any().unbind())
}

/// `blob` (a journal row) with `values` masked in its transition messages, or
/// None when none holds one (see `ferroflow_core::store::mask_journal_blob`).
#[pyfunction]
fn journal_mask(py: Python<'_>, blob: Vec<u8>, values: Vec<String>) -> PyResult<Option<Py<PyAny>>> {
    let masked = core_store::mask_journal_blob(&blob, &values).map_err(|d| journal_err(py, d))?;
    Ok(masked.map(|b| pyo3::types::PyBytes::new(py, &b).into_any().unbind()))
}

/// Mask `value` (a secret this process read) in every message and log line it
/// records from now on (see `ferroflow_core::store::mask`).
#[pyfunction]
fn mask_value(value: &str) {
    core_store::mask::add(value);
}

/// `text` with every masked value replaced by `****`.
#[pyfunction]
fn mask_text(text: &str) -> String {
    core_store::mask::apply(text).into_owned()
}

/// Register the store classes and functions in `_native`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<PyRecorder>()?;
    m.add_function(wrap_pyfunction!(default_store_path, m)?)?;
    m.add_function(wrap_pyfunction!(pid_is_alive, m)?)?;
    m.add_function(wrap_pyfunction!(record_logs, m)?)?;
    m.add_function(wrap_pyfunction!(record_structure, m)?)?;
    m.add_function(wrap_pyfunction!(mask_value, m)?)?;
    m.add_function(wrap_pyfunction!(mask_text, m)?)?;
    m.add_class::<PyJournalFold>()?;
    m.add_function(wrap_pyfunction!(journal_transitions, m)?)?;
    m.add_function(wrap_pyfunction!(journal_encode_transitions, m)?)?;
    m.add_function(wrap_pyfunction!(journal_mask, m)?)?;
    m.add("STORE_SCHEMA_VERSION", core_store::SCHEMA_VERSION)?;
    Ok(())
}
