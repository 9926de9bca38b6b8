"""The real Dask cluster the tests run on: two worker processes on 127.0.0.1."""

from __future__ import annotations

import os
from typing import Any

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: Worker processes (process pool, Dask) import test modules from here.
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}


def local_cluster() -> Any:
    """A two-worker, one-thread-each ``LocalCluster`` on loopback (a context manager).

    The scheduler's HTTP server (no dashboard) is on a free loopback port: Dask warns
    when its default port 8787 is taken, e.g. by another cluster on this machine.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        env=WORKER_ENV,
    )
