"""ProcessExecutor: CPU-bound speed-up over the LocalExecutor, and its per-child overhead.

The CPU-bound map has 8 children that each burn about 0.5 s of pure-Python CPU (the loop
count is calibrated once per process, ``_workloads.burn_iterations``); compare
``test_cpu_map_8_local`` with ``test_cpu_map_8_processes2`` for the speed-up (the ideal on
2 cores is 2x). Every ProcessExecutor round includes starting its 2 worker processes.
Each benchmark checks the value it computed; none asserts a time.
"""

from __future__ import annotations

import pytest

from _workloads import (
    build_cpu_map,
    build_map,
    burn_iterations,
    expected_burn,
    expected_map,
    result_of,
)
from ferroflow.executors import LocalExecutor, ProcessExecutor

N_CPU = 8
N_PROC_MAP = 100_000
WORKERS = 2


@pytest.mark.benchmark(group="cpu-bound")
def test_cpu_map_8_local(benchmark):
    """8 children of ~0.5 s CPU each, one after the other in the calling thread."""
    k = burn_iterations()
    flow, out = build_cpu_map(N_CPU, k)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"executor": LocalExecutor()},
        rounds=2,
        iterations=1,
    )
    assert value == expected_burn(N_CPU, k)


@pytest.mark.benchmark(group="cpu-bound")
def test_cpu_map_8_processes2(benchmark):
    """The same 8 children on ``ProcessExecutor(2)``."""
    k = burn_iterations()
    flow, out = build_cpu_map(N_CPU, k)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"executor": ProcessExecutor(WORKERS)},
        rounds=3,
        iterations=1,
    )
    assert value == expected_burn(N_CPU, k)


@pytest.mark.benchmark(group="processes")
def test_process_map_100k(benchmark):
    """``total(inc.map(src))`` over 100,000 trivial children on ``ProcessExecutor(2)``."""
    flow, out = build_map(N_PROC_MAP)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"executor": ProcessExecutor(WORKERS)},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert value == expected_map(N_PROC_MAP)
