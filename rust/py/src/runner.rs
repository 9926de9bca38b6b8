//! One `Runner` per flow run. It holds the core's [`Driver`] (and through it
//! the `Run`), the Python objects of the flow (callables, constants) and the
//! result slab, and executes what the driver asks: in the calling thread
//! (`run_local`), on native worker threads (`run_threads`), or by handing runs
//! to a Python executor (`take` / `report`, for processes and Dask).
//!
//! Hot path for a plain task: pop a ready run from the core, assemble its
//! arguments (a prebuilt tuple when they are all constants), call the user's
//! function directly, store the returned object, tell the core. No State objects
//! and no Python-level wrapper; tasks that need hooks (state handlers, caching,
//! targets, timeouts, custom triggers) go through a Python hook instead. A task
//! that only checkpoints into its pack takes the plain path too, and its value
//! is appended to the pack here (`packs`).
//!
//! The loops here execute what the core's [`Driver`] asks and nothing else: it
//! says which run to call, when to send buffered records (store events and pack
//! blocks), how long to wait and when the run is over, and it decides whether
//! a failure is retried. The binding reads the real clock around each call and
//! converts values and errors: an exception becomes an [`Outcome`] with its
//! [`Cause`] (its kind, and whether it matched `retry_on`).
//!
//! A plain task with a timeout (nothing else needing Python around the call)
//! keeps the plain path, but its calls cannot be made by the thread that must
//! give up on them: `run_local` hands consecutive timed runs in batches (sized
//! to about 2 ms of calls) to a pooled Python helper thread through a
//! [`PyLane`] and waits on it, watching the deadline of the call in progress; a
//! call past it is settled `TimedOut` and its helper abandoned (it returns to
//! the pool when the call returns), and the rest of the batch goes to another
//! helper. A worker thread of `run_threads` does the same with the timed runs
//! at the head of its queue. The helpers make the calls from Python code, so an
//! abandoned one has no Rust frame on its stack (a thread that re-enters the
//! interpreter during shutdown is ended with a forced unwind, which Rust frames
//! must not see).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferroflow_core::driver::INTERRUPTED;
use ferroflow_core::run::Source;
use ferroflow_core::store::PackItem;
use ferroflow_core::{
    Cause, Driver, EdgeId, EdgeSpec, FlowOutcome, Graph, Host, Outcome, Policy, Ready, Run, RunId,
    StateKind, Step, TaskId, TaskSpec, Transition, Trigger,
};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBytes, PyDict, PyList, PyRange, PyRangeMethods, PySequence, PyString, PyTuple,
};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{PyErrKind, ff_error, to_py};
use crate::packs::{PackSink, Written};
use crate::recording::{FlowRunMeta, Recording};
use crate::store::{host_name, store_err};

/// What the calling thread is executing, for `ferroflow.context`.
struct Current {
    token: u64,
    run: u32,
    task: u32,
    map_index: i64,
    run_count: u32,
    loop_count: u32,
    loop_result: Option<Py<PyAny>>,
    /// This attempt follows an approval (`context.resume`).
    resumed: bool,
}

impl Current {
    /// The previous loop iteration's result, or None.
    fn loop_result(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_result
            .as_ref()
            .map_or_else(|| py.None(), |v| v.clone_ref(py))
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// What the calling thread is executing, as `_native.current()` returns it.
pub fn current(py: Python<'_>) -> Option<Py<PyAny>> {
    CURRENT.with(|c| {
        let c = c.borrow();
        let c = c.as_ref()?;
        (
            c.token,
            c.run,
            c.task,
            c.map_index,
            c.run_count,
            c.loop_count,
            c.loop_result(py),
            c.resumed,
        )
            .into_pyobject(py)
            .ok()
            .map(|t| t.into_any().unbind())
    })
}

fn set_current(cur: Option<Current>) {
    CURRENT.with(|c| *c.borrow_mut() = cur);
}

/// A failure that retries cannot fix (the inputs could not be assembled, the
/// value not checkpointed, a hook misbehaved).
fn fatal(message: String) -> Outcome {
    Outcome::failed(message, Cause::Internal)
}

/// The [`Cause`] of a failure as the run hook and the executors report it
/// (`_native.CAUSE_*`).
pub fn cause_from_code(code: u8) -> Cause {
    match code {
        CAUSE_MATCHED => Cause::Raised { matched: true },
        CAUSE_UNMATCHED => Cause::Raised { matched: false },
        CAUSE_FAIL_SIGNAL => Cause::FailSignal,
        CAUSE_WORKER_LOST => Cause::WorkerLost,
        _ => Cause::Internal,
    }
}

/// `_native.CAUSE_*`: what made a run fail, as Python reports it.
pub const CAUSE_UNMATCHED: u8 = 0;
/// The error matched `retry_on`.
pub const CAUSE_MATCHED: u8 = 1;
/// The FAIL signal.
pub const CAUSE_FAIL_SIGNAL: u8 = 2;
/// The worker died.
pub const CAUSE_WORKER_LOST: u8 = 3;
/// ferroflow could not run or keep the task.
pub const CAUSE_INTERNAL: u8 = 4;

/// One argument of a task: the value of an input edge, or a constant.
enum Slot {
    Edge(EdgeId),
    Const(Py<PyAny>),
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Kind {
    /// Call the callable with the arguments.
    Call,
    /// Call the Python run hook (handlers, caching, timeouts, ...).
    Hook,
    /// The callable *is* the value (parameters, constants).
    Value,
    /// Build a list / tuple of the positional arguments.
    List,
    Tuple,
    /// Call the callable, then append the value to the task's pack (see
    /// `packs`). External executors run these through the hook instead.
    Pack,
}

struct Call {
    kind: Kind,
    func: Py<PyAny>,
    pos: Vec<Slot>,
    kw: Vec<(Py<PyString>, Slot)>,
    /// Prebuilt positional tuple when every argument is a constant.
    const_args: Option<Py<PyTuple>>,
    /// Exception type(s) that allow a retry; None means any exception.
    retry_on: Option<Py<PyAny>>,
    /// The task has state handlers: report core-decided transitions to Python.
    observed: bool,
    /// A plain task with a timeout: how long a call may take, and the message of
    /// a run that took longer (see [`PyLane`]).
    timeout: Option<(Duration, String)>,
}

impl Call {
    /// The one slot of a call of one positional argument read from an upstream run
    /// (no keywords, not all constants).
    fn single_slot(&self) -> Option<&Slot> {
        match (self.pos.as_slice(), self.kw.is_empty(), &self.const_args) {
            ([slot], true, None) => Some(slot),
            _ => None,
        }
    }
}

/// The positional arguments of a call. A call of one argument keeps the argument
/// itself: a packed segment (`take_segments`) ships it without ever making the
/// 1-tuple; whatever needs a tuple makes it then.
enum Args {
    One(Py<PyAny>),
    Many(Py<PyTuple>),
}

impl Args {
    /// The arguments as the tuple a call, a hook or an item handed out needs.
    fn tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            Args::One(a) => PyTuple::new(py, [a.bind(py)]),
            Args::Many(t) => Ok(t.bind(py).clone()),
        }
    }
}

struct Inner {
    driver: Driver,
    calls: Vec<Call>,
    results: Vec<Option<Py<PyAny>>>,
    loop_results: HashMap<u32, Py<PyAny>>,
    reference: Vec<TaskId>,
    run_hook: Option<Py<PyAny>>,
    trigger_hook: Option<Py<PyAny>>,
    observe_hook: Option<Py<PyAny>>,
    /// Resume: `restore_hook(task, map_index)` gives `(message, value,
    /// (location, offset, length))` (or just `(message, value)`) for runs
    /// finished in an earlier flow run, for the tasks flagged in `restore_tasks`.
    restore_hook: Option<Py<PyAny>>,
    restore_tasks: Vec<bool>,
    /// `approvals_hook()` gives the `(task, map_index)` pairs approved so far
    /// (for runs that wait for approval, and for a resume of a paused run).
    approvals_hook: Option<Py<PyAny>>,
    /// `progress_hook(counts)` with the number of runs per state code, at most
    /// every `PROGRESS_EVERY`.
    progress_hook: Option<Py<PyAny>>,
    /// `pack_hook(task)` opens the pack of a `Kind::Pack` task and returns what
    /// [`PackSink::from_hook`] takes.
    pack_hook: Option<Py<PyAny>>,
    /// Open packs by task (few: a linear scan).
    packs: Vec<(u32, PackSink)>,
    /// Checkpoints that were lost after their task succeeded (a failed block
    /// write), as messages for the end of the run.
    pack_problems: Vec<String>,
    /// Pack records of restored runs, by pack, waiting to be recorded.
    restored: Vec<(Arc<str>, Vec<PackItem>)>,
    last_progress: Instant,
    steps: u32,
    signal_base: Py<PyAny>,
    token: u64,
    /// The core journals transitions (for handlers or the run store).
    journaling: bool,
    journal_buf: Vec<Transition>,
    recording: Option<Recording>,
    finished: bool,
    /// How long a call of a plain timed task takes, on average (see `run_timed`).
    timed_avg: Option<Duration>,
}

/// The value in the result slab for `run`, or None when there is none (not run
/// yet, or released).
fn slab_get<'py>(py: Python<'py>, results: &[Option<Py<PyAny>>], run: RunId) -> Bound<'py, PyAny> {
    match results.get(run.idx()) {
        Some(Some(v)) => v.bind(py).clone(),
        _ => py.None().into_bound(py),
    }
}

/// The result slab seen by the core when it needs lengths for mapping.
struct LenHost<'a, 'py> {
    py: Python<'py>,
    results: &'a [Option<Py<PyAny>>],
}

fn seq_len(obj: &Bound<'_, PyAny>) -> Result<u32, String> {
    let tname = || {
        obj.get_type()
            .name()
            .map_or_else(|_| "object".to_string(), |n| n.to_string())
    };
    match obj.cast::<PySequence>() {
        Ok(seq) => match seq.len() {
            Ok(n) => u32::try_from(n).map_err(|_| format!("{n} elements are too many to map over")),
            Err(e) => Err(format!("len() of the {} failed: {e}", tname())),
        },
        Err(_) => Err(format!(
            "a {} is not a sized sequence (use a list or tuple)",
            tname()
        )),
    }
}

impl LenHost<'_, '_> {
    fn get(&self, run: RunId) -> Bound<'_, PyAny> {
        slab_get(self.py, self.results, run)
    }
}

impl Host for LenHost<'_, '_> {
    fn len_of(&mut self, run: RunId) -> Result<u32, String> {
        seq_len(&self.get(run))
    }
    fn len_of_item(&mut self, run: RunId, item: u32) -> Result<u32, String> {
        let v = self.get(run);
        let it = v
            .get_item(item)
            .map_err(|e| format!("item {item} could not be read: {e}"))?;
        seq_len(&it).map_err(|e| format!("item {item}: {e}"))
    }
}

