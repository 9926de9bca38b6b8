"""The engine glue: turns a built flow into a native run and its result into States.

How a run works
---------------
``run_flow`` compiles the flow (``flow._compile()``: tasks in insertion order, edges,
constants, reference tasks), validates parameters, and hands the native ``Runner`` per
task the core options (retries, trigger, skip rule), a *call spec* (what to call and where
each argument comes from: an input edge or a constant) and the edges. The Rust core then
owns the run: it decides what is ready, evaluates the built-in triggers and skip
propagation, expands maps, keeps retry timers, records the run in the run store and calls
each task's function directly. Python is called back only where a feature needs it:

- the *run hook* (:func:`run_task`) for tasks with state handlers, ``on_failure``,
  ``log_stdout``, a checkpoint, a target or a cache (and their timeout, if any);
- the *timed-call pool* (``ferroflow._timeouts``) for a task whose only feature is a
  timeout: the runner hands batches of its calls to a pooled helper thread and
  watches each call's deadline itself, settling a call past it ``TimedOut``;
- the *trigger hook* for custom (Python) triggers;
- the *observe hook* for state changes the core decides (skips, trigger failures,
  pauses) of tasks with handlers: the core hands such a run out "decided", the
  handlers may replace the state (or fail the run by raising), and the result is
  what the core records;
- the *restore hook* when resuming, and the *progress* callback when one is given.

A recorded run also opens a log sink (``runtime._open_log_sink``: run-logger records and
``log_stdout`` lines go to the store's writer in batches) and records the flow's structure
for later resumes (``_Structure``: slug and digest of each task a resume could restore).
``flow.run`` records the run's end whatever happens: a run that raises out of it (the
executor cannot start, a flow handler raises) is recorded ended, and Ctrl-C is recorded
``Cancelled`` before ``KeyboardInterrupt`` leaves ``flow.run``.

Plain tasks pay nothing for features they do not use. When the run ends, task States
are built lazily from the runner: nothing is allocated per task until
``state.result[task]`` is read.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ferroflow import _native, _timeouts
from ferroflow import runtime as _context
from ferroflow.exceptions import FerroflowError, ParameterError
from ferroflow.signals import FAIL, FerroflowSignal
from ferroflow.states import (
    BY_CODE,
    Cached,
    Cancelled,
    Failed,
    Mapped,
    Paused,
    Pending,
    Retrying,
    Running,
    State,
    Success,
    TimedOut,
    TriggerFailed,
)

if TYPE_CHECKING:
    from ferroflow.flow import CompiledFlow, Flow
    from ferroflow.task import Task

__all__ = ["RecordingWarning", "run_flow", "run_task", "store_path"]

# Call kinds understood by the native runner.
_CALL, _HOOK, _VALUE, _LIST, _TUPLE, _PACK = 0, 1, 2, 3, 4, 5
_RUNNING_CODE = Running.code

_INTERNAL = _native.CAUSE_INTERNAL

_TOKENS = itertools.count(1)
_checkpoint_missing = object()


# Raised by ``_call_with_timeout`` when a call runs past its timeout.
_Timeout = _timeouts.TimedOut


def _uuid4() -> str:
    """A random UUID (version 4) as text, like ``str(uuid.uuid4())``: ``uuid`` is not
    imported for it, since importing it (and ``platform``, which it imports) is a good
    part of the first run's cost in a fresh process."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _retry_delay(task: Task) -> float:
    delay = task.retry_delay
    if delay is None:
        return 0.0
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return float(delay)


