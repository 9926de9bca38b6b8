"""ferroflow vs a plain Python loop vs dask's threaded scheduler, in one process.

Usage (from the repository root, after ``make build-release``)::

    .venv/bin/python benches/compare.py           # full sizes, a few minutes on 2 cores
    .venv/bin/python benches/compare.py --quick   # small sizes, a smoke run

Every workload makes the same calls to the same plain functions (``benches/_workloads.py``)
in three ways:

- **ferroflow**: a flow run on the ``LocalExecutor`` (``ThreadExecutor(8)`` for the I/O
  row). The flow is built once, outside the timer, and run several times; the table shows
  the best run. The first run of a freshly built flow (which includes the per-flow compile)
  has its own row. Map children are created at run time, so map rows include expansion.
- **plain loop**: the same calls in a Python loop / list comprehension, best of a few.
- **dask threads**: the same calls as a dask task graph run by dask's threaded scheduler
  (``dask.threaded.get``, the scheduler behind ``dask.compute(..., scheduler="threads")``).
  The graph is written as a dict, which is what ``dask.delayed`` produces, because building
  it through ``dask.delayed`` one call at a time is superlinear in this dask version (see the
  "dask.delayed" row, measured at a smaller size). Map rows include building the dict (map
  children are part of ferroflow's run too); other rows exclude it, as for ferroflow.
  Where dask runs at a smaller size than ferroflow, the cell says so (``@100k``).

The overhead column is ``(ferroflow - plain loop) / n`` in microseconds, ``n`` being the
number of task runs (mapped children included, the source and reduce tasks not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import operator
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workloads as w  # sets FERROFLOW_HOME before ferroflow is used
from ferroflow.executors import LocalExecutor, ThreadExecutor

THREAD_WORKERS = 8

FULL = {
    "independent": 10_000,
    "chain": 10_000,
    "build": 100_000,
    "map": 1_000_000,
    "map_dask": 100_000,
    "map_chain": 100_000,
    "map_chain_dask": 100_000,
    "map_small": 10_000,
    "sleep": 200,
    "delayed": 10_000,
    "delayed_build": 100_000,
}
QUICK = {
    "independent": 1_000,
    "chain": 1_000,
    "build": 10_000,
    "map": 100_000,
    "map_dask": 10_000,
    "map_chain": 10_000,
    "map_chain_dask": 2_000,
    "map_small": 1_000,
    "sleep": 40,
    "delayed": 1_000,
    "delayed_build": 10_000,
}


# -- timing helpers ------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by one call of ``fn`` (after a full collection) and its value."""
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def best_of(fn: Callable[[], Any], reps: int, expected: Any) -> float:
    """Best of ``reps`` calls of ``fn``; every call must return ``expected``."""
    best = float("inf")
    for _ in range(reps):
        seconds, value = timed(fn)
        check(value, expected)
        best = min(best, seconds)
    return best


def check(value: Any, expected: Any) -> None:
    if value != expected:
        raise AssertionError(f"wrong result: {value!r} != {expected!r}")


def fmt_s(seconds: float | None, note: str = "") -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 1:
        text = f"{seconds:.2f} s"
    elif seconds >= 1e-3:
        text = f"{seconds * 1e3:.1f} ms"
    else:
        text = f"{seconds * 1e6:.0f} µs"
    return f"{text} {note}".strip()


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


@dataclass
class Row:
    workload: str
    n: int
    ferroflow: float
    loop: float | None
    dask: float | None
    dask_note: str = ""
    overhead_note: str = ""
    first: float | None = None  # ferroflow's first run of this (already built) flow

    def cells(self) -> list[str]:
        if self.loop is None:
            overhead = self.ferroflow / self.n
        else:
            overhead = (self.ferroflow - self.loop) / self.n
        over = f"{overhead * 1e6:.2f}"
        if self.overhead_note:
            over += f" {self.overhead_note}"
        return [
            self.workload,
            fmt_s(self.ferroflow),
            fmt_s(self.loop),
            fmt_s(self.dask, self.dask_note),
            over,
        ]