fn parse_trigger(spec: &Bound<'_, PyTuple>) -> PyResult<Trigger> {
    let name: String = spec.get_item(0)?.extract()?;
    let bound = |i: usize| -> PyResult<Option<f64>> {
        match spec.get_item(i) {
            Ok(v) if !v.is_none() => Ok(Some(v.extract()?)),
            _ => Ok(None),
        }
    };
    Ok(match name.as_str() {
        "all_successful" => Trigger::AllSuccessful,
        "all_failed" => Trigger::AllFailed,
        "any_successful" => Trigger::AnySuccessful,
        "any_failed" => Trigger::AnyFailed,
        "all_finished" | "always_run" => Trigger::AllFinished,
        "manual_only" => Trigger::ManualOnly,
        "not_all_skipped" => Trigger::NotAllSkipped,
        "some_successful" => Trigger::SomeSuccessful {
            at_least: bound(1)?,
            at_most: bound(2)?,
        },
        "some_failed" => Trigger::SomeFailed {
            at_least: bound(1)?,
            at_most: bound(2)?,
        },
        "custom" => Trigger::Custom,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown trigger kind '{other}'"
            )));
        }
    })
}

fn parse_slot(n_edges: usize, slot: &Bound<'_, PyTuple>) -> PyResult<Slot> {
    let tag: u8 = slot.get_item(0)?.extract()?;
    let v = slot.get_item(1)?;
    if tag == 0 {
        let e: u32 = v.extract()?;
        if e as usize >= n_edges {
            return Err(PyValueError::new_err(format!(
                "argument refers to unknown edge {e}"
            )));
        }
        Ok(Slot::Edge(EdgeId(e)))
    } else {
        Ok(Slot::Const(v.unbind()))
    }
}

fn parse_call(py: Python<'_>, n_edges: usize, t: &Bound<'_, PyTuple>) -> PyResult<Call> {
    let kind = match t.get_item(0)?.extract::<u8>()? {
        0 => Kind::Call,
        1 => Kind::Hook,
        2 => Kind::Value,
        3 => Kind::List,
        4 => Kind::Tuple,
        5 => Kind::Pack,
        k => return Err(PyValueError::new_err(format!("unknown call kind {k}"))),
    };
    let func = t.get_item(1)?.unbind();
    let mut pos = Vec::new();
    for s in t.get_item(2)?.try_iter()? {
        pos.push(parse_slot(n_edges, s?.cast::<PyTuple>()?)?);
    }
    let mut kw = Vec::new();
    for item in t.get_item(3)?.try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>()?;
        let name = pair.get_item(0)?.cast_into::<PyString>()?.unbind();
        kw.push((
            name,
            parse_slot(n_edges, pair.get_item(1)?.cast::<PyTuple>()?)?,
        ));
    }
    let retry_on: Option<Py<PyAny>> = t.get_item(4)?.extract()?;
    let observed: bool = t.get_item(5)?.extract()?;
    let timeout = match t.get_item(6) {
        Ok(v) if !v.is_none() => {
            let (secs, message): (f64, String) = v.extract()?;
            let Ok(d) = Duration::try_from_secs_f64(secs) else {
                return Err(PyValueError::new_err(format!("bad timeout {secs}")));
            };
            Some((d, message))
        }
        _ => None,
    };
    let const_args = if kw.is_empty() && pos.iter().all(|s| matches!(s, Slot::Const(_))) {
        let vals = pos.iter().map(|s| match s {
            Slot::Const(v) => v.clone_ref(py),
            Slot::Edge(_) => py.None(),
        });
        Some(PyTuple::new(py, vals)?.unbind())
    } else {
        None
    };
    Ok(Call {
        kind,
        func,
        pos,
        kw,
        const_args,
        retry_on,
        observed,
        timeout,
    })
}

