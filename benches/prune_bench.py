"""Pruning 100,000 old runs out of a 200,000-run SQLite store (issue 17).

Builds a store under a throw-away ``FERROFLOW_HOME``: one real flow run (a 10-child
map, checkpointed, with a log line per child) is recorded by the engine, then its row,
journal and logs are copied with SQL until the store holds ``--runs`` runs (the older
half started 40 days ago, the newer today), each with its own checkpoint directory. Then it
times :func:`ferroflow.server.retention.prune_runs` with ``older_than=30d`` (what
``ferroflow runs prune --older-than 30d`` does) and prints the store size before and
after, and what a second, no-op prune costs.

Run: ``.venv/bin/python benches/prune_bench.py [--runs 200000]`` (about a minute to
build the store on 2 cores; measure a release build, ``make build-release``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

DAY = 86400.0


def build(home: Path, runs: int) -> Path:
    """A store of ``runs`` copies of one real run; its path."""
    import logging

    from ferroflow import Flow, get_run_logger, task

    logging.getLogger("ferroflow").setLevel(logging.WARNING)

    @task(checkpoint=True)
    def work(x: int) -> int:
        get_run_logger().info("child %d done", x)
        return x * x

    with Flow("bench") as flow:
        work.map(list(range(10)))
    assert flow.run().is_successful()
    path = home / "ferroflow.db"
    conn = sqlite3.connect(path, isolation_level=None)
    (key, run_id) = conn.execute("SELECT key, id FROM flow_runs").fetchone()
    now = time.time()
    half = runs // 2  # the older half came first, as in a store that ran for months
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE n(i INTEGER PRIMARY KEY)",
    )
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO n SELECT i FROM c",
        (runs - 1,),
    )
    skip = ("key", "id", "started", "ended")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(flow_runs)") if r[1] not in skip]
    collist = ", ".join(cols)
    conn.execute(
        f"INSERT INTO flow_runs(key, id, started, ended, {collist}) "
        f"SELECT ? + n.i, printf('%s-%08d', ?, n.i), "
        f"CASE WHEN n.i <= ? THEN ? ELSE ? END, "
        f"CASE WHEN n.i <= ? THEN ? ELSE ? END, {collist} "
        "FROM n, (SELECT * FROM flow_runs WHERE key = ?)",
        (key, run_id[:8], half, now - 40 * DAY, now, half, now - 40 * DAY + 1, now + 1, key),
    )
    conn.execute(
        "INSERT INTO journal(flow_run, data) SELECT ? + n.i, j.data FROM n, "
        "(SELECT data FROM journal WHERE flow_run = ? ORDER BY seq) j",
        (key, key),
    )
    conn.execute(
        "INSERT INTO logs(flow_run_id, task_run_id, level, time, message) "
        "SELECT printf('%s-%08d', ?, n.i), l.task_run_id, l.level, l.time, l.message "
        "FROM n, (SELECT * FROM logs WHERE flow_run_id = ?) l",
        (run_id[:8], run_id),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # One checkpoint directory per run, as the engine writes them.
    src = next((home / "results" / "runs" / run_id).iterdir())
    data = src.read_bytes()
    root = home / "results" / "runs"
    for i in range(1, runs):
        d = root / f"{run_id[:8]}-{i:08d}"
        d.mkdir()
        (d / src.name).write_bytes(data)
    return path


def main() -> None:
    """Build, prune, print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ferroflow-prune-bench-"))
    os.environ["FERROFLOW_HOME"] = str(home)
    t0 = time.perf_counter()
    path = build(home, args.runs)
    built = time.perf_counter() - t0
    from ferroflow.server.database import SqliteDatabase
    from ferroflow.server.retention import prune_runs

    db = SqliteDatabase(path)
    row = db.fetchone("PRAGMA auto_vacuum")
    mode = {0: "NONE", 1: "FULL", 2: "INCREMENTAL"}[row["auto_vacuum"] if row else 0]
    t0 = time.perf_counter()
    got = prune_runs(db, 30 * DAY)
    took = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = prune_runs(db, 30 * DAY)
    noop = time.perf_counter() - t0
    left = db.fetchone("SELECT count(*) AS n FROM flow_runs")["n"]
    db.close()
    mib = 1 << 20
    print(f"store of {args.runs} runs built in {built:.1f} s (auto_vacuum={mode})")
    print(
        f"pruned {got.count} runs (+{got.files_removed} checkpoint dirs) in {took:.2f} s; "
        f"{left} left; a second prune: {again.count} runs in {noop:.3f} s"
    )
    print(
        f"  records (batched deletes + incremental vacuum): {got.records_seconds:.2f} s; "
        f"checkpoint directories: {got.files_seconds:.2f} s"
    )
    assert got.bytes_before is not None and got.bytes_after is not None
    print(
        f"store size: {got.bytes_before / mib:.1f} MiB before, "
        f"{got.bytes_after / mib:.1f} MiB after"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
