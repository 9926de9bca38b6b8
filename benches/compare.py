"""ferroflow vs a plain loop vs dask threads, then executors and durability; one process run.

Usage (from the repository root, after ``make build-release``)::

    .venv/bin/python benches/compare.py           # full sizes, about 2.5 minutes on 2 cores
    .venv/bin/python benches/compare.py --quick   # small sizes, a smoke run
    .venv/bin/python benches/compare.py --table 2 --part cpu   # one line of the second table

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
number of task runs (mapped children included, the source and reduce tasks not). Runs use
ferroflow's defaults, so they are recorded in the run store (a throw-away
``FERROFLOW_HOME``).

A second table, **executors and durability**, follows: each line a figure the project's
issues ask for, with its baseline measured in the same run, the target and whether it was
met. Memory figures come from fresh subprocesses (``benches/_memory.py``), so each peak RSS
is the run's own; timings are best of a few, and the two sides of every ratio are run
interleaved (A, B, A, B, ...) so a burst of load on a shared machine hits both. Nothing is
asserted about times: a missed target is printed as ``NO``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import operator
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


import _memory as mem
import _workloads as w  # sets FERROFLOW_HOME before ferroflow is used
from ferroflow.executors import LocalExecutor, ProcessExecutor, ThreadExecutor

THREAD_WORKERS = 8
PROCESS_WORKERS = 2

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
    # executors and durability
    "mem_map": 1_000_000,
    "depth": 100_000,
    "cpu": 8,
    "proc_map": 100_000,
    "record_map": 1_000_000,
    "log_map": 100_000,
    "ckpt_map": 100_000,
    "timed_map": 2_000,
    "threads_map": 20_000,
    "dask": 1_000,
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
    "mem_map": 100_000,
    "depth": 10_000,
    "cpu": 4,
    "proc_map": 10_000,
    "record_map": 100_000,
    "log_map": 10_000,
    "ckpt_map": 5_000,
    "timed_map": 2_000,
    "threads_map": 5_000,
    "dask": 200,
}
BURN_SECONDS = {"full": w.BURN_S, "quick": 0.1}  # CPU per child of the CPU-bound map


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


# -- executors and durability ----------------------------------------------------------------


@dataclass
class Figure:
    """One line of the "executors and durability" table."""

    what: str
    ferroflow: str
    baseline: str
    figure: str
    target: str
    met: bool | None  # None: no target at this size (--quick)

    def cells(self) -> list[str]:
        met = "n/a" if self.met is None else ("yes" if self.met else "NO")
        return [self.what, self.ferroflow, self.baseline, self.figure, self.target, met]


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _own_cpu() -> float:
    """CPU seconds used so far by this process and its reaped children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_busy() -> float | None:
    """CPU seconds the whole machine spent busy (steal included), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many CPUs, on average, other processes kept busy while the block ran.

    Machine-wide busy time (``/proc/stat``, steal included) minus this process's and its
    children's CPU time, divided by the wall time. ``cpus`` stays None off Linux.
    """

    def __enter__(self) -> OtherLoad:
        self.cpus: float | None = None
        self._busy, self._own, self._t = _machine_busy(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _machine_busy()
        if busy is None or self._busy is None:
            return
        wall = time.perf_counter() - self._t
        other = (busy - self._busy) - (_own_cpu() - self._own)
        self.cpus = max(0.0, other / wall)

    def describe(self) -> str:
        """``cpus`` for a note: e.g. ``0.12 of 4``, or ``n/a``."""
        return "n/a" if self.cpus is None else f"{self.cpus:.2f} of {os.cpu_count()}"


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, expected: dict[str, Any]
) -> dict[str, float]:
    """Best of ``reps`` timed calls of each function, run in turn (A, B, A, B, ...)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            seconds, value = timed(fn)
            check(value, expected[name])
            best[name] = min(best[name], seconds)
    return best


def measure_sleep(n: int) -> Row:
    """The I/O row of the first table on its own (for ``--table 2``)."""
    expected = w.expected_sleep(n)
    flow, out = w.build_sleep_map(n)
    threads = ThreadExecutor(max_workers=THREAD_WORKERS)
    first, ff = ff_warm(flow, out, 2, expected, executor=threads)
    pool = best_of(lambda: w.loop_sleep_pool(n, THREAD_WORKERS), 2, expected)
    return Row(f"{n} x sleep", n, ff, pool, None, first=first)


def _met(ok: bool, quick: bool) -> bool | None:
    return None if quick else ok


def _progress(msg: str) -> None:
    print(f"  ... {msg}", file=sys.stderr, flush=True)


def part_timeouts(sizes: dict[str, int], quick: bool, notes: list[str]) -> list[Figure]:
    """Timeouts: a map whose mapped task has ``timeout=10`` vs the same map without,
    on LocalExecutor and ThreadExecutor(8), interleaved, best of 5."""
    n = sizes["timed_map"]
    _progress(f"timeouts: map {n}, timeout=10 vs none, local and threads")
    plain, plain_out = w.build_map(n)
    timed, timed_out = w.build_timed_map(n)
    expected = w.expected_map(n)
    figures = []
    executors: list[tuple[str, Any]] = [
        ("LocalExecutor", LocalExecutor()),
        (f"ThreadExecutor({THREAD_WORKERS})", ThreadExecutor(max_workers=THREAD_WORKERS)),
    ]
    for label, ex in executors:

        def run_timed(ex: Any = ex) -> Any:
            return w.result_of(timed, timed_out, executor=ex)

        def run_plain(ex: Any = ex) -> Any:
            return w.result_of(plain, plain_out, executor=ex)

        best = interleaved(
            {"timed": run_timed, "plain": run_plain},
            5,
            {"timed": expected, "plain": expected},
        )
        ratio = best["timed"] / best["plain"]
        figures.append(
            Figure(
                f"timeouts: {fmt_n(n)}-child map, timeout=10, {label}",
                fmt_s(best["timed"]),
                f"{fmt_s(best['plain'])} (same map, no timeout)",
                f"{ratio:.2f}x",
                "≤ 2x",
                _met(ratio <= 2, quick),
            )
        )
    return figures


def part_threads(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Thread overhead: a trivial map on ThreadExecutor(8) vs LocalExecutor, best of 5."""
    n = sizes["threads_map"]
    _progress(f"threads: map {n}, ThreadExecutor({THREAD_WORKERS}) vs local")
    flow, out = w.build_map(n)
    expected = w.expected_map(n)
    local, threads = LocalExecutor(), ThreadExecutor(max_workers=THREAD_WORKERS)
    w.result_of(flow, out, executor=local)  # compile the flow once
    best = interleaved(
        {
            "threads": lambda: w.result_of(flow, out, executor=threads),
            "local": lambda: w.result_of(flow, out, executor=local),
        },
        5,
        {"threads": expected, "local": expected},
    )
    ratio = best["threads"] / best["local"]
    return Figure(
        f"{fmt_n(n)} trivial map + reduce, ThreadExecutor({THREAD_WORKERS})",
        fmt_s(best["threads"]),
        f"{fmt_s(best['local'])} (LocalExecutor)",
        f"{ratio:.2f}x",
        "≤ 3x",
        _met(ratio <= 3, quick),
    )