impl Inner {
    fn result<'py>(&self, py: Python<'py>, r: RunId) -> Bound<'py, PyAny> {
        slab_get(py, &self.results, r)
    }

    fn value_of<'py>(&self, py: Python<'py>, e: EdgeId, run: RunId) -> PyResult<Bound<'py, PyAny>> {
        /// `v[i]`: read straight from an exact list or tuple (no index object, no
        /// `__getitem__` dispatch); any other sequence through `__getitem__`.
        fn item_at<'py>(v: &Bound<'py, PyAny>, i: u32) -> PyResult<Bound<'py, PyAny>> {
            if let Ok(list) = v.cast_exact::<PyList>() {
                return list.get_item(i as usize);
            }
            if let Ok(tuple) = v.cast_exact::<PyTuple>() {
                return tuple.get_item(i as usize);
            }
            v.get_item(i)
        }
        let v = match self.run().source(e, run) {
            Source::Run(r) => self.result(py, r),
            Source::Item(r, i) => item_at(&self.result(py, r), i)?,
            Source::Nested(r, k, i) => item_at(&item_at(&self.result(py, r), k)?, i)?,
            Source::Children(base, n) => {
                PyList::new(py, (base.0..base.0 + n).map(|r| self.result(py, RunId(r))))?.into_any()
            }
        };
        let spec = self.run().graph().edge(e);
        if spec.flattened && !spec.mapped {
            let out = PyList::empty(py);
            for sub in v.try_iter()? {
                for x in sub?.try_iter()? {
                    out.append(x?)?;
                }
            }
            return Ok(out.into_any());
        }
        Ok(v)
    }

    fn slot<'py>(&self, py: Python<'py>, s: &Slot, run: RunId) -> PyResult<Bound<'py, PyAny>> {
        match s {
            Slot::Const(v) => Ok(v.bind(py).clone()),
            Slot::Edge(e) => self.value_of(py, *e, run),
        }
    }

    fn args<'py>(
        &self,
        py: Python<'py>,
        call: &Call,
        run: RunId,
    ) -> PyResult<(Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>)> {
        if let Some(t) = &call.const_args {
            return Ok((t.bind(py).clone(), None));
        }
        let mut pos = Vec::with_capacity(call.pos.len());
        for s in &call.pos {
            pos.push(self.slot(py, s, run)?);
        }
        let kw = if call.kw.is_empty() {
            None
        } else {
            let d = PyDict::new(py);
            for (k, s) in &call.kw {
                d.set_item(k.bind(py), self.slot(py, s, run)?)?;
            }
            Some(d)
        };
        Ok((PyTuple::new(py, pos)?, kw))
    }

    /// Turn an exception raised by a task into an outcome and a stored value.
    fn classify(&self, py: Python<'_>, err: PyErr, retry_on: Option<&Py<PyAny>>) -> Settled {
        if err.is_instance_of::<PyKeyboardInterrupt>(py) {
            let v = err.into_value(py).into_any();
            return (
                Outcome::Interrupted(Some("Interrupted by the user (KeyboardInterrupt).".into())),
                Some(v),
            );
        }
        let value = err.value(py).clone();
        // Keep the traceback on the exception object users get in the Failed state.
        if let Some(tb) = err.traceback(py) {
            let _ = value.setattr("__traceback__", tb);
        }
        if err.is_instance(py, self.signal_base.bind(py)) {
            let code: u8 = value
                .getattr("code")
                .and_then(|c| c.extract())
                .unwrap_or(StateKind::Failed as u8);
            let msg: Option<String> = value.getattr("message").ok().and_then(|m| m.extract().ok());
            let result = value
                .getattr("result")
                .map_or_else(|_| py.None(), Bound::unbind);
            let out = match StateKind::from_code(code) {
                Some(StateKind::Success) => Outcome::Success,
                Some(StateKind::Skipped) => Outcome::Skipped(msg),
                Some(StateKind::TriggerFailed) => Outcome::TriggerFailed(msg),
                Some(StateKind::Retrying) => Outcome::Retry(msg),
                Some(StateKind::Looped) => Outcome::Loop(msg),
                Some(StateKind::Paused) => Outcome::Paused(msg),
                _ => {
                    // FAIL: retries apply. Keep the signal itself as the result.
                    let out = Outcome::Failed {
                        message: msg,
                        cause: Cause::FailSignal,
                    };
                    return (out, Some(value.into_any().unbind()));
                }
            };
            return (out, Some(result));
        }
        let matched = match retry_on {
            None => err.is_instance_of::<pyo3::exceptions::PyException>(py),
            Some(types) => err.is_instance(py, types.bind(py)),
        };
        let repr = value
            .repr()
            .map_or_else(|_| "<unprintable error>".to_string(), |r| r.to_string());
        let out = Outcome::failed(
            ferroflow_core::store::mask::apply(&format!("Error during execution of task: {repr}"))
                .into_owned(),
            Cause::Raised { matched },
        );
        (out, Some(value.into_any().unbind()))
    }

    /// Turn a popped run into work to call, or settle it at once (constants,
    /// collections, custom triggers that say no, argument errors). Returns the
    /// work, or the outcome and value to record now.
    fn prepare_work(&mut self, py: Python<'_>, ready: Ready) -> Result<Work, Settled> {
        if let Some(hook) = &self.restore_hook
            && self
                .restore_tasks
                .get(ready.task.idx())
                .copied()
                .unwrap_or(false)
        {
            let map_index = ready.map_index.map_or(-1, i64::from);
            match hook.bind(py).call1((ready.task.0, map_index)) {
                Ok(found) if !found.is_none() => {
                    let msg = found
                        .get_item(0)
                        .ok()
                        .and_then(|m| m.extract::<String>().ok());
                    let value = found.get_item(1).map_or_else(|_| py.None(), Bound::unbind);
                    // Where the value is: recorded for this run too, so a resume
                    // of this flow run restores it again instead of re-running it.
                    if let Ok(Ok((location, offset, length))) =
                        found.get_item(2).map(|l| l.extract::<(String, i64, i64)>())
                    {
                        self.restored_location(ready.run, location, offset, length);
                    }
                    return Err((Outcome::Restored(msg), Some(value)));
                }
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("Could not restore the task from the earlier run: {e}");
                    return Err((fatal(msg), None));
                }
            }
        }
        if let Some(kind) = ready.decided {
            let msg = self.run().message(ready.run).map(str::to_string);
            return Err(self.show_handlers(py, ready, kind, msg));
        }
        if ready.custom_trigger
            && let Some(o) = self.check_trigger(py, ready)
        {
            let observed = self.calls[ready.task.idx()].observed;
            let shown = match &o {
                Outcome::Skipped(m) => Some((StateKind::Skipped, m.clone())),
                Outcome::TriggerFailed(m) => Some((StateKind::TriggerFailed, m.clone())),
                Outcome::Paused(m) => Some((StateKind::Paused, m.clone())),
                _ => None,
            };
            return Err(match shown {
                Some((kind, msg)) if observed => self.show_handlers(py, ready, kind, msg),
                _ => (o, None),
            });
        }
        let call = &self.calls[ready.task.idx()];
        if call.kind == Kind::Value {
            return Err((Outcome::Success, Some(call.func.clone_ref(py))));
        }
        let assembled = match call.single_slot() {
            // A call of one positional argument: no tuple is made for it here (a packed
            // segment keeps the argument itself; see `Args`).
            Some(slot) => self
                .slot(py, slot, ready.run)
                .map(|a| (Args::One(a.unbind()), None)),
            None => self
                .args(py, call, ready.run)
                .map(|(a, k)| (Args::Many(a.unbind()), k)),
        };
        let (args, kwargs) = match assembled {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("Could not assemble the inputs of the task: {e}");
                return Err((fatal(msg), Some(e.into_value(py).into_any())));
            }
        };
        match call.kind {
            Kind::List => {
                let list = args
                    .tuple(py)
                    .and_then(|t| PyList::new(py, t.iter()))
                    .map_or_else(|_| py.None(), |l| l.into_any().unbind());
                return Err((Outcome::Success, Some(list)));
            }
            Kind::Tuple => {
                let tuple = args
                    .tuple(py)
                    .map_or_else(|_| py.None(), |t| t.into_any().unbind());
                return Err((Outcome::Success, Some(tuple)));
            }
            _ => {}
        }
        let map_index = ready.map_index.map_or(-1, i64::from);
        let loop_result = if ready.loop_count > 0 {
            self.loop_results.get(&ready.run.0).map(|v| v.clone_ref(py))
        } else {
            None
        };
        let hook = if call.kind == Kind::Hook {
            let Some(hook) = &self.run_hook else {
                let msg = "internal error: task needs the run hook but none was given".to_string();
                return Err((fatal(msg), None));
            };
            Some(hook.clone_ref(py))
        } else {
            None
        };
        let timeout = call.timeout.as_ref().map(|(d, _)| *d);
        let (func, kwargs) = (call.func.clone_ref(py), kwargs.map(Bound::unbind));
        Ok(Work {
            current: Current {
                token: self.token,
                run: ready.run.0,
                task: ready.task.0,
                map_index,
                run_count: ready.run_count,
                loop_count: ready.loop_count,
                loop_result,
                resumed: ready.resumed,
            },
            run: ready.run,
            hook,
            func,
            args,
            kwargs,
            timeout,
        })
    }

    /// Interpret what calling a work item produced.
    fn interpret(
        &mut self,
        py: Python<'_>,
        work_run: RunId,
        hooked: bool,
        res: PyResult<Py<PyAny>>,
    ) -> Settled {
        let value = match res {
            Ok(v) => v,
            Err(e) => {
                let retry_on = self
                    .run()
                    .task_of(work_run)
                    .ok()
                    .and_then(|t| self.calls[t.idx()].retry_on.as_ref());
                return self.classify(py, e, retry_on);
            }
        };
        if !hooked {
            if let Ok(task) = self.run().task_of(work_run)
                && self.is_pack(task)
                && let Err(e) = self.pack_value(py, task, work_run, value.bind(py))
            {
                let msg = format!(
                    "The task succeeded but its result could not be written: {}",
                    e.value(py)
                );
                return (fatal(msg), Some(e.into_value(py).into_any()));
            }
            return (Outcome::Success, Some(value));
        }
        let parsed = value
            .bind(py)
            .extract::<(u8, Py<PyAny>, Option<String>, u8, Option<String>)>()
            .or_else(|_| {
                value
                    .bind(py)
                    .extract::<(u8, Py<PyAny>, Option<String>, u8)>()
                    .map(|(c, v, m, r)| (c, v, m, r, None))
            });
        match parsed {
            Ok((code, value, msg, cause, location)) => {
                if let (Some(loc), Some(rec)) = (location, self.recording.as_mut()) {
                    rec.locations.insert(work_run.0, loc);
                }
                (hook_outcome(code, msg, cause), Some(value))
            }
            Err(e) => {
                let msg = format!("internal error: the run hook returned a bad value: {e}");
                (fatal(msg), None)
            }
        }
    }

    /// Record an outcome: of a call that ran from `started` to `ended`
    /// (`called`), or of a run settled without a call. Returns true when the
    /// whole run must stop (the task was interrupted).
    fn settle(
        &mut self,
        py: Python<'_>,
        run: RunId,
        settled: Settled,
        called: Option<(Instant, Instant)>,
    ) -> PyResult<bool> {
        let when = called.map_or_else(|| Settle::At(Instant::now()), |(s, e)| Settle::Called(s, e));
        self.settle_when(py, run, settled, when)
    }

    /// [`Inner::settle`] at a given instant: a group of results that arrived
    /// together is settled at one reading of the clock.
    fn settle_when(
        &mut self,
        py: Python<'_>,
        run: RunId,
        (outcome, value): Settled,
        when: Settle,
    ) -> PyResult<bool> {
        if let Some(v) = value {
            if matches!(outcome, Outcome::Loop(_)) {
                // Kept apart from the result slot so a retry of this iteration sees it.
                self.loop_results.insert(run.0, v.clone_ref(py));
            }
            if matches!(outcome, Outcome::Failed { .. } | Outcome::TimedOut { .. })
                && let Some(rec) = self.recording.as_mut()
                && let Some(tb) = format_traceback(py, v.bind(py))
            {
                // The store keeps the traceback of every failed attempt.
                rec.log(run, 40, tb);
            }
            self.results[run.idx()] = Some(v);
        }
        let stop = match when {
            Settle::Called(started, ended) => self.driver.complete(run, outcome, started, ended),
            Settle::At(now) => self.driver.settle(run, outcome, now),
        }
        .map_err(|e| to_py(py, e))?;
        self.journal(py, true)?;
        self.drop_released();
        Ok(stop)
    }

    /// The run being executed.
    fn run(&self) -> &Run {
        self.driver.run()
    }

    /// Ask the driver what to do at `now`. Runs it settles on the way are
    /// journalled, and runs that need no call (constants, collections, a
    /// custom trigger that says no, a restored checkpoint) are settled here.
    /// Returns the work to call (and whether to flush first), or the wait or
    /// end the driver asked for.
    fn next_work(&mut self, py: Python<'_>, now: Instant) -> PyResult<Next> {
        loop {
            self.maybe_progress(py, false);
            let step = {
                let mut host = LenHost {
                    py,
                    results: &self.results,
                };
                self.driver.step(now, &mut host)
            };
            self.grow();
            self.drop_released();
            self.journal(py, false)?;
            match step {
                Step::Execute { ready, flush } => match self.prepare_work(py, ready) {
                    Ok(w) => return Ok(Next::Call(w, flush)),
                    Err(settled) => {
                        self.settle(py, ready.run, settled, None)?;
                    }
                },
                Step::Wait { until } => return Ok(Next::Wait(until)),
                Step::Done => return Ok(Next::Done),
            }
        }
    }

    /// Show a state the core (or a custom trigger) decided without executing the
    /// run to its task's handlers, through the observe hook, and settle on what
    /// they make of it: `(code, message, result)` replaces the state; a handler
    /// that raises fails the run with its message.
    fn show_handlers(
        &self,
        py: Python<'_>,
        ready: Ready,
        kind: StateKind,
        msg: Option<String>,
    ) -> Settled {
        let default = |msg: Option<String>| match kind {
            StateKind::Skipped => Outcome::Skipped(msg),
            StateKind::Paused => Outcome::Paused(msg),
            _ => Outcome::TriggerFailed(msg),
        };
        let Some(hook) = &self.observe_hook else {
            return (default(msg), None);
        };
        let shown = hook
            .bind(py)
            .call1((ready.run.0, ready.task.0, kind as u8, msg.clone()))
            .and_then(|r| r.extract::<(u8, Option<String>, Py<PyAny>)>());
        match shown {
            Ok((code, message, result)) => {
                let outcome = if code == kind as u8 {
                    default(message)
                } else {
                    hook_outcome(code, message, CAUSE_INTERNAL)
                };
                (outcome, Some(result))
            }
            Err(e) => {
                let text = e
                    .value(py)
                    .repr()
                    .map_or_else(|_| e.to_string(), |r| r.to_string());
                (
                    fatal(format!("A state handler raised an error: {text}")),
                    Some(e.into_value(py).into_any()),
                )
            }
        }
    }

    /// Ask the Python trigger hook whether a run with a custom trigger may run.
    fn check_trigger(&self, py: Python<'_>, ready: Ready) -> Option<Outcome> {
        let hook = self.trigger_hook.as_ref()?;
        let upstream: Vec<UpstreamRow> = self
            .run()
            .upstream_runs(ready.run)
            .into_iter()
            .map(|(e, runs)| {
                let states = runs
                    .into_iter()
                    .map(|r| {
                        let code = self.run().state(r).map_or(0, |s| s as u8);
                        (
                            r.0,
                            code,
                            self.run().message(r).map(str::to_string),
                            self.result(py, r).unbind(),
                        )
                    })
                    .collect();
                (e.0, self.run().reads_children(e, ready.run), states)
            })
            .collect();
        match hook
            .bind(py)
            .call1((ready.run.0, ready.task.0, upstream))
            .and_then(|r| r.extract::<(u8, Option<String>)>())
        {
            Ok((code, msg)) => match StateKind::from_code(code) {
                Some(StateKind::Running) => None,
                Some(StateKind::Paused) => Some(Outcome::Paused(msg)),
                Some(StateKind::Skipped) => Some(Outcome::Skipped(msg)),
                _ => Some(Outcome::TriggerFailed(msg)),
            },
            Err(e) => Some(Outcome::TriggerFailed(Some(format!(
                "The trigger raised an error: {e}"
            )))),
        }
    }

    /// Hand journal entries to the run store and, for tasks with state
    /// handlers, to the observe hook. `executed` runs already showed their own
    /// transitions to their handlers.
    fn journal(&mut self, py: Python<'_>, executed: bool) -> PyResult<()> {
        if !self.journaling {
            return Ok(());
        }
        let mut journal = std::mem::take(&mut self.journal_buf);
        self.driver.run_mut().take_journal(&mut journal);
        if let Some(rec) = self.recording.as_mut() {
            rec.journal(self.driver.run(), &journal);
        }
        // The observe hook is given only when some task has state handlers.
        if let Some(hook) = &self.observe_hook
            && !executed
        {
            for &(r, kind, _) in &journal {
                if matches!(kind, StateKind::Running | StateKind::Pending) {
                    continue;
                }
                let Ok(task) = self.run().task_of(r) else {
                    continue;
                };
                if !self.calls[task.idx()].observed {
                    continue;
                }
                let msg = self.run().message(r).map(str::to_string);
                // After the fact (a mapped parent, a cancel): the state stands;
                // a handler's error is recorded with the run, not raised.
                if let Err(e) = hook.bind(py).call1((r.0, task.0, kind as u8, msg))
                    && let Some(rec) = self.recording.as_mut()
                {
                    rec.log(r, 40, format!("A state handler raised an error: {e}"));
                }
            }
        }
        self.journal_buf = journal;
        Ok(())
    }

    /// Report progress now and then (cheap when no one listens).
    fn maybe_progress(&mut self, py: Python<'_>, force: bool) {
        let Some(hook) = &self.progress_hook else {
            return;
        };
        self.steps = self.steps.wrapping_add(1);
        if !force
            && (!self.steps.is_multiple_of(128) || self.last_progress.elapsed() < PROGRESS_EVERY)
        {
            return;
        }
        self.last_progress = Instant::now();
        let counts = self.run().state_counts();
        // A failing progress callback must not stop the flow run (Ctrl-C pressed
        // while it ran still does).
        if let Err(e) = hook.bind(py).call1((counts.to_vec(),)) {
            crate::errors::keep_interrupt(py, &e);
        }
    }

    /// Whether `task` checkpoints into its pack (`Kind::Pack`).
    fn is_pack(&self, task: TaskId) -> bool {
        self.calls
            .get(task.idx())
            .is_some_and(|c| c.kind == Kind::Pack)
    }

    /// Append the value of a `Kind::Pack` run to its task's pack (opened on
    /// first use).
    fn pack_value(
        &mut self,
        py: Python<'_>,
        task: TaskId,
        run: RunId,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let i = match self.packs.iter().position(|(t, _)| *t == task.0) {
            Some(i) => i,
            None => {
                let Some(hook) = &self.pack_hook else {
                    return Err(PyRuntimeError::new_err(
                        "internal error: a checkpointed task has no pack hook",
                    ));
                };
                let sink = PackSink::from_hook(&hook.bind(py).call1((task.0,))?)?;
                self.packs.push((task.0, sink));
                self.packs.len() - 1
            }
        };
        let written = self.packs[i].1.append(py, run, value)?;
        self.pack_written(i, written);
        Ok(())
    }

    /// Act on what a block write of pack `i` gave back: record the locations,
    /// or note the lost checkpoints.
    fn pack_written(&mut self, i: usize, written: Written) {
        match written {
            Written::Nothing => {}
            Written::Items(items) => {
                if let Some(rec) = self.recording.as_mut() {
                    rec.pack_locations(&self.packs[i].1.location, items);
                }
            }
            Written::Lost(why, n) => self.pack_problems.push(format!(
                "{n} checkpoints of task '{}' could not be written (they run again on \
                 resume): {why}",
                self.run()
                    .graph()
                    .tasks
                    .get(self.packs[i].0 as usize)
                    .map_or("?", |t| t.name.as_str())
            )),
        }
    }

    /// Remember where the value of a restored run lives (a pack record when
    /// `offset >= 0`), for the run store.
    fn restored_location(&mut self, run: RunId, location: String, offset: i64, length: i64) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        match (u64::try_from(offset), u32::try_from(length)) {
            (Ok(offset), Ok(length)) => {
                let item = PackItem {
                    run,
                    offset,
                    length,
                };
                match self.restored.last_mut() {
                    Some((pack, items)) if **pack == *location => items.push(item),
                    _ => self.restored.push((Arc::from(location), vec![item])),
                }
                if self.restored.iter().map(|(_, i)| i.len()).sum::<usize>() >= 8192 {
                    self.flush_restored();
                }
            }
            _ => {
                rec.locations.insert(run.0, location);
            }
        }
    }

    /// Record the buffered pack locations of restored runs.
    fn flush_restored(&mut self) {
        let restored = std::mem::take(&mut self.restored);
        if let Some(rec) = self.recording.as_mut() {
            for (pack, items) in restored {
                rec.pack_locations(&pack, items);
            }
        }
    }

    /// Write the buffered pack blocks.
    fn flush_packs(&mut self, py: Python<'_>) {
        self.flush_restored();
        for i in 0..self.packs.len() {
            let written = self.packs[i].1.flush(py);
            self.pack_written(i, written);
        }
    }

    /// Write buffered checkpoints and push buffered store events to the writer
    /// (before waiting, and at a tick).
    fn send_records(&mut self, py: Python<'_>) {
        self.flush_packs(py);
        if let Some(rec) = self.recording.as_mut() {
            rec.send();
        }
    }

    /// Drop results the core says nothing can read any more (none unless
    /// release was enabled).
    fn drop_released(&mut self) {
        for r in self.driver.run_mut().drain_released() {
            if let Some(slot) = self.results.get_mut(r.idx()) {
                *slot = None;
            }
        }
    }

    /// Make room in the result slab for runs the core added (map children).
    fn grow(&mut self) {
        let n = self.run().n_runs();
        if self.results.len() < n {
            self.results.resize_with(n, || None);
        }
    }

    /// Wait until `until` without holding the interpreter, after sending what
    /// is buffered. Returns false when Ctrl-C was pressed.
    fn wait_until(&mut self, py: Python<'_>, until: Instant) -> PyResult<bool> {
        self.send_records(py);
        if self.poll_approvals(py)? {
            return Ok(true);
        }
        let wait = until.saturating_duration_since(Instant::now());
        py.detach(|| std::thread::sleep(wait));
        interrupted(py).map(|i| !i)
    }

    /// Approve the paused runs the approvals hook names (`(task, map_index)`
    /// pairs, `map_index` -1 for a task's own run). Returns whether any was
    /// approved. Asked only while runs are paused.
    fn poll_approvals(&mut self, py: Python<'_>) -> PyResult<bool> {
        let Some(hook) = &self.approvals_hook else {
            return Ok(false);
        };
        if self.run().paused().is_empty() {
            return Ok(false);
        }
        let pairs: Vec<(u32, i64)> = hook.bind(py).call0()?.extract()?;
        let mut any = false;
        for (task, map_index) in pairs {
            let run = match (u32::try_from(map_index), self.run().children(TaskId(task))) {
                (Err(_), _) => RunId(task),
                (Ok(i), Some((base, n))) if i < n => RunId(base.0 + i),
                _ => continue,
            };
            if self.run().state(run).ok() == Some(StateKind::Paused) {
                self.driver.approve(run).map_err(|e| to_py(py, e))?;
                any = true;
            }
        }
        if any {
            self.journal(py, false)?;
        }
        Ok(any)
    }

    /// At the end of a run with paused runs: approvals given meanwhile (or
    /// before a resume) let it go on. Returns whether any was approved.
    fn approvals_at_end(&mut self, py: Python<'_>) -> PyResult<bool> {
        if self.driver.stopped().is_some() {
            return Ok(false);
        }
        self.poll_approvals(py)
    }

    /// Finish the run: write the packs and report progress a last time.
    fn end(&mut self, py: Python<'_>) -> PyResult<()> {
        self.flush_packs(py);
        self.packs.clear();
        self.maybe_progress(py, true);
        self.journal(py, false)?;
        set_current(None);
        self.finished = true;
        Ok(())
    }

    /// Stop the run (Ctrl-C, or the executor gave up): what runs or waits is
    /// Cancelled with `reason`.
    fn interrupt(&mut self, py: Python<'_>, reason: &str) -> PyResult<()> {
        self.driver.interrupt(reason);
        self.journal(py, false)
    }

    /// Run to the end, calling each task in this thread.
    fn run_local(&mut self, py: Python<'_>) -> PyResult<()> {
        let mut now = Instant::now();
        // A run handed out while a batch of timed calls was being gathered.
        let mut pending: Option<Next> = None;
        loop {
            let next = match pending.take() {
                Some(n) => n,
                None => self.next_work(py, now)?,
            };
            match next {
                Next::Call(work, flush) if work.timeout.is_some() => {
                    if flush {
                        self.send_records(py);
                    }
                    let (stop, next) = self.run_timed(py, work)?;
                    if stop {
                        break;
                    }
                    now = Instant::now();
                    pending = next;
                }
                Next::Call(work, flush) => {
                    if flush {
                        // A call not known to be quick, or a tick since the
                        // last flush: a long call must not hold back the
                        // records of the runs that finished before it.
                        self.send_records(py);
                    }
                    let run = work.run;
                    let hooked = work.hooked();
                    let res = work.call(py);
                    let ended = Instant::now();
                    let settled = self.interpret(py, run, hooked, res);
                    if self.settle(py, run, settled, Some((now, ended)))? {
                        break;
                    }
                    now = ended;
                }
                Next::Wait(until) => {
                    if !self.wait_until(py, until)? {
                        self.interrupt(py, INTERRUPTED)?;
                        break;
                    }
                    now = Instant::now();
                }
                Next::Done if self.approvals_at_end(py)? => now = Instant::now(),
                Next::Done => break,
            }
        }
        self.end(py)
    }

    /// Settle a call a worker thread reports.
    fn settle_done(&mut self, py: Python<'_>, d: Done) -> PyResult<bool> {
        let settled = if d.timed_out {
            (self.timed_out(d.run), None)
        } else {
            self.interpret(py, d.run, d.hooked, d.result)
        };
        self.settle(py, d.run, settled, Some((d.started, d.ended)))
    }

    /// The outcome of a run of a plain timed task that ran past its timeout.
    fn timed_out(&self, run: RunId) -> Outcome {
        let message = self
            .run()
            .task_of(run)
            .ok()
            .and_then(|t| self.calls[t.idx()].timeout.as_ref())
            .map(|(_, m)| m.clone());
        Outcome::TimedOut { message }
    }

    /// Call `first`, a run of a plain timed task, and the timed runs the driver
    /// hands out right after it (as many as take about [`TIMED_BATCH_TIME`]), on a
    /// pooled helper thread, waiting for them here: this thread is their
    /// watchdog. A run past its timeout is settled `TimedOut` and abandoned, and
    /// the batch goes on on another helper. Returns whether the flow run stops,
    /// and a run handed out meanwhile that is not timed (called next, here).
    fn run_timed(&mut self, py: Python<'_>, first: Work) -> PyResult<(bool, Option<Next>)> {
        let cap = timed_batch(self.timed_avg);
        let mut works = VecDeque::from([first]);
        let mut other = None;
        while works.len() < cap {
            match self.next_work(py, Instant::now())? {
                Next::Call(w, _) if w.timeout.is_some() => works.push_back(w),
                n @ Next::Call(..) => {
                    other = Some(n);
                    break;
                }
                // The driver is asked again once the batch is over.
                Next::Wait(_) | Next::Done => break,
            }
        }
        let mut lane = PyLane::submit(py, works)?;
        loop {
            let tick = Instant::now() + self.driver.policy().max_wait;
            let waited = lane.get().wait(py, tick);
            for d in lane.get().take_done() {
                self.learn_timed(&d);
                if self.settle_done(py, d)? {
                    lane.get().abandon();
                    return Ok((true, None));
                }
            }
            match waited {
                Waited::Drained => break,
                Waited::Expired(run, started, rest) => {
                    let settled = (self.timed_out(run), None);
                    if self.settle(py, run, settled, Some((started, Instant::now())))? {
                        return Ok((true, None));
                    }
                    if rest.is_empty() {
                        break;
                    }
                    lane = PyLane::submit(py, rest)?;
                }
                Waited::Tick => {}
            }
            if interrupted(py)? {
                lane.get().abandon();
                self.interrupt(py, INTERRUPTED)?;
                return Ok((true, None));
            }
            if self.driver.flush_due_now(Instant::now()) {
                self.send_records(py);
            }
            self.maybe_progress(py, false);
        }
        Ok((false, other))
    }

    /// Keep a running average of how long timed calls take (it sizes batches).
    fn learn_timed(&mut self, d: &Done) {
        let took = d.ended.saturating_duration_since(d.started);
        self.timed_avg = Some(match self.timed_avg {
            Some(avg) => (avg * 7 + took) / 8,
            None => took,
        });
    }

    /// Run with `n` native worker threads that attach to the interpreter to call
    /// tasks; this thread keeps the core and settles completions.
    ///
    /// Work goes out in batches through one shared queue, and completions come
    /// back in batches: a worker stays attached while the queue has work, so a
    /// run of quick calls costs one interpreter hand-off per batch, not per
    /// call. How far ahead the queue is filled follows the average call: about
    /// [`THREADS_AHEAD_TIME`] of work per worker (at least one call each, so a
    /// worker that finishes a slow call starts the next without waiting for
    /// this thread). Workers wake this thread when the queue runs short, or
    /// after a slow call (its run's records and what it unblocks are due).
    fn run_threads(&mut self, py: Python<'_>, n: usize) -> PyResult<()> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                work: VecDeque::new(),
                done: Vec::new(),
                closed: false,
                waiting: false,
                wake: false,
                low: n,
            }),
            work_cv: Condvar::new(),
            done_cv: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let sh = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("ferroflow-worker-{i}"))
                .spawn(move || worker_loop(&sh));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    shared.close();
                    return Err(ff_error(
                        py,
                        PyErrKind::Executor,
                        format!("could not start worker thread: {e}"),
                    ));
                }
            }
        }
        let mut in_flight = 0usize;
        let mut now = Instant::now();
        let mut cancel = false;
        let mut avg: Option<Duration> = None;
        'outer: loop {
            // Hand out work while the queue is short; the driver says when to wait.
            let ahead = match avg {
                Some(a) if !a.is_zero() => (THREADS_AHEAD_TIME.as_nanos() / a.as_nanos())
                    .clamp(1, THREADS_AHEAD_MAX)
                    as usize,
                _ => 1,
            };
            let cap = n + n * ahead;
            let mut until = None;
            let mut batch = Vec::new();
            while in_flight + batch.len() < cap {
                match self.next_work(py, now)? {
                    Next::Call(w, flush) => {
                        if flush {
                            self.send_records(py);
                        }
                        batch.push(w);
                    }
                    Next::Wait(u) => {
                        until = Some(u);
                        break;
                    }
                    Next::Done if in_flight == 0 && self.approvals_at_end(py)? => {}
                    Next::Done => break 'outer,
                }
            }
            if !batch.is_empty() {
                in_flight += batch.len();
                shared.push(batch);
            }
            let until = match until {
                Some(u) => u,
                None => match self.driver.idle(now) {
                    Step::Wait { until } => until,
                    _ => now + self.driver.policy().max_wait,
                },
            };
            if in_flight == 0 {
                if !self.wait_until(py, until)? {
                    cancel = true;
                    break;
                }
                now = Instant::now();
                continue;
            }
            if self.driver.flush_due_now(now) {
                self.send_records(py);
            }
            let wait = until.saturating_duration_since(now);
            let done = py.detach(|| shared.wait_done(wait));
            for d in done {
                in_flight -= 1;
                let took = d.ended.saturating_duration_since(d.started);
                avg = Some(avg.map_or(took, |a| (a * 7 + took) / 8));
                if self.settle_done(py, d)? {
                    break 'outer;
                }
            }
            now = Instant::now();
            self.maybe_progress(py, false);
            if interrupted(py)? {
                cancel = true;
                break;
            }
        }
        // Calls not started are dropped (their runs are cancelled, or the run is over).
        let dropped = shared.close();
        drop(dropped);
        if cancel {
            // Workers still inside a task are abandoned: they exit when their
            // call returns and they find the queue closed.
            self.interrupt(py, INTERRUPTED)?;
        } else if self.driver.stopped().is_none() {
            // Every worker is idle; let them see the closed queue and exit.
            py.detach(|| {
                for w in workers {
                    let _ = w.join();
                }
            });
        }
        self.end(py)
    }
}

