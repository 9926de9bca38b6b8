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
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["MASK", "Context", "context", "get_run_logger", "mask_secret", "mask_text"]

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
    "resume",
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
    cur = getattr(_LOCAL, "cur", None)
    if type(cur) is _SegmentCursor:
        cur = cur.current()
    return getattr(_LOCAL, "run", None), cur


class _SegmentCursor:
    """In a worker process: the task run a segment of plain runs is at, read as the
    task-run tuple only when the context is asked for. ``shared`` is the shared value
    the worker sets to the id of the run it calls (so moving on costs nothing more)."""

    __slots__ = ("index", "map_indexes", "run_counts", "runs", "shared", "task")

    def __init__(
        self, task: int, runs: Any, map_indexes: Any, run_counts: Any, shared: Any
    ) -> None:
        self.task = task
        self.runs = runs  # a range, or a list of run ids
        self.map_indexes = map_indexes
        self.run_counts = run_counts  # an int when the same for every run
        self.shared = shared
        self.index: dict[int, int] | None = None

    def current_index(self) -> int:
        run, runs = self.shared.value, self.runs
        if type(runs) is range:
            return run - runs.start
        if self.index is None:
            self.index = {r: i for i, r in enumerate(runs)}
        return self.index[run]

    def current(self) -> tuple[Any, ...]:
        i, counts = self.current_index(), self.run_counts
        count = counts if type(counts) is int else counts[i]
        return (0, self.runs[i], self.task, self.map_indexes[i], count, 0, None)


class RemoteRunInfo:
    """What ``ferroflow.context`` knows inside a worker process (or Dask worker).

    Built by the driver and shipped once per worker; ``tasks`` holds
    ``(name, slug, tags)`` per task id. ``masks``: the secret values the driver masks,
    masked in the worker too before a task run starts there (set by the Dask executor).
    """

    masks: tuple[str, ...] = ()

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
    _token, run_id, _task_id, map_index, run_count, loop_count, loop_result = cur[:7]
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
    if name == "resume":
        # True for the attempt that follows an approval of a paused run.
        return bool(cur[7]) if len(cur) > 7 else False
    raise AttributeError(name)


def _user_traceback(exc: BaseException) -> BaseException:
    """Drop the leading frames of ferroflow's own code from ``exc``'s traceback (the
    worker loop, the hooked-task path), so a failure shows the frames of the task's
    code, as when the core calls the task directly."""
    import os

    tb = exc.__traceback__
    root = os.path.dirname(os.path.abspath(__file__))
    while tb is not None and tb.tb_next is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not filename.startswith(root + os.sep):
            break
        tb = tb.tb_next
    if tb is not exc.__traceback__:
        exc.__traceback__ = tb
    return exc


def _enter_remote(info: Any, cur: tuple[Any, ...] | None) -> None:
    """Set the context of the task run this thread executes in a worker."""
    _LOCAL.run = info
    _LOCAL.cur = cur
    if type(info) is RemoteRunInfo:
        _REMOTE_RUNS.add(info.flow_run_id)
        if info.masks:
            _adopt_masks(info.masks)


# Flow runs whose tasks this process executes as a worker: their log lines wait in
# ``_REMOTE`` for the driver (lines of any other run without a sink here are dropped).
_REMOTE_RUNS: set[str] = set()


class Context(Mapping[str, Any]):
    """Read-only view of the current flow run and task run (``ferroflow.context``).

    Values are looked up when read, as attributes (``context.task_name``) or as a
    mapping (``context["task_name"]``, ``dict(context)``), like Prefect's context.
    Outside a flow run an attribute raises ``AttributeError`` and a key ``KeyError``
    (use :meth:`get` for a default).

    Example:
        >>> from ferroflow import context
        >>> context.get("flow_name", "no flow running")
        'no flow running'
        >>> "task_name" in context, len(context)
        (False, 0)
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

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str) or name.startswith("_"):
            raise KeyError(name)
        try:
            return getattr(self, name)
        except AttributeError as exc:
            raise KeyError(name) from exc

    def get(self, name: str, default: Any = None) -> Any:
        """Return the context value ``name``, or ``default`` when it is not set.

        Example:
            >>> from ferroflow import context
            >>> context.get("map_index", -1)
            -1
        """
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        """The names readable right now.

        Example:
            >>> from ferroflow import context
            >>> list(context)
            []
        """
        for k in (*_FLOW_KEYS, *_TASK_KEYS):
            if k in self:
                yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of every value readable right now.

        Example:
            >>> from ferroflow import context
            >>> context.to_dict()
            {}
        """
        return {k: self[k] for k in self}

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