class _Plan:
    """The static, per-flow part of a native run (reused while the flow is unchanged).

    Built once per flow version; it is the per-task Python work of a first run, so it
    is kept to plain loops over the compiled flow.
    """

    def __init__(self, compiled: CompiledFlow, flow_result: Any = None) -> None:
        from ferroflow.task import Parameter
        from ferroflow.tasks.core import Constant
        from ferroflow.tasks.core import List as ListTask
        from ferroflow.tasks.core import Tuple as TupleTask
        from ferroflow.triggers import _builtin_spec

        tasks = compiled.tasks
        edge_ids = compiled.edge_ids
        constants = compiled.constants
        self.tasks = tasks
        self.edges = compiled.edges
        self.edge_ids = edge_ids
        self.reference = list(compiled.reference)
        n = len(tasks)
        mapped_task = [False] * n
        keyed_in: list[dict[str, int] | None] = [None] * n
        for i, (_up, down, key, mapped, _flat) in enumerate(edge_ids):
            if mapped:
                mapped_task[down] = True
            if key is not None:
                d = keyed_in[down]
                if d is None:
                    d = keyed_in[down] = {}
                d[key] = i
        self.mapped_task = mapped_task
        task_opts = []
        calls: list[tuple[Any, ...] | None] = []
        self.parameters: dict[str, int] = {}
        observed_any = False
        no_edges: dict[str, int] = {}
        for tid, t in enumerate(tasks):
            trig = _builtin_spec(t.trigger) or ("custom",)
            task_opts.append(
                (
                    t.name,
                    int(t.max_retries or 0),
                    _retry_delay(t),
                    trig,
                    bool(t.skip_on_upstream_skip),
                )
            )
            if t.result is None and flow_result is not None and t.checkpoint:
                t.result = flow_result
            if isinstance(t, Parameter):
                self.parameters[t.name] = tid
                calls.append(None)  # filled per run with the value
                continue
            keyed = keyed_in[tid] or no_edges
            consts = constants[tid]
            # Built-in tasks the core settles without a call (exact types: a subclass
            # may override run).
            cls = type(t)
            if cls is Constant and isinstance(t, Constant) and not keyed:
                calls.append((_VALUE, t.value, [], [], None, False))
                continue
            if (
                (cls is ListTask or cls is TupleTask)
                and not consts
                and all(k.startswith("arg_") for k in keyed)
            ):
                order = sorted(keyed, key=lambda k: int(k[4:]))
                kind = _LIST if cls is ListTask else _TUPLE
                calls.append((kind, None, [(0, keyed[k]) for k in order], [], None, False))
                continue
            positional = t._ff_signature()[0]
            pos_slots: list[tuple[int, Any]] = []
            if keyed or consts:
                slots: dict[str, tuple[int, Any]] = {k: (0, e) for k, e in keyed.items()}
                for k, v in consts.items():
                    slots[k] = (1, v)
                for name in positional:
                    if name not in slots:
                        break
                    pos_slots.append(slots.pop(name))
                kw_slots = list(slots.items())
            else:
                kw_slots = []
            observed = bool(t.state_handlers) or t.on_failure is not None
            observed_any |= observed
            checkpointing = t._ff_checkpoints()
            hooked = observed or checkpointing or t.log_stdout
            if hooked or t.timeout is None:
                kind = _CALL
                if hooked:
                    kind = _HOOK
                    if checkpointing:
                        # Only a flow that checkpoints loads the checkpoint machinery.
                        from ferroflow._checkpoint import native_pack

                        if native_pack(t):
                            kind = _PACK
                calls.append((kind, t.run, pos_slots, kw_slots, t.retry_on, observed))
            else:
                # A timeout alone: the runner calls the task on a pooled helper thread
                # and watches its deadline itself (see ``ferroflow._timeouts``).
                limit = (float(t.timeout), f"Task timed out after {t.timeout:g} s.")
                calls.append((_CALL, t.run, pos_slots, kw_slots, t.retry_on, False, limit))
        self.task_opts = task_opts
        self.calls = calls
        self.observed = observed_any
        # Which tasks ran quickly last time (the runner sends its buffered records
        # before calling any other task; see rust/py/src/ticker.rs).
        self.quick: bytes | None = None
        # What a resume compares (see _Structure), built when first recorded.
        self.structure: _Structure | None = None


def _plan_for(flow: Flow) -> _Plan:
    compiled = flow._compile()
    cached = flow.__dict__.get("_ff_plan")
    if cached is not None and cached[0] is compiled:
        return cached[1]
    plan = _Plan(compiled, getattr(flow, "result", None))
    flow.__dict__["_ff_plan"] = (compiled, plan)
    return plan


def _resolve_parameters(flow: Flow, plan: _Plan, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(plan.parameters))
    if unknown:
        known = ", ".join(sorted(plan.parameters)) or "none"
        raise ParameterError(
            f"flow '{flow.name}' has no parameter {', '.join(repr(u) for u in unknown)} "
            f"(its parameters: {known})",
            parameter=unknown[0],
        )
    values: dict[str, Any] = {}
    for name, tid in plan.parameters.items():
        p: Any = plan.tasks[tid]
        if name in given:
            values[name] = p.validate_value(given[name])
        elif p.required:
            raise ParameterError(
                f"flow '{flow.name}' requires a value for parameter '{name}'", parameter=name
            )
        else:
            values[name] = p.default
    return values