/// What the run loop does next (see [`Inner::next_work`]).
enum Next {
    /// Call this work (sending buffered records first when the flag says so).
    Call(Work, bool),
    /// Wait for a completion or until this instant.
    Wait(Instant),
    /// The run is over.
    Done,
}

/// The outcome of a run hook's `(state code, message, cause)`.
pub fn hook_outcome(code: u8, msg: Option<String>, cause: u8) -> Outcome {
    match StateKind::from_code(code) {
        Some(StateKind::Success) => Outcome::Success,
        Some(StateKind::Cached) => Outcome::Cached,
        Some(StateKind::Skipped) => Outcome::Skipped(msg),
        Some(StateKind::TriggerFailed) => Outcome::TriggerFailed(msg),
        Some(StateKind::Retrying) => Outcome::Retry(msg),
        Some(StateKind::Looped) => Outcome::Loop(msg),
        Some(StateKind::Paused) => Outcome::Paused(msg),
        Some(StateKind::TimedOut) => Outcome::TimedOut { message: msg },
        Some(StateKind::Cancelled) => Outcome::Interrupted(msg),
        _ => Outcome::Failed {
            message: msg,
            cause: cause_from_code(cause),
        },
    }
}

/// The formatted traceback of an exception value (None for other values).
fn format_traceback(py: Python<'_>, value: &Bound<'_, PyAny>) -> Option<String> {
    if !value.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        return None;
    }
    let lines = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (value,)))
        .ok()?;
    let parts: Vec<String> = lines.extract().ok()?;
    Some(parts.concat())
}

