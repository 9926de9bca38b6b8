"""The UI's figures (issue 15), measured in one run of this script.

A store is built in a throw-away ``FERROFLOW_HOME``: one real run of a map of
1,000,000 children (``flow.run()``, recorded as any run is; 1,000 of them fail) and
10,000 more flow runs inserted as rows (a week of runs, some failed). The UI is served
by ``ferroflow.ui.RunStoreUI`` (uvicorn on 127.0.0.1, the same app as the server's
``/``) and read over HTTP:

1. the run page of the 1,000,000-child run: the first read (folds the whole journal
   once), then the best of 5; the HTML size; the page of one task's children at offset
   500,000; the live JSON the page polls. Targets: under 300 ms, HTML under 500 KB.
2. the dashboard of the 10,000-run store, best of 5. Target: under 200 ms.
3. how soon an open run page shows a state change: a run waits on an event, Chromium
   (Playwright, ``/usr/bin/chromium``) shows its page, the run is let go, and the time
   from letting it go until the page shows "Success" is taken (5 times; it includes the
   run's own finishing). Target: within 2 s.

Measure a release build (``make build-release``)::

    .venv/bin/python benches/ui_bench.py [--children N] [--runs N] [--log-children N]
        [--chains 1000,2500,10000] [--no-live]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from ferroflow import Flow, task


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def check(x: int) -> int:
    if x % 1000 == 7:
        raise ValueError(f"bad input {x}")
    return x


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=600) as r:
            body: bytes = r.read()
            return body
    except urllib.error.HTTPError as err:
        raise SystemExit(f"{url}: {err.code} {err.read().decode(errors='replace')}") from None


def best_ms(f: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def build_store(children: int, runs: int) -> str:
    """The big run (for real) and ``runs`` more rows; the big run's id."""
    from ferroflow.store import store_path

    with Flow("ui-bench-map") as flow:
        check.map(numbers(children))
    start = time.perf_counter()
    state = flow.run()
    print(f"  the {children:,}-child run took {time.perf_counter() - start:.1f} s ({state})")
    con = sqlite3.connect(store_path())
    (big_id,) = con.execute("SELECT id FROM flow_runs ORDER BY started DESC LIMIT 1").fetchone()
    now = time.time()
    with con:
        con.executemany(
            "INSERT INTO flow_runs(id, flow_name, parameters, state, started, ended) "
            "VALUES (?, ?, '{}', ?, ?, ?)",
            [
                (
                    str(uuid.uuid4()),
                    f"flow-{i % 20}",
                    "Failed" if i % 13 == 0 else "Success",
                    now - 7 * 86400 * (runs - i) / runs - 60,
                    now - 7 * 86400 * (runs - i) / runs - 59,
                )
                for i in range(runs)
            ],
        )
    con.close()
    return str(big_id)


LIVE_FLOW = """
import sys, time
from pathlib import Path
from ferroflow import Flow, task

@task
def waits(path: str) -> int:
    while not Path(path).exists():
        time.sleep(0.01)
    return 1

with Flow(sys.argv[2]) as flow:
    waits(sys.argv[1])
flow.run()
"""


def live_delays(url: str, work: Path, times: int = 5) -> list[float]:
    """Seconds from a run's end to its open page showing it, ``times`` times. The run
    is a process of its own, as runs are (``ferroflow.ui`` serves other processes' runs)."""
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright

    script = work / "live_flow.py"
    script.write_text(LIVE_FLOW)
    delays = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page()
        for i in range(times):
            go, name = work / f"go{i}", f"ui-bench-live-{i}"
            proc = subprocess.Popen([sys.executable, str(script), str(go), name])
            while True:  # until the UI shows the run with its task running
                runs = json.loads(get(f"{url}api/runs?limit=5"))["runs"]
                run_id = next((r["id"] for r in runs if r["flow_name"] == name), None)
                if run_id is not None:
                    live = json.loads(get(f"{url}runs/{run_id}/live"))
                    if any(t["state"] == "Running" for t in live["tasks"].values()):
                        break
                time.sleep(0.05)
            page.goto(f"{url}runs/{run_id}")
            page.wait_for_selector("h1 [data-run-state]")
            released = time.time()
            go.touch()  # the task ends within 10 ms, then the run
            page.wait_for_function(
                "document.querySelector('h1 [data-run-state]').textContent.includes('Success')",
                polling=20,
                timeout=30_000,
            )
            delays.append(time.time() - released)
            assert proc.wait(timeout=60) == 0
        browser.close()
    return delays


def log_figures(url: str, children: int) -> list[tuple[str, float]]:
    """The run page of a map whose children each log a line: plain, the errors only, a
    search, and the logs half-way through."""
    import subprocess
    import sys

    # In a process of its own, as runs are: ferroflow.ui serves other processes' runs.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from _workloads import build_logging_map; "
        "build_logging_map(int(sys.argv[2]))[0].run()"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(children)], check=True
    )
    runs = json.loads(get(f"{url}api/runs?limit=1"))["runs"]
    page = f"{url}runs/{runs[0]['id']}"
    get(page)  # fold the journal once
    # The last line's time, through the UI (this process reads the store with the
    # UI's sqlite3 only: a second SQLite library on the same file would break its locks).
    twin = json.loads(get(f"{url}api/runs/{runs[0]['id']}?log_offset={children - 1}"))
    tail = f"/live?log_since={twin['logs'][-1]['at']!r}&log_offset=1"
    return [
        (what, best_ms(lambda q=q: get(page + q)))
        for what, q in [
            ("run page", ""),
            ("level ERROR", "?level=ERROR"),
            ("level WARNING", "?level=WARNING"),
            ("level INFO", "?level=INFO"),
            ("search one line", f"?q=child%20{children - 1}"),
            ("logs half-way", f"?log_offset={children // 2}"),
            ("logs, last page", f"?log_offset={children - 100}"),
            ("live JSON following the end", tail),
            ("a task run's page", f"/task-runs/{children // 2}"),
        ]
    ]