class FlowRun:
    """One execution of a flow: the native runner plus what Python needs around it."""

    def __init__(
        self,
        flow: Flow,
        plan: _Plan,
        parameters: dict[str, Any],
        release_results: bool = False,
        record: bool = True,
        resumed_from: str | None = None,
        restore: dict[int, dict[int, tuple[str, int, int]]] | None = None,
        progress: Callable[[dict[str, int]], Any] | None = None,
        wait_for_approval: bool = False,
    ) -> None:
        self.flow = flow
        self.plan = plan
        self.parameters = parameters
        self.release_results = release_results
        self.flow_run_id = _uuid4()
        self.token = next(_TOKENS)
        self.started = datetime.now(timezone.utc)
        self._full_names: dict[tuple[int, int], str] = {}
        calls = list(plan.calls)
        for name, tid in plan.parameters.items():
            calls[tid] = (_VALUE, parameters[name], [], [], None, False)
        self.runner = _native.Runner(
            plan.task_opts,
            plan.edge_ids and [(u, d, k is not None, m, f) for (u, d, k, m, f) in plan.edge_ids],
            calls,
            plan.reference,
            (self._run_hook, self._trigger_hook, self._observe_hook if plan.observed else None),
            FerroflowSignal,
            self.token,
            release_results,
            self._record_spec(resumed_from) if record else None,
            (self._restore_hook, sorted(restore)) if restore else None,
            _progress_hook(progress) if progress is not None else None,
            self._pack_hook,
            plan.quick,
            self._approvals_hook if record else None,
            wait_for_approval,
        )
        self._restore = restore or {}
        self._restored: dict[int, dict[int, Any]] = {}
        self._resumed_from = resumed_from
        self._approval_ids: list[str] | None = None

    def _approvals_hook(self) -> list[tuple[int, int]]:
        """Task runs approved for this flow run or the one it resumes (asked only
        while task runs are paused)."""
        from ferroflow.approvals import approved, resume_chain

        if self._approval_ids is None:
            self._approval_ids = resume_chain(self.flow_run_id, self._resumed_from)
        return approved(*self._approval_ids)

    def _record_spec(self, resumed_from: str | None) -> tuple[str, str, str, str, str | None]:
        if not self.parameters:  # json is not imported for what it would write
            return (_store_file(), self.flow_run_id, self.flow.name, "{}", resumed_from)
        import json

        try:
            params = json.dumps(self.parameters, default=repr, sort_keys=True)
        except (TypeError, ValueError):
            params = json.dumps({k: repr(v) for k, v in self.parameters.items()})
        return (_store_file(), self.flow_run_id, self.flow.name, params, resumed_from)

    # --- context -------------------------------------------------------------------
    def flow_value(self, name: str) -> Any:
        """A flow-level context value (what ``ferroflow.context`` reads)."""
        return _context._flow_value(
            name, self.flow.name, self.flow_run_id, self.parameters, self.started
        )

    def task_value(self, name: str, cur: tuple[Any, ...]) -> Any:
        """A task-level context value for the task run described by ``cur``."""
        task = self.plan.tasks[cur[2]]
        # The slug is looked up only when asked for (``to_dict`` reads every key).
        slug = self.flow.slugs.get(task, task.slug) if name == "task_slug" else None
        return _context._task_value(name, cur, self.flow_run_id, task.name, slug, task.tags)

    def remote_info(self) -> Any:
        """The context a worker process needs for this run."""
        from ferroflow.runtime import RemoteRunInfo

        slugs = self.flow.slugs
        return RemoteRunInfo(
            self.flow.name,
            self.flow_run_id,
            self.parameters,
            self.started,
            [(t.name, slugs.get(t, t.slug), frozenset(t.tags)) for t in self.plan.tasks],
        )

    # --- hooks called by the native runner ----------------------------------------------
    def _restore_hook(
        self, task_id: int, map_index: int
    ) -> tuple[str, Any, tuple[str, int, int]] | None:
        """The value of a run that finished in the resumed flow run, if still readable,
        with a message and where it is (recorded for this run too).

        The first call for a task reads every restorable value of that task at once
        (packs are opened once, not once per child); each is handed out once."""
        entries = self._restore.get(task_id)
        if entries is None or map_index not in entries:
            return None
        loaded = self._restored.get(task_id)
        if loaded is None:
            from ferroflow import _checkpoint

            result = _checkpoint.backend(self.plan.tasks[task_id])
            loaded = self._restored[task_id] = _checkpoint.read_for_restore(result, entries)
        value = loaded.pop(map_index, _checkpoint_missing)
        if value is _checkpoint_missing:  # unreadable: run it again
            return None
        location, offset, length = entries[map_index]
        where = location if offset < 0 else f"{location}#{offset}:{length}"
        message = f"Restored from flow run {self._resumed_from} ({where})."
        return message, value, entries[map_index]

    def _pack_hook(self, task_id: int) -> tuple[Any, str, Any, tuple[Any, ...], bool, Any, bool]:
        """Open the pack the native runner appends a task's checkpoints to."""
        from ferroflow import _checkpoint

        task = self.plan.tasks[task_id]
        slug = self.flow.slugs.get(task, task.slug)
        return _checkpoint.open_native(task, self.flow_run_id, slug or task.name)

    def _run_hook(
        self,
        run_id: int,
        task_id: int,
        map_index: int,
        run_count: int,
        loop_count: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        func: Callable[..., Any],
    ) -> tuple[int, Any, str | None, int]:
        return run_task(self.plan.tasks[task_id], run_count, args, kwargs, func)

    def _trigger_hook(
        self,
        run_id: int,
        task_id: int,
        upstream: list[tuple[int, bool, list[tuple[int, int, str | None, Any]]]],
    ) -> tuple[int, str | None]:
        task = self.plan.tasks[task_id]
        states: dict[Any, State] = {}
        for edge_id, reduce, runs in upstream:
            built = [BY_CODE[c](m, r) for (_rid, c, m, r) in runs]
            # A reduce edge (the core says so) shows every child as one Mapped state.
            states[self.plan.edges[edge_id]] = Mapped(map_states=built) if reduce else built[0]
        try:
            ok = task.trigger(states)
        except FerroflowSignal as sig:
            return type(sig).code, sig.message or f"Trigger raised {type(sig).__name__}."
        except Exception as exc:
            return TriggerFailed.code, f"The trigger raised an error: {exc!r}"
        if ok:
            return _RUNNING_CODE, None  # type: ignore[return-value]
        name = getattr(task.trigger, "__name__", "custom")
        return TriggerFailed.code, f'Trigger "{name}" was not satisfied.'  # type: ignore[return-value]

    def _observe_hook(
        self, run_id: int, task_id: int, code: int, message: str | None
    ) -> tuple[int, str | None, Any] | None:
        """Show a state the core decided to the task's handlers.

        Called in two ways: for a run the core would skip, fail by its trigger or
        pause without executing it, before the state is settled (the handlers'
        result is returned as ``(code, message, result)`` and becomes the run's
        state; a raising handler fails the run); and, after the fact, for the other
        transitions the core makes (a mapped parent, a cancel), where the result
        is ignored and errors cannot change the state.
        """
        task = self.plan.tasks[task_id]
        new = BY_CODE[code](message)
        final = _handle(task, Pending(), new)
        if final.is_failed() and task.on_failure is not None:
            try:
                task.on_failure(task, final)
            except Exception as exc:
                final = Failed(f"The on_failure handler raised an error: {exc!r}", exc)
        out_code = type(final).code
        if out_code is None or out_code == _RUNNING_CODE:
            out_code = Failed.code
        return out_code, final.message, final.result

    # --- results --------------------------------------------------------------------------
    def task_state(self, task_id: int) -> State:
        """The State of task ``task_id`` as the runner has it (a mapped task's children
        are built when first read)."""
        runner = self.runner
        code, message, result, run_count, _loop_count = runner.state(task_id)
        cls = BY_CODE[code]
        if cls is Mapped:
            children = runner.children(task_id)
            base, n = children if children is not None else (0, 0)
            return Mapped._lazy(
                message,
                lambda: self._child_states(base, n),
                lambda: runner.results(base, n),
            )
        if cls is Retrying:
            return Retrying(message, result, run_count=run_count)
        return cls(message, result)

    def _child_states(self, base: int, n: int) -> list[State]:
        runner = self.runner
        codes = runner.codes(base, n)
        results = runner.results(base, n)
        out: list[State] = []
        for i in range(n):
            cls = BY_CODE[codes[i]]
            if cls is Success:
                out.append(Success(None, results[i]))
            else:
                _c, message, result, _rc, _lc = runner.state(base + i)
                out.append(cls(message, result))
        return out


