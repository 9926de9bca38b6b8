"""Executors decide *where* a ready task run executes; the Rust core alone decides
*what* is ready.

Example:
    >>> from ferroflow.executors import LocalExecutor
    >>> LocalExecutor()
    LocalExecutor()
"""

from __future__ import annotations

from typing import Any

__all__ = ["Executor", "LocalExecutor"]


class Executor:
    """Base class of executors."""

    def execute(self, run: Any) -> None:  # pragma: no cover - abstract
        """Drive ``run`` (an engine FlowRun) to the end."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LocalExecutor(Executor):
    """Run every task in the calling thread, one at a time (the default).

    The Rust core drives the loop and calls each task's function directly.

    Example:
        >>> from ferroflow import Flow, task
        >>> from ferroflow.executors import LocalExecutor
        >>> @task
        ... def one() -> int:
        ...     return 1
        >>> with Flow("f") as flow:
        ...     x = one()
        >>> flow.run(executor=LocalExecutor()).is_successful()
        True
    """

    def execute(self, run: Any) -> None:
        """Run ``run`` to the end in this thread."""
        run.runner.run_local()
