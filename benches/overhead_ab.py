"""Warm per-task overhead of the local engine, for A/B runs of two builds.

Prints the best time of ``flow.run()`` over a flow of 10,000 independent ``inc`` tasks
and a reduce (flow built and run once first), for the ferroflow that ``import ferroflow``
finds. To compare two builds, alternate runs with ``PYTHONPATH`` pointing at each tree's
``python/`` directory (each with its release ``_native`` module):

    PYTHONPATH=/path/a/python .venv/bin/python benches/overhead_ab.py
    PYTHONPATH=/path/b/python .venv/bin/python benches/overhead_ab.py

Unrecorded by default; ``--record`` records into a throw-away ``FERROFLOW_HOME``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="record the runs")
    parser.add_argument("--rounds", type=int, default=40, help="timed runs [40]")
    parser.add_argument("--n", type=int, default=10_000, help="independent tasks [10000]")
    args = parser.parse_args()
    os.environ.setdefault("FERROFLOW_HOME", tempfile.mkdtemp(prefix="ff-ab-"))

    import ferroflow
    from ferroflow import Flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    with Flow("overhead") as flow:
        t = total([inc(i) for i in range(args.n)])
    expected = sum(range(1, args.n + 1))
    assert flow.run(record=args.record).result[t].result == expected
    best = float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        flow.run(record=args.record)
        best = min(best, time.perf_counter() - t0)
    loop = float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        sum(x + 1 for x in range(args.n))
        loop = min(loop, time.perf_counter() - t0)
    per_task = (best - loop) / (args.n + 1) * 1e6
    print(
        f"{ferroflow.__file__}: best {best * 1e3:.2f} ms, plain loop {loop * 1e3:.2f} ms, "
        f"{per_task:.2f} us/task overhead"
    )


if __name__ == "__main__":
    main()