CHAIN_FLOW = """
import sys
from ferroflow import Flow, task

@task
def inc(x: int) -> int:
    return x + 1

n = int(sys.argv[1])
with Flow(f"ui-bench-chain-{n}") as flow:
    x = inc(0)
    for _ in range(n - 1):
        x = inc(x)
assert flow.run().is_successful()
"""


def chain_figures(url: str, sizes: list[int]) -> list[tuple[int, str, float, int]]:
    """The run page of a chain of ``n`` ``inc`` for each size (run in a process of its
    own, as runs are): its schematic's form, the page's server time (best of 5) and
    its HTML size."""
    import subprocess
    import sys

    out = []
    for n in sizes:
        subprocess.run([sys.executable, "-c", CHAIN_FLOW, str(n)], check=True)
        runs = json.loads(get(f"{url}api/runs?limit=1"))["runs"]
        run_id = runs[0]["id"]
        assert runs[0]["flow_name"] == f"ui-bench-chain-{n}", runs[0]
        page = f"{url}runs/{run_id}"
        mode = json.loads(get(f"{url}api/runs/{run_id}"))["schematic"]["mode"]
        get(page)  # fold the journal once
        out.append((n, mode, best_ms(lambda page=page: get(page)), len(get(page))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--children", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument(
        "--log-children",
        type=int,
        default=0,
        help="also time the run page of a map whose N children each log a line",
    )
    parser.add_argument(
        "--chains",
        default="",
        help="also time the run page of a chain of N inc, for each N (comma-separated)",
    )
    parser.add_argument(
        "--no-live", action="store_true", help="skip the Chromium live-update figure"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferroflow-ui-bench-") as tmp:
        os.environ["FERROFLOW_HOME"] = str(Path(tmp))
        os.environ.pop("FERROFLOW_API_URL", None)
        from ferroflow.ui import RunStoreUI

        print("Building the store:")
        big = build_store(args.children, args.runs)
        with RunStoreUI(port=0) as ui:
            url = ui.start()
            page = f"{url}runs/{big}"
            start = time.perf_counter()
            html = get(page)
            cold = 1000 * (time.perf_counter() - start)
            warm = best_ms(lambda: get(page))
            size = len(get(page))
            assert b"check" in html and b"Failures (" in html
            counts = json.loads(get(f"{page}/live"))["tasks"]
            total = sum(t["total"] for t in counts.values())
            assert total == args.children + 2, total  # numbers, check's own run, children
            children = best_ms(lambda: get(f"{page}?task=1&offset={args.children // 2}"))
            live = best_ms(lambda: get(f"{page}/live"))
            live_size = len(get(f"{page}/live"))
            dash = best_ms(lambda: get(url))
            dash_size = len(get(url))
            logged = log_figures(url, args.log_children) if args.log_children else []
            sizes = [int(n) for n in args.chains.split(",") if n.strip()]
            chains = chain_figures(url, sizes) if sizes else []
            chromium = os.path.exists("/usr/bin/chromium") and not args.no_live
            delays = live_delays(url, Path(tmp)) if chromium else []

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        print(f"Run page of the {args.children:,}-child run (served over HTTP, best of 5):")
        print(f"  first read (folds the journal) {cold:8.1f} ms")
        print(
            f"  run page                       {warm:8.1f} ms (target < 300: {verdict(warm < 300)})"
        )
        print(
            f"  its HTML                       {size / 1024:8.1f} KB "
            f"(target < 500: {verdict(size < 500 * 1024)})"
        )
        print(f"  a task's children, offset {args.children // 2:,} {children:8.1f} ms")
        print(f"  live JSON (polled each second) {live:8.1f} ms {live_size / 1024:8.1f} KB")
        print(f"Dashboard of a {args.runs + 1:,}-run store (best of 5):")
        print(
            f"  dashboard                      {dash:8.1f} ms (target < 200: {verdict(dash < 200)})"
        )
        print(f"  its HTML                       {dash_size / 1024:8.1f} KB")
        if logged:
            print(f"Run page of a {args.log_children:,}-child map, one log line each (best of 5):")
            for what, ms in logged:
                print(f"  {what:<30} {ms:8.1f} ms")
        if chains:
            print("Run page of a chain of N tasks (its schematic's form; best of 5):")
            for n, mode, ms, size in chains:
                print(
                    f"  {n:>6,} tasks ({mode:<9})        {ms:8.1f} ms {size / 1024:8.1f} KB "
                    f"(targets < 300 ms: {verdict(ms < 300)}, < 500 KB: "
                    f"{verdict(size < 500 * 1024)})"
                )
        if delays:
            worst = max(delays)
            print("A state change on an open run page (Chromium, 5 times):")
            print(
                f"  shown after {min(delays):.2f} to {worst:.2f} s, mean "
                f"{sum(delays) / len(delays):.2f} s (target <= 2 s: {verdict(worst <= 2)})"
            )
        else:
            print("(no /usr/bin/chromium: the live figure is not measured; make sysdeps)")


if __name__ == "__main__":
    main()
