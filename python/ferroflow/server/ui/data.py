"""The UI's reads that :mod:`ferroflow.server.models` does not have (the model layer of
the UI: pages never write SQL). Each takes the database first and returns plain data.

Everything here is bounded: a run page never loads all task runs of a run (it reads
the folded journal's counts, spans and pages), and the dashboard reads indexed ranges.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ferroflow.server import models
from ferroflow.server.database import Database

__all__ = [
    "failed_since",
    "failures_by_day",
    "flow_run_edges",
    "local_flows",
    "task_run_spans",
]

#: Flow-run and task-run states counted as failures.
FAILED = ("Failed", "TimedOut", "TriggerFailed", "Interrupted")


def task_run_spans(db: Database, flow_run_key: int) -> list[dict[str, Any]]:
    """Per task, own run and mapped children apart: how many runs, the earliest start
    and the latest end (one timeline bar per row, whatever the number of children)."""
    return [
        {"task": t, "task_name": n, "mapped_child": c, "runs": k, "started": s, "ended": e}
        for t, n, c, k, s, e in models._fold(db, flow_run_key).spans()
    ]


def flow_run_edges(db: Database, run: dict[str, Any]) -> list[tuple[int, int, bool]] | None:
    """The graph's edges ``(upstream, downstream, mapped)`` of a flow run: from the
    registered flow version it runs, else from what the run recorded (None when
    unknown: a run recorded before ferroflow kept its edges, or a huge graph)."""
    if run.get("flow_id"):
        row = db.fetchone("SELECT structure FROM flows WHERE id = ?", (run["flow_id"],))
        if row is not None and row["structure"]:
            edges = json.loads(row["structure"]).get("edges") or []
            return [(int(e["upstream"]), int(e["downstream"]), bool(e["mapped"])) for e in edges]
    row = db.fetchone("SELECT structure FROM flow_runs WHERE key = ?", (run["key"],))
    if row is None or not row["structure"]:
        return None
    got = json.loads(row["structure"])
    if not isinstance(got, dict) or got.get("edges") is None:
        return None
    return [(int(u), int(d), bool(m)) for u, d, m in got["edges"]]


def failures_by_day(db: Database, days: int = 7, now: float | None = None) -> list[dict[str, Any]]:
    """Failed flow runs per day (UTC days, oldest first) over the last ``days`` days,
    with the number of runs that day: one indexed range read, counted per day in SQL
    (portable: no date functions, which SQLite and PostgreSQL spell differently)."""
    now = time.time() if now is None else now
    today = int(now // 86400)
    first = today - days + 1
    bounds = [(first + i) * 86400.0 for i in range(days + 1)]
    marks = ", ".join("?" * len(FAILED))
    cols = []
    args: list[Any] = []
    for i in range(days):
        cols.append(
            f"SUM(CASE WHEN started >= ? AND started < ? THEN 1 ELSE 0 END) AS runs_{i}, "
            f"SUM(CASE WHEN started >= ? AND started < ? AND state IN ({marks}) "
            f"THEN 1 ELSE 0 END) AS failed_{i}"
        )
        args += [bounds[i], bounds[i + 1], bounds[i], bounds[i + 1], *FAILED]
    row = db.fetchone(
        f"SELECT {', '.join(cols)} FROM flow_runs WHERE started >= ? AND started < ?",
        (*args, bounds[0], bounds[-1]),
    )
    row = row or {}
    return [
        {
            "day": first + i,
            "date": time.strftime("%m-%d", time.gmtime((first + i) * 86400)),
            "runs": int(row.get(f"runs_{i}") or 0),
            "failed": int(row.get(f"failed_{i}") or 0),
        }
        for i in range(days)
    ]


def local_flows(db: Database, limit: int = 200) -> list[dict[str, Any]]:
    """Flows seen only in runs (not registered): name, how many runs, the last start."""
    return db.fetchall(
        "SELECT flow_name, COUNT(*) AS runs, MAX(started) AS last_started FROM flow_runs "
        "WHERE flow_id IS NULL GROUP BY flow_name ORDER BY MAX(started) DESC LIMIT ?",
        (limit,),
    )


def failed_since(db: Database, since: float) -> int:
    """How many flow runs that started at or after ``since`` failed."""
    row = db.fetchone(
        f"SELECT COUNT(*) AS n FROM flow_runs WHERE started >= ? AND state IN "
        f"({', '.join('?' * len(FAILED))})",
        (since, *FAILED),
    )
    return int(row["n"]) if row else 0
