"""Read access to the run store: the SQLite file where every flow run is recorded.

The store lives at ``$FERROFLOW_HOME/ferroflow.db`` (default ``~/.ferroflow``). It holds
flow runs, their task runs with every state transition, logs, result locations and the
cache index. :func:`open_store` opens it and returns a :class:`RunStore`, whose methods
return small frozen dataclasses. Opening a corrupt file, a store written by a newer
ferroflow, or a store in a read-only directory raises
:class:`ferroflow.exceptions.StoreError` naming the path and what to do; the file is
never modified to recover.

``import ferroflow`` does not import this module.

Example:
    >>> from ferroflow.store import open_store
    >>> with open_store() as store:  # doctest: +SKIP
    ...     for run in store.list_flow_runs(limit=5):
    ...         print(run.short_id, run.flow_name, run.state)
    3f2a9c1e etl Success
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ferroflow import _native

__all__ = [
    "FAILED_STATES",
    "FINISHED_STATES",
    "FLOW_INTERRUPTED",
    "FLOW_RUNNING",
    "CacheEntry",
    "FinishedTaskRunInfo",
    "FlowRunInfo",
    "LogInfo",
    "RunStore",
    "TaskRunInfo",
    "TransitionInfo",
    "errors_by_run",
    "import_flow_run",
    "open_store",
    "store_path",
]

#: State names that count as failed (``Failed`` and its subclasses).
FAILED_STATES = frozenset({"Failed", "TimedOut", "TriggerFailed"})

#: State names of finished task runs.
FINISHED_STATES = frozenset(
    {"Success", "Cached", "Mapped", "Skipped", "Looped", "Cancelled"} | FAILED_STATES
)

#: Flow-run state names besides those of ``ferroflow.states``: still running (or its
#: process died before anyone noticed), and ended without finishing.
FLOW_RUNNING = "Running"
FLOW_INTERRUPTED = "Interrupted"


def store_path() -> Path:
    """The run store's file: ``$FERROFLOW_HOME/ferroflow.db``, else
    ``~/.ferroflow/ferroflow.db``.

    Example:
        >>> store_path().name
        'ferroflow.db'
    """
    home = os.environ.get("FERROFLOW_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".ferroflow"
    return base / "ferroflow.db"


def _duration(started: float | None, ended: float | None) -> float | None:
    if started is None or ended is None:
        return None
    return max(0.0, ended - started)


@dataclass(frozen=True, slots=True)
class FlowRunInfo:
    """One recorded flow run.

    Attributes:
        id: the flow run's id (a UUID).
        flow_name: the flow's name.
        parameters_json: its parameters, as JSON text.
        state: ``"Running"``, ``"Interrupted"`` or the name of its final state
            (``"Success"``, ``"Failed"``, ...).
        message: the final state's message, or why it was marked interrupted.
        started: when it started (seconds since the Unix epoch).
        ended: when it ended, if it did.
        pid: the process that ran it.
        host: the machine that ran it.
        resumed_from: the id of the flow run it resumed, if any.
    """

    id: str
    flow_name: str
    parameters_json: str
    state: str
    message: str | None
    started: float
    ended: float | None
    pid: int | None
    host: str | None
    resumed_from: str | None

    @property
    def short_id(self) -> str:
        """The first 8 characters of the id (enough to name it on the command line)."""
        return self.id[:8]

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters, decoded (an empty dict when the JSON cannot be read)."""
        try:
            value = json.loads(self.parameters_json)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while it has not ended."""
        return _duration(self.started, self.ended)

    @property
    def is_finished(self) -> bool:
        """Whether it ended (in a final state, or interrupted)."""
        return self.state != FLOW_RUNNING

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, with ``parameters`` decoded and ``duration``."""
        return {
            "id": self.id,
            "flow_name": self.flow_name,
            "parameters": self.parameters,
            "state": self.state,
            "message": self.message,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "pid": self.pid,
            "host": self.host,
            "resumed_from": self.resumed_from,
        }


