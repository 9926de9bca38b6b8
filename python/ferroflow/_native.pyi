"""Type stubs for ``ferroflow._native``, the PyO3 binding of the Rust core (private)."""

from collections.abc import Callable, Sequence
from typing import Any, final

from typing_extensions import Self

__all__ = [
    "CAUSE_FAIL_SIGNAL",
    "CAUSE_INTERNAL",
    "CAUSE_MATCHED",
    "CAUSE_UNMATCHED",
    "CAUSE_WORKER_LOST",
    "STATE_CODES",
    "STORE_SCHEMA_VERSION",
    "JournalFold",
    "Recorder",
    "Runner",
    "Store",
    "TimedLane",
    "current",
    "default_store_path",
    "error_classes",
    "find_cycle",
    "journal_encode_transitions",
    "journal_mask",
    "journal_transitions",
    "mask_text",
    "mask_value",
    "pid_is_alive",
    "record_logs",
    "record_structure",
    "will_retry",
]

def find_cycle(n: int, edges: Sequence[tuple[int, int]]) -> list[int] | None:
    """Task indices along a cycle (first repeated last), or None for a DAG."""

def current() -> tuple[int, int, int, int, int, int, Any, bool] | None:
    """``(token, run_id, task_id, map_index, run_count, loop_count, loop_result,
    resumed)`` of the task run executing in this thread, or None."""

#: State codes by state class name, as the core defines them.
STATE_CODES: dict[str, int]
#: What made a run fail, for the core's retry rule.
CAUSE_UNMATCHED: int
CAUSE_MATCHED: int
CAUSE_FAIL_SIGNAL: int
CAUSE_WORKER_LOST: int
CAUSE_INTERNAL: int

def will_retry(code: int, cause: int, retries_left: bool) -> bool:
    """Whether the core retries a run ending with state ``code`` (and ``cause``)."""

def error_classes() -> list[str]:
    """Names of the ``ferroflow.exceptions`` classes the binding raises."""

@final
class TimedLane:
    """A batch of timed calls of a local run, made by a ``ferroflow._timeouts`` helper:
    ``start()``, then ``returned(value)`` or ``raised(error)`` after each call, give the
    next ``(func, args, kwargs)`` (``kwargs`` may be None), or None when it is over."""

    def start(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None] | None: ...
    def returned(
        self, value: Any
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None] | None: ...
    def raised(
        self, error: BaseException
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any] | None] | None: ...

@final
class Runner:
    """One flow run driven by the Rust core."""

    def __new__(
        cls,
        tasks: Sequence[tuple[str, int, float, tuple[Any, ...], bool]],
        edges: Sequence[tuple[int, int, bool, bool, bool]] | Sequence[tuple[Any, ...]],
        calls: Sequence[tuple[Any, ...] | None],
        reference: Sequence[int],
        hooks: tuple[
            Callable[..., Any] | None, Callable[..., Any] | None, Callable[..., Any] | None
        ],
        signal_base: type[BaseException],
        token: int,
        release: bool = False,
        record: tuple[str, str, str, str, str | None] | None = None,
        restore: tuple[Callable[[int, int], tuple[Any, ...] | None], list[int]] | None = None,
        progress: Callable[[list[int]], Any] | None = None,
        pack: Callable[[int], tuple[Any, str, Any, tuple[Any, ...], bool, Any, bool]] | None = None,
        quick: bytes | None = None,
        approvals: Callable[[], list[tuple[int, int]]] | None = None,
        wait_for_approval: bool = False,
    ) -> Self: ...
    def run_local(self) -> None:
        """Run the flow to the end in the calling thread."""
    def outcome(self) -> tuple[str, list[int]]:
        """``(verdict, task ids)`` with verdict success/failed/cancelled/unfinished."""
    def state(self, run: int) -> tuple[int, str | None, Any, int, int]:
        """``(code, message, result, run_count, loop_count)`` of a run."""
    def children(self, task: int) -> tuple[int, int] | None:
        """``(first child run, number of children)`` of an expanded mapped task."""
    def codes(self, first: int, n: int) -> bytes:
        """State codes of runs ``first .. first + n``."""
    def results(self, first: int, n: int) -> list[Any]:
        """Results of runs ``first .. first + n``."""
    def n_runs(self) -> int:
        """Number of runs: tasks plus mapped children."""
    def run_threads(self, n: int) -> None:
        """Run the flow with ``n`` native worker threads."""
    def take(self, max: int) -> list[tuple[Any, ...]]:
        """Up to ``max`` ready runs for an external executor: ``(run, task, map_index,
        run_count, loop_count, hooked, func, args, kwargs, loop_result)``."""
    def take_segments(self, max: int) -> list[tuple[Any, ...]]:
        """``take`` with plain runs packed: consecutive plain runs of one task as one
        ``(task, func, runs, map_indexes, run_counts, args, unary)`` segment (``runs``,
        ``map_indexes``: a range when consecutive, else a list; ``run_counts``: an int
        when the same for all, else a list; ``args``: argument tuples, or the single
        arguments when ``unary``); any other run as the item ``take`` gives."""
    def report_values(self, runs: Sequence[int], values: list[Any]) -> bool:
        """Report plain runs from ``take_segments`` that returned ``values``; True when
        the flow run must stop."""
    def report(self, run: int, hooked: bool, ok: bool, value: Any) -> bool:
        """Report a run handed out by ``take``; True when the flow run must stop."""
    def report_failure(
        self,
        run: int,
        message: str,
        value: Any,
        cause: int = ...,
        timed_out: bool = False,
    ) -> None:
        """Report a run that ended without the task deciding: its worker died
        (``CAUSE_WORKER_LOST``), it could not be shipped (``CAUSE_INTERNAL``), or it
        timed out (``timed_out``)."""
    def approve(self, run: int) -> None:
        """Approve a paused task run: it runs at the next step."""
    def paused(self) -> list[int]:
        """Task runs waiting for approval."""
    def measures(self) -> bytes:
        """Per task, what the core measures of its results (0, 1 len, 2 item lens)."""
    def wait_hint(self) -> float | None:
        """How long to wait before asking for work again (the driver's wait policy),
        or None when the run is over."""
    def done(self) -> bool:
        """True when nothing is ready, waiting on a timer or handed out."""
    def close(self, cancel_reason: str | None = None) -> None:
        """End an externally driven run (cancelling what is unfinished with a reason)."""
    def replace_results(self, values: dict[int, Any]) -> None:
        """Overwrite the stored results of runs (their states are unchanged)."""
    def record_end(self, code: int, message: str | None = None) -> str | None:
        """Record the final state in the run store; what went wrong, or None."""
    def quick_tasks(self) -> bytes:
        """One byte per task: 1 when its last call ended within one clock tick."""
    def checkpoint_problems(self) -> list[str]:
        """Checkpoints lost after their tasks succeeded (failed pack writes)."""

