"""The server's figures (issue 11), measured in one run of this script.

1. **Ingest**: a 100,000-child map run recorded only locally, then the same run with
   ``FERROFLOW_API_URL`` set (it streams to the server; ``flow.run()`` returns once the
   server has every record), on a SQLite server store and on PostgreSQL. Target: the
   streamed run within 2x of the local one.
2. **API latency** on a store holding 10,000 flow runs of one registered flow and one
   run of 1,000,000 mapped children: "flow runs of this flow, newest 50" and "task-run
   counts of the 1,000,000-child run", each over HTTP through ``Client`` (best of 5;
   the first read of the counts, which folds the whole journal, is printed too).
   Target: under 50 ms each.

PostgreSQL is started privately (as the tests do, ``tests/_postgres.py``). Measure a
release build (``make build-release``)::

    .venv/bin/python benches/server_bench.py [--children N] [--runs N] [--big N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _postgres import start_postgres
from ferroflow import Flow, task
from ferroflow.client import Client


@task
def child(x: int) -> int:
    return x + 1


def map_flow(n: int) -> Flow:
    with Flow("bench-map") as flow:
        child.map(list(range(n)))
    return flow


class Server:
    """A server subprocess (``--port 0``)."""

    def __init__(self, database_url: str | None, home: str) -> None:
        argv = [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"]
        if database_url:
            argv += ["--database-url", database_url]
        env = {**os.environ, "FERROFLOW_HOME": home}
        env.pop("FERROFLOW_API_URL", None)
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().split()[3]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        assert self.process.stdout is not None
        self.process.stdout.close()


def timed_run(n: int, api: str | None) -> float:
    if api:
        os.environ["FERROFLOW_API_URL"] = api
    else:
        os.environ.pop("FERROFLOW_API_URL", None)
    flow = map_flow(n)
    start = time.perf_counter()
    state = flow.run()
    took = time.perf_counter() - start
    os.environ.pop("FERROFLOW_API_URL", None)
    assert state.is_successful()
    return took


def ingest(children: int, pg_url: str, work: Path) -> list[tuple[str, float, float]]:
    rows = []
    for backend, url in (
        ("sqlite", f"sqlite:///{work / 'server' / 'ferroflow.db'}"),
        ("postgresql", pg_url),
    ):
        server = Server(url, str(work))
        try:
            timed_run(min(children, 1000), None)  # warm up
            local = min(timed_run(children, None) for _ in range(5))
            streamed = min(timed_run(children, server.url) for _ in range(5))
        finally:
            server.stop()
        rows.append((backend, local, streamed))
    return rows


def best_ms(f: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def latency(runs: int, big: int, url: str | None, work: Path) -> tuple[float, float, float]:
    from ferroflow.server.database import open_database
    from ferroflow.server.models import create_project, register_flow

    db = open_database(url)
    create_project(db, "bench")
    flow = register_flow(
        db,
        project_name="bench",
        name="bench-map",
        structure={"tasks": [], "edges": [], "parameters": [], "schedule": None},
        storage={"type": "source", "source": ""},
    )
    now = time.time()
    with db.transaction():
        for i in range(runs):
            db.execute(
                "INSERT INTO flow_runs(id, flow_name, state, started, ended, flow_id, created) "
                "VALUES (?, 'bench-map', 'Success', ?, ?, ?, ?)",
                (str(uuid.uuid4()), now - runs + i, now - runs + i + 0.5, flow["id"], now),
            )
    # The big run, recorded for real in the local store, then copied (journal blobs).
    os.environ.pop("FERROFLOW_API_URL", None)
    assert map_flow(big).run().is_successful()
    import sqlite3

    from ferroflow.store import store_path

    con = sqlite3.connect(store_path())
    key, big_id = con.execute(
        "SELECT key, id FROM flow_runs ORDER BY started DESC LIMIT 1"
    ).fetchone()
    blobs = [
        bytes(b) for (b,) in con.execute("SELECT data FROM journal WHERE flow_run = ?", (key,))
    ]
    con.close()
    if url is not None:
        with db.transaction():
            db.execute(
                "INSERT INTO flow_runs(id, flow_name, state, started) "
                "VALUES (?, 'bench-map', 'Success', ?)",
                (big_id, now),
            )
            new = db.fetchone("SELECT key FROM flow_runs WHERE id = ?", (big_id,))
            assert new is not None
            for b in blobs:
                db.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (new["key"], b))
    db.close()
    server = Server(url, str(work))
    try:
        client = Client(server.url)
        newest = (
            "query($f: String!) { flow_runs(filter: {flow_id: $f}, limit: 50) "
            "{ id state started } }"
        )
        got = client.graphql(newest, {"f": flow["id"]})["flow_runs"]
        assert len(got) == 50
        counts = (
            "query($id: String!) { flow_run(id: $id) { task_run_counts { task state count } } }"
        )
        start = time.perf_counter()
        first = client.graphql(counts, {"id": big_id})["flow_run"]["task_run_counts"]
        cold = 1000 * (time.perf_counter() - start)
        total = sum(c["count"] for c in first)
        assert total == big + 2, total
        a = best_ms(lambda: client.graphql(newest, {"f": flow["id"]}))
        b = best_ms(lambda: client.graphql(counts, {"id": big_id}))
    finally:
        server.stop()
    return a, b, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferroflow-bench-") as tmp, start_postgres() as pg:
        work = Path(tmp)
        os.environ["FERROFLOW_HOME"] = str(work)
        print(f"Ingest of a {args.children:,}-child map run (best of 5 each):")
        for backend, local, streamed in ingest(args.children, pg.create_database(), work):
            ratio = streamed / local
            verdict = "met" if ratio <= 2 else "NOT met"
            print(
                f"  {backend:<10} local only {local:6.2f} s   streamed {streamed:6.2f} s   "
                f"ratio {ratio:4.2f} (target <= 2: {verdict})"
            )
        print(f"API latency, {args.runs:,} flow runs + one {args.big:,}-child run (best of 5):")
        for backend in ("sqlite", "postgresql"):
            home = work / backend
            home.mkdir()
            os.environ["FERROFLOW_HOME"] = str(home)
            url = None if backend == "sqlite" else pg.create_database()
            newest, counts, cold = latency(args.runs, args.big, url, home)
            for what, ms in (("newest 50 runs of a flow", newest), ("task-run counts", counts)):
                verdict = "met" if ms < 50 else "NOT met"
                print(f"  {backend:<10} {what:<26} {ms:7.1f} ms (target < 50: {verdict})")
            print(
                f"  {backend:<10} {'(counts, first read)':<26} {cold:7.1f} ms (folds the "
                "whole journal once; later reads fold only new blobs)"
            )


if __name__ == "__main__":
    main()
