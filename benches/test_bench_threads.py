"""ThreadExecutor on I/O-bound work: 200 mapped tasks that each sleep 50 ms.

With 8 workers the ideal is 200 / 8 * 50 ms = 1.25 s; the gap to it is the executor's cost.
"""

from __future__ import annotations

import pytest

from _workloads import build_sleep_map, expected_sleep, result_of
from ferroflow.executors import ThreadExecutor

N_SLEEPERS = 200
WORKERS = 8


@pytest.mark.benchmark(group="threads")
def test_sleep_map_200_threads8(benchmark):
    flow, out = build_sleep_map(N_SLEEPERS)
    executor = ThreadExecutor(max_workers=WORKERS)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"executor": executor},
        rounds=3,
        iterations=1,
    )
    assert value == expected_sleep(N_SLEEPERS)