@dataclass(frozen=True, slots=True)
class TaskRunInfo:
    """One task run of a flow run, in its latest state.

    Attributes:
        run: its id in the flow run's run table.
        task: the task's id in the flow run.
        task_name: the task's name.
        map_index: the index of a mapped child, None for a task's own run.
        run_count: how many attempts it made.
        state: its latest state's name (``"Pending"`` until its first transition).
        message: the latest state's message.
        started: when it first started running (seconds since the Unix epoch).
        ended: when it finished, None while not finished.
        result_location: where its result was written, if it was.
    """

    run: int
    task: int
    task_name: str
    map_index: int | None
    run_count: int
    state: str
    message: str | None
    started: float | None
    ended: float | None
    result_location: str | None

    @property
    def full_name(self) -> str:
        """``name``, or ``name[3]`` for a mapped child."""
        if self.map_index is None:
            return self.task_name
        return f"{self.task_name}[{self.map_index}]"

    @property
    def duration(self) -> float | None:
        """Seconds from its first start to its end, or None."""
        return _duration(self.started, self.ended)

    @property
    def is_failed(self) -> bool:
        """Whether its state is a failure (``Failed``, ``TimedOut``, ``TriggerFailed``)."""
        return self.state in FAILED_STATES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields, plus ``full_name`` and ``duration``."""
        return {
            "run": self.run,
            "task": self.task,
            "task_name": self.task_name,
            "full_name": self.full_name,
            "map_index": self.map_index,
            "run_count": self.run_count,
            "state": self.state,
            "message": self.message,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "result_location": self.result_location,
        }


@dataclass(frozen=True, slots=True)
class TransitionInfo:
    """One state transition of a task run.

    Attributes:
        state: the state entered.
        message: its message.
        at: when (seconds since the Unix epoch).
    """

    state: str
    message: str | None
    at: float


@dataclass(frozen=True, slots=True)
class LogInfo:
    """One log line of a flow run.

    Attributes:
        run: the task run it belongs to (None: the flow run's own).
        level: the level, as :mod:`logging` numbers it.
        at: when (seconds since the Unix epoch).
        message: the formatted message.
    """

    run: int | None
    level: int
    at: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return {"run": self.run, "level": self.level, "at": self.at, "message": self.message}


@dataclass(frozen=True, slots=True)
class FinishedTaskRunInfo:
    """A finished task run whose result was written somewhere (what a resume may reuse).

    Attributes:
        run: its id in the flow run's run table.
        task: the task's id in the flow run.
        task_name: the task's name.
        map_index: the index of a mapped child, None for a task's own run.
        state: its final state's name.
        result_location: where its result was written.
    """

    run: int
    task: int
    task_name: str
    map_index: int | None
    state: str
    result_location: str


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One entry of the durable cache index.

    Attributes:
        task_key: the task's stable key.
        cache_key: the cache key (the task's ``cache_key``, or its key by default).
        inputs_hash: a hash of the inputs the result was computed from (``""`` if unused).
        created: when the entry was made (seconds since the Unix epoch).
        expires: when it stops being valid (None: never).
        result_location: where the cached result is.
        serializer: which serializer wrote it (``""`` when unknown).
    """

    task_key: str
    cache_key: str
    inputs_hash: str
    created: float
    expires: float | None
    result_location: str
    serializer: str


class RunStore:
    """An open run store. Use :func:`open_store` to get one.

    Attributes:
        path: the store file.

    Every method may raise :class:`ferroflow.exceptions.StoreError` (a damaged file,
    a locked store, an ambiguous id prefix); its message names the store's path and
    says what to do. Usable as a context manager (closing drops the connection).
    """

    __slots__ = ("_native", "path")

    def __init__(self, native: Any) -> None:
        self._native = native
        self.path = Path(native.path)

    def _store(self) -> Any:
        if self._native is None:
            from ferroflow.exceptions import StoreError

            raise StoreError(f"the run store {self.path} is closed")
        return self._native

    def list_flow_runs(self, limit: int = 20) -> list[FlowRunInfo]:
        """The ``limit`` most recently started flow runs, newest first."""
        return [FlowRunInfo(**d) for d in self._store().list_flow_runs(limit)]

    def flow_run(self, id_or_prefix: str) -> FlowRunInfo | None:
        """The flow run with this id, or the only one whose id starts with it.

        Returns None when nothing matches; raises StoreError when several runs match.
        """
        d = self._store().flow_run(id_or_prefix)
        return None if d is None else FlowRunInfo(**d)

    def task_runs(self, flow_run_id: str) -> list[TaskRunInfo]:
        """The task runs of a flow run (by full id), in run order, each in its latest
        state; empty when the flow run is unknown."""
        return [TaskRunInfo(**d) for d in self._store().task_runs(flow_run_id)]

    def transitions(self, flow_run_id: str, run: int) -> list[TransitionInfo]:
        """Every state transition of one task run, oldest first."""
        return [TransitionInfo(**d) for d in self._store().transitions(flow_run_id, run)]

    def logs(self, flow_run_id: str) -> list[LogInfo]:
        """The log lines of a flow run and its task runs, in the order written."""
        return [LogInfo(**d) for d in self._store().logs(flow_run_id)]

    def flow_structure(self, flow_run_id: str) -> str | None:
        """The flow's structure recorded for a flow run (by full id), as JSON text: per
        task, its slug and a digest of its definition and upstream edges (what a resume
        compares); None for runs recorded before ferroflow recorded it."""
        value: str | None = self._store().flow_structure(flow_run_id)
        return value

    def finished_task_runs_with_results(self, flow_run_id: str) -> list[FinishedTaskRunInfo]:
        """The finished task runs of a flow run that have a result location, in run
        order: what a resume may reuse (if the result can be read back)."""
        return [
            FinishedTaskRunInfo(**d)
            for d in self._store().finished_task_runs_with_results(flow_run_id)
        ]

    def restorable(self, flow_run_id: str) -> list[tuple[int, int, str, str, int, int]]:
        """What a resume of a flow run (by full id) can restore, as compact rows: one
        ``(task, map_index, task_name, location, offset, length)`` per task run that
        ended ``Success`` or ``Cached`` with a result location, in run order.
        ``map_index`` is -1 for a task's own run; for a pack record, ``location`` is
        the pack and ``offset``/``length`` name the payload, otherwise both are -1.
        """
        rows: list[tuple[int, int, str, str, int, int]] = self._store().restorable(flow_run_id)
        return rows

    def mark_interrupted(self, flow_run_id: str, message: str) -> bool:
        """Mark a flow run ``Interrupted`` with ``message`` if it is still recorded as
        running. Returns whether it was."""
        return bool(self._store().mark_interrupted(flow_run_id, message))

    def fixup_interrupted(self, host: str | None = None) -> list[str]:
        """Mark ``Interrupted`` every flow run recorded as running on ``host`` (default:
        this machine) whose process is gone. Returns the ids marked."""
        return list(self._store().fixup_interrupted(host))

    def cache_get(
        self, task_key: str, cache_key: str, now: float | None = None
    ) -> CacheEntry | None:
        """The newest unexpired cache entry for this task and cache key at time ``now``
        (default: the current time), or None."""
        d = self._store().cache_get(task_key, cache_key, now)
        return None if d is None else CacheEntry(**d)

    def cache_candidates(
        self, task_key: str, cache_key: str, now: float | None = None
    ) -> list[CacheEntry]:
        """Every unexpired cache entry for this task and cache key at time ``now``
        (one per inputs hash), newest first."""
        return [CacheEntry(**d) for d in self._store().cache_candidates(task_key, cache_key, now)]

    def cache_put(
        self,
        task_key: str,
        cache_key: str,
        result_location: str,
        *,
        inputs_hash: str = "",
        created: float | None = None,
        expires: float | None = None,
        serializer: str = "",
    ) -> None:
        """Add a cache entry, replacing the one with the same task key, cache key and
        inputs hash (``created`` defaults to now; ``expires`` None: never)."""
        self._store().cache_put(
            task_key, cache_key, result_location, inputs_hash, created, expires, serializer
        )

    def close(self) -> None:
        """Drop the connection. Later calls raise StoreError; closing twice is fine."""
        self._native = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"


def errors_by_run(logs: Iterable[LogInfo]) -> dict[int, list[str]]:
    """The messages of the error (and worse) log lines of task runs, by task run, in the
    order written; lines of the flow run itself are left out.

    Example:
        >>> errors_by_run([LogInfo(3, 40, 0.0, "boom"), LogInfo(None, 50, 0.0, "flow"),
        ...                LogInfo(3, 20, 0.0, "info")])
        {3: ['boom']}
    """
    errors: dict[int, list[str]] = {}
    for line in logs:
        if line.run is not None and line.level >= logging.ERROR:
            errors.setdefault(line.run, []).append(line.message)
    return errors


def open_store(path: str | os.PathLike[str] | None = None) -> RunStore:
    """Open the run store at ``path`` (default: :func:`store_path`), creating it and its
    directory if needed.

    Raises:
        StoreError: the file is not a run store or is damaged, was written by a newer
            ferroflow, cannot be written, or stays locked by another process. The file
            is left untouched.
    """
    target = store_path() if path is None else Path(path)
    return RunStore(_native.Store(os.fspath(target)))


def import_flow_run(
    path: str | os.PathLike[str], flow_run_id: str, records: dict[str, Any]
) -> bool:
    """Copy a flow run recorded elsewhere into the store at ``path``, as the run
    ``flow_run_id``, so that ``flow.run(resume=flow_run_id)`` here restores its finished,
    checkpointed tasks (those whose result locations this machine can read; the rest run
    again). ``records`` is what :meth:`ferroflow.client.Client.flow_run_records` returns:
    ``flow_name``, ``parameters`` (a dict), ``message``, ``started``, ``structure`` and
    ``journal`` (the blobs, in order). The copy is recorded ``Interrupted`` (it is not
    running here). False, changing nothing, when the store already has that run.

    Raises:
        StoreError: the store cannot be opened or written, or ``records`` is malformed.
    """
    import sqlite3
    import time

    from ferroflow.exceptions import StoreError

    target = Path(path)
    open_store(target).close()  # created and migrated by the native store
    try:
        name = str(records["flow_name"])
        params = json.dumps(records.get("parameters") or {}, sort_keys=True)
        blobs = [bytes(b) for b in records.get("journal") or ()]
        started = float(records.get("started") or time.time())
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot import flow run {flow_run_id}: malformed records ({exc})"
        ) from exc
    structure = records.get("structure")
    message = f"copied from the server to resume it here ({records.get('message') or ''})"
    try:
        con = sqlite3.connect(os.fspath(target), timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            if con.execute("SELECT 1 FROM flow_runs WHERE id = ?", (flow_run_id,)).fetchone():
                con.execute("ROLLBACK")
                return False
            cur = con.execute(
                "INSERT INTO flow_runs(id, flow_name, parameters, state, message, started, "
                "ended, structure) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    flow_run_id,
                    name,
                    params,
                    FLOW_INTERRUPTED,
                    message,
                    started,
                    time.time(),
                    structure if isinstance(structure, str) else None,
                ),
            )
            key = cur.lastrowid
            con.executemany(
                "INSERT INTO journal(flow_run, data) VALUES (?, ?)", ((key, b) for b in blobs)
            )
            con.execute("COMMIT")
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot import flow run {flow_run_id} into {target}: {exc}") from exc
    return True
