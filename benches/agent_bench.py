"""The agents' figures (issue 13), measured in one run of this script.

1. **Due to first task start** on an idle agent (default poll interval): a run created
   due now, the time until its first task starts (the task writes ``time.time()``), the
   median of ``--latency-runs`` runs one after another. Target: under 1 s.
2. **200 short runs, 2 agents** (``--max-concurrent 4`` each): every run created at
   once, the time until all finished (each exactly once: counted), as runs per second,
   beside the same 200 flows run locally one after another in one process
   (``flow.run()``, recorded in the local store).
3. **Cancel to Cancelled**: a run whose task sleeps; from ``cancel_flow_run`` until the
   server shows the run ``Cancelled`` (the agent sees ``Cancelling`` at its next poll,
   sends SIGINT, the engine records the run), the median of ``--cancel-runs``. Target:
   under 5 s.

A real server (``ferroflow server start``, SQLite store) and real agent processes::

    .venv/bin/python benches/agent_bench.py [--runs 200] [--latency-runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

FLOW = """
import os, time
from ferroflow import Flow, Parameter, task

MARKS = os.environ.get("AGENT_BENCH_MARKS", "/nonexistent")

@task
def first(n):
    with open(MARKS, "a") as f:
        f.write(f"{n} {time.time()}\\n")
    return n

@task
def second(x):
    return x + 1

with Flow("short") as short:
    second(first(Parameter("n")))

@task
def nap(n):
    with open(MARKS, "a") as f:
        f.write(f"{n} {time.time()}\\n")
    for _ in range(600):
        time.sleep(0.1)

with Flow("sleepy") as sleepy:
    nap(Parameter("n"))
"""


def _server(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "FERROFLOW_HOME": str(home)}
    env.pop("FERROFLOW_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[3]


def _agent(url: str, work: Path, *args: str) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FERROFLOW_HOME": str(work), "FERROFLOW_API_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "agent", "start", "--work-dir", str(work), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def _marks(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        n, at = line.split()
        out[int(n)] = float(at)
    return out


def _wait_all(client: Any, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done = {"Success", "Failed", "Cancelled"}
    while time.monotonic() < deadline:
        runs = client.get_flow_runs(limit=1000)
        mine = [r for r in runs if r["id"] in set(ids)]
        if len(mine) == len(ids) and all(r["state"] in done for r in mine):
            return mine
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout} s")


def main() -> None:
    """Measure and print the figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=15)
    parser.add_argument("--cancel-runs", type=int, default=5)
    args = parser.parse_args()
    from ferroflow.cli import load_module
    from ferroflow.client import Client

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        root = Path(tmp)
        marks = root / "marks"
        os.environ["AGENT_BENCH_MARKS"] = str(marks)
        src = root / "short_flow.py"
        src.write_text(textwrap.dedent(FLOW))
        module = load_module(src)
        server, url = _server(root / "server")
        agents: list[subprocess.Popen[bytes]] = []
        try:
            client = Client(url)
            client.create_project("bench")
            flow_id = str(client.register(module.short, "bench", source=src)["id"])
            sleepy_id = str(client.register(module.sleepy, "bench", source=src)["id"])
            agents.append(_agent(url, root / "a1"))
            time.sleep(3)  # registered and idle
            latencies = []
            for i in range(args.latency_runs):
                created = time.time()
                run_id = client.create_flow_run(flow_id, parameters={"n": 100_000 + i})
                _wait_all(client, [run_id], 60)
                latencies.append(_marks(marks)[100_000 + i] - created)
                time.sleep(0.7)  # idle again, at a random phase of the poll
            out["due_to_first_task_s"] = {
                "median": round(statistics.median(latencies), 3),
                "min": round(min(latencies), 3),
                "max": round(max(latencies), 3),
            }
            cancels = []
            for i in range(args.cancel_runs):
                run_id = client.create_flow_run(sleepy_id, parameters={"n": 200_000 + i})
                deadline = time.monotonic() + 60
                while 200_000 + i not in _marks(marks):
                    if time.monotonic() > deadline:
                        raise SystemExit("the sleeping task never started")
                    time.sleep(0.02)
                t0 = time.perf_counter()
                client.cancel_flow_run(run_id)
                (run,) = _wait_all(client, [run_id], 60)
                cancels.append(time.perf_counter() - t0)
                assert run["state"] == "Cancelled", run
            out["cancel_to_cancelled_s"] = {
                "median": round(statistics.median(cancels), 3),
                "max": round(max(cancels), 3),
            }
            agents.append(_agent(url, root / "a2", "--max-concurrent", "4"))
            agents[0].send_signal(signal.SIGTERM)
            agents[0].wait(30)
            agents[0] = _agent(url, root / "a1", "--max-concurrent", "4")
            time.sleep(3)
            marks.unlink()
            t0 = time.perf_counter()
            ids = [client.create_flow_run(flow_id, parameters={"n": i}) for i in range(args.runs)]
            runs = _wait_all(client, ids, 1200)
            elapsed = time.perf_counter() - t0
            seen = _marks(marks)
            assert sorted(seen) == list(range(args.runs)), "a run ran twice or not at all"
            assert {r["state"] for r in runs} == {"Success"}
            lines = marks.read_text().count("\n")
            assert lines == args.runs, f"{lines} first-task executions for {args.runs} runs"
            out["agents_2x4"] = {
                "runs": args.runs,
                "seconds": round(elapsed, 2),
                "runs_per_s": round(args.runs / elapsed, 2),
            }
        finally:
            for a in agents:
                if a.poll() is None:
                    a.send_signal(signal.SIGTERM)
                    a.wait(30)
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        os.environ["FERROFLOW_HOME"] = str(root / "local")
        os.environ.pop("FERROFLOW_API_URL", None)
        t0 = time.perf_counter()
        for i in range(args.runs):
            module.short.run(parameters={"n": i})
        elapsed = time.perf_counter() - t0
        out["local_sequential"] = {
            "runs": args.runs,
            "seconds": round(elapsed, 2),
            "runs_per_s": round(args.runs / elapsed, 2),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