/// How often a progress callback is called at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Check for Ctrl-C. `Ok(true)` when it was pressed; other signal-handler errors
/// propagate.
fn interrupted(py: Python<'_>) -> PyResult<bool> {
    match py.check_signals() {
        Ok(()) => Ok(false),
        Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(true),
        Err(e) => Err(e),
    }
}

/// A run to call: `func(*args, **kwargs)` with the task's context set.
struct Work {
    current: Current,
    run: RunId,
    /// The Python run hook, for tasks that need one (it calls `func` itself).
    hook: Option<Py<PyAny>>,
    func: Py<PyAny>,
    args: Args,
    kwargs: Option<Py<PyDict>>,
    /// A plain task with a timeout: it is called on a helper thread (see [`PyLane`]).
    timeout: Option<Duration>,
}

/// A finished call, sent back by a worker thread.
struct Done {
    run: RunId,
    hooked: bool,
    /// The call ran past its timeout and was abandoned (`result` is then unused).
    timed_out: bool,
    result: PyResult<Py<PyAny>>,
    /// When the worker started and ended the call.
    started: Instant,
    ended: Instant,
}

/// Consecutive plain runs of one task handed out together by `take_segments`.
struct Segment {
    task: u32,
    func: Py<PyAny>,
    runs: Vec<u32>,
    map_indexes: Vec<i64>,
    run_counts: Vec<u32>,
    /// The single arguments while `unary`, else the argument tuples.
    args: Vec<Py<PyAny>>,
    unary: bool,
}

impl Segment {
    /// Add a run's arguments. A single argument is kept without its tuple, which
    /// is dropped at once: thousands of live tuples would set off Python's cyclic
    /// garbage collector (tuples are tracked, small ints and strings are not).
    fn push_args(&mut self, py: Python<'_>, args: Args) -> PyResult<()> {
        let args = match args {
            Args::One(a) if self.unary => {
                self.args.push(a);
                return Ok(());
            }
            args => args.tuple(py)?,
        };
        // A task's runs all take as many arguments (its call's slots are fixed), so
        // this stays as the first run set it; the conversion is only a safeguard.
        if self.unary && args.len() != 1 {
            self.unary = false;
            for a in &mut self.args {
                *a = PyTuple::new(py, [a.bind(py)])?.into_any().unbind();
            }
        }
        if self.unary {
            self.args.push(args.get_item(0)?.unbind());
        } else {
            self.args.push(args.into_any().unbind());
        }
        Ok(())
    }

    /// `(task, func, runs, map_indexes, run_counts, args, unary)`, as compact as
    /// the runs allow (see `take_segments`).
    fn into_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
        fn consecutive<T: Copy + Into<i64>>(xs: &[T]) -> Option<(isize, isize)> {
            let first: i64 = (*xs.first()?).into();
            let ok = xs
                .iter()
                .enumerate()
                .all(|(i, &x)| x.into() == first + i as i64);
            let start = isize::try_from(first).ok()?;
            let stop = isize::try_from(first + xs.len() as i64).ok()?;
            ok.then_some((start, stop))
        }
        let runs = match consecutive(&self.runs) {
            Some((a, b)) => PyRange::new(py, a, b)?.into_any(),
            None => PyList::new(py, &self.runs)?.into_any(),
        };
        let map_indexes = match consecutive(&self.map_indexes) {
            Some((a, b)) => PyRange::new(py, a, b)?.into_any(),
            None => PyList::new(py, &self.map_indexes)?.into_any(),
        };
        let run_counts = match self.run_counts.first() {
            Some(&k) if self.run_counts.iter().all(|&c| c == k) => k.into_pyobject(py)?.into_any(),
            _ => PyList::new(py, &self.run_counts)?.into_any(),
        };
        let unary = self.unary;
        let args = PyList::new(py, self.args)?;
        (
            self.task,
            self.func,
            runs,
            map_indexes,
            run_counts,
            args,
            unary,
        )
            .into_pyobject(py)
    }
}

/// When a run's outcome came about (see `Inner::settle_when`).
#[derive(Clone, Copy)]
enum Settle {
    /// A call that ran from the first instant to the second.
    Called(Instant, Instant),
    /// Settled without a call here (reported by a worker, decided by the core).
    At(Instant),
}

/// Result of settling a run without calling it.
type Settled = (Outcome, Option<Py<PyAny>>);

impl Work {
    fn hooked(&self) -> bool {
        self.hook.is_some()
    }

    /// Call the task (through the hook if it has one) with its context set.
    fn call(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let Work {
            current,
            hook,
            func,
            args,
            kwargs,
            ..
        } = self;
        let c = (
            current.run,
            current.task,
            current.map_index,
            current.run_count,
            current.loop_count,
        );
        set_current(Some(current));
        match (hook, args) {
            (Some(hook), args) => hook
                .bind(py)
                .call1((
                    c.0,
                    c.1,
                    c.2,
                    c.3,
                    c.4,
                    args.tuple(py)?,
                    kwargs.as_ref().map(|k| k.bind(py)),
                    func.bind(py),
                ))
                .map(Bound::unbind),
            (None, Args::One(a)) => func.bind(py).call1((a,)).map(Bound::unbind),
            (None, Args::Many(t)) => func
                .bind(py)
                .call(t.bind(py), kwargs.as_ref().map(|k| k.bind(py)))
                .map(Bound::unbind),
        }
    }
}

/// How much work a batch of timed calls of a local run holds, by the average
/// call: the run loop hands them to a helper thread at once, and learns how they
/// ended when the batch is over (or at a tick).
const TIMED_BATCH_TIME: Duration = Duration::from_millis(2);
/// The most calls in one batch.
const TIMED_BATCH_MAX: usize = 1024;

/// How many timed calls go in one batch, by their average duration.
fn timed_batch(avg: Option<Duration>) -> usize {
    match avg {
        Some(avg) if !avg.is_zero() => (TIMED_BATCH_TIME.as_nanos() / avg.as_nanos())
            .clamp(1, TIMED_BATCH_MAX as u128) as usize,
        _ => 1,
    }
}

/// What [`PyLane::wait`] saw.
enum Waited {
    /// Every call of the lane has ended.
    Drained,
    /// A tick passed (completions may be waiting).
    Tick,
    /// This run, started at that instant, ran past its timeout: the lane is
    /// abandoned and the calls it had not started are handed back.
    Expired(RunId, Instant, VecDeque<Work>),
}

struct LaneState {
    queue: VecDeque<Work>,
    /// The run the helper is calling: the run, when it started, its deadline.
    current: Option<(RunId, Instant, Instant)>,
    done: Vec<Done>,
    abandoned: bool,
    /// The run loop sleeps on the condvar: wake it when the lane is drained.
    waiting: bool,
}