# --- the run store (rust/py/src/store.rs) -------------------------------------------

STORE_SCHEMA_VERSION: int

def default_store_path() -> str:
    """``$FERROFLOW_HOME/ferroflow.db``, else ``~/.ferroflow/ferroflow.db``; StoreError
    when neither ``FERROFLOW_HOME`` nor a home directory is set."""

def record_logs(
    path: str, flow_run_id: str, lines: Sequence[tuple[int | None, int, float, str]]
) -> None:
    """Send log lines ``(run, level, at, message)`` of a recording flow run to its store."""

def record_structure(path: str, flow_run_id: str, structure_json: str) -> None:
    """Record the flow's structure (JSON) for a recording flow run."""

def mask_value(value: str) -> None:
    """Mask ``value`` (a secret) in every message and log line recorded from now on."""

def mask_text(text: str) -> str:
    """``text`` with every masked value replaced by ``****``."""

def pid_is_alive(pid: int) -> bool:
    """Whether process ``pid`` is alive on this machine (True when it cannot tell)."""

@final
class JournalFold:
    """One flow run's task runs, folded incrementally from its journal blobs."""

    def __init__(self) -> None: ...
    def apply(self, blobs: list[bytes]) -> None:
        """Apply these blobs, oldest first; StoreError for a damaged one."""
    def __len__(self) -> int:
        """How many task runs are registered."""
    def get(self, run: int) -> dict[str, Any] | None:
        """Task run ``run`` as a dict, or None."""
    def counts(self) -> list[tuple[int, str, bool, str, int]]:
        """``(task, task_name, is_mapped_child, state, count)`` rows."""
    def spans(self) -> list[tuple[int, str, bool, int, float | None, float | None]]:
        """``(task, task_name, is_mapped_child, runs, earliest_start, latest_end)`` rows."""
    def page(
        self,
        task: int | None = None,
        children: bool | None = None,
        states: list[str] | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many task runs match, and a page of them (dicts like ``Store.task_runs``)."""

def journal_transitions(blobs: list[bytes], run: int) -> list[dict[str, Any]]:
    """Every transition of task run ``run`` in these journal blobs, oldest first."""

def journal_encode_transitions(items: list[tuple[int, str, str | None, int, float]]) -> bytes:
    """One journal blob holding these ``(run, state_name, message, run_count, at)``
    transitions."""

def journal_mask(blob: bytes, values: Sequence[str]) -> bytes | None:
    """``blob`` (a journal row) with ``values`` replaced by ``****`` in its transition
    messages, or None when no message holds one. StoreError when it is damaged."""

@final
class Store:
    """A connection to the run store for reading (and cache entries, interrupted-run
    fixup). Opening raises ``ferroflow.exceptions.StoreError`` for a corrupt file, a
    newer schema, a read-only or locked store, leaving the file untouched. Rows are
    dicts of str/int/float/None."""

    def __new__(cls, path: str) -> Self: ...
    @property
    def path(self) -> str:
        """The store file."""
    def list_flow_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first. Keys: id, flow_name, parameters_json, state, message, started,
        ended, pid, host, resumed_from."""
    def flow_run(self, id_or_prefix: str) -> dict[str, Any] | None:
        """By id or unique prefix; None if none matches; StoreError if ambiguous."""
    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Keys: run, task, task_name, map_index, run_count, state, message, started,
        ended, result_location."""
    def transitions(self, flow_run_id: str, run: int) -> list[dict[str, Any]]:
        """Keys: state, message, at."""
    def logs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Keys: run, level, at, message."""
    def report_batch(
        self, flow_run_id: str, journal_after: int, log_after: int, max_bytes: int, max_logs: int
    ) -> dict[str, Any] | None:
        """The next batch of a flow run's records for a server (one transaction)."""
    def flow_structure(self, flow_run_id: str) -> str | None:
        """The flow's structure recorded for a flow run, as JSON text."""
    def last_record_time(self, flow_run_id: str) -> float | None:
        """When the last record of a flow run was made."""
    def finished_task_runs_with_results(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Keys: run, task, task_name, map_index, state, result_location."""
    def restorable(self, flow_run_id: str) -> list[tuple[int, int, str, str, int, int]]:
        """``(task, map_index | -1, task_name, location | pack, offset | -1, length | -1)``
        per Success/Cached task run with a result location."""
    def mark_interrupted(self, id: str, message: str) -> bool:
        """Mark a flow run Interrupted if still Running; whether it was."""
    def fixup_interrupted(self, host: str | None = None) -> list[str]:
        """Mark Interrupted the Running flow runs of ``host`` (default: this machine)
        whose process is gone; the ids marked."""
    def cache_get(
        self, task_key: str, cache_key: str, now: float | None = None
    ) -> dict[str, Any] | None:
        """Keys: task_key, cache_key, inputs_hash, created, expires, result_location,
        serializer."""
    def cache_candidates(
        self, task_key: str, cache_key: str, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Every unexpired entry, newest first."""
    def cache_put(
        self,
        task_key: str,
        cache_key: str,
        result_location: str,
        inputs_hash: str = "",
        created: float | None = None,
        expires: float | None = None,
        serializer: str = "",
    ) -> None:
        """Add or replace an entry."""

@final
class Recorder:
    """The write side of the run store: one writer thread. Sends never block or raise
    for write failures; ``flush``/``close`` raise the first StoreError the writer met."""

    def __new__(cls, path: str) -> Self: ...
    @property
    def path(self) -> str: ...
    @property
    def lost(self) -> int:
        """Records that could not be written so far."""
    @property
    def closed(self) -> bool: ...
    def flow_run_started(
        self,
        id: str,
        flow_name: str,
        parameters_json: str = "{}",
        started: float | None = None,
        pid: int | None = None,
        host: str | None = None,
        resumed_from: str | None = None,
    ) -> None: ...
    def task_runs(self, flow_run_id: str, runs: Sequence[tuple[int, int, str, int | None]]) -> None:
        """Register ``(run, task, task_name, map_index)`` task runs."""
    def map_children(
        self, flow_run_id: str, task: int, task_name: str, first_run: int, count: int
    ) -> None: ...
    def transition(
        self,
        flow_run_id: str,
        run: int,
        state_name: str,
        message: str | None = None,
        run_count: int = 0,
        at: float | None = None,
        result_location: str | None = None,
    ) -> None: ...
    def result_location(self, flow_run_id: str, run: int, location: str) -> None: ...
    def log(
        self, flow_run_id: str, run: int | None, level: int, message: str, at: float | None = None
    ) -> None: ...
    def logs(
        self, flow_run_id: str, lines: Sequence[tuple[int | None, int, float, str]]
    ) -> None: ...
    def flow_run_ended(
        self, id: str, state_name: str, message: str | None = None, ended: float | None = None
    ) -> None: ...
    def cache_put(
        self,
        task_key: str,
        cache_key: str,
        result_location: str,
        inputs_hash: str = "",
        created: float | None = None,
        expires: float | None = None,
        serializer: str = "",
    ) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Recorder: ...
    def __exit__(self, _exc_type: object, _exc: object, _tb: object) -> bool: ...