# --- masking secret values ------------------------------------------------------------
#
# A secret read in this process (ferroflow.tasks.secrets) is masked from then on: the
# native store writer replaces it in every state message and log line it records, and
# the ferroflow log handlers (the store's and the console one ferroflow installs) pass
# records through _MaskFilter first.

#: What a masked value is replaced with.
MASK = "****"

_MASKING = False
_MASKED: set[str] = set()
# Every value masked in this process, in the order it was masked (the executors send
# the new ones to their workers before the next task runs there).
_MASK_LIST: list[str] = []
# In a worker: values masked here and not yet sent to the driver.
_REMOTE_MASKS: list[str] = []
# Whether this process is a worker (process or Dask) that ships its log lines.
_IN_WORKER = False
# The flow-run id of a log "line" that carries a masked value from a worker to the driver.
_MASK_ENTRY = "\x00mask"


def mask_secret(value: str) -> None:
    """Mask ``value`` in this process's records from now on: state messages and log
    lines in the run store, and the ``ferroflow`` loggers' console output, show
    ``****`` instead (also its escaped form, as ``repr`` would print it).

    Example:
        >>> mask_secret("doctest-hunter2")
        >>> mask_text("the password is doctest-hunter2")
        'the password is ****'
    """
    if not isinstance(value, str) or not value:
        return
    if value not in _MASKED:
        _mask_forms(value)
    if _IN_WORKER:
        with _REMOTE_LOCK:
            # A worker tells the driver with its next log lines (see _take_remote_logs),
            # every time: a worker outlives drivers (a Dask cluster serves many runs).
            if value not in _REMOTE_MASKS:
                _REMOTE_MASKS.append(value)


def _mask_forms(value: str) -> None:
    """Mask ``value`` and its escaped forms here (without telling a driver)."""
    global _MASKING
    from ferroflow import _native

    forms = {value, repr(value)[1:-1], value.encode("unicode_escape").decode("ascii")}
    for form in forms:
        if form:
            _native.mask_value(form)
    _MASKED.add(value)
    _MASK_LIST.append(value)
    _MASKING = True


def _adopt_masks(values: Any) -> None:
    """In a worker: mask the values the driver sent (it masks them already)."""
    for value in values:
        if isinstance(value, str) and value and value not in _MASKED:
            _mask_forms(value)


def mask_text(text: str) -> str:
    """``text`` with every value given to :func:`mask_secret` replaced by ``****``."""
    if not _MASKING:
        return text
    from ferroflow import _native

    return _native.mask_text(text)


class _MaskFilter(logging.Filter):
    """Masks secret values in a record's message, traceback and stack (in place, so
    every later handler sees the masked record too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _MASKING:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # the handler reports the bad format
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


_MASK_FILTER = _MaskFilter()

_LOGGING_SET_UP = False


def _ensure_handler() -> None:
    global _LOGGING_SET_UP
    if _LOGGING_SET_UP:
        return
    _LOGGING_SET_UP = True
    base = logging.getLogger("ferroflow")
    own = [h for h in base.handlers if not isinstance(h, _StoreHandler)]
    if not own and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s - %(name)s | %(message)s")
        )
        handler.addFilter(_MASK_FILTER)
        base.addHandler(handler)
    if base.level == logging.NOTSET:
        # Like Prefect's logger: INFO and above, whatever the root logger says, so that
        # run-logger records reach the run store.
        base.setLevel(logging.INFO)


def get_run_logger(name: str | None = None) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger whose records carry the ids of the current flow run and task run.

    Each record has the attributes ``flow_run_id``, ``task_run_id`` (None outside a
    task), ``flow_name`` and ``task_name``. The logger is ``ferroflow.task.<task name>``
    inside a task and ``ferroflow.flow`` otherwise, at level INFO unless the
    ``ferroflow`` logger is given another; a handler is installed on the ``ferroflow``
    logger only when logging has not been configured at all. In a recorded run,
    records of INFO and above are written to the run store with the flow-run and
    task-run ids (``ferroflow runs logs ID``), also from process and Dask workers.

    Example:
        >>> from ferroflow import Flow, get_run_logger, task
        >>> @task
        ... def work() -> None:
        ...     get_run_logger().info("working")
    """
    _ensure_handler()
    run, cur = _current()
    extra: dict[str, Any] = {
        "flow_run_id": None,
        "flow_name": None,
        "task_run_id": None,
        "task_name": None,
        "ferroflow_run": None,
    }
    if run is not None:
        extra["flow_run_id"] = run.flow_value("flow_run_id")
        extra["flow_name"] = run.flow_value("flow_name")
        if cur is not None:
            extra["task_run_id"] = run.task_value("task_run_id", cur)
            extra["task_name"] = run.task_value("task_full_name", cur)
            extra["ferroflow_run"] = cur[1]
    if name is None:
        name = f"task.{extra['task_name']}" if extra["task_name"] else "flow"
    return _RunLoggerAdapter(logging.getLogger(f"ferroflow.{name}"), extra)


