"""ferroflow: a Prefect-Core-style workflow engine for Python, with a Rust core.

Write plain functions, wire them into a deferred graph inside ``with Flow(...)``, and
run the graph with retries, triggers, caching, checkpointed results and parallel
executors.

Example:
    >>> from ferroflow import Flow, Parameter, task
    >>> @task
    ... def inc(x: int) -> int:
    ...     return x + 1
    >>> with Flow("hello") as flow:
    ...     n = Parameter("n", default=1, type=int)
    ...     out = inc(inc(n))
    >>> state = flow.run(n=40)
    >>> state.result[out].result
    42
"""

from __future__ import annotations

from typing import Any

from ferroflow.edge import flatten, mapped, unmapped
from ferroflow.flow import Flow
from ferroflow.runtime import context, get_run_logger
from ferroflow.task import Parameter, Task, task
from ferroflow.tasks.control_flow import FilterTask, case, ifelse, merge, switch
from ferroflow.tasks.resource_manager import resource_manager
from ferroflow.utilities.tasks import apply_map, tags

__all__ = [
    "FilterTask",
    "Flow",
    "Parameter",
    "Task",
    "__version__",
    "apply_map",
    "case",
    "context",
    "flatten",
    "get_run_logger",
    "ifelse",
    "mapped",
    "merge",
    "resource_manager",
    "switch",
    "tags",
    "task",
    "unmapped",
]


def __getattr__(name: str) -> Any:
    # The version is looked up on first use: importlib.metadata costs a few ms.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("ferroflow")
        except PackageNotFoundError:
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'ferroflow' has no attribute {name!r}")
