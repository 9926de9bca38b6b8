"""The log queries of a big run's page, before and after schema version 8, in SQL alone.

A run whose ``--lines`` map children each log one line is recorded (a process of its
own, in a throw-away ``FERROFLOW_HOME``); its store is copied twice: one copy loses the
version-8 indexes and is read with the query of schema 7 (``logs`` indexed by
``flow_run_id`` only, ``ORDER BY time, rowid`` over ``level >= ?``), the other is read
with :func:`ferroflow.server.models.list_logs`. Best of 5 per form::

    .venv/bin/python benches/log_index_ab.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def old_query(
    con: sqlite3.Connection,
    run_id: str,
    task_run_id: int | None = None,
    min_level: int = 0,
    search: str | None = None,
    limit: int = 200,
    offset: int = 0,
) -> list[Any]:
    """The log query of schema 7 (``models.list_logs`` before version 8)."""
    where, args = ["flow_run_id = ?", "level >= ?"], [run_id, min_level]
    if task_run_id is not None:
        where.append("task_run_id = ?")
        args.append(task_run_id)
    if search:
        where.append("LOWER(message) LIKE ? ESCAPE '\\'")
        args.append("%" + search.lower() + "%")
    return con.execute(
        "SELECT flow_run_id, task_run_id, level, time AS at, message FROM logs "
        f"WHERE {' AND '.join(where)} ORDER BY time, rowid LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()


def best_ms(f: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferroflow-log-ab-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "FERROFLOW_HOME": str(home)}
        env.pop("FERROFLOW_API_URL", None)
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from _workloads import build_logging_map; "
            "build_logging_map(int(sys.argv[2]))[0].run()"
        )
        here = str(Path(__file__).parent)
        subprocess.run([sys.executable, "-c", code, here, str(args.lines)], env=env, check=True)
        src = sqlite3.connect(home / "ferroflow.db")
        src.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every line in the file itself
        src.close()
        old_db, new_db = Path(tmp) / "old.db", Path(tmp) / "new.db"
        for copy in (old_db, new_db):
            shutil.copy(home / "ferroflow.db", copy)
        con = sqlite3.connect(old_db)
        con.executescript(
            "DROP INDEX logs_by_time; DROP INDEX logs_by_task_run; DROP INDEX logs_by_level;"
        )
        from ferroflow.server import models
        from ferroflow.server.database import SqliteDatabase

        db = SqliteDatabase(new_db)
        (run_id,) = con.execute("SELECT id FROM flow_runs ORDER BY started DESC").fetchone()
        (n, last) = con.execute(
            "SELECT count(*), max(time) FROM logs WHERE flow_run_id = ?", (run_id,)
        ).fetchone()
        task = n // 2
        cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("first page", {}, {}),
            ("level ERROR", {"min_level": 40}, {"min_level": 40}),
            ("level INFO", {"min_level": 20}, {"min_level": 20}),
            ("search one line", {"search": f"child {n - 3}"}, {"search": f"child {n - 3}"}),
            ("offset n/2", {"offset": n // 2}, {"offset": n // 2}),
            ("follow the end", {"offset": n}, {"since": last, "offset": 1}),
            ("one task run's lines", {"task_run_id": task}, {"task_run_id": task}),
            (
                "a task run's errors",
                {"task_run_id": task, "min_level": 40, "limit": 20},
                {"task_run_id": task, "min_level": 40, "limit": 20},
            ),
        ]
        print(f"{n:,} log lines in one run; SQL time, best of 5")
        print(f"{'query':<24} {'schema 7':>11} {'schema 8':>11}")
        for what, old, new in cases:
            a = best_ms(lambda old=old: old_query(con, run_id, **old))
            b = best_ms(lambda new=new: models.list_logs(db, run_id, **{"limit": 200, **new}))
            print(f"{what:<24} {a:8.1f} ms {b:8.1f} ms")
        db.close()
        con.close()


if __name__ == "__main__":
    main()