def _handle(task: Task, old: State, new: State) -> State:
    for handler in task.state_handlers:
        replaced = handler(task, old, new)
        if isinstance(replaced, State):
            new = replaced
    return new


def run_task(
    task: Task,
    run_count: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    func: Callable[..., Any],
    enforce_timeout: bool = True,
) -> tuple[int, Any, str | None, int]:
    """Run one attempt of a task that needs Python-level machinery around the call:
    state handlers, ``on_failure`` and (in this process) its timeout.

    Returns ``(state code, value, message, cause)`` for the core (``cause``: one of
    ``_native.CAUSE_*``, what failed; the core alone decides a retry). Module-level and
    free of engine state so that process and Dask workers can run it too; there the
    executor enforces the timeout (``enforce_timeout=False``) by stopping the worker.
    """
    from ferroflow import _checkpoint  # loaded once, by the first hooked call

    if (
        not task.state_handlers
        and task.on_failure is None
        and task.timeout is None
        and not task.log_stdout
        and not _checkpoint.needs_template_values(task)
    ):
        # Checkpointing alone: call, then append the value to the task's pack.
        try:
            value = func(*args, **(kwargs or {}))
        except BaseException as exc:
            raised: BaseException | None = exc
        else:
            try:
                location = _checkpoint.write(task, value, _checkpoint.pack_values(task), None)
            except Exception as exc:
                return _not_written(exc)
            return Success.code, value, None, _INTERNAL, location  # type: ignore[return-value]
        out = _run_task_full(task, run_count, args, kwargs, func, enforce_timeout, raised)
    else:
        out = _run_task_full(task, run_count, args, kwargs, func, enforce_timeout)
    if isinstance(out[1], BaseException):
        # The task's frames only, as when the core calls a plain task directly.
        _context._user_traceback(out[1])
    return out


