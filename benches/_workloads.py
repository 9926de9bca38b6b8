"""Workloads shared by the pytest-benchmark suites and ``compare.py``.

Every workload exists in up to three shapes that make *the same calls* to the same plain
functions: a ferroflow flow (``build_*``), a plain Python baseline (``loop_*``: a loop, or
a bare ``ThreadPoolExecutor`` / ``ProcessPoolExecutor`` for the executor workloads) and,
in ``compare.py``, a dask task graph. Keeping them in one module means the benchmarks,
``compare.py`` and the memory probes of ``_memory.py`` always measure the same thing.

The task functions are module-level, so ``ProcessExecutor`` workers (forked by default)
and ``ProcessPoolExecutor`` workers can run them.

Importing this module sets ``FERROFLOW_HOME`` to a throw-away directory (unless it is
already set), so benchmark runs never write into the user's ``~/.ferroflow``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

# Worker processes (ProcessExecutor, Dask) import this module to unpickle the tasks'
# functions, so it imports only what they need; the rest is imported where it is used.
if "FERROFLOW_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _home = tempfile.mkdtemp(prefix="ferroflow-bench-")
    os.environ["FERROFLOW_HOME"] = _home
    atexit.register(shutil.rmtree, _home, ignore_errors=True)

from ferroflow import Flow, Task, get_run_logger, task

SLEEP_S = 0.05
BURN_S = 0.5  # CPU seconds one child of the CPU-bound map aims to burn
BLOB_BYTES = 100_000  # what the first stage of the depth-first chain returns per child


# -- which build is being measured ------------------------------------------------------------


def _elf_section_names(path: str) -> list[str]:
    """Section names of a 64-bit little-endian ELF file ([] for anything else)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        shoff = struct.unpack_from("<Q", head, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _, _, _, _, str_off, str_size = sections[shstrndx]
        f.seek(str_off)
        strings = f.read(str_size)
    return [strings[name : strings.index(b"\0", name)].decode() for name, *_ in sections]


def native_build() -> tuple[str, bool, tuple[int, int, int]]:
    """``(path, debug, identity)`` of the loaded ``ferroflow._native`` extension.

    ``debug`` is True when the file has DWARF sections (``.debug_info``), which a
    ``make build`` (debug) extension has and a ``make build-release`` one does not here
    (``[profile.release] debug = false``). ``identity`` is ``(inode, size, mtime_ns)`` of
    the file, to notice another build replacing it while benchmarks run.
    """
    from ferroflow import _native

    path = str(_native.__file__)
    st = os.stat(path)
    debug = ".debug_info" in _elf_section_names(path)
    return path, debug, (st.st_ino, st.st_size, st.st_mtime_ns)


# -- the plain functions every shape calls -------------------------------------------------


def bench_cluster() -> Any:
    """The benches' Dask cluster: a ``LocalCluster`` of 2 worker processes with 1 thread
    each on 127.0.0.1 (no dashboard), whose workers can import this directory's
    modules. A context manager, as ``LocalCluster`` is."""
    from distributed import LocalCluster

    here = os.path.dirname(os.path.abspath(__file__))
    env = {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        env=env,
    )


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


def nap(x: int) -> int:
    time.sleep(SLEEP_S)
    return x


def burn(k: int) -> int:
    """Pure-Python CPU work: ``k`` loop iterations, holding the GIL throughout."""
    x = 0
    for i in range(k):
        x += i & 7
    return x


def load(i: int) -> bytes:
    """First stage of the depth-first chain: a 100 KB value per child."""
    return bytes(BLOB_BYTES)


def measure(b: bytes) -> int:
    return len(b)


def keep(n: int) -> int:
    return n


def make_src(n: int) -> Callable[[], list[int]]:
    """A zero-argument function returning ``list(range(n))`` (the map's input)."""

    def src() -> list[int]:
        return list(range(n))

    return src


inc_task = task(inc)
total_task = task(total)
nap_task = task(nap)
timed_inc_task = task(inc, name="timed_inc", timeout=10)
burn_task = task(burn)
load_task = task(load)
measure_task = task(measure)
keep_task = task(keep)


@lru_cache(maxsize=1)
def _burn_seconds_per_iteration() -> float:
    """Seconds per ``burn`` iteration on this machine (measured once per process).

    Times ``burn`` over short slices and keeps the fastest, so a busy moment on a shared
    machine does not shrink the work.
    """
    k = 1_000_000  # ~40 ms a slice: long enough to time well, short enough to dodge load
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        burn(k)
        best = min(best, time.perf_counter() - start)
    return best / k


def burn_iterations(seconds: float = BURN_S) -> int:
    """Loop count for which ``burn`` takes about ``seconds`` of CPU on this machine."""
    return max(1, round(seconds / _burn_seconds_per_iteration()))


# -- expected results ----------------------------------------------------------------------


def expected_independent(n: int) -> int:
    """``sum(inc(i) for i in range(n))``."""
    return n * (n + 1) // 2


def expected_chain(n: int) -> int:
    """``n`` increments of 0."""
    return n


def expected_map(n: int, stages: int = 1) -> int:
    """``sum(i + stages for i in range(n))``."""
    return n * (n - 1) // 2 + stages * n


def expected_sleep(n: int) -> int:
    return n * (n - 1) // 2


def expected_burn(n: int, k: int) -> int:
    """``n`` children of ``burn(k)``."""
    full, rest = divmod(k, 8)
    return n * (full * 28 + rest * (rest - 1) // 2)


def expected_depth_first(n: int) -> int:
    """``sum(len(load(i)) for i in range(n))``."""
    return n * BLOB_BYTES


# -- ferroflow flows -----------------------------------------------------------------------


def build_independent(n: int) -> tuple[Flow, Task]:
    """``n`` independent ``inc(i)`` tasks and one ``total`` over all of them."""
    with Flow(f"independent-{n}") as flow:
        xs = [inc_task(i) for i in range(n)]
        out = total_task(xs)
    return flow, out


def build_chain(n: int) -> tuple[Flow, Task]:
    """``x = inc(x)`` ``n`` times, starting from 0."""
    with Flow(f"chain-{n}") as flow:
        x = inc_task(0)
        for _ in range(n - 1):
            x = inc_task(x)
    return flow, x


def build_only(n: int) -> Flow:
    """``n`` independent ``inc(i)`` tasks, no reduce (the build + validate workload)."""
    with Flow(f"build-{n}") as flow:
        for i in range(n):
            inc_task(i)
    return flow


def build_map(n: int, stages: int = 1) -> tuple[Flow, Task]:
    """``total(inc.map(... inc.map(src()) ...))`` with ``stages`` maps over ``n`` elements."""
    src_task = task(make_src(n), name="src")
    with Flow(f"map-{stages}x{n}") as flow:
        x = src_task()
        for _ in range(stages):
            x = inc_task.map(x)
        out = total_task(x)
    return flow, out


def build_timed_map(n: int) -> tuple[Flow, Task]:
    """``total(timed_inc.map(src()))``: ``build_map`` with ``timeout=10`` on the mapped task."""
    src_task = task(make_src(n), name="src")
    with Flow(f"timed-map-{n}") as flow:
        out = total_task(timed_inc_task.map(src_task()))
    return flow, out


def build_sleep_map(n: int) -> tuple[Flow, Task]:
    """``total(nap.map(range(n)))``: ``n`` children that each sleep ``SLEEP_S``."""
    with Flow(f"sleep-{n}") as flow:
        out = total_task(nap_task.map(list(range(n))))
    return flow, out


def build_cpu_map(n: int, k: int) -> tuple[Flow, Task]:
    """``total(burn.map([k] * n))``: ``n`` CPU-bound children of ``k`` iterations each."""
    with Flow(f"burn-{n}") as flow:
        out = total_task(burn_task.map([k] * n))
    return flow, out


def build_depth_first(n: int) -> tuple[Flow, Task]:
    """``total(keep.map(measure.map(load.map(src()))))``: a 100 KB value per first-stage child."""
    src_task = task(make_src(n), name="src")
    with Flow(f"depth-first-{n}") as flow:
        out = total_task(keep_task.map(measure_task.map(load_task.map(src_task()))))
    return flow, out


def build_checkpointed_map(n: int, result_dir: str) -> tuple[Flow, Task]:
    """``total(inc.map(src()))`` whose mapped task checkpoints to ``LocalResult(result_dir)``."""
    from ferroflow.results import LocalResult

    src_task = task(make_src(n), name="src")
    inc_ckpt = task(inc, name="inc_ckpt", checkpoint=True, result=LocalResult(dir=result_dir))
    with Flow(f"checkpointed-map-{n}") as flow:
        out = total_task(inc_ckpt.map(src_task()))
    return flow, out


def build_resumable_map(n: int, result_dir: str) -> tuple[Flow, Task, dict[str, bool]]:
    """The checkpointed map of :func:`build_checkpointed_map` whose reduce fails while
    ``switch["fail"]`` is true: run it once to fail, then resume it to restore every
    child from its checkpoint."""
    from ferroflow.results import LocalResult

    switch = {"fail": True}

    def total_or_fail(xs: list[int]) -> int:
        if switch["fail"]:
            raise RuntimeError("failing on purpose, to be resumed")
        return sum(xs)

    src_task = task(make_src(n), name="src")
    inc_ckpt = task(inc, name="inc_ckpt", checkpoint=True, result=LocalResult(dir=result_dir))
    with Flow(f"resumable-map-{n}") as flow:
        out = task(total_or_fail, name="total")(inc_ckpt.map(src_task()))
    return flow, out, switch


def log_one(x: int) -> int:
    """One run-logger line, then ``x + 1``."""
    get_run_logger().info("child %d", x)
    return x + 1


def quiet_logs() -> None:
    """Run-logger lines go nowhere but to the run store (no terminal, no pytest capture):
    what is timed is the logging call and the store, not a console."""
    import logging

    from ferroflow import runtime

    runtime._ensure_handler()  # what ferroflow would install, replaced here
    base = logging.getLogger("ferroflow")
    base.propagate = False
    for handler in list(base.handlers):
        if handler is not runtime._STORE_HANDLER:
            base.removeHandler(handler)
    base.addHandler(logging.NullHandler())
    base.setLevel(logging.INFO)


def build_logging_map(n: int) -> tuple[Flow, Task]:
    """``total(log_one.map(src()))``: every child logs one line."""
    quiet_logs()
    src_task = task(make_src(n), name="src")
    log_task = task(log_one, name="log_one")
    with Flow(f"logging-map-{n}") as flow:
        out = total_task(log_task.map(src_task()))
    return flow, out


class store_logs:
    """``with store_logs(False):`` runs with ``FERROFLOW_STORE_LOGS=0`` (lines are logged
    but not written to the run store); ``True`` leaves the default (written)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.old = os.environ.get("FERROFLOW_STORE_LOGS")
        os.environ["FERROFLOW_STORE_LOGS"] = "1" if self.on else "0"

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop("FERROFLOW_STORE_LOGS", None)
        else:
            os.environ["FERROFLOW_STORE_LOGS"] = self.old


def result_of(flow: Flow, out: Task, **run_kwargs: Any) -> Any:
    """Run ``flow`` and return the value of ``out`` (raises if the run did not succeed)."""
    state = flow.run(**run_kwargs)
    if not state.is_successful():
        raise AssertionError(f"{flow!r} did not succeed: {state!r}")
    return state.result[out].result


# -- the plain Python loops ----------------------------------------------------------------


def loop_independent(n: int) -> int:
    return total([inc(i) for i in range(n)])


def loop_chain(n: int) -> int:
    x = inc(0)
    for _ in range(n - 1):
        x = inc(x)
    return x


def loop_map(n: int, stages: int = 1) -> int:
    xs = make_src(n)()
    for _ in range(stages):
        xs = [inc(x) for x in xs]
    return total(xs)


def loop_sleep_pool(n: int, workers: int) -> int:
    """The "plain" baseline for the I/O workload: a ``ThreadPoolExecutor`` map."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return total(list(pool.map(nap, range(n))))


def loop_cpu_pool(n: int, k: int, workers: int) -> int:
    """The same CPU-bound calls on a bare ``ProcessPoolExecutor``: what the machine allows."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return total(list(pool.map(burn, [k] * n)))


def loop_depth_first(n: int) -> int:
    """The depth-first chain as a plain loop: one 100 KB value alive at a time."""
    return total([keep(measure(load(i))) for i in make_src(n)()])
