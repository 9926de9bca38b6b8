"""Workloads shared by the pytest-benchmark suites and ``compare.py``.

Every workload exists in three shapes that make *the same calls* to the same plain
functions: a ferroflow flow (``build_*``), a plain Python loop (``loop_*``) and, in
``compare.py``, a dask task graph. Keeping them in one module means the benchmarks and
the comparison table always measure the same thing.

Importing this module sets ``FERROFLOW_HOME`` to a throw-away directory (unless it is
already set), so benchmark runs never write into the user's ``~/.ferroflow``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

if "FERROFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="ferroflow-bench-")
    os.environ["FERROFLOW_HOME"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)

from ferroflow import Flow, Task, task

SLEEP_S = 0.05


# -- the plain functions every shape calls -------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


def nap(x: int) -> int:
    time.sleep(SLEEP_S)
    return x


def make_src(n: int) -> Callable[[], list[int]]:
    """A zero-argument function returning ``list(range(n))`` (the map's input)."""

    def src() -> list[int]:
        return list(range(n))

    return src


inc_task = task(inc)
total_task = task(total)
nap_task = task(nap)


# -- expected results ----------------------------------------------------------------------


def expected_independent(n: int) -> int:
    """``sum(inc(i) for i in range(n))``."""
    return n * (n + 1) // 2


def expected_chain(n: int) -> int:
    """``n`` increments of 0."""
    return n


def expected_map(n: int, stages: int = 1) -> int:
    """``sum(i + stages for i in range(n))``."""
    return n * (n - 1) // 2 + stages * n


def expected_sleep(n: int) -> int:
    return n * (n - 1) // 2


# -- ferroflow flows -----------------------------------------------------------------------


def build_independent(n: int) -> tuple[Flow, Task]:
    """``n`` independent ``inc(i)`` tasks and one ``total`` over all of them."""
    with Flow(f"independent-{n}") as flow:
        xs = [inc_task(i) for i in range(n)]
        out = total_task(xs)
    return flow, out


def build_chain(n: int) -> tuple[Flow, Task]:
    """``x = inc(x)`` ``n`` times, starting from 0."""
    with Flow(f"chain-{n}") as flow:
        x = inc_task(0)
        for _ in range(n - 1):
            x = inc_task(x)
    return flow, x


def build_only(n: int) -> Flow:
    """``n`` independent ``inc(i)`` tasks, no reduce (the build + validate workload)."""
    with Flow(f"build-{n}") as flow:
        for i in range(n):
            inc_task(i)
    return flow


def build_map(n: int, stages: int = 1) -> tuple[Flow, Task]:
    """``total(inc.map(... inc.map(src()) ...))`` with ``stages`` maps over ``n`` elements."""
    src_task = task(make_src(n), name="src")
    with Flow(f"map-{stages}x{n}") as flow:
        x = src_task()
        for _ in range(stages):
            x = inc_task.map(x)
        out = total_task(x)
    return flow, out


def build_sleep_map(n: int) -> tuple[Flow, Task]:
    """``total(nap.map(range(n)))``: ``n`` children that each sleep ``SLEEP_S``."""
    with Flow(f"sleep-{n}") as flow:
        out = total_task(nap_task.map(list(range(n))))
    return flow, out


def result_of(flow: Flow, out: Task, **run_kwargs: Any) -> Any:
    """Run ``flow`` and return the value of ``out`` (raises if the run did not succeed)."""
    state = flow.run(**run_kwargs)
    if not state.is_successful():
        raise AssertionError(f"{flow!r} did not succeed: {state!r}")
    return state.result[out].result


# -- the plain Python loops ----------------------------------------------------------------


def loop_independent(n: int) -> int:
    return total([inc(i) for i in range(n)])


def loop_chain(n: int) -> int:
    x = inc(0)
    for _ in range(n - 1):
        x = inc(x)
    return x


def loop_map(n: int, stages: int = 1) -> int:
    xs = make_src(n)()
    for _ in range(stages):
        xs = [inc(x) for x in xs]
    return total(xs)


def loop_sleep_pool(n: int, workers: int) -> int:
    """The "plain" baseline for the I/O workload: a ``ThreadPoolExecutor`` map."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return total(list(pool.map(nap, range(n))))