def _run_task_full(
    task: Task,
    run_count: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    func: Callable[..., Any],
    enforce_timeout: bool,
    raised: BaseException | None = None,
) -> tuple[int, Any, str | None, int]:
    """The full task machinery; ``raised`` is what an attempt already raised."""
    from ferroflow import _checkpoint

    old: State = Retrying(run_count=run_count - 1) if run_count > 1 else Pending()
    running: State = Running("Starting task run.")
    try:
        running = _handle(task, old, running)
    except Exception as exc:
        return Failed.code, exc, f"A state handler raised an error: {exc!r}", _INTERNAL  # type: ignore[return-value]
    checkpointing = _checkpoint.checkpoints(task)
    values: dict[str, Any] = {}
    target: str | None = None
    inputs: dict[str, Any] = {}
    if checkpointing and not _checkpoint.needs_template_values(task):
        values = _checkpoint.pack_values(task)
    elif checkpointing:
        names = task._ff_signature()[0]
        inputs = dict(zip(names, args, strict=False))
        inputs.update(kwargs or {})
        try:
            values = _checkpoint.template_values(task, inputs)
            if task.target is not None:
                target = _checkpoint.render_target(task, values)
                result = _checkpoint.backend(task)
                if result.exists(target):
                    value = result.read(target).value
                    cached = Cached(f"Result found at target {target!r}.", value)
                    final = _handle(task, running, cached)
                    return type(final).code, final.result, final.message, _INTERNAL, target  # type: ignore[return-value]
            if task.cache_for is not None:
                hit = _checkpoint.cache_lookup(task, inputs, values)
                if hit is not None:
                    cached = Cached("Reused a cached result.", hit[0])
                    final = _handle(task, running, cached)
                    return type(final).code, final.result, final.message, _INTERNAL, hit[1]  # type: ignore[return-value]
        except Exception as exc:
            return Failed.code, exc, f"Could not use the task's target: {exc}", _INTERNAL  # type: ignore[return-value]
    # What failed, for the core's retry rule (``_native.CAUSE_*``).
    cause = _INTERNAL
    try:
        if raised is not None:
            raise raised
        value = _call_task(task, func, args, kwargs or {}, enforce_timeout)
        new: State = Success("Task run succeeded.", value)
    except _Timeout:
        new = TimedOut(f"Task timed out after {task.timeout:g} s.")
    except KeyboardInterrupt as exc:
        return Cancelled.code, exc, "Interrupted by the user (KeyboardInterrupt).", _INTERNAL  # type: ignore[return-value]
    except FerroflowSignal as sig:
        new = sig.to_state()
        if isinstance(sig, FAIL) or type(sig) is FerroflowSignal:
            cause = _native.CAUSE_FAIL_SIGNAL
    except BaseException as exc:
        new = Failed(f"Error during execution of task: {exc!r}", exc)
        retry_on = task.retry_on  # exception types, or None for any exception
        matched = isinstance(exc, retry_on) if retry_on is not None else isinstance(exc, Exception)
        cause = _native.CAUSE_MATCHED if matched else _native.CAUSE_UNMATCHED
    shown = new
    # The core decides retries; handlers are shown Failed, then Retrying, exactly
    # when it will retry (Prefect's visible sequence).
    will_retry = new.code is not None and _native.will_retry(
        new.code, cause, run_count <= (task.max_retries or 0)
    )
    if will_retry and not isinstance(new, Retrying):
        try:
            new = _handle(task, running, new)
        except Exception as exc:
            new = Failed(f"A state handler raised an error: {exc!r}", exc)
            return Failed.code, exc, new.message, _INTERNAL  # type: ignore[return-value]
        running = new
        # A handler that turned the failure into something else decides.
        will_retry = new.is_failed()
    if will_retry:
        start = datetime.now(timezone.utc) + timedelta(seconds=_retry_delay(task))
        shown = Retrying(new.message, new.result, start_time=start, run_count=run_count)
    try:
        final = _handle(task, running, shown)
    except Exception as exc:
        final = Failed(f"A state handler raised an error: {exc!r}", exc)
        shown = final
        cause = _INTERNAL
    if final.is_failed() and task.on_failure is not None:
        try:
            task.on_failure(task, final)
        except Exception as exc:
            final = Failed(f"The on_failure handler raised an error: {exc!r}", exc)
    if final is shown and will_retry:
        return type(new).code, new.result, new.message, cause  # type: ignore[return-value]
    code = type(final).code
    if code is None or code == _RUNNING_CODE:
        code = Failed.code
    if checkpointing and type(final) is Success:
        try:
            location = _checkpoint.write(task, final.result, values, target)
            if task.cache_for is not None:
                _checkpoint.cache_store(task, inputs, values, location)
        except Exception as exc:
            return _not_written(exc)
        return code, final.result, final.message, cause, location  # type: ignore[return-value]
    return code, final.result, final.message, cause


def _not_written(exc: Exception) -> tuple[int, Any, str | None, int]:
    """What ``run_task`` returns when a successful value could not be checkpointed."""
    msg = f"The task succeeded but its result could not be written: {exc}"
    return Failed.code, exc, msg, _INTERNAL  # type: ignore[return-value]


class _TaskStates(Mapping["Task", State]):
    """``{task: State}`` for every task of a finished run, States built on demand."""

    def __init__(self, run: FlowRun) -> None:
        self._run = run
        self._ids = {id(t): i for i, t in enumerate(run.plan.tasks)}
        self._cache: dict[int, State] = {}

    def __getitem__(self, task: Task) -> State:
        tid = self._ids.get(id(task))
        if tid is None or self._run.plan.tasks[tid] is not task:
            raise KeyError(task)
        state = self._cache.get(tid)
        if state is None:
            state = self._cache[tid] = self._run.task_state(tid)
        return state

    def __iter__(self) -> Iterator[Task]:
        return iter(self._run.plan.tasks)

    def __len__(self) -> int:
        return len(self._run.plan.tasks)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{t!r}: {self[t]!r}" for t in self) + "}"


def _call_task(
    task: Task,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    enforce_timeout: bool,
) -> Any:
    """One call of a hooked task: with its timeout (in this process) and with its
    printed lines sent to its run logger (``log_stdout``)."""
    if task.timeout is not None and enforce_timeout:
        return _call_with_timeout(func, args, kwargs, task.timeout, task.log_stdout)
    if task.log_stdout:
        with _context.capture_stdout():
            return func(*args, **kwargs)
    return func(*args, **kwargs)


def _call_with_timeout(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    log_stdout: bool = False,
) -> Any:
    """Run ``func`` on a pooled helper thread; abandon it when ``timeout`` seconds pass
    (raising ``_Timeout``). The helper thread sees the calling task run's
    ``ferroflow.context`` (and, with ``log_stdout``, its prints go to the task's run
    logger); see ``ferroflow._timeouts``."""
    return _timeouts.call_with_timeout(func, args, kwargs, timeout, log_stdout)


def _flow_state(run: FlowRun) -> State:
    kind, ids = run.runner.outcome()
    names = ", ".join(repr(run.plan.tasks[i].name) for i in ids)
    if kind == "success":
        state: State = Success("All reference tasks succeeded.")
    elif kind == "failed":
        state = Failed(f"Some reference tasks failed: {names}")
    elif kind == "cancelled":
        state = Cancelled("Flow run was cancelled.")
    else:
        paused = run.runner.paused()
        if paused:
            ids_text = ", ".join(f"{run.flow_run_id}/{r}" for r in paused[:5])
            more = f" and {len(paused) - 5} more" if len(paused) > 5 else ""
            state = Paused(
                f"Waiting for approval: {names} did not finish. Approve the paused task "
                f"runs with 'ferroflow runs approve ID' ({ids_text}{more})."
            )
        else:
            state = Running(f"Some reference tasks did not finish (paused or waiting): {names}")
    results = _TaskStates(run)
    state._loader = lambda: results  # built on first access, like every task state
    return state