/// A batch of timed calls of a local run, made by a pooled Python helper thread
/// (`ferroflow._timeouts`, which calls `start`, then `returned` or `raised`
/// after each call, until they say there is nothing more). The calls are made
/// from Python code, so an abandoned helper has no Rust frame on its stack
/// while it runs a task past its timeout. The run loop waits on the lane,
/// watching the deadline of the call in progress.
#[pyclass(frozen, module = "ferroflow._native", name = "TimedLane")]
pub struct PyLane {
    state: Mutex<LaneState>,
    cv: Condvar,
}

impl PyLane {
    /// A lane with these calls, handed to a helper thread.
    fn submit(py: Python<'_>, works: VecDeque<Work>) -> PyResult<Py<PyLane>> {
        static SUBMIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let lane = Py::new(
            py,
            PyLane {
                state: Mutex::new(LaneState {
                    queue: works,
                    current: None,
                    done: Vec::new(),
                    abandoned: false,
                    waiting: false,
                }),
                cv: Condvar::new(),
            },
        )?;
        SUBMIT
            .import(py, "ferroflow._timeouts", "submit")?
            .call1((lane.clone_ref(py),))?;
        Ok(lane)
    }

    fn state(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait, without holding the interpreter, until every call has ended, the
    /// call in progress is past its deadline, or `tick`.
    fn wait(&self, py: Python<'_>, tick: Instant) -> Waited {
        py.detach(|| {
            let mut st = self.state();
            loop {
                let Some((run, started, deadline)) = st.current else {
                    if st.queue.is_empty() {
                        return Waited::Drained;
                    }
                    // The helper has not started yet.
                    let now = Instant::now();
                    if now >= tick {
                        return Waited::Tick;
                    }
                    st.waiting = true;
                    st = self
                        .cv
                        .wait_timeout(st, tick - now)
                        .map_or_else(|p| p.into_inner().0, |r| r.0);
                    st.waiting = false;
                    continue;
                };
                let now = Instant::now();
                if now >= deadline {
                    st.abandoned = true;
                    st.current = None;
                    let rest = std::mem::take(&mut st.queue);
                    return Waited::Expired(run, started, rest);
                }
                if now >= tick {
                    return Waited::Tick;
                }
                st.waiting = true;
                let wait = deadline.min(tick) - now;
                st = self
                    .cv
                    .wait_timeout(st, wait)
                    .map_or_else(|p| p.into_inner().0, |r| r.0);
                st.waiting = false;
            }
        })
    }

    fn take_done(&self) -> Vec<Done> {
        std::mem::take(&mut self.state().done)
    }

    /// Give up on the lane (the run stops): calls not started are dropped.
    fn abandon(&self) {
        let rest = {
            let mut st = self.state();
            st.abandoned = true;
            std::mem::take(&mut st.queue)
        };
        drop(rest);
    }

    /// The next call for the helper, as `(func, args, kwargs)`, or None.
    fn next_call<'py>(
        &self,
        py: Python<'py>,
        mut st: MutexGuard<'_, LaneState>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(work) = (if st.abandoned {
            None
        } else {
            st.queue.pop_front()
        }) else {
            st.current = None;
            if st.waiting {
                self.cv.notify_one();
            }
            drop(st);
            set_current(None);
            return Ok(None);
        };
        let Work {
            current,
            run,
            func,
            args,
            kwargs,
            timeout,
            ..
        } = work;
        let started = Instant::now();
        let deadline = started + timeout.unwrap_or(Duration::MAX / 4);
        st.current = Some((run, started, deadline));
        drop(st);
        set_current(Some(current));
        let kwargs = kwargs.map_or_else(|| py.None(), Py::into_any);
        Ok(Some((func, args.tuple(py)?, kwargs).into_pyobject(py)?))
    }

    fn finish<'py>(
        &self,
        py: Python<'py>,
        result: PyResult<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let ended = Instant::now();
        let mut st = self.state();
        if st.abandoned {
            drop(st);
            drop(result);
            set_current(None);
            return Ok(None);
        }
        if let Some((run, started, _)) = st.current.take() {
            st.done.push(Done {
                run,
                hooked: false,
                timed_out: false,
                result,
                started,
                ended,
            });
        }
        self.next_call(py, st)
    }
}

#[pymethods]
impl PyLane {
    /// The first call, `(func, args, kwargs)` (kwargs may be None), or None.
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.next_call(py, self.state())
    }

    /// The call returned `value`; the next call, or None.
    fn returned<'py>(
        &self,
        py: Python<'py>,
        value: Py<PyAny>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.finish(py, Ok(value))
    }

    /// The call raised `error`; the next call, or None.
    fn raised<'py>(
        &self,
        py: Python<'py>,
        error: Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.finish(py, Err(PyErr::from_value(error)))
    }
}

/// How much work per worker `run_threads` keeps queued, by the average call.
const THREADS_AHEAD_TIME: Duration = Duration::from_millis(1);
/// The most calls queued per worker.
const THREADS_AHEAD_MAX: u128 = 256;
/// A call at least this long wakes the run loop when it ends.
const THREADS_SLOW_CALL: Duration = Duration::from_millis(1);

/// The queues between `run_threads` and its workers.
struct Queues {
    work: VecDeque<Work>,
    done: Vec<Done>,
    closed: bool,
    /// The run loop sleeps on `done_cv`.
    waiting: bool,
    /// Completions are due for the run loop (a slow call ended, or the work
    /// queue ran short).
    wake: bool,
    /// Wake the run loop when the work queue is down to this many calls.
    low: usize,
}

struct Shared {
    queues: Mutex<Queues>,
    work_cv: Condvar,
    done_cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue calls for the workers.
    fn push(&self, batch: Vec<Work>) {
        let k = batch.len();
        self.lock().work.extend(batch);
        if k == 1 {
            self.work_cv.notify_one();
        } else {
            self.work_cv.notify_all();
        }
    }

    /// Wait (detached) up to `wait` for completions; take them.
    fn wait_done(&self, wait: Duration) -> Vec<Done> {
        let mut q = self.lock();
        let due = |q: &Queues| q.wake || (!q.done.is_empty() && q.work.len() <= q.low);
        if !due(&q) && !wait.is_zero() {
            q.waiting = true;
            q = self
                .done_cv
                .wait_timeout_while(q, wait, |q| !due(q))
                .map_or_else(|p| p.into_inner().0, |r| r.0);
            q.waiting = false;
        }
        q.wake = false;
        std::mem::take(&mut q.done)
    }

    /// Close the queue: workers exit once idle. Returns the calls not started.
    fn close(&self) -> VecDeque<Work> {
        let rest = {
            let mut q = self.lock();
            q.closed = true;
            std::mem::take(&mut q.work)
        };
        self.work_cv.notify_all();
        rest
    }
}

/// Make `first`, a timed call, and the timed calls right behind it in the queue
/// (about [`TIMED_BATCH_TIME`] of them), on a pooled helper through a
/// [`PyLane`], this worker being their watchdog; completions go to the run
/// loop. Returns true when the queue was closed meanwhile (the worker exits).
fn lane_from_worker(
    py: Python<'_>,
    sh: &Shared,
    first: Work,
    timed_avg: &mut Option<Duration>,
) -> bool {
    let cap = timed_batch(*timed_avg);
    let mut works = VecDeque::from([first]);
    {
        let mut q = sh.lock();
        while works.len() < cap && q.work.front().is_some_and(|w| w.timeout.is_some()) {
            works.extend(q.work.pop_front());
        }
    }
    let mut pending = Some(works);
    let mut lane: Option<Py<PyLane>> = None;
    loop {
        if let Some(works) = pending.take() {
            let runs: Vec<RunId> = works.iter().map(|w| w.run).collect();
            match PyLane::submit(py, works) {
                Ok(l) => lane = Some(l),
                Err(e) => {
                    // No helper could take them: each call fails with that error.
                    let now = Instant::now();
                    let mut q = sh.lock();
                    for run in runs {
                        q.done.push(Done {
                            run,
                            hooked: false,
                            timed_out: false,
                            result: Err(e.clone_ref(py)),
                            started: now,
                            ended: now,
                        });
                    }
                    q.wake = true;
                    sh.done_cv.notify_one();
                    return q.closed;
                }
            }
        }
        let Some(l) = lane.as_ref() else {
            return false;
        };
        let tick = Instant::now() + Policy::default().max_wait;
        let waited = l.get().wait(py, tick);
        let mut done = l.get().take_done();
        for d in &done {
            let took = d.ended.saturating_duration_since(d.started);
            *timed_avg = Some(timed_avg.map_or(took, |a| (a * 7 + took) / 8));
        }
        let mut over = false;
        match waited {
            Waited::Expired(run, started, rest) => {
                done.push(Done {
                    run,
                    hooked: false,
                    timed_out: true,
                    result: Ok(py.None()),
                    started,
                    ended: Instant::now(),
                });
                if rest.is_empty() {
                    over = true;
                } else {
                    pending = Some(rest);
                }
            }
            Waited::Drained => over = true,
            Waited::Tick => {}
        }
        let mut q = sh.lock();
        if q.closed {
            drop(q);
            l.get().abandon();
            return true;
        }
        if !done.is_empty() {
            q.done.append(&mut done);
            q.wake = true;
            if q.waiting {
                sh.done_cv.notify_one();
            }
        }
        drop(q);
        if over {
            return false;
        }
    }
}