# --- run logs into the run store -------------------------------------------------------
#
# A recorded flow run opens a sink for its id; the store handler on the ``ferroflow``
# logger appends each record that carries that id to the sink's batch, and a full batch
# (or the end of the run) goes to the store's writer thread in one call: one channel
# message per batch, written with the run's other records, never a transaction per line.
# In a worker process (or Dask worker) there is no sink: lines collect in ``_REMOTE``
# and travel back to the driver with the results (processes) or when the driver drains
# them (Dask), and the driver hands them to its sink.

#: Lines per batch handed to the writer (memory stays bounded by this per run).
_LOG_BATCH = 4096

#: One log line as the store takes it: ``(task run or None, level, time, message)``.
LogLine = tuple[int | None, int, float, str]


class _LogSink:
    """The log lines of one recorded flow run on their way to the run store."""

    __slots__ = ("flow_run_id", "lines", "lock", "path")

    def __init__(self, path: str, flow_run_id: str) -> None:
        self.path = path
        self.flow_run_id = flow_run_id
        self.lines: list[LogLine] = []
        self.lock = threading.Lock()

    def add(self, line: LogLine) -> None:
        with self.lock:
            self.lines.append(line)
            if len(self.lines) < _LOG_BATCH:
                return
            lines, self.lines = self.lines, []
        self._send(lines)

    def extend(self, lines: list[LogLine]) -> None:
        with self.lock:
            self.lines.extend(lines)
            if len(self.lines) < _LOG_BATCH:
                return
            lines, self.lines = self.lines, []
        self._send(lines)

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        self._send(lines)

    def _send(self, lines: list[LogLine]) -> None:
        if lines:
            from ferroflow import _native

            _native.record_logs(self.path, self.flow_run_id, lines)


_SINKS: dict[str, _LogSink] = {}
# In a worker: (flow run id, line) of every record, until shipped to the driver.
_REMOTE: list[tuple[str, LogLine]] = []
_REMOTE_LOCK = threading.Lock()
# In a process worker: sends a full batch of lines to the driver at once (so that a long
# task that logs a lot does not hold them all until it ends). None: wait to be taken.
_REMOTE_SEND: Any = None


class _StoreHandler(logging.Handler):
    """Sends run-logger records (and ``log_stdout`` lines) towards the run store."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(_MASK_FILTER)

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = record.__dict__.get("flow_run_id")
        if flow_run_id is None:
            return
        try:
            if record.exc_info or record.stack_info:
                message = self.format(record)
            else:
                message = record.getMessage()
            line = (record.__dict__.get("ferroflow_run"), record.levelno, record.created, message)
            sink = _SINKS.get(flow_run_id)
            if sink is not None:
                sink.add(line)
            elif flow_run_id in _REMOTE_RUNS:
                with _REMOTE_LOCK:
                    _REMOTE.append((flow_run_id, line))
                    full = len(_REMOTE) >= _LOG_BATCH and _REMOTE_SEND is not None
                if full:
                    _REMOTE_SEND(_take_remote_logs())
        except Exception:
            self.handleError(record)


_STORE_HANDLER: _StoreHandler | None = None


def _install_store_handler() -> None:
    global _STORE_HANDLER
    if _STORE_HANDLER is None:
        _STORE_HANDLER = _StoreHandler()
        base = logging.getLogger("ferroflow")
        base.addHandler(_STORE_HANDLER)
        if base.level == logging.NOTSET:
            base.setLevel(logging.INFO)  # as get_run_logger() makes it


def _open_log_sink(path: str, flow_run_id: str) -> None:
    """Start sending the run logs of ``flow_run_id`` to the store at ``path``."""
    _install_store_handler()
    _SINKS[flow_run_id] = _LogSink(path, flow_run_id)


def _close_log_sink(flow_run_id: str) -> None:
    """Send what is left of a run's logs to the writer and stop collecting them."""
    sink = _SINKS.pop(flow_run_id, None)
    if sink is not None:
        sink.flush()


