"""Executors decide *where* a ready task run executes; the Rust core alone decides
*what* is ready.

Example:
    >>> from ferroflow.executors import LocalExecutor
    >>> LocalExecutor()
    LocalExecutor()
"""

from __future__ import annotations

import os
import time
from typing import Any

from ferroflow.exceptions import ExecutorError

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "ProcessExecutor", "ThreadExecutor"]


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


def _check_workers(max_workers: int | None, default: int) -> int:
    if max_workers is None:
        return default
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise ExecutorError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
    if max_workers < 1:
        raise ExecutorError(f"max_workers must be at least 1, got {max_workers}")
    return max_workers


def _wait_idle(runner: Any) -> bool:
    """Nothing is in flight: sleep as long as the core's driver says (until a retry
    timer, at most its longest wait). False when the run is over."""
    hint = runner.wait_hint()
    if hint is None:
        return False
    time.sleep(hint)
    return True


def _shown(value: Any) -> str:
    """``repr(value)``, or a placeholder when its ``__repr__`` fails."""
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _driver_tasks(tasks: Any) -> frozenset[int]:
    """Ids of the tasks whose runs execute in the driver on every executor: those whose
    class sets ``run_in_driver`` (the secret tasks of :mod:`ferroflow.tasks.secrets`)."""
    return frozenset(i for i, t in enumerate(tasks) if getattr(t, "run_in_driver", False))


def _run_in_driver(run: Any, item: tuple[Any, ...], args: Any = None, kwargs: Any = None) -> bool:
    """Execute one run taken from the core (``runner.take``'s tuple) in this thread, as
    the local executor does (context, state handlers, timeout; the core decides retries),
    and report it; True when the flow run must stop. ``args`` / ``kwargs`` replace the
    item's (an executor that resolved remote values in them)."""
    from ferroflow import runtime
    from ferroflow.engine import run_task

    run_id, task_id, map_index, run_count, loop_count, hooked, func, a, kw, loop_result = item
    if args is None:
        args, kwargs = a, kw
    local = runtime._LOCAL
    before = getattr(local, "run", None), getattr(local, "cur", None)
    local.run = run
    local.cur = (run.token, run_id, task_id, map_index, run_count, loop_count, loop_result)
    value: Any
    try:
        if hooked:
            value = run_task(run.plan.tasks[task_id], run_count, tuple(args), kwargs, func)
        else:
            value = func(*args, **(kwargs or {}))
        ok = True
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        runtime._user_traceback(exc)  # the task's frames only
        value, ok = exc, False
    finally:
        local.run, local.cur = before
    return bool(run.runner.report(run_id, hooked, ok, value))


class ThreadExecutor(Executor):
    """Run tasks on native worker threads that attach to the interpreter.

    A real speed-up for I/O-bound tasks and code that releases the GIL (and, on
    free-threaded Python, for everything). The Rust core keeps scheduling in the
    calling thread; completions reach it through a channel, with no Python-level
    loop per task.

    Args:
        max_workers: number of worker threads [``min(32, cpu_count + 4)``]; must be >= 1.

    Raises:
        ExecutorError: ``max_workers`` is not a whole number >= 1.

    Example:
        >>> from ferroflow.executors import ThreadExecutor
        >>> ThreadExecutor(max_workers=8)
        ThreadExecutor(max_workers=8)
    """

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = _check_workers(max_workers, min(32, (os.cpu_count() or 1) + 4))

    def execute(self, run: Any) -> None:
        """Run ``run`` to the end on the worker threads."""
        run.runner.run_threads(self.max_workers)

    def __repr__(self) -> str:
        return f"ThreadExecutor(max_workers={self.max_workers})"


def __getattr__(name: str) -> Any:
    # Heavier executors load on first use: multiprocessing and dask cost import time.
    if name == "ProcessExecutor":
        from ferroflow.executors.process import ProcessExecutor

        return ProcessExecutor
    if name == "DaskExecutor":
        from ferroflow.executors.dask import DaskExecutor

        return DaskExecutor
    raise AttributeError(f"module 'ferroflow.executors' has no attribute {name!r}")