_FIRST_RUN = """
import time
t0 = time.perf_counter()
import ferroflow
from ferroflow import Flow, task
t1 = time.perf_counter()

@task
def inc(x):
    return x + 1

with Flow("first") as flow:
    inc(inc(1))
t2 = time.perf_counter()
state = flow.run(record={record})
assert state.is_successful()
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
"""


def part_first_run(sizes: dict[str, int], quick: bool, notes: list[str]) -> list[Figure]:
    """The first ``flow.run()`` of a 2-task flow in a fresh process (recorded into an
    existing store, and unrecorded), beside ``import ferroflow`` in the same processes;
    best of 5 processes each, alternating."""
    _progress("first run in a fresh process (subprocesses)")
    # With .pyc files (in a throw-away PYTHONPYCACHEPREFIX), as an installed package has.
    env = os.environ.copy()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cache_dir = tempfile.mkdtemp(prefix="ferroflow-pycache-")
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    best: dict[str, list[float]] = {"on": [1e9, 1e9], "off": [1e9, 1e9]}
    code = {k: _FIRST_RUN.format(record=k == "on") for k in best}
    try:
        # A first run of each writes the .pyc files, and the store (its creation is
        # not the figure).
        for k in best:
            cmd = [sys.executable, "-c", code[k]]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        for _ in range(5):
            for k in best:
                out = subprocess.run(
                    [sys.executable, "-c", code[k]],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                imp, run = (float(x) for x in out.stdout.split())
                best[k] = [min(best[k][0], imp), min(best[k][1], run)]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    figures = []
    for k, label, target in (("off", "record=False", 0.010), ("on", "recorded", 0.020)):
        imp, run = best[k]
        figures.append(
            Figure(
                f"first flow.run() of 2 tasks in a fresh process, {label}",
                fmt_s(run),
                f"{fmt_s(imp)} (import ferroflow, same process)",
                fmt_s(run),
                f"≤ {target * 1e3:.0f} ms",
                _met(run <= target, quick),
            )
        )
    return figures


def part_memory(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Core memory per mapped child: fresh subprocesses, median of 3 each."""
    n = sizes["mem_map"]
    _progress(f"memory: map {n} (subprocesses)")
    ff_probes = sorted((mem.probe("map-ff", n) for _ in range(3)), key=lambda r: r["grown"])
    loop_probes = sorted((mem.probe("map-loop", n) for _ in range(3)), key=lambda r: r["grown"])
    ff_p, loop_p = ff_probes[1], loop_probes[1]
    per_child = (ff_p["grown"] - loop_p["grown"]) / n
    by_size = (ff_p["grown"] - loop_p["objects_getsizeof"]) / n
    notes.append(
        f"memory per child: median of 3 fresh processes each; peak RSS after the run minus "
        f"RSS before it (ferroflow {fmt_mb(ff_p['before'])} before, peak "
        f"{fmt_mb(ff_p['peak'])}). Counting the result objects by sys.getsizeof instead of "
        f"the plain loop's RSS ({fmt_mb(loop_p['objects_getsizeof'])}, no allocator "
        f"rounding): {by_size:.0f} B/child."
    )
    return Figure(
        f"core memory per mapped child, {fmt_n(n)} map + reduce (record=False)",
        f"+{fmt_mb(ff_p['grown'])} peak RSS",
        f"+{fmt_mb(loop_p['grown'])} (plain loop, same objects)",
        f"{per_child:.0f} B/child",
        "≤ 150 B",
        _met(per_child <= 150, quick),
    )


def part_depth(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Depth-first memory: 3-stage chain, 100 KB per first-stage child, release_results."""
    n = sizes["depth"]
    _progress(f"memory: depth-first 3 x {n} (subprocesses)")
    ff_runs = [mem.probe("depth-ff", n) for _ in range(2)]
    loop_run = mem.probe("depth-loop", n)
    peak = max(r["peak"] for r in ff_runs)
    seconds = min(r["seconds"] for r in ff_runs)
    notes.append(
        f"depth-first: peak RSS of the whole fresh process (import + build included; "
        f"{fmt_mb(ff_runs[0]['before'])} before the run), worst of 2; time: one run each, "
        f"best of 2 (a first run, so it includes the per-flow compile). Without release "
        f"the first stage alone would hold {fmt_mb(n * w.BLOB_BYTES)}."
    )
    return Figure(
        f"depth-first 3-stage map chain over {fmt_n(n)}, "
        f"{w.BLOB_BYTES // 1000} KB per child, release_results=True",
        f"{fmt_mb(peak)} peak RSS, {fmt_s(seconds)}",
        f"{fmt_mb(loop_run['peak'])} peak RSS, {fmt_s(loop_run['seconds'])} (plain loop)",
        f"{fmt_mb(peak)} peak",
        "< 300 MB",
        _met(peak < 300e6, quick),
    )


def part_io(sleep_row: Row, quick: bool, from_first_table: bool) -> Figure:
    """I/O-bound: the ThreadExecutor row of the first table (or measured on its own)."""
    source = " (first table)" if from_first_table else ""
    return Figure(
        f"I/O: {sleep_row.n} x {w.SLEEP_S * 1e3:.0f} ms sleep, "
        f"ThreadExecutor({THREAD_WORKERS}){source}",
        fmt_s(sleep_row.ferroflow),
        f"{fmt_s(sleep_row.loop)} (ThreadPoolExecutor({THREAD_WORKERS})); "
        f"ideal {fmt_s(sleep_row.n / THREAD_WORKERS * w.SLEEP_S)}",
        f"{sleep_row.ferroflow / sleep_row.loop:.2f}x the pool",
        "≤ 1.05x",
        _met(sleep_row.ferroflow <= 1.05 * sleep_row.loop, quick),
    )


def part_cpu(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """CPU-bound: LocalExecutor vs ProcessExecutor(2), and a bare ProcessPoolExecutor(2)."""
    n = sizes["cpu"]
    burn_s = BURN_SECONDS["quick" if quick else "full"]
    k = w.burn_iterations(burn_s)
    one, value = timed(lambda: w.burn(k))
    check(value, w.expected_burn(1, k))
    _progress(f"CPU-bound map of {n} x {burn_s} s: local vs processes")
    flow, out = w.build_cpu_map(n, k)
    expected = w.expected_burn(n, k)
    local = LocalExecutor()
    w.result_of(*w.build_cpu_map(2, 1000), executor=ProcessExecutor(PROCESS_WORKERS))  # warm-up
    reps = 3 if quick else 5
    with OtherLoad() as load:
        best = interleaved(
            {
                "local": lambda: w.result_of(flow, out, executor=local),
                "processes": lambda: w.result_of(
                    flow, out, executor=ProcessExecutor(PROCESS_WORKERS)
                ),
                "pool": lambda: w.loop_cpu_pool(n, k, PROCESS_WORKERS),
            },
            # Best of 5 (3 with --quick): this VM's other load moves single runs of
            # either side by 20% and more (the same 8 x 0.5 s took 1.9-2.8 s on the
            # ProcessExecutor and 2.1-3.1 s on the pool in one series of 6).
            reps,
            dict.fromkeys(("local", "processes", "pool"), expected),
        )
    speedup = best["local"] / best["processes"]
    notes.append(
        f"CPU-bound: burn({k:,}) takes {fmt_s(one)} here (calibrated to ~{burn_s} s); "
        f"best of {reps} each, interleaved; the pool and ProcessExecutor runs include starting "
        f"their {PROCESS_WORKERS} workers. Other processes kept {load.describe()} CPUs "
        "busy meanwhile."
    )
    return Figure(
        f"CPU: map of {n} x ~{burn_s} s pure Python, "
        f"ProcessExecutor({PROCESS_WORKERS}) vs LocalExecutor",
        fmt_s(best["processes"]),
        f"{fmt_s(best['local'])} (LocalExecutor); "
        f"{fmt_s(best['pool'])} (ProcessPoolExecutor({PROCESS_WORKERS}))",
        f"{speedup:.2f}x faster (bare pool: {best['local'] / best['pool']:.2f}x); "
        f"{best['processes'] / best['pool']:.3f}x the pool",
        "≥ 1.7x; ≤ 1.05x the pool",
        _met(speedup >= 1.7 and best["processes"] <= 1.05 * best["pool"], quick),
    )


def part_processes(sizes: dict[str, int], quick: bool, notes: list[str]) -> list[Figure]:
    """Process overhead: a trivial map on ProcessExecutor(2) vs the LocalExecutor, with
    each run's own workers (the default) and with workers kept between the runs of a
    ``with`` block; and what starting workers costs a small flow's run."""
    n = sizes["proc_map"]
    _progress(f"map {n} on ProcessExecutor({PROCESS_WORKERS})")
    flow, out = w.build_map(n)
    expected = w.expected_map(n)
    local = LocalExecutor()
    w.result_of(flow, out, executor=local)  # compile the flow once
    with ProcessExecutor(PROCESS_WORKERS) as kept:
        w.result_of(flow, out, executor=kept)  # start the kept workers
        best = interleaved(
            {
                "processes": lambda: w.result_of(
                    flow, out, executor=ProcessExecutor(PROCESS_WORKERS)
                ),
                "kept": lambda: w.result_of(flow, out, executor=kept),
                "local": lambda: w.result_of(flow, out, executor=local),
            },
            # Best of 9, not 3: with the driver and two workers on 2 CPUs, any other
            # load slows this side more than the LocalExecutor's (which needs one CPU),
            # so a few slow runs in a row decide a best of 3. Each side's best tends to
            # its floor.
            3 if quick else 9,
            {"processes": expected, "kept": expected, "local": expected},
        )
    small_n = 10
    _progress(f"map {small_n}: ProcessExecutor({PROCESS_WORKERS}) runs, own vs kept workers")
    small, small_out = w.build_map(small_n)
    small_expected = w.expected_map(small_n)
    reps = 5 if quick else 20

    def sweep(executor: Callable[[], Any]) -> int:
        got = 0
        for _ in range(reps):
            got = w.result_of(small, small_out, executor=executor())
        return got

    with ProcessExecutor(PROCESS_WORKERS) as small_kept:
        w.result_of(small, small_out, executor=small_kept)
        sweeps = interleaved(
            {
                "own": lambda: sweep(lambda: ProcessExecutor(PROCESS_WORKERS)),
                "kept": lambda: sweep(lambda: small_kept),
            },
            3,
            {"own": small_expected, "kept": small_expected},
        )
    notes.append(
        f"ProcessExecutor rows: best of {3 if quick else 9} runs each, alternated; 'kept' "
        f"is one ProcessExecutor({PROCESS_WORKERS}) used as a context manager, whose "
        f"workers serve every run of its with block (started before the timed runs). "
        f"The {small_n}-child row: {reps} runs in a row per timing, best of 3."
    )
    return [
        Figure(
            f"{fmt_n(n)} trivial map + reduce, ProcessExecutor({PROCESS_WORKERS})",
            fmt_s(best["processes"]),
            f"{fmt_s(best['local'])} (LocalExecutor)",
            f"{best['processes'] / best['local']:.1f}x local "
            f"({(best['processes'] - best['local']) / n * 1e6:.1f} µs/child over it)",
            "≤ 2x",
            _met(best["processes"] <= 2 * best["local"], quick),
        ),
        Figure(
            "the same, workers kept for a with block",
            fmt_s(best["kept"]),
            f"{fmt_s(best['local'])} (LocalExecutor)",
            f"{best['kept'] / best['local']:.1f}x local",
            "—",
            None,
        ),
        Figure(
            f"{small_n}-child map, one run on ProcessExecutor({PROCESS_WORKERS})",
            f"{fmt_s(sweeps['kept'] / reps)} (kept workers)",
            f"{fmt_s(sweeps['own'] / reps)} (each run its own)",
            f"{sweeps['own'] / sweeps['kept']:.1f}x faster kept",
            "—",
            None,
        ),
    ]


def interleaved_median(
    fns: dict[str, Callable[[], Any]], reps: int, expected: dict[str, Any]
) -> dict[str, float]:
    """Median of ``reps`` timed calls of each function, run in turn (A, B, A, B, ...)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            seconds, value = timed(fn)
            check(value, expected[name])
            times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def part_dask(sizes: dict[str, int], quick: bool, notes: list[str]) -> list[Figure]:
    """DaskExecutor vs the same work written with ``client.submit``/``client.map`` on
    one 2-worker LocalCluster (processes, 127.0.0.1): A = source -> map of ``inc`` ->
    ``total``; B = chain of ``inc``; C = independent ``inc`` + ``total``. Interleaved,
    median of 5, recorded ferroflow runs (the default)."""
    from distributed import Client

    from ferroflow.executors import DaskExecutor

    n = sizes["dask"]
    _progress(f"dask: workloads A, B, C at {n} on a 2-worker LocalCluster")
    here = os.path.dirname(os.path.abspath(__file__))
    env = {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    inc, total = w.inc, w.total

    def plain_a(client: Any) -> int:
        src = client.submit(w.make_src(n), pure=False)
        xs = src.result()  # a plain program needs the length to map over it
        return int(client.submit(total, client.map(inc, xs, pure=False)).result())

    def plain_b(client: Any) -> int:
        f = client.submit(inc, 0, pure=False)
        for _ in range(n - 1):
            f = client.submit(inc, f, pure=False)
        return int(f.result())

    def plain_c(client: Any) -> int:
        futures = [client.submit(inc, i, pure=False) for i in range(n)]
        return int(client.submit(total, futures, pure=False).result())

    workloads = (
        ("A", "source -> map of inc -> total", w.build_map(n), w.expected_map(n), plain_a),
        ("B", "chain of inc", w.build_chain(n), w.expected_chain(n), plain_b),
        (
            "C",
            "independent inc + total",
            w.build_independent(n),
            w.expected_independent(n),
            plain_c,
        ),
    )
    figures = []
    with (
        w.bench_cluster() as cluster,
        Client(cluster) as client,
    ):
        executor = DaskExecutor(address=cluster.scheduler_address)
        for name, what, (flow, out), expected, plain in workloads:
            w.result_of(flow, out, executor=executor)  # warm-up: workers load the functions
            plain(client)
            med = interleaved_median(
                {
                    "ferroflow": lambda f=flow, o=out: w.result_of(f, o, executor=executor),
                    "dask": lambda p=plain: p(client),
                },
                5,
                {"ferroflow": expected, "dask": expected},
            )
            ratio = med["ferroflow"] / med["dask"]
            figures.append(
                Figure(
                    f"dask {name}: {what}, {fmt_n(n)}, DaskExecutor",
                    fmt_s(med["ferroflow"]),
                    f"{fmt_s(med['dask'])} (client.submit/map, same cluster)",
                    f"{ratio:.2f}x",
                    "≤ 1.2x",
                    _met(ratio <= 1.2, quick),
                )
            )
    # What starting a cluster costs a small flow's run, and a with block saves: each run
    # of DaskExecutor() starts (and closes) its own LocalCluster unless the block keeps it.
    small_n = 10
    _progress(f"dask: map {small_n} on DaskExecutor(), own vs kept LocalCluster")
    small, small_out = w.build_map(small_n)
    small_expected = w.expected_map(small_n)
    options = {"n_workers": 2, "threads_per_worker": 1, "env": env}
    with DaskExecutor(cluster_kwargs=options) as kept:
        w.result_of(small, small_out, executor=kept)  # starts the kept cluster
        small_med = interleaved_median(
            {
                "own": lambda: w.result_of(
                    small, small_out, executor=DaskExecutor(cluster_kwargs=options)
                ),
                "kept": lambda: w.result_of(small, small_out, executor=kept),
            },
            3 if quick else 5,
            {"own": small_expected, "kept": small_expected},
        )
    figures.append(
        Figure(
            f"{small_n}-child map, one run on DaskExecutor() (2-worker LocalCluster)",
            f"{fmt_s(small_med['kept'])} (kept for a with block)",
            f"{fmt_s(small_med['own'])} (each run its own cluster)",
            f"{small_med['own'] / small_med['kept']:.0f}x faster kept",
            "—",
            None,
        )
    )
    notes.append(
        "dask: median of 5 each, interleaved, on one 2-worker LocalCluster (1 thread per "
        "worker process, 127.0.0.1); each side warmed up once first. The "
        f"{small_n}-child row: DaskExecutor(cluster_kwargs=...) starting its own cluster "
        "per run, against one used as a context manager (its cluster started before the "
        f"timed runs); median of {3 if quick else 5}, interleaved."
    )
    return figures


def part_recording(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Recording overhead: the 1M map + reduce, recorded vs unrecorded."""
    n = sizes["record_map"]
    _progress(f"recording: map {n}, record=True vs record=False")
    flow, out = w.build_map(n)
    expected = w.expected_map(n)
    w.result_of(flow, out, record=False)  # compile the flow once
    with OtherLoad() as load:
        best = interleaved(
            {
                "record": lambda: w.result_of(flow, out, record=True),
                "no record": lambda: w.result_of(flow, out, record=False),
            },
            3,
            {"record": expected, "no record": expected},
        )
    ratio = best["record"] / best["no record"]
    notes.append(
        f"recording: best of 3 each, interleaved; the run store's writer thread works "
        f"beside the run, so the ratio needs a free second core. Other processes kept "
        f"{load.describe()} CPUs busy meanwhile."
    )
    return Figure(
        f"recording: {fmt_n(n)} map + reduce, record=True",
        fmt_s(best["record"]),
        f"{fmt_s(best['no record'])} (record=False)",
        f"{ratio:.2f}x",
        "≤ 1.3x",
        _met(ratio <= 1.3, quick),
    )


def part_logs(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Run logs: a map whose children each log one line, recorded, with the lines written
    to the run store vs logged but not stored (``FERROFLOW_STORE_LOGS=0``)."""
    n = sizes["log_map"]
    _progress(f"logs: map {n}, one log line per child, stored vs not stored")
    flow, out = w.build_logging_map(n)
    expected = w.expected_map(n)

    def run(stored: bool) -> Any:
        with w.store_logs(stored):
            return w.result_of(flow, out)

    run(False)  # compile the flow once
    with OtherLoad() as load:
        best = interleaved(
            {"stored": lambda: run(True), "not stored": lambda: run(False)},
            3,
            {"stored": expected, "not stored": expected},
        )
    ratio = best["stored"] / best["not stored"]
    notes.append(
        f"logs: best of 3 each, interleaved, both recorded; the writer thread inserts the "
        f"lines beside the run. Other processes kept {load.describe()} CPUs busy meanwhile."
    )
    return Figure(
        f"logs: {fmt_n(n)} map, a log line per child, in the store",
        fmt_s(best["stored"]),
        f"{fmt_s(best['not stored'])} (FERROFLOW_STORE_LOGS=0)",
        f"{ratio:.2f}x",
        "≤ 1.5x",
        _met(ratio <= 1.5, quick),
    )


def part_checkpoint(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Checkpointing overhead: checkpoint=True + LocalResult (recorded, the default) vs the
    same map without checkpoints, unrecorded."""
    n = sizes["ckpt_map"]
    _progress(f"checkpointing: map {n}, checkpoint=True vs plain unrecorded")
    result_dir = tempfile.mkdtemp(prefix="ferroflow-bench-results-")
    try:
        ck_flow, ck_out = w.build_checkpointed_map(n, result_dir)
        flow, out = w.build_map(n)
        expected = w.expected_map(n)
        w.result_of(flow, out, record=False)  # compile the plain flow once
        best = interleaved(
            {
                "checkpoint": lambda: w.result_of(ck_flow, ck_out),
                "plain": lambda: w.result_of(flow, out, record=False),
            },
            3,
            {"checkpoint": expected, "plain": expected},
        )
        unrecorded, value = timed(lambda: w.result_of(ck_flow, ck_out, record=False))
        check(value, expected)
        files = [p for p in Path(result_dir).rglob("*") if p.is_file()]
        written = sum(p.stat().st_size for p in files)
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
    ratio = best["checkpoint"] / best["plain"]
    runs = 4  # three timed checkpointed runs and one unrecorded
    notes.append(
        f"checkpointing: best of 3 each, interleaved; the same checkpointed map unrecorded "
        f"took {fmt_s(unrecorded)} (one run); {runs} runs wrote {len(files)} files, "
        f"{written / (runs * n):.0f} bytes per child."
    )
    return Figure(
        f"checkpointing: {fmt_n(n)} map, checkpoint=True + LocalResult (recorded)",
        fmt_s(best["checkpoint"]),
        f"{fmt_s(best['plain'])} (no checkpoint, record=False)",
        f"{ratio:.1f}x",
        "< 3x",
        _met(ratio < 3, quick),
    )


def part_resume(sizes: dict[str, int], quick: bool, notes: list[str]) -> Figure:
    """Resume: a checkpointed map whose reduce failed, resumed, every child restored from
    its pack checkpoint (the reduce runs again); against running the same flow afresh."""
    n = sizes["ckpt_map"]
    _progress(f"resume: map {n}, every child restored from its checkpoint")
    result_dir = tempfile.mkdtemp(prefix="ferroflow-bench-results-")
    expected = w.expected_map(n)
    times: list[float] = []
    fresh: list[float] = []
    try:
        from ferroflow.store import open_store

        for _ in range(3):
            flow, out, switch = w.build_resumable_map(n, result_dir)
            t0 = time.perf_counter()
            state = flow.run()
            fresh.append(time.perf_counter() - t0)
            if state.is_successful():
                raise AssertionError("the run to resume did not fail")
            with open_store() as store:
                run_id = store.list_flow_runs(1)[0].id
            switch["fail"] = False
            t0 = time.perf_counter()
            state = flow.run(resume=run_id)
            times.append(time.perf_counter() - t0)
            check(state.result[out].result, expected)
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
    best, base = min(times), min(fresh)
    notes.append(
        f"resume: best of 3; each resume reads {fmt_n(n)} checkpoints from one pack "
        f"({min(times) / n * 1e6:.2f} µs per child) and runs the reduce again; the "
        "baseline is the failed first run, which computed and checkpointed every child."
    )
    return Figure(
        f"resume: {fmt_n(n)} checkpointed children restored",
        fmt_s(best),
        f"{fmt_s(base)} (the first run, computing them)",
        f"{best / base:.1f}x",
        "n/a",
        None,
    )


PARTS = (
    "timeouts",
    "threads",
    "first-run",
    "memory",
    "depth",
    "io",
    "cpu",
    "processes",
    "recording",
    "logs",
    "checkpoint",
    "resume",
    "dask",
)


def run_executors_durability(
    sizes: dict[str, int], quick: bool, parts: tuple[str, ...], first_table: list[Row]
) -> tuple[list[Figure], list[str]]:
    """The figures of issues 3, 4 and 5 with their baselines; and notes to print below."""
    figures: list[Figure] = []
    notes: list[str] = []
    for part in parts:
        if part == "io":
            sleep_row = next((row for row in first_table if "sleep" in row.workload), None)
            from_first_table = sleep_row is not None
            if sleep_row is None:
                _progress(f"sleep map {sizes['sleep']} on {THREAD_WORKERS} threads")
                sleep_row = measure_sleep(sizes["sleep"])
            figures.append(part_io(sleep_row, quick, from_first_table))
            continue
        measure = {
            "timeouts": part_timeouts,
            "threads": part_threads,
            "first-run": part_first_run,
            "memory": part_memory,
            "depth": part_depth,
            "cpu": part_cpu,
            "processes": part_processes,
            "recording": part_recording,
            "logs": part_logs,
            "checkpoint": part_checkpoint,
            "resume": part_resume,
            "dask": part_dask,
        }[part]
        got: Figure | list[Figure] = measure(sizes, quick, notes)  # type: ignore[assignment]
        figures.extend(got if isinstance(got, list) else [got])
    return figures, notes


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
HEADERS_2 = ["measurement", "ferroflow", "baseline (same run)", "figure", "target", "met"]


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    table = [headers, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    for cells in rows:
        print(line(cells))


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not available on this platform
        return "n/a"


def versions() -> str:
    import ferroflow

    parts = [f"ferroflow {ferroflow.__version__}"]
    try:
        from importlib.metadata import version

        parts.append(f"dask {version('dask')}")
    except Exception:  # pragma: no cover - dask not installed
        parts.append("dask not installed")
    return ", ".join(parts)


def _cache_bytecode() -> None:
    """Write the bytecode cache of ``_workloads`` (where the tasks' functions live).

    Worker processes (ProcessExecutor, Dask) import it to unpickle those functions. A
    normal Python caches a module's bytecode on its first import; with
    ``PYTHONDONTWRITEBYTECODE=1`` (set on the machine these figures come from) nothing
    is cached and every worker of every run compiles the module from source (~3 ms of
    CPU each), a cost of that setting, not of an executor.
    """
    import py_compile

    try:
        py_compile.compile(str(Path(__file__).resolve().with_name("_workloads.py")), doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass  # a read-only checkout: the workers compile it, as before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask column")
    parser.add_argument(
        "--table",
        choices=("1", "2", "both"),
        default="both",
        help="1: ferroflow vs loop vs dask; 2: executors and durability [both]",
    )
    parser.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="only these lines of the second table (repeatable) [all]",
    )
    args = parser.parse_args(argv)
    _cache_bytecode()

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
    print(f"# load average at start: {load_average()}")
    native_path, debug, identity = w.native_build()
    print(f"# ferroflow._native: {native_path} ({'DEBUG' if debug else 'release'} build)")
    if debug:
        print(f"# WARNING: {native_path} is a debug build: run `make build-release` first")
    started = time.perf_counter()
    rows: list[Row] = []
    if args.table in ("1", "both"):
        rows = run_all(sizes, reps, use_dask)
        imports = [(cached, import_time(bytecode_cache=cached)) for cached in (True, False)]
    if args.table in ("2", "both"):
        parts = tuple(p for p in PARTS if args.part is None or p in args.part)
        figures, notes = run_executors_durability(sizes, args.quick, parts, rows)
    if args.table in ("1", "both"):
        print()
        print_table(HEADERS, [row.cells() for row in rows])
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
    if args.table in ("2", "both"):
        print()
        print("executors and durability:")
        print()
        print_table(HEADERS_2, [figure.cells() for figure in figures])
        print()
        for note in notes:
            print(f"- {note}")
    print()
    print(f"# load average at end: {load_average()}")
    if w.native_build()[2] != identity:
        print(
            f"# WARNING: {native_path} was replaced while this script ran (another build?): "
            "subprocess figures (memory, import time) may come from that other build"
        )
    print(f"# total wall time of this script: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