/// A worker thread of `run_threads`: wait (detached) for work, then call work
/// items while the queue has some, staying attached; exit when it is closed.
fn worker_loop(sh: &Shared) {
    // How long this worker's timed calls take, on average (sizes their batches).
    let mut timed_avg: Option<Duration> = None;
    loop {
        let first = {
            let mut q = sh.lock();
            loop {
                if q.closed {
                    return;
                }
                if let Some(w) = q.work.pop_front() {
                    break w;
                }
                q = sh.work_cv.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let stop = Python::attach(|py| {
            let mut next = Some(first);
            while let Some(work) = next.take() {
                if work.timeout.is_some() {
                    if lane_from_worker(py, sh, work, &mut timed_avg) {
                        return true;
                    }
                    next = sh.lock().work.pop_front();
                    continue;
                }
                let (run, hooked) = (work.run, work.hooked());
                let started = Instant::now();
                let result = work.call(py);
                let ended = Instant::now();
                set_current(None);
                let slow = ended.saturating_duration_since(started) >= THREADS_SLOW_CALL;
                let mut q = sh.lock();
                if q.closed {
                    // The run is over (or cancelled): nobody settles this call.
                    drop(q);
                    drop(result);
                    return true;
                }
                q.done.push(Done {
                    run,
                    hooked,
                    timed_out: false,
                    result,
                    started,
                    ended,
                });
                if slow || q.work.len() <= q.low {
                    q.wake = true;
                    if q.waiting {
                        sh.done_cv.notify_one();
                    }
                }
                next = q.work.pop_front();
            }
            false
        });
        if stop {
            return;
        }
    }
}

/// One flow run, driven from Python (`ferroflow._native.Runner`).
#[pyclass(frozen, module = "ferroflow._native", name = "Runner")]
pub struct PyRunner {
    inner: Mutex<Inner>,
}

impl PyRunner {
    /// The run state, or an error while a run loop holds it (never blocks).
    fn lock(&self, py: Python<'_>) -> PyResult<MutexGuard<'_, Inner>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::WouldBlock) => Err(ff_error(
                py,
                PyErrKind::Ferroflow,
                "this flow run is still executing; its states can be read when flow.run() returns"
                    .into(),
            )),
            // The panic itself reached the caller as a PanicException when it
            // happened (with its message); this only says why the run is gone.
            Err(std::sync::TryLockError::Poisoned(_)) => Err(PyRuntimeError::new_err(
                "this flow run stopped on an internal error in ferroflow (a panic, raised \
                 as PanicException when it happened); its states cannot be read. Please \
                 report it.",
            )),
        }
    }

    /// [`PyRunner::lock`], for a run that has not been executed yet.
    fn lock_unfinished(&self, py: Python<'_>) -> PyResult<MutexGuard<'_, Inner>> {
        let inner = self.lock(py)?;
        if inner.finished {
            return Err(ff_error(
                py,
                PyErrKind::Ferroflow,
                "this flow run has already been executed".into(),
            ));
        }
        Ok(inner)
    }
}

type TaskOpts<'py> = (String, u32, f64, Bound<'py, PyTuple>, bool);
type Hooks = (Option<Py<PyAny>>, Option<Py<PyAny>>, Option<Py<PyAny>>);
/// `(store_path, flow_run_id, flow_name, parameters_json, resumed_from)`.
type RecordSpec = (String, String, String, String, Option<String>);
/// `(state_code, message, result, run_count, loop_count)`.
type StateRow = (u8, Option<String>, Py<PyAny>, u32, u32);
/// Upstream states of one input edge for a custom trigger: `(edge, reads every
/// child of a mapped task, [(run, code, message, result)])`.
type UpstreamRow = (u32, bool, Vec<(u32, u8, Option<String>, Py<PyAny>)>);

