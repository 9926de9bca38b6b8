"""Peak-memory probes, each run in a fresh Python process so its peak RSS is its own.

``probe(kind, n)`` starts ``python benches/_memory.py KIND N`` and returns what the child
printed (one JSON object). Every child does the same preamble first: import ferroflow and
``_workloads``, build the flow of its workload, ``gc.collect()``; then it notes its current
RSS (``VmRSS``), resets its high-water mark to it (``/proc/self/clear_refs``), does its
one run, and reads the high-water mark again (``VmHWM``; ``ru_maxrss`` off Linux).
``grown`` is the peak after the run minus the RSS just before it.

Kinds:

- ``map-ff``: ``total(inc.map(src()))`` over ``n`` elements, ``flow.run(record=False)``.
- ``map-loop``: the same objects made by plain Python with the same preamble (the flow is
  built, not run): ``xs = list(range(n))``, ``ys = [inc(x) for x in xs]``, ``total(ys)``.
  Also reports the size of those objects counted with ``sys.getsizeof`` (no allocator
  rounding), as a cross-check.
- ``depth-ff``: ``total(keep.map(measure.map(load.map(src()))))`` over ``n`` children, the
  first stage returning ``bytes(100_000)``, ``flow.run(release_results=True, record=False)``.
- ``depth-loop``: the same calls as a plain depth-first loop.

The depth-first children run under ``RLIMIT_AS`` = 4 GiB, so a regression that kept every
100 KB value (10 GB at 100,000 children) ends in a MemoryError instead of swamping a
shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KINDS = ("map-ff", "map-loop", "depth-ff", "depth-loop")
AS_LIMIT = 4 << 30


def probe(kind: str, n: int) -> dict[str, Any]:
    """Run one probe in a fresh interpreter and return its JSON report."""
    if kind not in KINDS:
        raise ValueError(f"unknown probe {kind!r}")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_now() -> int:
    """Current resident set size in bytes (Linux), else the peak so far."""
    rss = _status("VmRSS")
    return _peak() if rss is None else rss


def _peak() -> int:
    """Peak resident set size of this process so far, in bytes.

    ``VmHWM`` where there is one: ``ru_maxrss`` is not reset by exec on Linux, so a probe
    started by a big parent (``compare.py`` after its 1M-task rows) would report the
    parent's peak. Elsewhere ``ru_maxrss``.
    """
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _objects_size(xs: list[int], ys: list[int]) -> int:
    """Bytes of the two lists and their (distinct) int objects, by ``sys.getsizeof``."""
    seen: set[int] = set()
    size = sys.getsizeof(xs) + sys.getsizeof(ys)
    for v in (*xs, *ys):
        if id(v) not in seen:
            seen.add(id(v))
            size += sys.getsizeof(v)
    return size


def _child(kind: str, n: int) -> dict[str, Any]:
    import gc

    sys.path.insert(0, str(HERE))
    import _workloads as w

    if kind.startswith("depth"):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
        flow, out = w.build_depth_first(n)
        expected = w.expected_depth_first(n)
    else:
        flow, out = w.build_map(n)
        expected = w.expected_map(n)
    gc.collect()
    reset = _reset_peak()
    before, peak_before = _rss_now(), _peak()
    report: dict[str, Any] = {"kind": kind, "n": n, "peak_reset": reset}
    start = time.perf_counter()
    if kind == "map-ff":
        value = w.result_of(flow, out, record=False)
    elif kind == "map-loop":
        xs = w.make_src(n)()
        ys = [w.inc(x) for x in xs]
        value = w.total(ys)
    elif kind == "depth-ff":
        value = w.result_of(flow, out, release_results=True, record=False)
    else:
        value = w.loop_depth_first(n)
    report["seconds"] = time.perf_counter() - start
    peak = _peak()
    if value != expected:
        raise AssertionError(f"{kind}: wrong result {value!r} != {expected!r}")
    if kind == "map-loop":
        report["objects_getsizeof"] = _objects_size(xs, ys)
    report.update(before=before, peak_before=peak_before, peak=peak, grown=peak - before)
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in KINDS:
        print(f"usage: {Path(__file__).name} {{{'|'.join(KINDS)}}} N", file=sys.stderr)
        return 2
    print(json.dumps(_child(argv[0], int(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