# -- dask ----------------------------------------------------------------------------------


def dask_get(dsk: dict[Any, Any], key: Any, workers: int | None = None) -> Any:
    import dask.threaded

    return dask.threaded.get(dsk, key, num_workers=workers)


def dask_independent(n: int) -> tuple[dict[Any, Any], Any]:
    dsk: dict[Any, Any] = {("inc", i): (w.inc, i) for i in range(n)}
    dsk["total"] = (w.total, [("inc", i) for i in range(n)])
    return dsk, "total"


def dask_chain(n: int) -> tuple[dict[Any, Any], Any]:
    dsk: dict[Any, Any] = {("inc", 0): (w.inc, 0)}
    for i in range(1, n):
        dsk[("inc", i)] = (w.inc, ("inc", i - 1))
    return dsk, ("inc", n - 1)


def dask_map(n: int, stages: int = 1) -> tuple[dict[Any, Any], Any]:
    """``src`` then ``stages`` layers of children (child ``i`` of the first reads ``src[i]``)."""
    dsk: dict[Any, Any] = {"src": (w.make_src(n),)}
    for i in range(n):
        dsk[("inc", 1, i)] = (w.inc, (operator.getitem, "src", i))
    for s in range(2, stages + 1):
        for i in range(n):
            dsk[("inc", s, i)] = (w.inc, ("inc", s - 1, i))
    dsk["total"] = (w.total, [("inc", stages, i) for i in range(n)])
    return dsk, "total"


def dask_sleep(n: int) -> tuple[dict[Any, Any], Any]:
    dsk: dict[Any, Any] = {("nap", i): (w.nap, i) for i in range(n)}
    dsk["total"] = (w.total, [("nap", i) for i in range(n)])
    return dsk, "total"


def dask_delayed_end_to_end(n: int) -> int:
    """The idiomatic ``dask.delayed`` spelling of the independent workload, build + compute."""
    import dask

    inc = dask.delayed(w.inc)
    out = dask.delayed(w.total)([inc(i) for i in range(n)])
    return dask.compute(out, scheduler="threads")[0]


def dask_delayed_build(n: int) -> int:
    import dask

    inc = dask.delayed(w.inc)
    return len([inc(i) for i in range(n)])


# -- workloads -----------------------------------------------------------------------------


def ff_warm(flow: Any, out: Any, reps: int, expected: Any, **kw: Any) -> tuple[float, float]:
    """First run and best warm run of an already built flow."""
    first, value = timed(lambda: w.result_of(flow, out, **kw))
    check(value, expected)
    return first, best_of(lambda: w.result_of(flow, out, **kw), reps, expected)


