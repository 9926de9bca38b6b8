"""Run logs in the run store: a 100,000-child map whose children each log one line with
``get_run_logger().info(...)``, recorded, with the lines written to the run store (the
default) and with ``FERROFLOW_STORE_LOGS=0`` (logged, not stored: the baseline).

The ``ferroflow`` logger has only a ``NullHandler`` besides the store's (see
``_workloads.quiet_logs``), so no console is timed. Each benchmark checks the reduced
value; none asserts a time.
"""

from __future__ import annotations

import pytest

from _workloads import build_logging_map, expected_map, result_of, store_logs

N_LOGS = 100_000


@pytest.mark.benchmark(group="logs")
@pytest.mark.parametrize("stored", [False, True], ids=["store_logs_off", "store_logs_on"])
def test_map_100k_one_log_line_each(benchmark, stored):
    flow, out = build_logging_map(N_LOGS)

    def run() -> int:
        with store_logs(stored):
            return result_of(flow, out)

    value = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert value == expected_map(N_LOGS)
