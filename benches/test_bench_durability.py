"""Durability costs: recording runs in the run store, and checkpointing mapped results.

- ``recording`` group: the 1,000,000-child map + reduce with ``record=True`` and with
  ``record=False`` (``$FERROFLOW_HOME`` is a throw-away directory, see ``conftest.py``).
- ``checkpoint`` group: a 100,000-child map whose mapped task has ``checkpoint=True`` and a
  ``LocalResult`` in a temporary directory (recorded, the default), and the same map
  without checkpoints, unrecorded.

Each benchmark checks the reduced value; none asserts a time.
"""

from __future__ import annotations

import pytest

from _workloads import build_checkpointed_map, build_map, expected_map, result_of

N_RECORD = 1_000_000
N_CHECKPOINT = 100_000


@pytest.mark.benchmark(group="recording")
@pytest.mark.parametrize("record", [False, True], ids=["record_off", "record_on"])
def test_map_1m_recording(benchmark, record):
    flow, out = build_map(N_RECORD)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"record": record},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert value == expected_map(N_RECORD)


@pytest.mark.benchmark(group="checkpoint")
def test_map_100k_checkpointed(benchmark, tmp_path):
    """``checkpoint=True, result=LocalResult(dir=tmp_path)`` on the mapped task, recorded."""
    flow, out = build_checkpointed_map(N_CHECKPOINT, str(tmp_path))
    value = benchmark.pedantic(result_of, args=(flow, out), rounds=2, iterations=1)
    assert value == expected_map(N_CHECKPOINT)


@pytest.mark.benchmark(group="checkpoint")
def test_map_100k_unrecorded(benchmark):
    """The same map without checkpoints, ``record=False``: the baseline of the group."""
    flow, out = build_map(N_CHECKPOINT)
    value = benchmark.pedantic(
        result_of,
        args=(flow, out),
        kwargs={"record": False},
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    assert value == expected_map(N_CHECKPOINT)