def _add_remote_logs(lines: list[tuple[str, LogLine]]) -> None:
    """Log lines shipped back from workers: into the sinks of their flow runs."""
    for flow_run_id, line in lines:
        if flow_run_id == _MASK_ENTRY:
            mask_secret(str(line))  # a secret a worker read: masked here too, first
            continue
        sink = _SINKS.get(flow_run_id)
        if sink is not None:
            sink.add(line)


def _take_remote_logs(flow_run_id: str | None = None) -> list[tuple[str, LogLine]]:
    """In a worker: the lines collected so far (of one flow run, or all), removed;
    the secret values masked since the last call come first (the driver masks them
    before it records anything that follows)."""
    with _REMOTE_LOCK:
        masks: list[Any] = [(_MASK_ENTRY, v) for v in _REMOTE_MASKS]
        _REMOTE_MASKS.clear()
        if flow_run_id is None:
            taken = _REMOTE[:]
            _REMOTE.clear()
            return masks + taken
        taken = [x for x in _REMOTE if x[0] == flow_run_id]
        if taken:
            _REMOTE[:] = [x for x in _REMOTE if x[0] != flow_run_id]
        return masks + taken


def _capture_remote_logs() -> None:
    """In a worker: collect run-logger records (and masked values) for the driver."""
    global _IN_WORKER
    _IN_WORKER = True
    _install_store_handler()


# --- log_stdout: a task's printed lines go to its run logger ---------------------------


class _StdoutRouter:
    """Stands in for ``sys.stdout`` while any task with ``log_stdout`` runs: writes from
    a thread that runs such a task go to that task's run logger, line by line; every
    other write goes to the real stdout."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        cap = getattr(_LOCAL, "stdout_capture", None)
        if cap is None:
            return int(self.real.write(text))
        cap.write(text)
        return len(text)

    def flush(self) -> None:
        if getattr(_LOCAL, "stdout_capture", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _LineLogger:
    """Turns written text into one INFO record per line."""

    def __init__(self, logger: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self.logger = logger
        self.pending = ""

    def write(self, text: str) -> None:
        text = self.pending + text
        *lines, self.pending = text.split("\n")
        for line in lines:
            self.logger.info(line)

    def close(self) -> None:
        if self.pending:
            self.logger.info(self.pending)
            self.pending = ""


_ROUTER_LOCK = threading.Lock()
_ROUTER_USERS = 0


class capture_stdout:
    """``with capture_stdout():`` inside a task run: what this thread prints goes to the
    task's run logger, one INFO record per line (the ``log_stdout`` task option)."""

    def __enter__(self) -> capture_stdout:
        import sys

        global _ROUTER_USERS
        with _ROUTER_LOCK:
            if _ROUTER_USERS == 0 and not isinstance(sys.stdout, _StdoutRouter):
                sys.stdout = _StdoutRouter(sys.stdout)  # type: ignore[assignment]
            _ROUTER_USERS += 1
        self.previous = getattr(_LOCAL, "stdout_capture", None)
        self.lines = _LineLogger(get_run_logger())
        _LOCAL.stdout_capture = self.lines
        return self

    def __exit__(self, *exc: object) -> None:
        import sys

        global _ROUTER_USERS
        _LOCAL.stdout_capture = self.previous
        self.lines.close()
        with _ROUTER_LOCK:
            _ROUTER_USERS -= 1
            if _ROUTER_USERS == 0 and isinstance(sys.stdout, _StdoutRouter):
                sys.stdout = sys.stdout.real