#[pymethods]
impl PyRunner {
    /// Build a run. `tasks`: `(name, max_retries, retry_delay_s, trigger_spec,
    /// skip_on_upstream_skip)`; `edges`: `(upstream, downstream, keyed, mapped,
    /// flattened)`; `calls`: `(kind, callable, pos_slots, kw_slots, retry_on,
    /// observed)` with slots `(0, edge_id)` or `(1, constant)`; `hooks`:
    /// `(run_hook, trigger_hook, observe_hook)` (each may be None); `release`:
    /// drop intermediate results as soon as nothing downstream can read them.
    #[new]
    #[pyo3(signature = (tasks, edges, calls, reference, hooks, signal_base, token, release=false, record=None, restore=None, progress=None, pack=None, quick=None, approvals=None, wait_for_approval=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        tasks: Vec<TaskOpts<'_>>,
        edges: Vec<(u32, u32, bool, bool, bool)>,
        calls: Vec<Bound<'_, PyTuple>>,
        reference: Vec<u32>,
        hooks: Hooks,
        signal_base: Py<PyAny>,
        token: u64,
        release: bool,
        record: Option<RecordSpec>,
        restore: Option<(Py<PyAny>, Vec<u32>)>,
        progress: Option<Py<PyAny>>,
        pack: Option<Py<PyAny>>,
        quick: Option<Vec<u8>>,
        approvals: Option<Py<PyAny>>,
        wait_for_approval: bool,
    ) -> PyResult<Self> {
        if calls.len() != tasks.len() {
            return Err(PyValueError::new_err("one call spec per task is required"));
        }
        let mut specs = Vec::with_capacity(tasks.len());
        for (name, max_retries, delay, trig, skip) in tasks {
            let Ok(retry_delay) = Duration::try_from_secs_f64(delay) else {
                return Err(ff_error(
                    py,
                    PyErrKind::TaskDefinition,
                    format!(
                        "task '{name}': retry_delay must be a finite number of seconds >= 0, got {delay}"
                    ),
                ));
            };
            specs.push(TaskSpec {
                trigger: parse_trigger(&trig)?,
                name,
                max_retries,
                retry_delay,
                skip_on_upstream_skip: skip,
                observed: false,
            });
        }
        let edge_specs: Vec<EdgeSpec> = edges
            .iter()
            .map(|&(u, d, keyed, mapped, flattened)| EdgeSpec {
                upstream: TaskId(u),
                downstream: TaskId(d),
                keyed,
                mapped,
                flattened,
            })
            .collect();
        let n_tasks = specs.len();
        let mut parsed = Vec::with_capacity(calls.len());
        for c in &calls {
            parsed.push(parse_call(py, edges.len(), c)?);
        }
        for (spec, call) in specs.iter_mut().zip(&parsed) {
            spec.observed = call.observed;
        }
        let graph = py
            .detach(|| Graph::new(specs, edge_specs))
            .map_err(|e| to_py(py, e))?;
        let mut reference_ids = Vec::with_capacity(reference.len());
        for r in reference {
            if r as usize >= n_tasks {
                return Err(PyValueError::new_err(format!("unknown reference task {r}")));
            }
            reference_ids.push(TaskId(r));
        }
        let observing = parsed.iter().any(|c| c.observed);
        let mut run = Run::new(graph);
        // What an earlier run of the same plan learned (one byte per task).
        let quick = quick.map(|q| q.into_iter().map(|b| b != 0).collect());
        if release {
            run.enable_release(&reference_ids);
        }
        let recording = match record {
            None => None,
            Some((store_path, flow_run_id, flow_name, parameters_json, resumed_from)) => {
                let meta = FlowRunMeta {
                    store_path: store_path.into(),
                    flow_run_id,
                    flow_name,
                    parameters_json,
                    resumed_from,
                    host: host_name(py)?,
                };
                let started = py.detach(|| Recording::start(meta, &run));
                Some(started.map_err(|e| store_err(py, &e))?)
            }
        };
        let journaling = observing || recording.is_some();
        if journaling {
            run.enable_journal();
        }
        let (run_hook, trigger_hook, observe_hook) = hooks;
        let mut restore_tasks = vec![false; n_tasks];
        let restore_hook = restore.map(|(hook, tasks)| {
            for t in tasks {
                if let Some(flag) = restore_tasks.get_mut(t as usize) {
                    *flag = true;
                }
            }
            hook
        });
        Ok(PyRunner {
            inner: Mutex::new(Inner {
                results: Vec::with_capacity(n_tasks),
                loop_results: HashMap::new(),
                driver: Driver::new(
                    run,
                    Policy {
                        wait_for_approval: wait_for_approval && approvals.is_some(),
                        ..Policy::default()
                    },
                    quick,
                    Instant::now(),
                ),
                approvals_hook: approvals,
                calls: parsed,
                reference: reference_ids,
                run_hook,
                trigger_hook,
                observe_hook,
                restore_hook,
                restore_tasks,
                progress_hook: progress,
                pack_hook: pack,
                packs: Vec::new(),
                pack_problems: Vec::new(),
                restored: Vec::new(),
                last_progress: Instant::now(),
                steps: 0,
                signal_base,
                token,
                journaling,
                journal_buf: Vec::new(),
                recording,
                finished: false,
                timed_avg: None,
            }),
        })
    }

    /// Run the flow to the end in the calling thread.
    fn run_local(&self, py: Python<'_>) -> PyResult<()> {
        self.lock_unfinished(py)?.run_local(py)
    }

    /// Run the flow with `n` native worker threads.
    fn run_threads(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        if n == 0 {
            return Err(ff_error(
                py,
                PyErrKind::Executor,
                "max_workers must be at least 1".into(),
            ));
        }
        self.lock_unfinished(py)?.run_threads(py, n)
    }

    /// Hand out up to `max` ready runs to an executor that runs them elsewhere.
    /// Each item is `(run, task, map_index, run_count, loop_count, hooked, func,
    /// args, kwargs, loop_result)`; `hooked` tasks need the Python task machinery
    /// (handlers, timeouts) around the call. Runs that need no call are settled
    /// here. Report each item back with `report` or `report_failure`.
    fn take<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut inner = self.lock(py)?;
        let mut out = Vec::new();
        let now = Instant::now();
        while out.len() < max {
            let Next::Call(w, _) = inner.next_work(py, now)? else {
                break;
            };
            let c = &w.current;
            let kwargs = w
                .kwargs
                .as_ref()
                .map_or_else(|| py.None(), |k| k.clone_ref(py).into_any());
            let item = (
                c.run,
                c.task,
                c.map_index,
                c.run_count,
                c.loop_count,
                // A `Kind::Pack` task is checkpointed here after a local call;
                // an external executor runs it through the run hook instead.
                // A timed task too: the executor enforces the timeout.
                w.hooked() || inner.is_pack(TaskId(c.task)) || w.timeout.is_some(),
                w.func.clone_ref(py),
                w.args.tuple(py)?,
                kwargs,
                c.loop_result(py),
            )
                .into_pyobject(py)?;
            out.push(item);
        }
        if out.len() < max {
            inner.send_records(py);
        }
        Ok(out)
    }

    /// `take`, with plain runs packed: up to `max` ready runs, as a list of
    /// segments. Consecutive runs of one task that need nothing but the call
    /// (not hooked, no keyword arguments, not a loop iteration) come as one
    /// `(task, func, runs, map_indexes, run_counts, args, unary)` segment: `runs`
    /// and `map_indexes` are a `range` when consecutive (else a list),
    /// `run_counts` an int when the same for all (else a list), and `args` the
    /// list of argument tuples, or with `unary` the list of the single
    /// arguments. Every other run comes as the item `take` gives. Report plain
    /// runs that returned with `report_values`, anything else as for `take`.
    fn take_segments<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let mut inner = self.lock(py)?;
        let out = PyList::empty(py);
        let now = Instant::now();
        let mut taken = 0;
        let mut seg: Option<Segment> = None;
        while taken < max {
            let Next::Call(w, _) = inner.next_work(py, now)? else {
                break;
            };
            taken += 1;
            let c = &w.current;
            let hooked = w.hooked() || inner.is_pack(TaskId(c.task)) || w.timeout.is_some();
            if !hooked && w.kwargs.is_none() && c.loop_count == 0 {
                match seg.as_mut() {
                    Some(open) if open.task == c.task => {}
                    _ => {
                        if let Some(done) = seg.take() {
                            out.append(done.into_py(py)?)?;
                        }
                        seg = Some(Segment {
                            task: c.task,
                            func: w.func.clone_ref(py),
                            runs: Vec::new(),
                            map_indexes: Vec::new(),
                            run_counts: Vec::new(),
                            args: Vec::new(),
                            unary: true,
                        });
                    }
                }
                if let Some(open) = seg.as_mut() {
                    open.runs.push(c.run);
                    open.map_indexes.push(c.map_index);
                    open.run_counts.push(c.run_count);
                    open.push_args(py, w.args)?;
                }
                continue;
            }
            if let Some(done) = seg.take() {
                out.append(done.into_py(py)?)?;
            }
            let kwargs = w
                .kwargs
                .as_ref()
                .map_or_else(|| py.None(), |k| k.clone_ref(py).into_any());
            out.append((
                c.run,
                c.task,
                c.map_index,
                c.run_count,
                c.loop_count,
                hooked,
                w.func.clone_ref(py),
                w.args.tuple(py)?,
                kwargs,
                c.loop_result(py),
            ))?;
        }
        if let Some(done) = seg.take() {
            out.append(done.into_py(py)?)?;
        }
        if taken < max {
            inner.send_records(py);
        }
        Ok(out)
    }

    /// Report plain runs handed out by `take_segments` that returned: `values[i]`
    /// is what the call of `runs[i]` returned. Returns True when the run must stop
    /// (the runs after the one that said so are not reported). Reports for runs
    /// that are no longer running (after a cancel) are ignored.
    fn report_values(
        &self,
        py: Python<'_>,
        runs: Bound<'_, PyAny>,
        values: Bound<'_, PyList>,
    ) -> PyResult<bool> {
        // A range (what `take_segments` hands out for consecutive runs) is read as its
        // bounds, not element by element.
        let runs: Vec<u32> = match runs.cast_exact::<PyRange>() {
            Ok(r) if r.step()? == 1 => {
                let bad = |_| PyValueError::new_err("report_values: a run id out of range");
                let start = u32::try_from(r.start()?).map_err(bad)?;
                let stop = u32::try_from(r.stop()?).map_err(bad)?;
                (start..stop).collect()
            }
            _ => runs.extract()?,
        };
        if runs.len() != values.len() {
            return Err(PyValueError::new_err(format!(
                "report_values: {} runs but {} values",
                runs.len(),
                values.len()
            )));
        }
        let mut inner = self.lock(py)?;
        let now = Settle::At(Instant::now());
        for (run, value) in runs.into_iter().zip(values.iter()) {
            if inner.run().state(RunId(run)).ok() != Some(StateKind::Running) {
                continue;
            }
            let settled = inner.interpret(py, RunId(run), false, Ok(value.unbind()));
            if inner.settle_when(py, RunId(run), settled, now)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Report a run handed out by `take`: `ok` means `value` is what the call
    /// returned (for hooked runs, the hook's `(code, value, message, cause)`);
    /// otherwise `value` is the exception it raised. Returns True when the run
    /// must stop (the task was interrupted). Reports for runs that are no longer
    /// running (after a cancel) are ignored.
    fn report(
        &self,
        py: Python<'_>,
        run: u32,
        hooked: bool,
        ok: bool,
        value: Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let mut inner = self.lock(py)?;
        if inner.run().state(RunId(run)).ok() != Some(StateKind::Running) {
            return Ok(false);
        }
        let res = if ok {
            Ok(value.unbind())
        } else {
            Err(PyErr::from_value(value))
        };
        let settled = inner.interpret(py, RunId(run), hooked, res);
        inner.settle(py, RunId(run), settled, None)
    }

    /// Report a run that ended without the task deciding: `cause` is
    /// `CAUSE_WORKER_LOST` (its worker died: retries apply) or
    /// `CAUSE_INTERNAL` (it could not be shipped or its result not read: no
    /// retry); with `timed_out` it ran past its timeout (retries apply).
    #[pyo3(signature = (run, message, value, cause=CAUSE_INTERNAL, timed_out=false))]
    fn report_failure(
        &self,
        py: Python<'_>,
        run: u32,
        message: String,
        value: Py<PyAny>,
        cause: u8,
        timed_out: bool,
    ) -> PyResult<()> {
        let mut inner = self.lock(py)?;
        if inner.run().state(RunId(run)).ok() != Some(StateKind::Running) {
            return Ok(());
        }
        let outcome = if timed_out {
            Outcome::TimedOut {
                message: Some(message),
            }
        } else {
            Outcome::failed(message, cause_from_code(cause))
        };
        inner.settle(py, RunId(run), (outcome, Some(value)), None)?;
        Ok(())
    }

    /// Approve a paused task run (PAUSE, or a `manual_only` trigger): it runs
    /// at the next step. Raises for a run that is not paused.
    fn approve(&self, py: Python<'_>, run: u32) -> PyResult<()> {
        let mut inner = self.lock(py)?;
        inner.driver.approve(RunId(run)).map_err(|e| to_py(py, e))?;
        inner.journal(py, false)
    }

    /// Task runs waiting for approval.
    fn paused(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        Ok(self
            .lock(py)?
            .run()
            .paused()
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// Record the flow run's final state in the run store and wait until every
    /// record is committed. Returns None, or what went wrong (records are never
    /// dropped silently). A no-op for unrecorded runs.
    #[pyo3(signature = (code, message=None))]
    fn record_end(
        &self,
        py: Python<'_>,
        code: u8,
        message: Option<String>,
    ) -> PyResult<Option<String>> {
        let mut inner = self.lock(py)?;
        let state = StateKind::from_code(code).unwrap_or(StateKind::Failed);
        let Some(rec) = inner.recording.as_mut() else {
            return Ok(None);
        };
        let lost = rec.lost();
        let ended = py.detach(|| rec.end(state, message));
        // Let go of the shared recorder: an idle store may then be closed.
        inner.recording = None;
        match ended {
            Ok(()) if lost == 0 => Ok(None),
            Ok(()) => Ok(Some(format!(
                "{lost} records could not be written to the run store"
            ))),
            Err(e) => Ok(Some(format!(
                "records could not be written to the run store: {e}"
            ))),
        }
    }

    /// One byte per task: 1 when its last call ended within the tick it started
    /// in (for the next run of the same flow: `quick=`).
    fn quick_tasks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.lock(py)?;
        let flags: Vec<u8> = inner.driver.quick().iter().map(|&q| u8::from(q)).collect();
        Ok(PyBytes::new(py, &flags))
    }

    /// Checkpoints lost after their tasks succeeded (a pack block could not be
    /// written), one message per failed write.
    fn checkpoint_problems(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self.lock(py)?.pack_problems.clone())
    }

    /// Overwrite the stored results of runs (states unchanged): an executor that
    /// kept values elsewhere during the run (Dask) hands over the real values.
    fn replace_results(&self, py: Python<'_>, values: HashMap<u32, Py<PyAny>>) -> PyResult<()> {
        let mut inner = self.lock(py)?;
        for (run, value) in values {
            match inner.results.get_mut(run as usize) {
                Some(slot) => *slot = Some(value),
                None => return Err(to_py(py, ferroflow_core::CoreError::UnknownRun(run))),
            }
        }
        Ok(())
    }

    /// How long an executor with nothing to hand out waits before asking again
    /// (seconds; the driver's wait policy), or None when the run is over.
    fn wait_hint(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let mut inner = self.lock(py)?;
        if inner.poll_approvals(py)? {
            return Ok(Some(0.0));
        }
        let now = Instant::now();
        Ok(match inner.driver.idle(now) {
            Step::Wait { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
            _ => None,
        })
    }

    /// True when nothing is ready, waiting on a timer or handed out.
    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        let inner = self.lock(py)?;
        Ok(inner.driver.stopped().is_some() || inner.run().is_done())
    }

    /// End an externally driven run; with a reason, cancel what is unfinished.
    #[pyo3(signature = (cancel_reason=None))]
    fn close(&self, py: Python<'_>, cancel_reason: Option<String>) -> PyResult<()> {
        let mut inner = self.lock(py)?;
        if let Some(reason) = cancel_reason {
            inner.interrupt(py, &reason)?;
        }
        inner.end(py)
    }

    /// The flow's verdict: `("success" | "failed" | "cancelled" | "unfinished", task ids)`.
    fn outcome(&self, py: Python<'_>) -> PyResult<(&'static str, Vec<u32>)> {
        let inner = self.lock(py)?;
        Ok(match inner.run().outcome(&inner.reference) {
            FlowOutcome::Success => ("success", vec![]),
            FlowOutcome::Failed(t) => ("failed", t.into_iter().map(|t| t.0).collect()),
            FlowOutcome::Cancelled => ("cancelled", vec![]),
            FlowOutcome::Unfinished(t) => ("unfinished", t.into_iter().map(|t| t.0).collect()),
        })
    }

    /// `(state_code, message, result, run_count, loop_count)` of a run.
    fn state(&self, py: Python<'_>, run: u32) -> PyResult<StateRow> {
        let inner = self.lock(py)?;
        let r = RunId(run);
        let code = inner.run().state(r).map_err(|e| to_py(py, e))? as u8;
        Ok((
            code,
            inner.run().message(r).map(str::to_string),
            inner.result(py, r).unbind(),
            inner.run().run_count(r),
            inner.run().loop_count(r),
        ))
    }

    /// `(first_child_run, n_children)` of an expanded mapped task, or None.
    fn children(&self, py: Python<'_>, task: u32) -> PyResult<Option<(u32, u32)>> {
        let inner = self.lock(py)?;
        Ok(inner.run().children(TaskId(task)).map(|(b, n)| (b.0, n)))
    }

    /// State codes of runs `first..first+n` as bytes.
    fn codes<'py>(&self, py: Python<'py>, first: u32, n: u32) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.lock(py)?;
        let mut out = Vec::with_capacity(n as usize);
        for r in first..first.saturating_add(n) {
            out.push(inner.run().state(RunId(r)).map_err(|e| to_py(py, e))? as u8);
        }
        Ok(PyBytes::new(py, &out))
    }

    /// Results of runs `first..first+n` as a list.
    fn results<'py>(&self, py: Python<'py>, first: u32, n: u32) -> PyResult<Bound<'py, PyList>> {
        let inner = self.lock(py)?;
        PyList::new(
            py,
            (first..first.saturating_add(n)).map(|r| inner.result(py, RunId(r))),
        )
    }

    /// One byte per task: what the core measures of its results when maps
    /// expand over them (0 nothing, 1 `len`, 2 `len` and each item's `len`).
    fn measures<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.lock(py)?;
        let graph = inner.run().graph();
        let m: Vec<u8> = (0..graph.n_tasks() as u32)
            .map(|t| graph.measure(TaskId(t)) as u8)
            .collect();
        Ok(PyBytes::new(py, &m))
    }

    /// Number of runs (tasks plus mapped children).
    fn n_runs(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.lock(py)?.run().n_runs())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(inner) = self.inner.try_lock() else {
            return Ok(());
        };
        for c in &inner.calls {
            visit.call(&c.func)?;
            for s in c.pos.iter().chain(c.kw.iter().map(|(_, s)| s)) {
                if let Slot::Const(v) = s {
                    visit.call(v)?;
                }
            }
            if let Some(t) = &c.const_args {
                visit.call(t)?;
            }
            if let Some(r) = &c.retry_on {
                visit.call(r)?;
            }
        }
        for r in inner
            .results
            .iter()
            .flatten()
            .chain(inner.loop_results.values())
        {
            visit.call(r)?;
        }
        for (_, sink) in &inner.packs {
            sink.traverse(&visit)?;
        }
        for h in [
            &inner.run_hook,
            &inner.trigger_hook,
            &inner.observe_hook,
            &inner.restore_hook,
            &inner.pack_hook,
            &inner.approvals_hook,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(h)?;
        }
        visit.call(&inner.signal_base)?;
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.calls.clear();
            inner.results.clear();
            inner.loop_results.clear();
            inner.run_hook = None;
            inner.trigger_hook = None;
            inner.observe_hook = None;
            inner.restore_hook = None;
            inner.pack_hook = None;
            inner.approvals_hook = None;
            inner.packs.clear();
        }
    }
}
