"""How long a map's reduce takes after the map's last child, on DaskExecutor: a
diagnostic, not a benchmark.

Runs workload A (``total(inc.map(src()))`` over ``--n`` elements) on a 2-worker
``LocalCluster`` (processes, 127.0.0.1), alternating runs where the reduce is sent ahead
with the children's futures (the executor's behaviour) and runs where it is not (it then
waits for the driver: the last child's notice, the core, a submission), and prints, per
side, the time from the driver's notice of the last child to its notice of the reduce,
and the whole run, as medians over ``--runs`` runs.

It wraps private names of ``ferroflow.executors.dask`` (``_Driver._handle``,
``_Driver._children``), so it follows that module: when a name it wraps is gone it stops
with a message saying which.

    .venv/bin/python benches/dask_reduce_tail.py [--runs 8] [--n 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import _workloads as w
from ferroflow.executors import DaskExecutor
from ferroflow.executors import dask as D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    opts = parser.parse_args()
    for attr in ("_handle", "_children"):
        if not hasattr(D._Driver, attr):
            sys.exit(f"dask_reduce_tail: ferroflow.executors.dask._Driver has no {attr!r}")
    from distributed import Client

    real_handle, real_children = D._Driver._handle, D._Driver._children
    notices: list[tuple[float, list[str]]] = []

    def handle(self: Any, done: list[Any]) -> None:
        at = time.perf_counter()
        inflight = self.inflight
        names = [self.tasks[inflight[f.key].task_id].name for f in done if f.key in inflight]
        notices.append((at, names))
        real_handle(self, done)

    def not_ahead(self: Any, task_id: int) -> None:
        return None  # the map never looks complete: the reduce goes the usual way

    D._Driver._handle = handle  # type: ignore[method-assign]
    flow, out = w.build_map(opts.n)
    expected = w.expected_map(opts.n)
    tails: dict[str, list[float]] = {"sent ahead": [], "not sent ahead": []}
    runs: dict[str, list[float]] = {"sent ahead": [], "not sent ahead": []}
    with (
        w.bench_cluster() as cluster,
        Client(cluster),
    ):
        executor = DaskExecutor(address=cluster.scheduler_address)
        assert w.result_of(flow, out, executor=executor) == expected  # warm-up
        for _ in range(opts.runs):
            for side in tails:
                D._Driver._children = real_children if side == "sent ahead" else not_ahead  # type: ignore[method-assign]
                notices.clear()
                since = time.perf_counter()
                assert w.result_of(flow, out, executor=executor) == expected
                runs[side].append(time.perf_counter() - since)
                last_child = max(t for t, names in notices if "inc" in names)
                reduce_done = max(t for t, names in notices if "total" in names)
                tails[side].append(reduce_done - last_child)
    print(f"workload A at {opts.n:,} on a 2-worker LocalCluster; {opts.runs} runs each, alternated")
    print(f"{'':16} {'reduce after last child':>24} {'whole run':>10}")
    for side in tails:
        tail = 1e3 * statistics.median(tails[side])
        lo, hi = 1e3 * min(tails[side]), 1e3 * max(tails[side])
        whole = statistics.median(runs[side])
        print(f"{side:16} {tail:9.1f} ms ({lo:.0f}-{hi:.0f}) {whole:8.3f} s")


if __name__ == "__main__":
    main()
