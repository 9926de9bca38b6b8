"""Mapping on the LocalExecutor: fan-out, map chains and the reduce.

The map's children are created at run time (when the input's length is known), so every
round below includes expanding the map. Each benchmark checks the reduced value.
"""

from __future__ import annotations

import pytest

from _workloads import (
    build_depth_first,
    build_map,
    expected_depth_first,
    expected_map,
    result_of,
)


@pytest.mark.benchmark(group="map")
def test_map_1m_reduce(benchmark):
    """``total(inc.map(src))`` over 1,000,000 elements."""
    n = 1_000_000
    flow, out = build_map(n)
    value = benchmark.pedantic(result_of, args=(flow, out), rounds=3, iterations=1, warmup_rounds=1)
    assert value == expected_map(n)


@pytest.mark.benchmark(group="map")
def test_map_chain_3x100k(benchmark):
    """``total(inc.map(inc.map(inc.map(src))))`` over 100,000 children (300,000 runs)."""
    n = 100_000
    flow, out = build_map(n, stages=3)
    value = benchmark.pedantic(result_of, args=(flow, out), rounds=5, iterations=1, warmup_rounds=1)
    assert value == expected_map(n, stages=3)


@pytest.mark.benchmark(group="map")
def test_map_10k_reduce(benchmark):
    """``total(inc.map(src))`` over 10,000 elements."""
    n = 10_000
    flow, out = build_map(n)
    value = benchmark.pedantic(
        result_of, args=(flow, out), rounds=20, iterations=1, warmup_rounds=1
    )
    assert value == expected_map(n)


@pytest.mark.benchmark(group="map")
def test_depth_first_3x100k_release(benchmark):
    """``total(keep.map(measure.map(load.map(src))))``, 100,000 children, 100 KB each in
    the first stage, ``release_results=True`` (the depth-first memory workload; its peak
    RSS is measured by ``compare.py`` in a fresh process)."""
    n = 100_000
    flow, out = build_depth_first(n)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"release_results": True, "record": False},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert value == expected_depth_first(n)
