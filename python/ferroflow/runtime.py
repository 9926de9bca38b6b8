"""Run-time context: what a running task can learn about its flow run and itself.

Inside a task, ``ferroflow.context`` answers ``flow_name``, ``flow_run_id``,
``parameters``, ``task_name``, ``task_full_name`` (``"name[3]"`` for a mapped child),
``task_slug``, ``task_run_id``, ``map_index``, ``task_run_count``, ``task_loop_count``,
``task_loop_result``, ``today`` and ``date``. Nothing is computed until a task reads an
attribute: the engine only records, per thread, which task run is executing (a few
integers in the native module), so a task that never reads the context pays nothing.

Example:
    >>> from ferroflow import Flow, context, task
    >>> @task
    ... def who() -> str:
    ...     return f"{context.flow_name}/{context.task_full_name}"
    >>> with Flow("ctx") as flow:
    ...     w = who()
    >>> flow.run().result[w].result
    'ctx/who'
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Context", "context", "get_run_logger"]

# Flow runs in progress, by the token the engine gave their native runner.
_RUNS: dict[int, Any] = {}
_RUNS_LOCK = threading.Lock()
# The flow run driven by this thread (for reads outside a task, e.g. in handlers).
_LOCAL = threading.local()

_TASK_KEYS = (
    "task_name",
    "task_full_name",
    "task_slug",
    "task_run_id",
    "map_index",
    "task_run_count",
    "task_loop_count",
    "task_loop_result",
    "task_tags",
)
_FLOW_KEYS = ("flow_name", "flow_run_id", "parameters", "today", "date", "scheduled_start_time")


def _register(token: int, run: Any) -> None:
    with _RUNS_LOCK:
        _RUNS[token] = run
    _LOCAL.run = run


def _unregister(token: int) -> None:
    with _RUNS_LOCK:
        _RUNS.pop(token, None)
    _LOCAL.run = None


def _current() -> tuple[Any, tuple[Any, ...] | None]:
    """The flow run and task-run tuple of the calling thread (either may be None)."""
    from ferroflow import _native

    cur = _native.current()
    if cur is not None:
        run = _RUNS.get(cur[0])
        if run is not None:
            return run, cur
    # In a worker process the executor sets both on this thread.
    return getattr(_LOCAL, "run", None), getattr(_LOCAL, "cur", None)


class RemoteRunInfo:
    """What ``ferroflow.context`` knows inside a worker process (or Dask worker).

    Built by the driver and shipped once per worker; ``tasks`` holds
    ``(name, slug, tags)`` per task id.
    """

    def __init__(
        self,
        flow_name: str,
        flow_run_id: str,
        parameters: dict[str, Any],
        started: datetime.datetime,
        tasks: list[tuple[str, str | None, frozenset[str]]],
    ) -> None:
        self.flow_name = flow_name
        self.flow_run_id = flow_run_id
        self.parameters = parameters
        self.started = started
        self.tasks = tasks

    def flow_value(self, name: str) -> Any:
        """A flow-level context value."""
        return _flow_value(name, self.flow_name, self.flow_run_id, self.parameters, self.started)

    def task_value(self, name: str, cur: tuple[Any, ...]) -> Any:
        """A task-level context value for the task run described by ``cur``."""
        tname, slug, tags = self.tasks[cur[2]]
        return _task_value(name, cur, self.flow_run_id, tname, slug, tags)


def _flow_value(
    name: str,
    flow_name: str,
    flow_run_id: str,
    parameters: dict[str, Any],
    started: datetime.datetime,
) -> Any:
    """The flow-level context value ``name`` (the engine's FlowRun and RemoteRunInfo)."""
    if name == "flow_name":
        return flow_name
    if name == "flow_run_id":
        return flow_run_id
    if name == "parameters":
        return dict(parameters)
    if name == "today":
        return started.strftime("%Y-%m-%d")
    if name in ("date", "scheduled_start_time"):
        return started
    raise AttributeError(name)


def _task_value(
    name: str,
    cur: tuple[Any, ...],
    flow_run_id: str,
    task_name: str,
    slug: str | None,
    tags: Any,
) -> Any:
    """The task-level context value ``name`` of the task run ``cur`` (the native
    module's ``(token, run_id, task_id, map_index, run_count, loop_count, loop_result)``)."""
    _token, run_id, _task_id, map_index, run_count, loop_count, loop_result = cur
    if name == "task_name":
        return task_name
    if name == "task_full_name":
        return task_name if map_index < 0 else f"{task_name}[{map_index}]"
    if name == "task_slug":
        return slug
    if name == "task_run_id":
        return f"{flow_run_id}/{run_id}"
    if name == "map_index":
        return None if map_index < 0 else map_index
    if name == "task_run_count":
        return run_count
    if name == "task_loop_count":
        return loop_count + 1
    if name == "task_loop_result":
        return loop_result
    if name == "task_tags":
        return set(tags)
    raise AttributeError(name)


def _enter_remote(info: RemoteRunInfo | None, cur: tuple[Any, ...] | None) -> None:
    """Set the context of the task run this thread executes in a worker."""
    _LOCAL.run = info
    _LOCAL.cur = cur


class Context:
    """Read-only view of the current flow run and task run (``ferroflow.context``).

    Attributes are looked up when read; outside a flow run they raise
    ``AttributeError`` (use :meth:`get` for a default).

    Example:
        >>> from ferroflow import context
        >>> context.get("flow_name", "no flow running")
        'no flow running'
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        run, cur = _current()
        if run is None:
            raise AttributeError(f"ferroflow.context has no '{name}': no flow is running")
        if name in _FLOW_KEYS:
            return run.flow_value(name)
        if name in _TASK_KEYS:
            if cur is None:
                raise AttributeError(f"ferroflow.context has no '{name}' outside a task run")
            return run.task_value(name, cur)
        raise AttributeError(f"ferroflow.context has no '{name}'")

    def get(self, name: str, default: Any = None) -> Any:
        """Return the context value ``name``, or ``default`` when it is not set.

        Example:
            >>> from ferroflow import context
            >>> context.get("map_index", -1)
            -1
        """
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _MISSING) is not _MISSING

    def keys(self) -> Iterator[str]:
        """The names readable right now.

        Example:
            >>> from ferroflow import context
            >>> list(context.keys())
            []
        """
        for k in (*_FLOW_KEYS, *_TASK_KEYS):
            if k in self:
                yield k

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every value readable right now.

        Example:
            >>> from ferroflow import context
            >>> context.to_dict()
            {}
        """
        return {k: getattr(self, k) for k in self.keys()}

    def __repr__(self) -> str:
        return f"<ferroflow.context {self.to_dict()!r}>"


_MISSING = object()

context = Context()


class _RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


_LOGGING_SET_UP = False


def _ensure_handler() -> None:
    global _LOGGING_SET_UP
    if _LOGGING_SET_UP:
        return
    _LOGGING_SET_UP = True
    base = logging.getLogger("ferroflow")
    if not base.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s - %(name)s | %(message)s")
        )
        base.addHandler(handler)
        base.setLevel(logging.INFO)


def get_run_logger(name: str | None = None) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger whose records carry the ids of the current flow run and task run.

    Each record has the attributes ``flow_run_id``, ``task_run_id`` (None outside a
    task), ``flow_name`` and ``task_name``. The logger is ``ferroflow.task.<task name>``
    inside a task and ``ferroflow.flow`` otherwise; a handler is installed on the
    ``ferroflow`` logger only when logging has not been configured at all.

    Example:
        >>> from ferroflow import Flow, get_run_logger, task
        >>> @task
        ... def work() -> None:
        ...     get_run_logger().info("working")
    """
    _ensure_handler()
    extra: dict[str, Any] = {
        "flow_run_id": context.get("flow_run_id"),
        "flow_name": context.get("flow_name"),
        "task_run_id": context.get("task_run_id"),
        "task_name": context.get("task_full_name"),
    }
    if name is None:
        name = f"task.{extra['task_name']}" if extra["task_name"] else "flow"
    return _RunLoggerAdapter(logging.getLogger(f"ferroflow.{name}"), extra)
