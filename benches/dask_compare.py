"""ferroflow's DaskExecutor vs the same work written directly against dask.distributed.

A 10,000-child map + reduce on one 2-worker LocalCluster (processes, loopback), in one
process run: plain ``client.map(inc, range(n))`` + ``client.submit(sum, futures)``, then
ferroflow's ``total(inc.map(xs))`` on ``DaskExecutor(address=...)`` of the same cluster.
Best of ``--repeat`` runs each, interleaved. Prints one table.

    .venv/bin/python benches/dask_compare.py [--n 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("FERROFLOW_HOME", tempfile.mkdtemp(prefix="ff-bench-"))

    from distributed import Client

    from _workloads import bench_cluster, inc, total
    from ferroflow import Flow, Parameter, task
    from ferroflow.executors import DaskExecutor

    with (
        bench_cluster() as cluster,
        Client(cluster) as client,
    ):
        inc_task, total_task = task(inc), task(total)
        with Flow("dask-map") as flow:
            xs = Parameter("xs")
            out = total_task(inc_task.map(xs))
        executor = DaskExecutor(address=cluster.scheduler_address)
        values = list(range(args.n))
        expected = sum(v + 1 for v in values)
        plain_best = ff_best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            futures = client.map(inc, values, pure=False)
            got = client.submit(sum, futures).result()
            plain_best = min(plain_best, time.perf_counter() - start)
            assert got == expected
            del futures
            start = time.perf_counter()
            state = flow.run(executor=executor, xs=values, record=False)
            ff_best = min(ff_best, time.perf_counter() - start)
            assert state.result[out].result == expected
    print("| workload (2-worker LocalCluster) | plain dask | ferroflow DaskExecutor | ratio |")
    print("|---|---|---|---|")
    print(
        f"| {args.n:,}-child map + reduce | {plain_best:.2f} s | {ff_best:.2f} s "
        f"| {ff_best / plain_best:.2f}x |"
    )


if __name__ == "__main__":
    main()