def run_all(sizes: dict[str, int], reps: int, use_dask: bool) -> list[Row]:
    rows: list[Row] = []
    local = LocalExecutor()

    def progress(msg: str) -> None:
        print(f"  ... {msg}", file=sys.stderr, flush=True)

    # Warm the process up (imports, lazy initialisation) so first-run rows measure the flow.
    w.result_of(*w.build_independent(10), executor=local)
    if use_dask:
        dask_get(*dask_independent(10))

    # 10k independent tasks + reduce: warm, and the first run of fresh flows.
    n = sizes["independent"]
    expected = w.expected_independent(n)
    progress(f"independent {n}")
    flow, out = w.build_independent(n)
    _, ff = ff_warm(flow, out, reps * 2, expected, executor=local)
    first = float("inf")
    for _ in range(reps):
        flow, out = w.build_independent(n)
        seconds, value = timed(lambda flow=flow, out=out: w.result_of(flow, out, executor=local))
        check(value, expected)
        first = min(first, seconds)
    del flow, out
    loop = best_of(lambda: w.loop_independent(n), reps * 2, expected)
    dask_first = dask_best = None
    if use_dask:
        dsk, key = dask_independent(n)
        dask_first, value = timed(lambda: dask_get(dsk, key))
        check(value, expected)
        dask_best = min(dask_first, best_of(lambda: dask_get(dsk, key), 1, expected))
    rows.append(Row(f"{fmt_n(n)} independent + reduce (warm)", n, ff, loop, dask_best))
    rows.append(Row(f"{fmt_n(n)} independent + reduce (first run)", n, first, loop, dask_first))

    # Chain: x = inc(x), n times.
    n = sizes["chain"]
    expected = w.expected_chain(n)
    progress(f"chain {n}")
    flow, out = w.build_chain(n)
    first_chain, ff = ff_warm(flow, out, reps, expected, executor=local)
    del flow, out
    loop = best_of(lambda: w.loop_chain(n), reps * 2, expected)
    dask_s = None
    if use_dask:
        dsk, key = dask_chain(n)
        dask_s = best_of(lambda: dask_get(dsk, key), 1, expected)
    rows.append(Row(f"chain of {fmt_n(n)}", n, ff, loop, dask_s, first=first_chain))

    # Build + validate (ferroflow); dask: the same number of dask.delayed calls.
    n = sizes["build"]
    progress(f"build + validate {n}")

    def build_validate() -> int:
        flow = w.build_only(n)
        flow.validate()
        return len(flow.tasks)

    ff = best_of(build_validate, reps, n)
    dask_s = None
    n_delayed = sizes["delayed_build"]
    if use_dask:
        dask_s = best_of(lambda: dask_delayed_build(n_delayed), 1, n_delayed)
    note = "(delayed() calls only)" if n_delayed == n else f"@{fmt_n(n_delayed)}, delayed() only"
    rows.append(Row(f"build + validate {fmt_n(n)}", n, ff, None, dask_s, note, "(ff/n)"))

    # Map + reduce, and a 3-stage map chain.
    for key_n, key_dask, stages in (
        ("map", "map_dask", 1),
        ("map_chain", "map_chain_dask", 3),
        ("map_small", "map_small", 1),
    ):
        n = sizes[key_n]
        expected = w.expected_map(n, stages)
        progress(f"map {stages} x {n}")
        flow, out = w.build_map(n, stages)
        first_map, ff = ff_warm(flow, out, reps, expected, executor=local)
        del flow, out
        loop = best_of(lambda n=n, s=stages: w.loop_map(n, s), reps, expected)
        dask_s, note = None, ""
        if use_dask:
            nd = sizes[key_dask]
            dask_s = best_of(
                lambda nd=nd, s=stages: dask_get(*dask_map(nd, s)), 1, w.expected_map(nd, stages)
            )
            note = "" if nd == n else f"@{fmt_n(nd)}"
        what = "map + reduce" if stages == 1 else f"{stages}-stage map chain + reduce"
        rows.append(Row(f"{fmt_n(n)} {what}", n * stages, ff, loop, dask_s, note, first=first_map))

    # I/O: 200 x 50 ms sleeps on 8 threads.
    n = sizes["sleep"]
    expected = w.expected_sleep(n)
    progress(f"sleep map {n} on {THREAD_WORKERS} threads")
    flow, out = w.build_sleep_map(n)
    threads = ThreadExecutor(max_workers=THREAD_WORKERS)
    first_sleep, ff = ff_warm(flow, out, 2, expected, executor=threads)
    pool = best_of(lambda: w.loop_sleep_pool(n, THREAD_WORKERS), 2, expected)
    dask_s = None
    if use_dask:
        dsk, key = dask_sleep(n)
        dask_s = best_of(lambda: dask_get(dsk, key, THREAD_WORKERS), 2, expected)
    rows.append(
        Row(
            f"{n} x {w.SLEEP_S * 1e3:.0f} ms sleep, 8 threads",
            n,
            ff,
            pool,
            dask_s,
            overhead_note="(vs pool)",
            first=first_sleep,
        )
    )

    # The idiomatic dask.delayed spelling, end to end (build + compute), vs ferroflow's
    # build + first run and the loop.
    n = sizes["delayed"]
    expected = w.expected_independent(n)
    progress(f"end to end {n} (dask.delayed)")

    def ff_end_to_end() -> int:
        flow, out = w.build_independent(n)
        return w.result_of(flow, out, executor=local)

    ff = best_of(ff_end_to_end, reps, expected)
    loop = best_of(lambda: w.loop_independent(n), reps, expected)
    dask_s = best_of(lambda: dask_delayed_end_to_end(n), 1, expected) if use_dask else None
    rows.append(
        Row(
            f"{fmt_n(n)} independent, build + run",
            n,
            ff,
            loop,
            dask_s,
            "(dask.delayed)",
        )
    )
    return rows


