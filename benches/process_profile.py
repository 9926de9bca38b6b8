"""Where a ProcessExecutor run's time goes in the driver: a diagnostic, not a benchmark.

Runs ``total(inc.map(src()))`` over 100,000 elements on ``ProcessExecutor(2)`` (each run
starting its own workers, or ``--kept``: on workers kept for a ``with`` block) and times,
inside each run, the driver's calls into the core (``take_segments``, ``report_values``),
its pickling and unpickling, its pipe reads and writes, its waits for the workers and
starting them, beside the LocalExecutor's run of the same flow. Prints the median and
the best of each over ``--runs`` runs.

It wraps private names of ``ferroflow.executors.process`` (``_Driver``), so it follows
that module: when a name it wraps is gone it stops with a message saying which.

    .venv/bin/python benches/process_profile.py [--runs 12] [--kept] [--n 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _workloads as w
from ferroflow.executors import LocalExecutor, ProcessExecutor
from ferroflow.executors import process as P

_SPENT: dict[str, float] = {}


def _add(name: str, since: float) -> None:
    _SPENT[name] = _SPENT.get(name, 0.0) + time.perf_counter() - since


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        since = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, since)

    return timed


class _Timed:
    """Stands in for an object whose named methods are timed."""

    def __init__(self, inner: Any, names: dict[str, str]) -> None:
        self._inner = inner
        self._names = names

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        name = self._names.get(attr)
        return value if name is None else _timed(name, value)


def _instrument() -> None:
    import multiprocessing.connection as mpc

    import cloudpickle

    for attr in ("__init__", "start", "loop"):
        if not hasattr(P._Driver, attr):
            sys.exit(f"process_profile: ferroflow.executors.process._Driver has no {attr!r}")
    plain_init = P._Driver.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        plain_init(self, *args, **kwargs)
        self.runner = _Timed(
            self.runner,
            {"take_segments": "core: take_segments", "report_values": "core: report_values"},
        )
        self.cloudpickle = _Timed(cloudpickle, {"dumps": "pickling", "loads": "unpickling"})

    P._Driver.__init__ = init  # type: ignore[method-assign]
    P._Driver.start = _timed("starting workers", P._Driver.start)  # type: ignore[method-assign]
    for attr, name in (("send_bytes", "pipe writes"), ("recv_bytes", "pipe reads")):
        setattr(mpc.Connection, attr, _timed(name, getattr(mpc.Connection, attr)))
    # The driver's loop waits through `wait` imported into its function at call time.
    mpc.wait = _timed("waiting for workers", mpc.wait)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--kept", action="store_true", help="workers kept for a with block")
    opts = parser.parse_args()
    flow, out = w.build_map(opts.n)
    expected = w.expected_map(opts.n)
    local = LocalExecutor()
    assert w.result_of(flow, out, executor=local) == expected
    _instrument()
    kept = ProcessExecutor(2).__enter__() if opts.kept else None
    make = (lambda: kept) if kept is not None else (lambda: ProcessExecutor(2))
    assert w.result_of(flow, out, executor=make()) == expected  # warm-up
    spent: dict[str, list[float]] = {}
    for _ in range(opts.runs):
        _SPENT.clear()
        since = time.perf_counter()
        assert w.result_of(flow, out, executor=make()) == expected
        _add("the whole run", since)
        since = time.perf_counter()
        assert w.result_of(flow, out, executor=local) == expected
        spent.setdefault("LocalExecutor run (beside it)", []).append(time.perf_counter() - since)
        for name, seconds in _SPENT.items():
            spent.setdefault(name, []).append(seconds)
    if kept is not None:
        kept.close()
    how = "kept workers" if opts.kept else "each run its own workers"
    print(f"{opts.n:,}-child map on ProcessExecutor(2), {how}; {opts.runs} runs")
    print(f"{'':32} {'median':>9} {'best':>9}")
    for name, values in sorted(spent.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{name:32} {1e3 * statistics.median(values):7.1f} ms {1e3 * min(values):6.1f} ms")


if __name__ == "__main__":
    main()
