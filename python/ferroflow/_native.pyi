"""Type stubs for ``ferroflow._native``, the PyO3 binding of the Rust core (private)."""

from collections.abc import Callable, Sequence
from typing import Any

def find_cycle(n: int, edges: Sequence[tuple[int, int]]) -> list[int] | None:
    """Task indices along a cycle (first repeated last), or None for a DAG."""

def current() -> tuple[int, int, int, int, int, int, Any] | None:
    """``(token, run_id, task_id, map_index, run_count, loop_count, loop_result)`` of
    the task run executing in this thread, or None."""

class Runner:
    """One flow run driven by the Rust core."""

    def __init__(
        self,
        tasks: Sequence[tuple[str, int, float, tuple[Any, ...], bool]],
        edges: Sequence[tuple[int, int, bool, bool, bool]],
        calls: Sequence[
            tuple[int, Any, list[tuple[int, Any]], list[tuple[str, tuple[int, Any]]], Any, bool]
        ],
        reference: Sequence[int],
        hooks: tuple[
            Callable[..., Any] | None, Callable[..., Any] | None, Callable[..., Any] | None
        ],
        signal_base: type[BaseException],
        token: int,
        release: bool = False,
    ) -> None: ...
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