# -- import time ---------------------------------------------------------------------------


def import_time(reps: int = 5, bytecode_cache: bool = True) -> tuple[float, float]:
    """Best wall time of ``python -c "import ferroflow"`` and of ``python -c "pass"``.

    With ``bytecode_cache`` the children may write ``.pyc`` files, into a throw-away
    ``PYTHONPYCACHEPREFIX`` (never into the source tree), after one warm-up run of each, as
    an installed package would have them. Without it they run with
    ``PYTHONDONTWRITEBYTECODE=1``: ferroflow's modules are compiled from source every time.
    """
    env = os.environ.copy()
    cache_dir = None
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cache_dir = tempfile.mkdtemp(prefix="ferroflow-pycache-")
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"

    def best(code: str) -> float:
        cmd = [sys.executable, "-c", code]
        if bytecode_cache:
            subprocess.run(cmd, check=True, env=env)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        return best("import ferroflow"), best("pass")
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


# -- output --------------------------------------------------------------------------------


HEADERS = ["workload", "ferroflow", "plain loop", "dask threads", "ff overhead µs/task"]


def print_table(rows: list[Row]) -> None:
    table = [HEADERS] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True)) + " |"

    print(line(HEADERS))
    print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    for cells in table[1:]:
        print(line(cells))


def versions() -> str:
    import ferroflow

    parts = [f"ferroflow {ferroflow.__version__}"]
    try:
        from importlib.metadata import version

        parts.append(f"dask {version('dask')}")
    except Exception:  # pragma: no cover - dask not installed
        parts.append("dask not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask column")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    reps = 3 if args.quick else 5
    use_dask = not args.no_dask
    if use_dask:
        try:
            import dask  # noqa: F401
        except ImportError:
            print("dask is not installed: skipping the dask column", file=sys.stderr)
            use_dask = False

    print(
        f"# {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.node() or 'host'}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}; {versions()}"
    )
    print(f"# sizes: {'--quick' if args.quick else 'full'}")
    started = time.perf_counter()
    rows = run_all(sizes, reps, use_dask)
    imports = [(cached, import_time(bytecode_cache=cached)) for cached in (True, False)]
    print()
    print_table(rows)
    print()
    print("ferroflow's first run of each built flow (includes the per-flow compile):")
    for row in rows:
        if row.first is not None:
            print(f"  {row.workload}: {fmt_s(row.first)} (best run: {fmt_s(row.ferroflow)})")
    print()
    for cached, (with_import, bare) in imports:
        how = "with .pyc cache" if cached else "PYTHONDONTWRITEBYTECODE=1"
        print(
            f'python -c "import ferroflow": {with_import * 1e3:.1f} ms; '
            f'python -c "pass": {bare * 1e3:.1f} ms; '
            f"import ferroflow costs {(with_import - bare) * 1e3:.1f} ms "
            f"(best of 5 each, {how})"
        )
    print(f"# total wall time of this script: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
