"""LocalExecutor: per-task overhead of the engine on trivial tasks.

Run with ``pytest benches --benchmark-only``. Each benchmark checks the value it computed;
none asserts a time.
"""

from __future__ import annotations

import pytest

from _workloads import (
    build_chain,
    build_independent,
    build_only,
    expected_chain,
    expected_independent,
    result_of,
)

N_INDEPENDENT = 10_000
N_CHAIN = 10_000
N_BUILD = 100_000


@pytest.mark.benchmark(group="local")
def test_independent_10k_warm(benchmark):
    """10,000 independent ``inc`` tasks + one reduce; the flow is built (and run) once first."""
    flow, out = build_independent(N_INDEPENDENT)
    value = benchmark.pedantic(
        result_of, args=(flow, out), rounds=20, iterations=1, warmup_rounds=1
    )
    assert value == expected_independent(N_INDEPENDENT)


@pytest.mark.benchmark(group="local")
def test_independent_10k_first_run(benchmark):
    """The first run of a freshly built flow: includes the per-flow compile."""

    def fresh():
        return build_independent(N_INDEPENDENT), {}

    value = benchmark.pedantic(result_of, setup=fresh, rounds=8, iterations=1)
    assert value == expected_independent(N_INDEPENDENT)


@pytest.mark.benchmark(group="local")
def test_chain_10k(benchmark):
    """``x = inc(x)`` 10,000 times: every task waits for the one before."""
    flow, out = build_chain(N_CHAIN)
    value = benchmark.pedantic(
        result_of, args=(flow, out), rounds=10, iterations=1, warmup_rounds=1
    )
    assert value == expected_chain(N_CHAIN)


@pytest.mark.benchmark(group="build")
def test_build_and_validate_100k(benchmark):
    """Build a flow of 100,000 tasks and validate it (cycle check in the core)."""

    def build_and_validate():
        flow = build_only(N_BUILD)
        flow.validate()
        return flow

    flow = benchmark.pedantic(build_and_validate, rounds=3, iterations=1)
    assert len(flow.tasks) == N_BUILD