def store_path() -> Any:
    """Where runs are recorded: ``$FERROFLOW_HOME/ferroflow.db`` (``~/.ferroflow``)."""
    from ferroflow.store import store_path as path

    return path()


def _store_file() -> str:
    """``str(store_path())`` without importing ``ferroflow.store`` (and ``pathlib``,
    ``dataclasses``, ``json`` with it) at a run's start."""
    home = os.environ.get("FERROFLOW_HOME")
    if home:
        base = os.path.expanduser(home)
    else:
        base = os.path.join(os.path.expanduser("~"), ".ferroflow")
    return os.path.join(base, "ferroflow.db")


def _env_flag(name: str) -> bool:
    """Whether the environment leaves the switch ``name`` on (its default): off for
    ``0``, ``false``, ``no`` or ``off``."""
    import os

    value = os.environ.get(name, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _recording_default() -> bool:
    return _env_flag("FERROFLOW_RECORD")


def run_flow(
    flow: Flow,
    parameters: dict[str, Any] | None = None,
    executor: Any = None,
    *,
    release_results: bool = False,
    record: bool | None = None,
    resume: str | None = None,
    progress: Callable[[dict[str, int]], Any] | None = None,
    on_start: Callable[[str], Any] | None = None,
    wait_for_approval: bool = False,
    **parameter_values: Any,
) -> State:
    """Run ``flow`` to the end and return its final State (see ``Flow.run``).

    Args:
        flow: the flow to run.
        parameters: parameter values by name.
        executor: where tasks run [the flow's executor, else ``LocalExecutor()``].
        record: record the run in the run store (``$FERROFLOW_HOME/ferroflow.db``) [on,
            unless the environment sets ``FERROFLOW_RECORD=0``]. A store that cannot be
            opened (corrupt, newer schema, read-only) raises ``StoreError`` before
            anything runs; pass ``record=False`` to run unrecorded.
        resume: the id (or a unique prefix) of an earlier, unfinished run of this flow in
            the run store: every task run that finished there with a readable
            checkpoint is restored instead of run again; the rest runs. The run's own
            parameters are used: a value given again must be the same
            (``ResumeError`` otherwise, naming the parameters). Tasks whose definition
            or upstream tasks changed since are run again, and the final state's
            message names them.
        progress: called a few times a second with the number of task runs in each
            state (``{"Success": 1200, "Pending": 8800, ...}``), and once at the end.
        release_results: drop each intermediate result as soon as no downstream task
            run can still read it (results of reference and terminal tasks are always
            kept). Bounds memory for long map chains; released results read as None
            in the final states.
        on_start: called with the flow run's id once the run is recorded as started,
            before any task runs (the command line saves how to resume it there); not
            called for an unrecorded run.
        wait_for_approval: when only paused task runs (``PAUSE``, ``manual_only``)
            are left, wait for them to be approved (``ferroflow runs approve``,
            :func:`ferroflow.approvals.approve`) instead of ending the run; Ctrl-C
            stops the wait. Needs a recorded run.
        **parameter_values: more parameter values by name.

    Raises:
        KeyboardInterrupt: Ctrl-C during the run, after the run was recorded
            ``Cancelled`` (it can be resumed); ``exc.state`` is the final State and
            ``exc.flow_run_id`` the run's id.
    """
    given = dict(parameters or {})
    given.update(parameter_values)
    flow.validate()
    plan = _plan_for(flow)
    # A resume takes the missing values from the resumed run (resolved below).
    values = _resolve_parameters(flow, plan, given) if resume is None else {}
    if executor is None:
        executor = getattr(flow, "executor", None)
    if executor is None:
        from ferroflow.executors import LocalExecutor

        executor = LocalExecutor()
    if record is None:
        record = _recording_default()
    resumed_from: str | None = None
    restore: dict[int, dict[int, tuple[str, int, int]]] | None = None
    rerun: list[str] = []
    if resume is not None:
        resumed_from, old_params, restore, rerun = _prepare_resume(flow, plan, resume)
        _check_resume_parameters(flow, plan, resumed_from, old_params, given)
        values = _resolve_parameters(flow, plan, {**old_params, **given})
    run = FlowRun(
        flow,
        plan,
        values,
        release_results,
        record,
        resumed_from,
        restore,
        progress,
        wait_for_approval,
    )
    if record:
        path = _store_file()
        if _env_flag("FERROFLOW_STORE_LOGS"):
            _context._open_log_sink(path, run.flow_run_id)
        _native.record_structure(path, run.flow_run_id, _structure(plan, flow).json)
    recorded = False
    reporter = _start_reporter(run.flow_run_id) if record else None
    try:
        if on_start is not None and record:
            on_start(run.flow_run_id)
        handlers = list(getattr(flow, "state_handlers", None) or [])
        state: State = Running("Running flow.")
        for handler in handlers:
            new = handler(flow, Pending(), state)
            state = new if isinstance(new, State) else state
        _context._register(run.token, run)
        closing: list[str] = []
        try:
            executor.execute(run)
        finally:
            _context._unregister(run.token)
            try:
                plan.quick = run.runner.quick_tasks()
            except FerroflowError:  # still locked after an abrupt end: keep the old hint
                pass
            # Packs exist only once the checkpoint machinery was loaded.
            checkpoint_mod = sys.modules.get("ferroflow._checkpoint")
            if checkpoint_mod is not None:
                closing = checkpoint_mod.PACKS.close_run(run.flow_run_id)
        final = _flow_state(run)
        interrupted = isinstance(final, Cancelled)
        terminal = getattr(flow, "terminal_state_handler", None)
        if terminal is not None:
            ref_states = {run.task_state(i) for i in plan.reference}
            replaced = terminal(flow, final, ref_states)
            if isinstance(replaced, State):
                if replaced._loader is None and replaced.result is None:
                    replaced._loader = final._loader
                final = replaced
        for handler in handlers:
            new = handler(flow, state, final)
            final = new if isinstance(new, State) else final
        if rerun:
            final.message = (
                f"{final.message or ''} The flow changed since run {resumed_from}: re-ran "
                f"{', '.join(repr(n) for n in rerun)} (definition or upstream tasks changed)."
            ).strip()
        problems = run.runner.checkpoint_problems() + closing
        _context._close_log_sink(run.flow_run_id)
        recorded = True
        problem = run.runner.record_end(type(final).code or Failed.code, final.message)
    except BaseException as exc:
        if not recorded:
            _end_unfinished(run, exc)
        raise
    finally:
        _context._close_log_sink(run.flow_run_id)
    if problem is not None:
        problems.append(problem)
    if reporter is not None and (unreported := reporter.stop()) is not None:
        problems.append(unreported)
    for problem in problems:
        import warnings

        warnings.warn(f"flow run {run.flow_run_id}: {problem}", RecordingWarning, stacklevel=2)
    if interrupted:
        stop = KeyboardInterrupt(f"flow run {run.flow_run_id} was interrupted")
        stop.state = final  # type: ignore[attr-defined]
        stop.flow_run_id = run.flow_run_id  # type: ignore[attr-defined]
        raise stop
    on_failure = getattr(flow, "on_failure", None)
    if final.is_failed() and on_failure is not None:
        on_failure(flow, final)
    return final


def _start_reporter(flow_run_id: str) -> Any:
    """Stream the run to the server when ``FERROFLOW_API_URL`` is set (see
    ``ferroflow.reporting``); None otherwise."""
    import os

    if not os.environ.get("FERROFLOW_API_URL"):
        return None
    from ferroflow.reporting import start_reporter

    return start_reporter(store_path(), flow_run_id)


def _end_unfinished(run: FlowRun, exc: BaseException) -> None:
    """``flow.run`` is raising ``exc`` before the run's end was recorded (the executor
    could not start, a flow-level handler raised, Ctrl-C outside the run loop): cancel
    what did not run and record the flow run ended, so that it does not stay
    ``Running`` in the store."""
    if isinstance(exc, KeyboardInterrupt):
        code, why = Cancelled.code, "Flow run interrupted (KeyboardInterrupt)."
    else:
        code, why = Failed.code, f"The flow run stopped: {type(exc).__name__}: {exc}"
    runner = run.runner
    try:
        if not runner.done():
            runner.close(why)
    except FerroflowError:
        pass
    _context._close_log_sink(run.flow_run_id)
    try:
        runner.record_end(code or Failed.code, why)
    except FerroflowError:
        pass


def _check_resume_parameters(
    flow: Flow, plan: _Plan, old_id: str, old: dict[str, Any], given: dict[str, Any]
) -> None:
    """A resume uses the resumed run's parameters: a value given again must be equal."""
    import json

    differ: list[str] = []
    for name in sorted(given):
        if name not in old or name not in plan.parameters:
            continue
        p: Any = plan.tasks[plan.parameters[name]]
        new = json.dumps(p.validate_value(given[name]), default=repr, sort_keys=True)
        if new != json.dumps(old[name], sort_keys=True):
            differ.append(name)
    if differ:
        from ferroflow.exceptions import ResumeError

        shown = ", ".join(f"{n}={old[n]!r} (given {given[n]!r})" for n in differ)
        raise ResumeError(
            f"cannot resume flow run {old_id} of flow '{flow.name}' with other parameter "
            f"values: it ran with {shown}. A resume reuses the run's parameters (its "
            "finished tasks were computed from them): resume without them, or start a new run",
            parameters=differ,
        )


#: The largest graph (in edges) whose edges a flow run records for the UI's schematic.
MAX_RECORDED_EDGES = 5000


class _Structure:
    """What a resume compares between a flow run and the flow now, for the tasks a
    resume can restore (those that checkpoint) and their upstream tasks: per task, its
    slug and a digest of its definition (type, name, constant arguments) and incoming
    edges (the upstream task's slug, key, mapped, flattened). Other tasks have nothing
    to restore and cost nothing here.

    ``entries`` maps a task id to ``(slug, digest)``; ``json`` is
    ``{"tasks": [[task id, slug, digest], ...], "edges": [[up, down, mapped], ...]}`` as
    recorded in the run store (runs recorded before the edges were kept hold the bare
    list). The edges are what the UI draws the run's schematic from; a graph with more
    than :data:`MAX_RECORDED_EDGES` edges records none (too large to draw)."""

    def __init__(self, plan: _Plan, flow: Flow) -> None:
        tasks = plan.tasks
        ups: dict[int, list[tuple[int, Any, bool, bool]]] = {}
        for up, down, key, mapped, flat in plan.edge_ids:
            ups.setdefault(down, []).append((up, key, bool(mapped), bool(flat)))
        needed: set[int] = set()
        todo = [tid for tid, t in enumerate(tasks) if t._ff_checkpoints()]
        while todo:
            tid = todo.pop()
            if tid not in needed:
                needed.add(tid)
                todo.extend(u for u, *_ in ups.get(tid, ()))
        self.needed = needed
        self.entries: dict[int, tuple[str, str]] = {}
        if needed:
            import json
            from hashlib import blake2b

            constants = flow._compile().constants
            flow_slugs = flow.slugs
            slug = {
                tid: flow_slugs.get(tasks[tid]) or tasks[tid].slug or tasks[tid].name
                for tid in needed
            }
            for tid in sorted(needed):
                t = tasks[tid]
                cls = type(t)
                text = f"{cls.__module__}.{cls.__qualname__}\x00{t.name}"
                edges = sorted(f"{slug[u]}\x01{k}\x01{m:d}{f:d}" for u, k, m, f in ups.get(tid, ()))
                if edges:
                    text += "\x00" + "\x00".join(edges)
                consts = constants[tid]
                if consts:
                    try:
                        text += "\x00" + repr(sorted(consts.items()))
                    except Exception:
                        text += f"\x00<unreadable {id(t)}>"  # never equal: run again
                digest = blake2b(text.encode(), digest_size=8).hexdigest()
                self.entries[tid] = (slug[tid], digest)
            tasks_json = json.dumps([[tid, s, d] for tid, (s, d) in self.entries.items()])
        else:
            tasks_json = "[]"
        # The edges, for the UI's schematic, written without the json module (ints only),
        # so a run that restores nothing still imports neither json nor hashlib.
        all_edges = plan.edge_ids
        drawn = (
            "["
            + ",".join(f"[{int(u)},{int(d)},{int(bool(m))}]" for u, d, _k, m, _f in all_edges)
            + "]"
            if len(all_edges) <= MAX_RECORDED_EDGES
            else "null"
        )
        self.json = f'{{"tasks": {tasks_json}, "edges": {drawn}}}'


def _structure(plan: _Plan, flow: Flow) -> _Structure:
    """The structure of ``flow`` (built once per flow version, with its plan)."""
    got = plan.structure
    if got is None:
        got = plan.structure = _Structure(plan, flow)
    return got


def _progress_hook(progress: Callable[[dict[str, int]], Any]) -> Callable[[list[int]], None]:
    names = [cls.__name__ for cls in BY_CODE]

    def hook(counts: list[int]) -> None:
        progress({names[i]: c for i, c in enumerate(counts) if c})

    return hook


def _prepare_resume(
    flow: Flow, plan: _Plan, resume: str
) -> tuple[str, dict[str, Any], dict[int, dict[int, tuple[str, int, int]]], list[str]]:
    """Find the flow run to resume and what of it can be restored: by task, by map
    index (-1: the task's own run), ``(location, offset, length)`` (offset -1 unless the
    location is a pack file); and the names of the tasks that changed since (their
    definition or upstream tasks), which run again whatever they left."""
    import json

    from ferroflow.exceptions import StoreError
    from ferroflow.store import open_store

    path = store_path()
    if not path.exists():
        raise StoreError(f"cannot resume {resume!r}: there is no run store at {path}")
    with open_store(path) as store:
        store.fixup_interrupted()
        old = store.flow_run(resume)
        if old is None:
            raise StoreError(f"cannot resume {resume!r}: no such flow run in {path}")
        if old.flow_name != flow.name:
            raise StoreError(
                f"cannot resume {old.id}: it is a run of flow {old.flow_name!r}, not {flow.name!r}"
            )
        if old.state in ("Success", "Cached"):
            raise StoreError(f"flow run {old.id} already succeeded: there is nothing to resume")
        rows = store.restorable(old.id)
        params = old.parameters
        recorded = store.flow_structure(old.id)
    tasks = plan.tasks
    # Old task id -> new task id, for the tasks that are unchanged.
    same: dict[int, int] = {}
    rerun: list[str] = []
    if recorded is not None:
        now = _structure(plan, flow)
        entries = json.loads(recorded)
        if isinstance(entries, dict):
            entries = entries.get("tasks") or []
        then = {slug: (old_tid, digest) for old_tid, slug, digest in entries}
        changed: set[int] = set()
        for tid, (slug, digest) in now.entries.items():
            old_tid, old_digest = then.get(slug, (-1, ""))
            if old_digest != digest:
                changed.add(tid)
            else:
                same[old_tid] = tid
        # A task downstream of a changed one reads different inputs: it changed too.
        downstream: dict[int, list[int]] = {}
        for up, down, *_ in plan.edge_ids:
            downstream.setdefault(up, []).append(down)
        todo = list(changed)
        while todo:
            for d in downstream.get(todo.pop(), ()):
                if d not in changed:
                    changed.add(d)
                    todo.append(d)
        same = {o: n for o, n in same.items() if n not in changed}
        rerun = sorted({tasks[t].name for t in changed if t in now.needed})
    restore: dict[int, dict[int, tuple[str, int, int]]] = {}
    for task_id, map_index, task_name, location, offset, length in rows:
        if recorded is not None:
            new_id = same.get(task_id)
            if new_id is None:
                continue  # the task changed since, or is gone: run it again
        else:  # recorded before structures were: match by position and name
            new_id = task_id
            if task_id >= len(tasks) or tasks[task_id].name != task_name:
                continue
        restore.setdefault(new_id, {})[map_index] = (location, offset, length)
    return old.id, params, restore, rerun


class RecordingWarning(UserWarning):
    """Some records of a flow run could not be written to the run store."""
